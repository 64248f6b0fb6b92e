import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { aptInstall, isExecutable, isRoot, run, withInstallLock } from "./debian.js"
import { cleanEnv, freePort, REPO_ROOT, spawnCommand } from "./process.js"
import { tempDir } from "./syncline.js"

/**
 * Debian packages that hold the nginx binary, tried in order: `nginx-light` is the small build
 * where it exists (in some releases it only pulls in `nginx`, which holds the binary).
 */
const PACKAGES = ["nginx-light", "nginx"] as const

/** Where `/usr/sbin/nginx` ends up when the packages are unpacked without root. */
const unpackedRoot = (): string => path.join(os.tmpdir(), `syncline-nginx-${process.getuid?.() ?? "user"}`, "root")

/** An nginx that runs: on PATH, in /usr/sbin, or unpacked earlier by this user. */
const findNginx = async (): Promise<string | undefined> => {
  const candidates = [
    ...(process.env["PATH"] ?? "").split(path.delimiter).filter((d) => d !== "").map((d) => path.join(d, "nginx")),
    "/usr/sbin/nginx",
    path.join(unpackedRoot(), "usr", "sbin", "nginx")
  ]
  for (const candidate of candidates) {
    if (!(await isExecutable(candidate))) continue
    if ((await run(candidate, ["-v"])).ok) return candidate
  }
  return undefined
}

const failure = (what: string, log: ReadonlyArray<string>): Error =>
  new Error(
    `nginx is needed by this test and could not be ${what} (Debian packages ${PACKAGES.join(" or ")}):\n${log.join("\n")}`
  )

/**
 * Without root: `apt-get download` and `dpkg-deb -x` into a directory of this user's, package by
 * package until one holds the binary (its libraries are the base system's).
 */
const unpackWithoutRoot = async (): Promise<void> => {
  const log: Array<string> = []
  const root = unpackedRoot()
  const debs = path.join(path.dirname(root), "debs")
  await fs.mkdir(root, { recursive: true })
  await fs.mkdir(debs, { recursive: true })
  for (const pkg of PACKAGES) {
    const download = await run("apt-get", ["download", pkg], { cwd: debs })
    log.push(`$ apt-get download ${pkg}\n${download.output}`)
    if (!download.ok) continue
    for (const deb of (await fs.readdir(debs)).filter((f) => f.startsWith(`${pkg}_`) && f.endsWith(".deb"))) {
      const unpack = await run("dpkg-deb", ["-x", path.join(debs, deb), root])
      log.push(`$ dpkg-deb -x ${deb} ${root}\n${unpack.output}`)
    }
    const binary = path.join(root, "usr", "sbin", "nginx")
    if (await isExecutable(binary)) {
      const version = await run(binary, ["-v"])
      log.push(`$ ${binary} -v\n${version.output}`)
      if (version.ok) return
    }
  }
  throw failure("unpacked", log)
}

let binary: Promise<string> | undefined

/**
 * The nginx binary, installed first if the machine has none: with apt as root, else unpacked
 * from the Debian packages into a temp directory. Fails, naming the packages, when neither works.
 */
export const nginxBinary = (): Promise<string> => {
  binary ??= (async () => {
    const found = await findNginx()
    if (found !== undefined) return found
    return withInstallLock(async () => {
      // Another test process may have installed it while this one waited for the lock.
      const installed = await findNginx()
      if (installed !== undefined) return installed
      if (isRoot()) await aptInstall(PACKAGES, "nginx")
      else await unpackWithoutRoot()
      const ready = await findNginx()
      if (ready === undefined) throw failure("found after installing", [])
      return ready
    })
  })()
  return binary
}

/** The section of README.md whose `nginx` block the proxy runs, so the documented configuration is the tested one. */
const README_SECTION = "## Behind a caching proxy"

/** Values in the README's block that a test run replaces, each of which must occur exactly once. */
const README_PLACEHOLDERS = {
  upstream: "server 127.0.0.1:3000;",
  listen: "listen 8080;",
  cachePath: "/var/cache/nginx/syncline"
} as const

/** The `nginx` code block of README.md's caching proxy section: what goes into nginx's `http` block. */
const readmeNginxBlock = async (): Promise<string> => {
  const readme = await fs.readFile(path.join(REPO_ROOT, "README.md"), "utf8")
  const section = readme.indexOf(`\n${README_SECTION}\n`)
  if (section < 0) throw new Error(`README.md has no section "${README_SECTION}"`)
  const block = /```nginx\n([\s\S]*?)```/.exec(readme.slice(section))
  if (block === null) throw new Error(`README.md's section "${README_SECTION}" has no \`\`\`nginx block`)
  return block[1]!
}

const replaceOnce = (text: string, placeholder: string, value: string): string => {
  const parts = text.split(placeholder)
  if (parts.length !== 2) {
    throw new Error(`README.md's nginx block must contain "${placeholder}" exactly once (found ${parts.length - 1})`)
  }
  return parts.join(value)
}

/** One request as nginx logged it. */
export interface ProxyLogEntry {
  /** The request line's URI, query string included, as the client sent it. */
  readonly uri: string
  readonly status: number
  /** `$upstream_cache_status`: HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, or "" when the cache was not used. */
  readonly cache: string
  /** Whether nginx sent this request on to the service (rather than answering it from the cache). */
  readonly reachedService: boolean
}

/** nginx with the README's configuration in front of a service. */
export interface CachingProxy {
  readonly baseUrl: string
  /** Everything nginx logged so far, in the order the requests finished (readiness probes included). */
  readonly log: () => Promise<ReadonlyArray<ProxyLogEntry>>
  readonly stop: () => Promise<void>
}

/**
 * One JSON object a line. Background revalidations are subrequests: logged too, so every request
 * that reached the service is in the log.
 */
const LOG_FORMAT = `log_format shape_cache escape=json
        '{"uri":"$request_uri","status":$status,"cache":"$upstream_cache_status","upstream":"$upstream_addr"}';
    access_log PREFIX/access.log shape_cache;
    log_subrequest on;`

/**
 * The whole nginx.conf: a foreground nginx whose pid, logs, temp files and cache all live
 * under `prefix`, around the README's block.
 */
const nginxConf = (prefix: string, readmeBlock: string): string => `# Generated by test/support/nginx.ts
daemon off;
master_process on;
worker_processes 1;
${isRoot() ? "# Workers write the cache under a temp dir that root owns.\nuser root;\n" : ""}pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log notice;

events {
    worker_connections 512;
}

http {
    default_type application/octet-stream;
    client_body_temp_path ${prefix}/temp/body;
    proxy_temp_path ${prefix}/temp/proxy;
    fastcgi_temp_path ${prefix}/temp/fastcgi;
    uwsgi_temp_path ${prefix}/temp/uwsgi;
    scgi_temp_path ${prefix}/temp/scgi;
    ${LOG_FORMAT.replaceAll("PREFIX", prefix)}

${readmeBlock.replace(/^(?=.)/gm, "    ")}}
`

const parseLog = (text: string): ReadonlyArray<ProxyLogEntry> =>
  text
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => {
      const raw = JSON.parse(line) as { uri: string; status: number; cache: string; upstream: string }
      return { uri: raw.uri, status: raw.status, cache: raw.cache, reachedService: raw.upstream !== "" && raw.upstream !== "-" }
    })

/**
 * Starts nginx (installing it first if need be) on a free port with README.md's caching proxy
 * configuration in front of the service at `upstreamBaseUrl`, and waits until it answers
 * `/v1/health` through to the service.
 */
export const startCachingProxy = async (upstreamBaseUrl: string): Promise<CachingProxy> => {
  const nginx = await nginxBinary()
  const prefix = await tempDir("nginx")
  await fs.mkdir(path.join(prefix, "temp"))
  await fs.mkdir(path.join(prefix, "cache"))
  const upstream = new URL(upstreamBaseUrl).host
  const block = replaceOnce(await readmeNginxBlock(), README_PLACEHOLDERS.upstream, `server ${upstream};`)
  const errorLog = path.join(prefix, "error.log")
  const accessLog = path.join(prefix, "access.log")
  // Another process can take the free port before nginx binds it: then try another.
  for (let attempt = 1;; attempt++) {
    const port = await freePort()
    const conf = replaceOnce(
      replaceOnce(block, README_PLACEHOLDERS.listen, `listen 127.0.0.1:${port};`),
      README_PLACEHOLDERS.cachePath,
      path.join(prefix, "cache")
    )
    const confFile = path.join(prefix, "nginx.conf")
    await fs.writeFile(confFile, nginxConf(prefix, conf))
    // -e: Debian's nginx would otherwise open its default error log before reading the config.
    const child = spawnCommand(nginx, ["-p", `${prefix}/`, "-c", confFile, "-e", errorLog], { env: cleanEnv() })
    const baseUrl = `http://127.0.0.1:${port}`
    const stop = async () => {
      child.kill("SIGTERM")
      await Promise.race([child.exited, new Promise((r) => setTimeout(r, 5_000).unref())])
      await child.stop()
      await fs.rm(prefix, { recursive: true, force: true })
    }
    const deadline = Date.now() + 20_000
    for (;;) {
      if (!child.isRunning()) break
      const res = await fetch(`${baseUrl}/v1/health`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined)
      await res?.body?.cancel()
      if (res?.status === 200) {
        return { baseUrl, log: async () => parseLog(await fs.readFile(accessLog, "utf8").catch(() => "")), stop }
      }
      if (Date.now() > deadline) break
      await new Promise((r) => setTimeout(r, 50))
    }
    const exitedOnItsOwn = !child.isRunning()
    await child.stop()
    const errors = await fs.readFile(errorLog, "utf8").catch(() => "")
    if (exitedOnItsOwn && errors.includes("Address already in use") && attempt < 3) continue
    await fs.rm(prefix, { recursive: true, force: true })
    throw new Error(`nginx did not serve ${baseUrl}/v1/health; output:\n${child.output()}\nerror.log:\n${errors}`)
  }
}
