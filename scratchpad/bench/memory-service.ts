import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import pg from "pg"
import { startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { type ChildService, freePort, REPO_ROOT, serviceEnv, spawnCommand, startNodeArgs } from "../../test/support/process.js"

/*
 * Shared by memory-shapes.ts and startup-restore.ts: a Postgres with a table of rows, and the
 * service as `npm start` runs it (`dist/main.js` with its node flags, run `npm run build` first) in a child
 * process, with a small JavaScript preload (no tsx in the service) that on SIGUSR2 runs full GCs
 * and appends `process.memoryUsage()` to a file, optionally with a heap snapshot. BENCH_DIST=<dir>
 * runs another build's `main.js`.
 */

export const mb = (bytes: number) => (bytes / 1024 / 1024).toFixed(1)

export interface Memory {
  readonly rss: number
  readonly heapUsed: number
  readonly heapTotal: number
  readonly external: number
  readonly arrayBuffers: number
  /** VmRSS read from /proc before any forced GC: what the process holds as it runs. */
  readonly vmRss: number
}

const PRELOAD = `
import * as fs from "node:fs"
import * as path from "node:path"
import * as v8 from "node:v8"
const target = process.env.BENCH_MEMORY_FILE
const snapshots = process.env.BENCH_HEAP_SNAPSHOT_DIR
let n = 0
if (target && globalThis.gc) {
  process.on("SIGUSR2", () => {
    for (let i = 0; i < 3; i++) globalThis.gc()
    if (snapshots) v8.writeHeapSnapshot(path.join(snapshots, process.pid + "-" + String(++n).padStart(2, "0") + ".heapsnapshot"))
    fs.appendFileSync(target, JSON.stringify({ at: Date.now(), ...process.memoryUsage() }) + "\\n")
  })
}
`

export const vmRssOf = async (pid: number): Promise<number> => {
  const status = await fs.readFile(`/proc/${pid}/status`, "utf8")
  const kb = /VmRSS:\s+(\d+) kB/.exec(status)
  return kb === null ? 0 : Number(kb[1]) * 1024
}

/** utime + stime of a process, from /proc (clock ticks of 10 ms). */
export const cpuMsOf = async (pid: number): Promise<number> => {
  const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) * 10
}

export interface Bench {
  readonly dir: string
  readonly databaseUrl: string
  readonly pool: pg.Pool
  readonly stop: () => Promise<void>
}

/** A fresh Postgres (no fsync) in a temp dir, with `table` holding ids 1..rows. */
export const startPostgres = async (table: string, rows: number): Promise<Bench> => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-bench-"))
  await fs.chmod(dir, 0o755)
  const postgres = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    settings: { fsync: "off", synchronous_commit: "on", full_page_writes: "off" }
  })
  const pool = new pg.Pool({ connectionString: postgres.url, max: 4 })
  pool.on("error", () => undefined)
  await pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY, v text NOT NULL)`)
  await pool.query(`INSERT INTO ${table} SELECT i, 'row ' || i FROM generate_series(1, $1) i`, [rows])
  return {
    dir,
    databaseUrl: postgres.url,
    pool,
    stop: async () => {
      await pool.end()
      await postgres.stop()
      await fs.rm(dir, { recursive: true, force: true })
    }
  }
}

export interface Service {
  readonly child: ChildService
  readonly baseUrl: string
  /** From spawn to the first 200 of /v1/health, in ms. */
  readonly startMs: number
  /** The CPU time (user + system) the service spent until then, in ms: what a loaded box does not inflate. */
  readonly startCpuMs: number
  readonly memory: () => Promise<Memory>
  /** SIGTERM, and waits for the exit. */
  readonly stop: () => Promise<void>
}

/** Starts `dist/main.js`, with the node flags `npm start` gives it, on `storageDir` and waits until it is active. */
export const startService = async (
  bench: Bench,
  storageDir: string,
  extraArgs: ReadonlyArray<string> = [],
  dist: string = process.env["BENCH_DIST"] ?? path.join(REPO_ROOT, "dist")
): Promise<Service> => {
  const preload = path.join(bench.dir, "memory-preload.mjs")
  await fs.writeFile(preload, PRELOAD)
  const memoryFile = path.join(bench.dir, `memory-${Date.now()}.jsonl`)
  const port = await freePort()
  const started = performance.now()
  const child = spawnCommand(
    process.execPath,
    [...startNodeArgs(), "--expose-gc", "--import", preload, ...extraArgs, path.join(path.resolve(REPO_ROOT, dist), "main.js")],
    {
      env: serviceEnv({
        databaseUrl: bench.databaseUrl,
        port,
        storageDir,
        streamId: "bench_mem",
        extra: {
          BENCH_MEMORY_FILE: memoryFile,
          ELECTRIC_LOG_LEVEL: "warning",
          ...(process.env["BENCH_HEAP_SNAPSHOT_DIR"] ? { BENCH_HEAP_SNAPSHOT_DIR: process.env["BENCH_HEAP_SNAPSHOT_DIR"] } : {})
        }
      })
    }
  )
  const baseUrl = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 120_000
  for (;;) {
    if (!child.isRunning()) throw new Error(`the service exited; output:\n${child.output()}`)
    const res = await fetch(`${baseUrl}/v1/health`).catch(() => undefined)
    if (res !== undefined) {
      await res.arrayBuffer()
      if (res.status === 200) break
    }
    if (Date.now() > deadline) throw new Error(`not active in time; output:\n${child.output()}`)
    await new Promise((r) => setTimeout(r, 10))
  }
  const startMs = performance.now() - started
  const startCpuMs = await cpuMsOf(child.pid)
  let samples = 0
  const memory = async (): Promise<Memory> => {
    await new Promise((r) => setTimeout(r, 1_000))
    const vmRss = await vmRssOf(child.pid)
    child.kill("SIGUSR2")
    const until = Date.now() + 120_000
    for (;;) {
      const lines = (await fs.readFile(memoryFile, "utf8").catch(() => "")).split("\n").filter((l) => l !== "")
      if (lines.length > samples) {
        samples = lines.length
        return { ...(JSON.parse(lines[lines.length - 1]!) as Omit<Memory, "vmRss">), vmRss }
      }
      if (Date.now() > until) throw new Error(`no memory report; output:\n${child.output()}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  return {
    child,
    baseUrl,
    startMs,
    startCpuMs,
    memory,
    stop: async () => {
      child.kill("SIGTERM")
      await Promise.race([child.exited, new Promise((r) => setTimeout(r, 30_000))])
      await child.stop()
    }
  }
}

/** Creates the shapes `where id = k` for k in `ids`, `concurrency` at a time; returns their handles, in `ids` order. */
export const createShapes = async (
  baseUrl: string,
  table: string,
  ids: ReadonlyArray<number>,
  concurrency = 16
): Promise<Array<string>> => {
  const handles: Array<string> = []
  let next = 0
  const worker = async () => {
    while (next < ids.length) {
      const i = next++
      const k = ids[i]!
      const res = await fetch(`${baseUrl}/v1/shape?table=${table}&offset=-1&where=${encodeURIComponent(`id = ${k}`)}`)
      await res.arrayBuffer()
      if (res.status !== 200) throw new Error(`shape id = ${k}: ${res.status}`)
      handles[i] = res.headers.get("electric-handle")!
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return handles
}
