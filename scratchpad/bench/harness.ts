import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import pg from "pg"
import { Agent, request } from "undici"
import { type RunningPostgres, startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { HEADER_BYTES, MessageFramer } from "../../src/postgres/internal/MessageFramer.js"
import { XLOG_DATA_HEADER_BYTES } from "../../src/postgres/PgOutput.js"
import { SESSION_SETTINGS } from "../../src/postgres/ReplicationConnection.js"
import { type ChildService, freePort, REPO_ROOT, serviceEnv, spawnCommand, startNodeArgs } from "../../test/support/process.js"

/*
 * What every part of the benchmark shares: the embedded Postgres, the service and the bare
 * servers as child processes, one HTTP client for both, the writers, and the table of results.
 */

export const BENCH_DIR = path.join(REPO_ROOT, "scratchpad", "bench")
export const QUICK = process.env["BENCH_QUICK"] === "1"

/** A size from `BENCH_<name>`, else the full or the quick default. */
export const sized = (name: string, full: number, quick: number): number => {
  const raw = process.env[`BENCH_${name}`]
  if (raw === undefined || raw === "") return QUICK ? quick : full
  const n = Number(raw)
  if (!Number.isFinite(n) || n <= 0) throw new Error(`BENCH_${name}=${raw} is not a positive number`)
  return n
}

/** A list of sizes from `BENCH_<name>` (comma-separated), else the full or the quick default. */
export const sizedList = (name: string, full: ReadonlyArray<number>, quick: ReadonlyArray<number>): ReadonlyArray<number> => {
  const raw = process.env[`BENCH_${name}`]
  if (raw === undefined || raw === "") return QUICK ? quick : full
  return raw.split(",").map((s) => {
    const n = Number(s.trim())
    if (!Number.isFinite(n) || n <= 0) throw new Error(`BENCH_${name}=${raw}: ${s} is not a positive number`)
    return n
  })
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------
// Figures and their formatting.

/** Nearest-rank percentile of ascending `sorted`. */
export const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!

/** The middle value, or the mean of the two middle ones for an even count. */
export const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

export const fmtInt = (n: number) => Math.round(n).toLocaleString("en-US")
export const fmtMs = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2))
export const fmtS = (ms: number) => (ms / 1000).toFixed(2)
export const fmtMb = (bytes: number) => (bytes / 1024 / 1024).toFixed(1)
export const fmtRate = (n: number, ms: number) => fmtInt(n / (ms / 1000))
/** A rate with a k/M suffix: 1.49M, 204k, 2,321. */
export const fmtShortRate = (perSecond: number): string =>
  perSecond >= 1e6 ? `${(perSecond / 1e6).toFixed(2)}M` : perSecond >= 1e5 ? `${(perSecond / 1e3).toFixed(0)}k` : fmtInt(perSecond)
export const fmtRatio = (r: number) => (r >= 10 ? r.toFixed(1) : r >= 1 ? r.toFixed(2) : r.toFixed(3))

/** One line of the results table. */
export interface ResultRow {
  readonly figure: string
  readonly syncline: string
  readonly limit: string
  readonly ratio: string
  readonly target: string
  /** Whether the target is met; undefined when the line has no target of its own. */
  readonly met: boolean | undefined
}

/** Notes printed under the table: how a figure was taken, sizes, side figures. */
export interface Report {
  readonly rows: Array<ResultRow>
  readonly notes: Array<string>
}

// ---------------------------------------------------------------------------------------------
// Cleanup: whatever is started registers how to undo it; undone in reverse order, also on a signal.

const cleanups: Array<() => Promise<void>> = []

export const onCleanup = (f: () => Promise<void>): (() => void) => {
  cleanups.push(f)
  return () => {
    const i = cleanups.indexOf(f)
    if (i !== -1) cleanups.splice(i, 1)
  }
}

export const runCleanups = async (): Promise<void> => {
  while (cleanups.length > 0) {
    const f = cleanups.pop()!
    try {
      await f()
    } catch (error) {
      console.error(`cleanup: ${(error as Error).message}`)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP client: undici with enough connections for every concurrent client, the same code against
// the service and against its bare limit.

export const makeAgent = (connections: number): Agent =>
  new Agent({
    connections,
    pipelining: 1,
    // Long-polls are held for as long as a round takes.
    headersTimeout: 0,
    bodyTimeout: 0,
    keepAliveTimeout: 120_000,
    keepAliveMaxTimeout: 120_000
  })

export interface Fetched {
  readonly status: number
  readonly headers: Record<string, string | Array<string> | undefined>
  readonly body: Buffer
  /** performance.now() when the whole body was in. */
  readonly at: number
}

export const get = async (
  agent: Agent,
  url: string,
  options: { readonly method?: "GET" | "POST"; readonly signal?: AbortSignal } = {}
): Promise<Fetched> => {
  const res = await request(url, {
    dispatcher: agent,
    method: options.method ?? "GET",
    ...(options.signal === undefined ? {} : { signal: options.signal })
  })
  const body = Buffer.from(await res.body.arrayBuffer())
  return { status: res.statusCode, headers: res.headers, body, at: performance.now() }
}

/** A 200 or a loud failure. */
export const get200 = async (agent: Agent, url: string, options: { readonly signal?: AbortSignal } = {}): Promise<Fetched> => {
  const res = await get(agent, url, options)
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${res.body.toString().slice(0, 500)}`)
  return res
}

export const header = (res: Pick<Fetched, "headers">, name: string): string | undefined => {
  const v = res.headers[name]
  return Array.isArray(v) ? v[0] : v
}

/** Counts the occurrences of `needle` in `haystack`. */
export const occurrences = (haystack: Buffer, needle: Buffer): number => {
  let n = 0
  for (let i = haystack.indexOf(needle); i !== -1; i = haystack.indexOf(needle, i + needle.length)) n++
  return n
}
export const INSERT = Buffer.from(`"operation":"insert"`)
export const UPDATE = Buffer.from(`"operation":"update"`)
export const DELETE = Buffer.from(`"operation":"delete"`)
export const changesIn = (body: Buffer) => occurrences(body, INSERT) + occurrences(body, UPDATE) + occurrences(body, DELETE)

/** Where a shape client stands. */
export interface ShapePosition {
  handle: string
  offset: string
  cursor: string
}

export const shapeUrl = (baseUrl: string, params: string, at: ShapePosition, live: boolean): string =>
  `${baseUrl}/v1/shape?${params}&offset=${at.offset}${at.handle === "" ? "" : `&handle=${at.handle}`}${
    live ? `&live=true&cursor=${at.cursor}` : ""
  }`

/** Moves `at` past `res`. */
export const advance = (at: ShapePosition, res: Pick<Fetched, "headers">): void => {
  at.handle = header(res, "electric-handle") ?? at.handle
  at.offset = header(res, "electric-offset") ?? at.offset
  at.cursor = header(res, "electric-cursor") ?? at.cursor
}

const OPERATION = Buffer.from(`"operation":"`)

/**
 * Counts the changes of a body as its pieces arrive, in one scan and without joining them: a client
 * that only counts what it gets, like the COPY reader it is compared with, which counts newlines.
 */
class ChangeCounter {
  inserts = 0
  changes = 0
  bytes = 0
  /** The stream's last bytes before the next piece, as many as a match: one may start there and end in that piece. */
  private tail: Buffer = Buffer.alloc(0)

  add(piece: Buffer): void {
    this.bytes += piece.length
    const n = OPERATION.length
    // A match is counted once the byte that names its kind is in. One that starts in the tail is looked for where the
    // tail meets the piece's first bytes, so that a piece is scanned where it lies, never copied.
    if (this.tail.length > 0) {
      const junction = Buffer.concat([this.tail, piece.subarray(0, n)])
      for (let i = junction.indexOf(OPERATION); i !== -1 && i < this.tail.length && i + n < junction.length; i = junction.indexOf(OPERATION, i + n)) {
        this.count(junction[i + n]!)
      }
    }
    for (let i = piece.indexOf(OPERATION); i !== -1 && i + n < piece.length; i = piece.indexOf(OPERATION, i + n)) this.count(piece[i + n]!)
    this.tail = piece.length >= n
      ? Buffer.from(piece.subarray(piece.length - n))
      : Buffer.concat([this.tail, piece]).subarray(-n)
  }

  private count(kind: number): void {
    this.changes++
    if (kind === 0x69) this.inserts++
  }
}

/** Reads a shape from `at` (offset -1 for a new client) until up-to-date; bodies are counted as they arrive. */
export const syncShape = async (
  agent: Agent,
  baseUrl: string,
  params: string,
  at: ShapePosition = { handle: "", offset: "-1", cursor: "" }
): Promise<{ at: ShapePosition; inserts: number; changes: number; bytes: number; requests: number }> => {
  let inserts = 0
  let changes = 0
  let bytes = 0
  let requests = 0
  for (;;) {
    const url = shapeUrl(baseUrl, params, at, false)
    const res = await request(url, { dispatcher: agent })
    if (res.statusCode !== 200) throw new Error(`GET ${url}: ${res.statusCode} ${(await res.body.text()).slice(0, 500)}`)
    const counter = new ChangeCounter()
    for await (const piece of res.body) counter.add(piece as Buffer)
    requests++
    bytes += counter.bytes
    inserts += counter.inserts
    changes += counter.changes
    advance(at, res)
    if (res.headers["electric-up-to-date"] !== undefined) return { at, inserts, changes, bytes, requests }
  }
}

/**
 * Creates `count` shapes (`params(k)` for k in 0..count-1), `concurrency` at a time, each by its
 * first request (offset -1), which answers once the snapshot is written; resolves with the time it took.
 */
export const createShapes = async (
  baseUrl: string,
  count: number,
  concurrency: number,
  params: (k: number) => string,
  expectedRows: (k: number) => number
): Promise<number> => {
  const agent = makeAgent(concurrency)
  const started = performance.now()
  try {
    let next = 0
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < count) {
        const k = next++
        const res = await get200(agent, `${baseUrl}/v1/shape?${params(k)}&offset=-1`)
        const rows = occurrences(res.body, INSERT)
        if (rows !== expectedRows(k)) throw new Error(`shape ${params(k)} returned ${rows} rows, expected ${expectedRows(k)}`)
      }
    }))
  } finally {
    await agent.close()
  }
  return performance.now() - started
}

// ---------------------------------------------------------------------------------------------
// Processes.

/** VmRSS of process `pid`, in bytes. */
export const rssOf = (pid: number): number => {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8")
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status)
  if (match === null) throw new Error(`no VmRSS for process ${pid}`)
  return Number(match[1]) * 1024
}

/** Linux's USER_HZ, the unit of /proc's CPU times. */
const CLOCK_TICKS = 100

/**
 * CPU time (user + system) a process has used, in ms: the whole of process `pid`, or only its thread `tid`
 * (for a Node process, `tid = pid` is the main thread; the rest is V8's compiler and GC threads and libuv's pool).
 */
export const cpuMsOf = (pid: number, tid?: number): number => {
  const stat = fs.readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, "utf8")
  // Fields after the command name, which may hold spaces: utime and stime are the 14th and 15th of the line.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
}

/**
 * CPU time of each thread of process `pid`, by thread id, in ms. Node's threads all carry its name, so they are told
 * apart by order: the main thread's id is the pid, V8's compiler and GC threads come next, libuv's pool is started
 * at its first use. A thread that ended is not counted.
 */
export const threadCpuOf = (pid: number): Map<number, number> => {
  const byThread = new Map<number, number>()
  for (const tid of fs.readdirSync(`/proc/${pid}/task`).map(Number)) {
    try {
      byThread.set(tid, cpuMsOf(pid, tid))
    } catch {
      // Ended between the listing and the reading.
    }
  }
  return byThread
}

/** The CPU each thread used between two readings of `threadCpuOf`, as text, by offset from the pid: `+0 450, +1 120`. */
export const threadCpuText = (pid: number, before: Map<number, number>, after: Map<number, number>): string =>
  [...after].map(([tid, ms]) => [tid - pid, ms - (before.get(tid) ?? 0)] as const)
    .filter(([, ms]) => ms > 0)
    .sort((a, b) => a[0] - b[0])
    .map(([offset, ms]) => `+${offset} ${fmtInt(ms)}`)
    .join(", ")

/**
 * How long thread `tid` of process `pid` has run on a core, and how long it has waited for one while ready to run,
 * in ms (`/proc/<pid>/task/<tid>/schedstat`): what the scheduler gave to other threads while it had work.
 */
export const scheduleOf = (pid: number, tid: number): { readonly runMs: number; readonly waitMs: number } => {
  const [run, wait] = fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ").map(Number)
  if (run === undefined || wait === undefined || Number.isNaN(run) || Number.isNaN(wait)) {
    throw new Error(`no schedule statistics for thread ${tid} of process ${pid}`)
  }
  return { runMs: run / 1e6, waitMs: wait / 1e6 }
}

/** How many file descriptors process `pid` has open. */
export const openFiles = (pid: number): number => fs.readdirSync(`/proc/${pid}/fd`).length

/** The median of `n` RSS samples `everyMs` apart. */
export const sampleRss = async (pid: number, n: number, everyMs: number): Promise<number> => {
  const samples: Array<number> = []
  for (let i = 0; i < n; i++) {
    if (i > 0) await sleep(everyMs)
    samples.push(rssOf(pid))
  }
  return median(samples)
}

/** Stops a child: `signal` (SIGTERM: a graceful stop) and up to `graceMs` for it to exit, then SIGKILL. */
export const stopChild = async (child: ChildService, signal: NodeJS.Signals = "SIGTERM", graceMs = 30_000): Promise<void> => {
  if (child.isRunning()) {
    child.kill(signal)
    await Promise.race([child.exited, sleep(graceMs)])
  }
  await child.stop()
}

/** Spawns `node <args>` as a detached child whose processes are killed at cleanup. */
export const spawnNode = (args: ReadonlyArray<string>, env: Record<string, string>): ChildService => {
  const child = spawnCommand(process.execPath, args, { env })
  const forget = onCleanup(() => child.stop())
  void child.exited.then(() => {
    forget()
  })
  return child
}

const healthAgent = makeAgent(2)
onCleanup(() => healthAgent.close())

/**
 * Polls `<baseUrl>/v1/health` every `everyMs` until it answers 200 with `"active"` (or any 200 for a
 * bare server); resolves with performance.now() at that answer. Fails with the child's output if
 * it exits first.
 */
export const waitActive = async (baseUrl: string, child: ChildService, timeoutMs = 120_000, everyMs = 5): Promise<number> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (!child.isRunning()) throw new Error(`${baseUrl}: the process exited before it was active; output:\n${child.output().slice(-4000)}`)
    const res = await get(healthAgent, `${baseUrl}/v1/health`).catch(() => undefined)
    if (res !== undefined && res.status === 200 && (res.body.length === 0 || res.body.includes("active"))) return res.at
    if (Date.now() > deadline) throw new Error(`${baseUrl} was not active within ${timeoutMs} ms; output:\n${child.output().slice(-4000)}`)
    await sleep(everyMs)
  }
}

/**
 * Node flags every service process gets after those of `npm start` (`startNodeArgs`) and before its own, from
 * `BENCH_NODE_ARGS` (space-separated): a profiler (`--cpu-prof --cpu-prof-dir=<dir>`, `--perf-basic-prof`) or V8
 * flags to compare (a flag given again overrides `npm start`'s). A run with any says so in its header: its figures
 * are not those of `npm start`.
 */
export const SERVICE_NODE_ARGS: ReadonlyArray<string> = process.env["BENCH_NODE_ARGS"]?.split(" ").filter((a) => a !== "") ?? []

/** Options of one service process. */
export interface ServiceOptions {
  /** Replication stream id: names the slot and the publication. */
  readonly stream: string
  readonly storageDir: string
  readonly env?: Readonly<Record<string, string>>
  /** Node flags before the entry (`dist/main.js`), after those of `npm start`. */
  readonly nodeArgs?: ReadonlyArray<string>
  /**
   * Another build of the service to run instead of `dist/main.js`, to compare with it in turns: a copy of `dist/`
   * inside the repository (under `node_modules/`, say), where its imports resolve as they do from `dist/`.
   */
  readonly entry?: string | undefined
}

/**
 * The moment a service's stack became active as its metrics (the text of `/metrics`) say, on this process's
 * performance.now() clock: `syncline_stack_active_start_time_seconds` counts seconds since the epoch on the system
 * clock both processes read. Undefined when the metrics do not say (a build before the gauge).
 */
export const activeStartOf = (metrics: string): number | undefined => {
  const match = /^syncline_stack_active_start_time_seconds(?:\{[^}]*\})? (\S+)/m.exec(metrics)
  // From the system clock to this process's performance clock, both read now.
  return match === null ? undefined : Number(match[1]) * 1000 - Date.now() + performance.now()
}

/** `activeStartOf` the service at `baseUrl`; `observedAt` when it does not say. */
const statedActiveAt = async (baseUrl: string, observedAt: number): Promise<number> => {
  const res = await get(healthAgent, `${baseUrl}/metrics`)
  const stated = res.status === 200 ? activeStartOf(res.body.toString()) : undefined
  if (stated === undefined) return observedAt
  // The service's moment is in whole milliseconds; one a few milliseconds after the answer is a wrong reading.
  if (!(stated <= observedAt + 5)) throw new Error(`the service says it was active at ${stated} ms, after it said so at ${observedAt} ms`)
  return Math.min(stated, observedAt)
}

/** Every service started, so a failing part can show what they logged. */
export const servicesStarted: Array<Service> = []

/**
 * The compiled service, `node dist/main.js` (or another build, `entry`) with the flags `npm start` gives it, as a child
 * process of its own.
 */
export class Service {
  private constructor(
    readonly child: ChildService,
    readonly baseUrl: string,
    /** performance.now() when it was spawned, and when /v1/health first said active. */
    readonly spawnedAt: number,
    readonly observedActiveAt: number,
    /**
     * performance.now() when the stack became active, as the service itself says (its metrics, on the same
     * system clock): a busy service answers /v1/health late, so this is what a catch-up is timed from.
     */
    readonly activeAt: number
  ) {}

  static async start(databaseUrl: string, options: ServiceOptions): Promise<Service> {
    const port = await freePort()
    const env = serviceEnv({ databaseUrl, port, storageDir: options.storageDir, streamId: options.stream, extra: { ...options.env } })
    // The service runs as `npm start` runs it: no loader or flags from the bench's own environment.
    delete env["NODE_OPTIONS"]
    const spawnedAt = performance.now()
    const child = spawnNode([...startNodeArgs(), ...SERVICE_NODE_ARGS, ...(options.nodeArgs ?? []), options.entry ?? path.join(REPO_ROOT, "dist", "main.js")], env)
    const baseUrl = `http://127.0.0.1:${port}`
    try {
      const observedActiveAt = await waitActive(baseUrl, child)
      const service = new Service(child, baseUrl, spawnedAt, observedActiveAt, await statedActiveAt(baseUrl, observedActiveAt))
      servicesStarted.push(service)
      return service
    } catch (error) {
      await child.stop()
      throw error
    }
  }

  get pid(): number {
    return this.child.pid
  }

  /** From spawn until /v1/health said active, as a client sees it (the bare servers' start-up is timed the same way). */
  get startupMs(): number {
    return this.observedActiveAt - this.spawnedAt
  }

  /** How much later /v1/health said active than the stack became active. */
  get activeAnsweredLateMs(): number {
    return this.observedActiveAt - this.activeAt
  }

  /** A graceful stop (SIGTERM): held requests are answered, what is held is made durable. */
  async stop(): Promise<void> {
    await stopChild(this.child)
    const { code, signal } = await this.child.exited
    if (code !== 0) throw new Error(`the service exited with ${code ?? signal} on SIGTERM; output:\n${this.child.output().slice(-4000)}`)
  }

  /** Shapes the stack serves, from the service's metrics; undefined if it does not say. */
  async shapeCount(agent: Agent): Promise<number | undefined> {
    const res = await get(agent, `${this.baseUrl}/metrics`)
    if (res.status !== 200) return undefined
    const match = /^syncline_shapes(?:\{[^}]*\})? (\d+)/m.exec(res.body.toString())
    return match === null ? undefined : Number(match[1])
  }

  /** Long-polls held right now, from the service's metrics; undefined if it does not say. */
  async heldLongPolls(agent: Agent, stream: string): Promise<number | undefined> {
    const res = await get(agent, `${this.baseUrl}/metrics`)
    if (res.status !== 200) return undefined
    const match = new RegExp(`^syncline_long_polls_held\\{[^}]*source="${stream}"[^}]*\\} (\\d+)`, "m").exec(res.body.toString())
    return match === null ? undefined : Number(match[1])
  }
}

/** A bare server (scratchpad/bench/bare.mjs) in a child process of its own, answering once it says "ready". */
export const startBare = async (
  mode: string,
  args: ReadonlyArray<string> = [],
  options: { readonly nodeArgs?: ReadonlyArray<string>; readonly env?: Readonly<Record<string, string>> } = {}
): Promise<{ child: ChildService; baseUrl: string; spawnedAt: number; readyAt: number }> => {
  const port = await freePort()
  const spawnedAt = performance.now()
  const child = spawnNode(
    [...(options.nodeArgs ?? []), path.join(BENCH_DIR, "bare.mjs"), mode, String(port), ...args],
    { ...cleanEnvForBare(), ...options.env }
  )
  const baseUrl = `http://127.0.0.1:${port}`
  const readyAt = await waitActive(baseUrl, child, 30_000)
  return { child, baseUrl, spawnedAt, readyAt }
}

const cleanEnvForBare = (): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && key !== "NODE_OPTIONS") env[key] = value
  }
  return env
}

/** Preloaded into a process to make it run full GCs on SIGUSR2 (it must run with --expose-gc). */
export const GC_PROBE = pathToFileURL(path.join(BENCH_DIR, "gc-probe.mjs")).href

// ---------------------------------------------------------------------------------------------
// Postgres.

export interface Database {
  readonly postgres: RunningPostgres
  readonly pool: pg.Pool
  readonly postmasterPid: number
  readonly version: string
}

export const WRITERS = 4

export const startDatabase = async (dir: string): Promise<Database> => {
  const postgres = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    // The disk is not what is measured: no fsync. synchronous_commit stays on, so a commit has
    // reached the WAL sender when it returns (the latency figures count from there); the writers
    // of the throughput figures turn it off for their sessions (see writeTxns), and the WAL writer
    // then flushes every 10 ms rather than 200, so their commits reach the WAL sender at once.
    settings: { fsync: "off", synchronous_commit: "on", full_page_writes: "off", wal_writer_delay: "10ms" }
  })
  let stopping = false
  const pool = new pg.Pool({ connectionString: postgres.url, max: WRITERS + 4 })
  // Postgres's fast shutdown at the end terminates whatever the pool still holds; only other errors matter.
  pool.on("error", (error) => {
    if (!stopping) console.error(`idle bench connection: ${error.message}`)
  })
  onCleanup(async () => {
    stopping = true
    await pool.end()
    await postgres.stop()
  })
  const postmasterPid = Number(fs.readFileSync(path.join(dir, "data", "postmaster.pid"), "utf8").split("\n")[0])
  const version = (await pool.query<{ v: string }>("SELECT current_setting('server_version') AS v")).rows[0]!.v
  return { postgres, pool, postmasterPid, version }
}

/**
 * Commits `n` single-statement transactions over `WRITERS` connections, writer w taking k = w,
 * w + WRITERS, …; resolves with the time from the first statement to the last commit. The
 * sessions commit asynchronously (synchronous_commit off), as fast as Postgres takes them.
 */
export const writeTxns = async (
  pool: pg.Pool,
  n: number,
  statement: (client: pg.PoolClient, k: number) => Promise<unknown>
): Promise<{ startedAt: number; doneAt: number }> => {
  const clients = await Promise.all(Array.from({ length: WRITERS }, () => pool.connect()))
  try {
    for (const c of clients) await c.query("SET synchronous_commit = off")
    const startedAt = performance.now()
    await Promise.all(clients.map(async (client, w) => {
      for (let k = w; k < n; k += WRITERS) await statement(client, k)
    }))
    const doneAt = performance.now()
    for (const c of clients) await c.query("RESET synchronous_commit")
    return { startedAt, doneAt }
  } finally {
    for (const c of clients) c.release()
  }
}

/**
 * The types of pgoutput's change messages: Insert, Update, Delete, Truncate. Two decodings of the same WAL find the
 * same ones, where Relation and Type messages may differ: pgoutput sends them again whenever its cache of the table
 * is invalidated, which an autovacuum or a reset of the session's caches does at any moment.
 */
const CHANGE_MESSAGE_TYPES: ReadonlyArray<number> = [0x49, 0x55, 0x44, 0x54]

/**
 * Decodes what slot `slot` holds for `publication` with pgoutput, consuming it: the physical limit
 * of reading those transactions from the WAL.
 */
export const rawDecode = async (
  pool: pg.Pool,
  slot: string,
  publication: string
): Promise<{ commits: number; changes: number; messages: number; ms: number }> => {
  const started = performance.now()
  const { rows } = await pool.query<{ n: string; commits: string; changes: string }>(
    `SELECT count(*) AS n, count(*) FILTER (WHERE get_byte(data, 0) = 67) AS commits,
       count(*) FILTER (WHERE get_byte(data, 0) IN (${CHANGE_MESSAGE_TYPES.join(", ")})) AS changes
     FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`,
    [slot, publication]
  )
  const row = rows[0]!
  return { commits: Number(row.commits), changes: Number(row.changes), messages: Number(row.n), ms: performance.now() - started }
}

/**
 * Streams `slot` to a client that does nothing but count commits, over a replication connection with the service's
 * session settings (the walsender formats values as it does for the service). The client reads every chunk as it
 * arrives and takes it apart into whole messages (`MessageFramer`) without decoding them. Timed from START_REPLICATION
 * until the `expected`-th commit has arrived, with the CPU the walsender (the connection's own backend) used meanwhile
 * and how many reads of the socket it took. The slot is left as it was (nothing acknowledged).
 */
export const streamCommits = async (
  url: string,
  slot: string,
  publication: string,
  expected: number,
  deadlineMs: number
): Promise<{ commits: number; changes: number; messages: number; ms: number; walsenderCpuMs: number; reads: number }> => {
  const client = new pg.Client({ connectionString: url, replication: "database" } as pg.ClientConfig)
  // Until the stream is done, a broken connection fails it; afterwards, closing the socket is all that is left.
  let broken: (cause: Error) => void = () => undefined
  client.on("error", (cause) => broken(cause))
  client.on("end", () => broken(new Error(`streaming ${slot}: the connection ended`)))
  let timer: NodeJS.Timeout | undefined
  try {
    await client.connect()
    await client.query(SESSION_SETTINGS)
    // pg sends the command; the stream's messages are read here, where pg would make an object of each.
    const socket = (client as unknown as { connection: { stream: NodeJS.ReadableStream } }).connection.stream
    const walsender = (client as unknown as { processID: number }).processID
    for (const listener of socket.listeners("data")) socket.removeListener("data", listener as (chunk: Buffer) => void)
    const framer = new MessageFramer()
    let commits = 0
    let changes = 0
    let messages = 0
    let reads = 0
    return await new Promise((resolve, reject) => {
      broken = reject
      timer = setTimeout(() => reject(new Error(`streaming ${slot}: ${commits} of ${expected} commits`)), deadlineMs)
      const walsenderCpuAtStart = cpuMsOf(walsender)
      const started = performance.now()
      const onMessage = (data: Buffer, start: number, end: number): boolean => {
        const kind = data[start]
        if (kind === 0x45 /* E: ErrorResponse */) {
          reject(new Error(`streaming ${slot}: ${errorMessage(data.subarray(start + HEADER_BYTES, end))}`))
          return true
        }
        // CopyData holding XLogData: positions and time, then the pgoutput message. Keepalives and the
        // CopyBothResponse are not counted.
        if (kind !== 0x64 /* d */ || data[start + HEADER_BYTES] !== 0x77 /* w */) return false
        messages++
        const message = data[start + HEADER_BYTES + XLOG_DATA_HEADER_BYTES]!
        if (CHANGE_MESSAGE_TYPES.includes(message)) changes++
        if (message === 0x43 /* C: Commit */ && ++commits === expected) {
          const ms = performance.now() - started
          resolve({ commits, changes, messages, ms, walsenderCpuMs: cpuMsOf(walsender) - walsenderCpuAtStart, reads })
          return true
        }
        return false
      }
      socket.on("data", (chunk: Buffer) => {
        reads++
        try {
          framer.feed(chunk, onMessage)
        } catch (cause) {
          reject(cause)
        }
      })
      // Rejected when the socket is closed, after the stream was counted: nothing waits for it.
      client.query(`START_REPLICATION SLOT "${slot}" LOGICAL 0/0 (proto_version '1', publication_names '"${publication}"')`)
        .catch(() => undefined)
    })
  } finally {
    clearTimeout(timer)
    broken = () => undefined
    // Closing the socket ends the walsender too; a CopyDone would end the stream politely, which nothing here needs.
    ;(client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy()
  }
}

/**
 * What a restarted walsender reads of `slot`, in bytes of WAL: from its restart_lsn to its confirmed position it
 * decodes again and sends nothing (restart_lsn moves up only to a log of the running transactions that the slot
 * decoded and was confirmed past; Postgres writes one every 15 s or at a checkpoint); after it, what is new.
 */
export const slotBacklog = async (pool: pg.Pool, slot: string): Promise<{ readonly before: number; readonly after: number }> => {
  const { rows: [row] } = await pool.query<{ before: string; after: string }>(
    `SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn)::text AS before,
            pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS after
     FROM pg_replication_slots WHERE slot_name = $1`,
    [slot]
  )
  if (row === undefined) throw new Error(`no slot ${slot}`)
  return { before: Number(row.before), after: Number(row.after) }
}

/** The message (`M` field) of an ErrorResponse's fields, each a code byte and a NUL-ended text. */
const errorMessage = (fields: Buffer): string => {
  for (let at = 0; at < fields.length && fields[at] !== 0;) {
    const end = fields.indexOf(0, at + 1)
    if (end < 0) break
    if (fields[at] === 0x4d /* M */) return fields.toString("utf8", at + 1, end)
    at = end + 1
  }
  return "an error without a message"
}

export const dropSlot = async (pool: pg.Pool, slot: string): Promise<void> => {
  await pool.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, [slot])
}

export const slotName = (stream: string) => `electric_slot_${stream}`
export const publicationName = (stream: string) => `electric_publication_${stream}`

/** A table of `rows` rows like an app's items: id, title, n, created_at, done. */
export const createItems = async (pool: pg.Pool, table: string, rows: number): Promise<void> => {
  await pool.query(`CREATE TABLE ${table} (
    id int PRIMARY KEY, title text NOT NULL, n int NOT NULL, created_at timestamptz NOT NULL, done bool NOT NULL)`)
  await pool.query(
    `INSERT INTO ${table}
     SELECT i, 'item number ' || i, (i * 7919) % 100000, now() - i * interval '1 second', i % 3 = 0
     FROM generate_series(1, $1) i`,
    [rows]
  )
  await pool.query(`VACUUM ANALYZE ${table}`)
}

// ---------------------------------------------------------------------------------------------
// The machine.

export const machine = (): string => {
  const cpus = os.cpus()
  let distro = `${os.type()} ${os.release()}`
  try {
    const release = fs.readFileSync("/etc/os-release", "utf8")
    distro = /^PRETTY_NAME="?([^"\n]+)"?$/m.exec(release)?.[1] ?? distro
  } catch {
    // Not Linux.
  }
  return `node ${process.version}, ${cpus.length} × ${cpus[0]?.model.trim() ?? "unknown CPU"}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, ${distro}`
}

export const gitCommit = (): string => {
  try {
    const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: REPO_ROOT, encoding: "utf8" }).trim()
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "src", "layers", "main.ts", "serve.ts"], { cwd: REPO_ROOT, encoding: "utf8" }).trim()
    return dirty === "" ? commit : `${commit} (with uncommitted changes)`
  } catch {
    return "unknown"
  }
}
