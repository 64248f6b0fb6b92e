import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs/promises"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import pg from "pg"
import { startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { startNodeArgs } from "../../test/support/process.js"
import { activeStartOf, cpuMsOf, createItems } from "./harness.js"

/*
 * The replication pipeline's throughput, with the service as a child process running the compiled
 * `dist/main.js` (run `npm run build` first), each figure beside its limit measured in the same run:
 *   (c) live: 20k single-row transactions through one shape, committed by 4 writers, seen by a
 *       long-polling client; beside the writers' commit rate and raw pgoutput decoding;
 *   (d) catch-up: the service is stopped, 20k matching transactions are committed, the service
 *       starts again on the same storage and slot; timed from the moment its stack is active until the
 *       client has seen every change; beside raw decoding of the same transactions;
 *   (e) non-matching: 1,000 idle shapes, 20k non-matching transactions, live (commit rate) and
 *       in catch-up (timed from active until the slot's confirmed_flush_lsn passes the last commit).
 * `BENCH_CPU_PROF=<dir>` runs the service under `node --cpu-prof` and writes one profile per run there;
 * `BENCH_NODE_ARGS` adds node flags of its own (e.g. `--trace-gc`). CPU per transaction is printed for the whole
 * service process and for its main thread alone: the rest is its other threads, V8's compiler and garbage collector
 * and libuv's pool.
 * Run with `node --import tsx scratchpad/bench/replication-throughput.ts`.
 */

/** Where the compiled service is taken from: this checkout, or `BENCH_SERVICE_ROOT` (another build, to compare). */
const ROOT = process.env["BENCH_SERVICE_ROOT"] ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
const ROWS = Number(process.env["BENCH_ROWS"] ?? 100_000)
const LIVE_TXNS = Number(process.env["BENCH_LIVE_TXNS"] ?? 20_000)
const CATCHUP_TXNS = Number(process.env["BENCH_CATCHUP_TXNS"] ?? 20_000)
const IDLE_SHAPES = Number(process.env["BENCH_IDLE_SHAPES"] ?? 1_000)
const IDLE_TXNS = Number(process.env["BENCH_IDLE_TXNS"] ?? 20_000)
const PARTS = new Set((process.env["BENCH_PARTS"] ?? "c,d,e").split(","))
const CPU_PROF = process.env["BENCH_CPU_PROF"]
const WRITERS = 4
const TABLE = "bench_items"
const IDLE_TABLE = "bench_idle"
const STREAM = "bench"
const SLOT = `electric_slot_${STREAM}`
const PUBLICATION = `electric_publication_${STREAM}`

interface Message {
  readonly headers: Record<string, string | undefined>
}

const seconds = (ms: number) => (ms / 1000).toFixed(2)
const rate = (n: number, ms: number) => n / (ms / 1000)
const perSecond = (n: number, ms: number) => Math.round(rate(n, ms)).toLocaleString("en-US")
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
/** Phase boundaries on the monotonic clock (µs) that CPU profiles use, to cut a profile to one phase. */
const marks: Array<[string, number]> = []
const mark = (label: string) => marks.push([label, Number(process.hrtime.bigint() / 1000n)])

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))))
    })
  })

interface CpuTime {
  readonly total: number
  readonly main: number
}

/** CPU per transaction between two readings, whole process and main thread. */
const cpuPerTxnText = (before: CpuTime, after: CpuTime, txns: number): string =>
  `${(((after.total - before.total) * 1000) / txns).toFixed(1)} µs (main thread ${(((after.main - before.main) * 1000) / txns).toFixed(1)} µs)`

interface Service {
  readonly baseUrl: string
  /**
   * CPU time the service has used so far (user + system), in ms: the whole process, and its main thread (the rest
   * is V8's compiler and GC threads and libuv's pool); from /proc, so Linux only.
   */
  readonly cpuMs: () => CpuTime
  /** Milliseconds from spawn to the stack becoming active, as the service's metrics say. */
  readonly activeMs: number
  readonly spawnedAt: number
  readonly stop: () => Promise<void>
}

const startService = async (databaseUrl: string, storageDir: string): Promise<Service> => {
  const port = await freePort()
  const args = [
    ...startNodeArgs(ROOT),
    ...(CPU_PROF === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${CPU_PROF}`]),
    ...(process.env["BENCH_NODE_ARGS"]?.split(" ").filter((a) => a !== "") ?? [])
  ]
  const spawnedAt = performance.now()
  const child: ChildProcess = spawn(process.execPath, [...args, path.join(ROOT, "dist", "main.js")], {
    cwd: ROOT,
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      ELECTRIC_INSECURE: "true",
      ELECTRIC_STORAGE_DIR: storageDir,
      ELECTRIC_REPLICATION_STREAM_ID: STREAM,
      ELECTRIC_PORT: String(port),
      ELECTRIC_LONG_POLL_TIMEOUT: "5000",
      ELECTRIC_LOG_LEVEL: "warning"
    },
    stdio: ["ignore", "inherit", "inherit"]
  })
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const baseUrl = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 60_000
  for (;;) {
    const res = await fetch(`${baseUrl}/v1/health`).catch(() => undefined)
    if (res !== undefined) await res.arrayBuffer()
    if (res !== undefined && res.status === 200) break
    if (child.exitCode !== null) throw new Error("the service exited before it was active")
    if (Date.now() > deadline) throw new Error("the service did not become active")
    await sleep(10)
  }
  // Timed from the moment the stack became active as the service says (its metrics; the same system clock): busy
  // with a catch-up, it answers /v1/health later than that.
  const since = activeStartOf(await (await fetch(`${baseUrl}/metrics`)).text())
  const activeMs = Math.min(performance.now(), since ?? Infinity) - spawnedAt
  const pid = child.pid
  if (pid === undefined) throw new Error("the service has no process id")
  return {
    baseUrl,
    cpuMs: () => ({ total: cpuMsOf(pid), main: cpuMsOf(pid, pid) }),
    activeMs,
    spawnedAt,
    stop: async () => {
      child.kill("SIGTERM")
      await exited
    }
  }
}

const main = async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-repl-bench-"))
  await fs.chmod(dir, 0o755)
  const results: Array<[string, string, string, string]> = []
  const ratios: Array<[string, string]> = []
  const cpuPerTxn: Array<[string, string]> = []
  const postgres = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off" }
  })
  // The server runs with synchronous_commit=off, where WAL reaches the walsenders only when the WAL
  // writer flushes (up to 200 ms later); the writers commit synchronously so each commit is sent at
  // once, which with fsync=off costs nothing.
  const pool = new pg.Pool({ connectionString: postgres.url, max: WRITERS + 2, options: "-c synchronous_commit=on" })
  let stopping = false
  pool.on("error", (error) => {
    if (!stopping) console.error(`idle bench connection: ${error.message}`)
  })
  const storageDir = path.join(dir, "syncline")
  let service: Service | undefined
  /** Commits `n` single-row transactions over `WRITERS` connections; `k` numbers them 0..n-1. Resolves to the ms taken. */
  const write = async (n: number, statement: (client: pg.PoolClient, k: number) => Promise<unknown>): Promise<number> => {
    const started = performance.now()
    await Promise.all(
      Array.from({ length: WRITERS }, async (_, w) => {
        const client = await pool.connect()
        try {
          for (let k = w; k < n; k += WRITERS) await statement(client, k)
        } finally {
          client.release()
        }
      })
    )
    return performance.now() - started
  }
  const rawSlot = "bench_raw_decoding"
  const rawDecode = async (label: string): Promise<number> => {
    const started = performance.now()
    const { rows } = await pool.query<{ n: string; commits: string }>(
      `SELECT count(*) AS n, count(*) FILTER (WHERE get_byte(data, 0) = 67) AS commits
       FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`,
      [rawSlot, PUBLICATION]
    )
    const ms = performance.now() - started
    const commits = Number(rows[0]!.commits)
    results.push([label, `${commits.toLocaleString("en-US")} txns`, seconds(ms), `${perSecond(commits, ms)} txns/s`])
    return rate(commits, ms)
  }
  try {
    await createItems(pool, TABLE, ROWS)
    service = await startService(postgres.url, storageDir)
    const baseUrl = () => `${service!.baseUrl}/v1/shape?table=${TABLE}`
    let handle = ""
    let offset = "-1"
    const request = async (live: boolean): Promise<{ messages: Array<Message>; upToDate: boolean }> => {
      const url = `${baseUrl()}&offset=${offset}${handle === "" ? "" : `&handle=${handle}`}${live ? "&live=true" : ""}`
      const res = await fetch(url)
      const text = await res.text()
      if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${text}`)
      handle = res.headers.get("electric-handle") ?? handle
      offset = res.headers.get("electric-offset") ?? offset
      const messages = JSON.parse(text) as Array<Message>
      return { messages, upToDate: messages.some((m) => m.headers["control"] === "up-to-date") }
    }
    for (;;) if ((await request(false)).upToDate) break
    const changes = (r: { messages: Array<Message> }) => r.messages.filter((m) => m.headers["operation"] !== undefined).length

    if (PARTS.has("c") || PARTS.has("d")) {
      await pool.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [rawSlot])
      // (c) live through one shape.
      let seen = 0
      let polling = true
      const poller = (async () => {
        while (polling && seen < LIVE_TXNS) seen += changes(await request(true))
      })()
      const started = performance.now()
      const cpuBefore = service.cpuMs()
      mark("c-start")
      const writesMs = await write(LIVE_TXNS, (client, k) =>
        k % 2 === 0
          ? client.query(`INSERT INTO ${TABLE} VALUES ($1, 'live', $2, now(), false)`, [ROWS + 1 + k, k])
          : client.query(`UPDATE ${TABLE} SET n = n + 1, done = NOT done WHERE id = $1`, [1 + (k % ROWS)])
      )
      const deadline = Date.now() + 120_000
      while (seen < LIVE_TXNS && Date.now() < deadline) await sleep(2)
      const ms = performance.now() - started
      mark("c-end")
      polling = false
      if (seen < LIVE_TXNS) throw new Error(`the client saw ${seen} of ${LIVE_TXNS} changes`)
      await poller
      const cpuAfter = service.cpuMs()
      results.push(["(c) writers' commit rate", `${LIVE_TXNS} txns`, seconds(writesMs), `${perSecond(LIVE_TXNS, writesMs)} txns/s`])
      cpuPerTxn.push(["(c) service CPU per txn, live", cpuPerTxnText(cpuBefore, cpuAfter, LIVE_TXNS)])
      results.push(["(c) live: first write -> client saw all", `${seen} changes`, seconds(ms), `${perSecond(seen, ms)} txns/s (last seen ${Math.round(ms - writesMs)} ms after the last commit)`])
      const raw = await rawDecode("(c) raw pgoutput decoding")
      ratios.push(["(c) live / commit rate", (rate(seen, ms) / rate(LIVE_TXNS, writesMs)).toFixed(3)])
      ratios.push(["(c) live / raw decoding", (rate(seen, ms) / raw).toFixed(3)])
    }

    if (PARTS.has("d")) {
      // (d) catch-up through one shape after a restart.
      await service.stop()
      service = undefined
      const firstId = ROWS + 1 + LIVE_TXNS
      await write(CATCHUP_TXNS, (client, k) =>
        k % 2 === 0
          ? client.query(`INSERT INTO ${TABLE} VALUES ($1, 'caught up', $2, now(), false)`, [firstId + k, k])
          : client.query(`UPDATE ${TABLE} SET n = n + 1, done = NOT done WHERE id = $1`, [1 + (k % ROWS)])
      )
      mark("d-spawn")
      service = await startService(postgres.url, storageDir)
      const activeAt = service.spawnedAt + service.activeMs
      const cpuBefore = service.cpuMs()
      marks.push(["d-active", Number(process.hrtime.bigint() / 1000n) - Math.round((performance.now() - activeAt) * 1000)])
      mark("d-start")
      let seen = 0
      while (seen < CATCHUP_TXNS) seen += changes(await request(true))
      const ms = performance.now() - activeAt
      mark("d-end")
      cpuPerTxn.push(["(d) service CPU per txn, catch-up", cpuPerTxnText(cpuBefore, service.cpuMs(), CATCHUP_TXNS)])
      if (seen !== CATCHUP_TXNS) throw new Error(`the client saw ${seen} changes after the restart, expected ${CATCHUP_TXNS}`)
      results.push(["(d) catch-up: active -> client saw all", `${seen} changes`, seconds(ms), `${perSecond(seen, ms)} txns/s (active ${seconds(service.activeMs)} s after spawn)`])
      const raw = await rawDecode("(d) raw decoding of the catch-up txns")
      ratios.push(["(d) catch-up / raw decoding", (rate(seen, ms) / raw).toFixed(3)])
    }
    await pool.query(`SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1`, [rawSlot])

    if (PARTS.has("e")) {
      await pool.query(`CREATE TABLE ${IDLE_TABLE} (id int PRIMARY KEY, n int NOT NULL)`)
      const shapeUrl = (where: string) => `${service!.baseUrl}/v1/shape?table=${IDLE_TABLE}&where=${encodeURIComponent(where)}&offset=-1`
      let next = 0
      await Promise.all(Array.from({ length: 8 }, async () => {
        while (next < IDLE_SHAPES) {
          const k = 1_000_000 + next++
          const res = await fetch(shapeUrl(`id = ${k}`))
          await res.arrayBuffer()
          if (res.status !== 200) throw new Error(`creating idle shape ${k}: ${res.status}`)
        }
      }))
      // The marker row matches one more shape: its durable write is acknowledged at once, so the slot's
      // position shows when everything before it went through.
      const marker = await fetch(shapeUrl("id = 0"))
      await marker.arrayBuffer()
      if (marker.status !== 200) throw new Error(`creating the marker shape: ${marker.status}`)
      const commitMarker = async (id: number): Promise<string> => {
        const client = await pool.connect()
        try {
          await client.query("BEGIN")
          await client.query(`INSERT INTO ${IDLE_TABLE} VALUES ($1, 0) ON CONFLICT (id) DO UPDATE SET n = ${IDLE_TABLE}.n + 1`, [id])
          const lsn = (await client.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn")).rows[0]!.lsn
          await client.query("COMMIT")
          return lsn
        } finally {
          client.release()
        }
      }
      const slotPassed = async (lsn: string) => {
        const deadline = Date.now() + 180_000
        for (;;) {
          const { rows } = await pool.query<{ passed: boolean }>(
            `SELECT confirmed_flush_lsn >= $2::pg_lsn AS passed FROM pg_replication_slots WHERE slot_name = $1`,
            [SLOT, lsn]
          )
          if (rows[0]?.passed === true) return
          if (Date.now() > deadline) throw new Error("the slot did not pass the last commit")
          await sleep(2)
        }
      }
      // Live: the service keeps up with the writers while it runs.
      {
        await pool.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [rawSlot])
        const started = performance.now()
        const cpuBefore = service.cpuMs()
        mark("e-live-start")
        const writesMs = await write(IDLE_TXNS, (client, k) => client.query(`INSERT INTO ${IDLE_TABLE} VALUES ($1, $2)`, [1 + k, k]))
        await slotPassed(await commitMarker(0))
        const ms = performance.now() - started
        mark("e-live-end")
        cpuPerTxn.push(["(e) service CPU per txn, live", cpuPerTxnText(cpuBefore, service.cpuMs(), IDLE_TXNS)])
        results.push(["(e) writers' commit rate (non-matching)", `${IDLE_TXNS} txns`, seconds(writesMs), `${perSecond(IDLE_TXNS, writesMs)} txns/s`])
        results.push(["(e) live: first write -> slot passed", `${IDLE_TXNS} txns`, seconds(ms), `${perSecond(IDLE_TXNS, ms)} txns/s (passed ${Math.round(ms - writesMs)} ms after the last commit)`])
        const raw = await rawDecode("(e) raw decoding, live txns")
        ratios.push(["(e) live / commit rate", (rate(IDLE_TXNS, ms) / rate(IDLE_TXNS, writesMs)).toFixed(3)])
        ratios.push(["(e) live / raw decoding", (rate(IDLE_TXNS, ms) / raw).toFixed(3)])
      }
      // Catch-up after a restart.
      {
        await service.stop()
        service = undefined
        await rawDecode("(e) slot drained")
        await write(IDLE_TXNS, (client, k) => client.query(`INSERT INTO ${IDLE_TABLE} VALUES ($1, $2)`, [1 + IDLE_TXNS + k, k]))
        const lastLsn = await commitMarker(0)
        mark("e-spawn")
        service = await startService(postgres.url, storageDir)
        const activeAt = service.spawnedAt + service.activeMs
        const cpuBefore = service.cpuMs()
        mark("e-start")
        await slotPassed(lastLsn)
        const ms = performance.now() - activeAt
        mark("e-end")
        cpuPerTxn.push(["(e) service CPU per txn, catch-up", cpuPerTxnText(cpuBefore, service.cpuMs(), IDLE_TXNS)])
        results.push(["(e) catch-up: active -> slot passed", `${IDLE_TXNS} txns`, seconds(ms), `${perSecond(IDLE_TXNS, ms)} txns/s (active ${seconds(service.activeMs)} s after spawn)`])
        const raw = await rawDecode("(e) raw decoding, catch-up txns")
        ratios.push(["(e) catch-up / raw decoding", (rate(IDLE_TXNS, ms) / raw).toFixed(3)])
      }
      await pool.query(`SELECT pg_drop_replication_slot($1)`, [rawSlot])
    }
  } finally {
    stopping = true
    await service?.stop()
    await pool.end()
    await postgres.stop()
    await fs.rm(dir, { recursive: true, force: true })
  }

  const header: [string, string, string, string] = ["measurement", "volume", "seconds", "rate"]
  const widths = header.map((h, i) => Math.max(h.length, ...results.map((r) => r[i]!.length)))
  const line = (r: ReadonlyArray<string>) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ")
  console.log()
  console.log(line(header))
  console.log(widths.map((w) => "-".repeat(w)).join("  "))
  for (const r of results) console.log(line(r))
  console.log()
  for (const [label, value] of ratios) console.log(`${label.padEnd(34)} ${value}`)
  console.log()
  for (const [label, value] of cpuPerTxn) console.log(`${label.padEnd(34)} ${value}`)
  if (CPU_PROF !== undefined) await fs.writeFile(path.join(CPU_PROF, "marks.json"), JSON.stringify(Object.fromEntries(marks)))
  console.log(`\nnode ${process.version}, ${os.cpus().length} CPUs, Postgres with fsync=off, service: ${["node", ...startNodeArgs(ROOT), "dist/main.js"].join(" ")}`)
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
