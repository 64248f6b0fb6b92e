import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as net from "node:net"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

/** The repository root: where `main.ts` and `package.json` live. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

/**
 * The node flags `npm start` gives the service, read from the `start` script (`node <flags> dist/main.js`) of the
 * package at `root`: a service started here as `npm start` starts it gets them too.
 */
export const startNodeArgs = (root: string = REPO_ROOT): ReadonlyArray<string> => {
  const start: unknown = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8")).scripts?.start
  const words = typeof start === "string" ? start.trim().split(/\s+/) : []
  const main = words.indexOf("dist/main.js")
  if (words[0] !== "node" || main < 0) throw new Error(`the start script of ${root} is not "node <flags> dist/main.js": ${String(start)}`)
  return words.slice(1, main)
}

/** Whether a process with this pid exists (one owned by another user counts). */
export const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** A service (or `npm`) running as a child process in its own process group. */
export interface ChildService {
  readonly pid: number
  /** Everything written to stdout so far. */
  readonly stdout: () => string
  /** stdout and stderr interleaved, as they arrived. */
  readonly output: () => string
  /** Resolves when the child exits, with its exit code or the signal that ended it. */
  readonly exited: Promise<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  readonly isRunning: () => boolean
  /** Sends `signal` to the child's whole process group (npm, its shell, tsx and node alike). */
  readonly kill: (signal: NodeJS.Signals) => void
  /** SIGKILLs the process group if anything in it is still alive and waits for the child to exit. */
  readonly stop: () => Promise<void>
}

const children = new Set<ChildService>()

/** Children started by this test file that are still running. */
export const runningChildren = (): ReadonlyArray<ChildService> => [...children].filter((c) => c.isRunning())

/** Kills every child this file started that is still around; for afterAll/afterEach, so no test leaves orphans. */
export const stopAllChildren = async (): Promise<void> => {
  await Promise.all([...children].map((c) => c.stop()))
}

/**
 * The live (non-zombie) processes in process group `pgid`. Zombies are left out: in a container
 * whose init never reaps, an exited process would otherwise look alive forever.
 */
export const groupMembers = (pgid: number): ReadonlyArray<number> => {
  const members: Array<number> = []
  let entries: Array<string>
  try {
    entries = fs.readdirSync("/proc")
  } catch {
    return members
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8")
      // Fields after the command name: state ppid pgrp ...
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      if (Number(pgrp) === pgid && state !== "Z") members.push(Number(entry))
    } catch {
      // The process exited while we looked.
    }
  }
  return members
}

const groupAlive = (pgid: number): boolean => groupMembers(pgid).length > 0

/**
 * The inherited environment without `DATABASE_URL` and `ELECTRIC_*`, so a developer's own
 * settings never leak into a test, plus `extra`.
 */
export const cleanEnv = (extra: Readonly<Record<string, string>> = {}): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key === "DATABASE_URL" || key.startsWith("ELECTRIC_")) continue
    env[key] = value
  }
  return { ...env, ...extra }
}

/**
 * The environment of a service process under test: this database, port, storage directory and
 * replication stream, no secret, `DELETE` and the restart endpoint enabled, plus `extra`.
 */
export const serviceEnv = (options: {
  readonly databaseUrl: string
  readonly port: number
  readonly storageDir: string
  readonly streamId: string
  readonly extra?: Readonly<Record<string, string>>
}): Record<string, string> =>
  cleanEnv({
    DATABASE_URL: options.databaseUrl,
    ELECTRIC_INSECURE: "true",
    ELECTRIC_PORT: String(options.port),
    ELECTRIC_STORAGE_DIR: options.storageDir,
    ELECTRIC_REPLICATION_STREAM_ID: options.streamId,
    ELECTRIC_ENABLE_INTEGRATION_TESTING: "true",
    ...options.extra
  })

/**
 * Spawns `command args` detached (its own process group, so a signal reaches every process it
 * starts) with stdout and stderr captured.
 */
export const spawnCommand = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly env: Readonly<Record<string, string>>; readonly cwd?: string }
): ChildService => {
  const child: ChildProcess = spawn(command, [...args], {
    cwd: options.cwd ?? REPO_ROOT,
    env: options.env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true
  })
  if (child.pid === undefined) throw new Error(`could not spawn ${command}`)
  const pid = child.pid
  let out = ""
  let all = ""
  child.stdout!.setEncoding("utf8").on("data", (s: string) => {
    out += s
    all += s
  })
  child.stderr!.setEncoding("utf8").on("data", (s: string) => {
    all += s
  })
  let running = true
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => {
      running = false
      resolve({ code, signal })
    })
  })
  const kill = (signal: NodeJS.Signals) => {
    try {
      process.kill(-pid, signal)
    } catch {
      // The group is already gone.
    }
  }
  const service: ChildService = {
    pid,
    stdout: () => out,
    output: () => all,
    exited,
    isRunning: () => running,
    kill,
    stop: async () => {
      // The group may outlive its leader (npm exits before its grandchildren), so check the group.
      if (running || groupAlive(pid)) kill("SIGKILL")
      await exited
      const deadline = Date.now() + 10_000
      while (groupAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    }
  }
  children.add(service)
  return service
}

/**
 * The arguments of `node` that run the service: with the node flags `npm start` gives it, the sources through the
 * tsx loader, or with `compiled` the bundle `npm start` runs (`dist/main.js`, which `npm test` builds first).
 */
export const synclineNodeArgs = (compiled = false): Array<string> =>
  compiled
    ? [...startNodeArgs(), path.join(REPO_ROOT, "dist", "main.js")]
    : [...startNodeArgs(), "--import", pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href, path.join(REPO_ROOT, "main.ts")]

/**
 * `node --import <tsx loader> main.ts` from the repository root: the service itself, without npm or npx, with the
 * node flags `npm start` gives it. With `compiled`, `node dist/main.js` instead (`synclineNodeArgs`).
 */
export const spawnSyncline = (options: {
  readonly env: Readonly<Record<string, string>>
  readonly cwd?: string
  readonly compiled?: boolean
}): ChildService => {
  return spawnCommand(process.execPath, synclineNodeArgs(options.compiled === true), {
    env: options.env,
    cwd: options.cwd ?? REPO_ROOT
  })
}

/** A port nothing listens on right now (the OS picks it for a listener on port 0). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })

/**
 * Polls `/v1/health` until it answers 200. Fails early, with the child's output, if the child
 * exits first; fails with the output on timeout.
 */
export const waitHealthy = async (baseUrl: string, timeoutMs: number, child?: ChildService): Promise<Response> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (child !== undefined && !child.isRunning()) {
      throw new Error(`the service exited before it was healthy; output:\n${child.output()}`)
    }
    const res = await fetch(`${baseUrl}/v1/health`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined)
    if (res !== undefined && res.status === 200) return res
    await res?.body?.cancel()
    if (Date.now() > deadline) {
      throw new Error(`${baseUrl} was not healthy within ${timeoutMs} ms${child === undefined ? "" : `; output:\n${child.output()}`}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
}
