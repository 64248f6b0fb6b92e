import { readdirSync, readFileSync } from "node:fs"
import * as fs from "node:fs/promises"
import { createRequire } from "node:module"
import * as os from "node:os"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import pg from "pg"
import { startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { registryFile } from "../../src/storage/ShapeDb.js"
import { type ChildService, freePort, REPO_ROOT, serviceEnv, spawnCommand, waitHealthy } from "../../test/support/process.js"

/*
 * Subquery shapes against plain shapes, in one run of a service child process:
 *
 *   bench_projects (10,100 rows): ids 1..10,000 active, 10,001..10,100 inactive (the toggle set);
 *   bench_issues (100,000 rows): outer_group = (id - 1) % 100; issues 1..99,000 belong to the
 *     active projects, issues 99,001..100,000 to the 100 toggled projects (10 each), so each
 *     outer group holds 990 rows and has 10 of the 1,000 toggled rows;
 *   bench_plain: the same rows with a column `active` standing in for "the project is active".
 *
 *   1 dependency shape   `SELECT id FROM bench_projects WHERE active` (10,000 values), read by
 *   100 outer shapes     `outer_group = k AND project_id IN (SELECT id FROM bench_projects WHERE active)`;
 *   100 plain shapes     `outer_group = k AND active` on bench_plain.
 *
 * Each round commits, one transaction each, and times commit -> rows at the client for every shape:
 *   move-in   the 100 toggled projects become active: 1,000 issues enter the outer shapes (10 each);
 *   move-out  they become inactive again: 1,000 deletes;
 *   plain in / plain out: `active` of the same 1,000 bench_plain rows flips: 1,000 inserts / deletes;
 *   updates   1,000 held rows of each table change in place (v), for the ordinary-change path.
 * "commit" is the moment the COMMIT statement returns to the writer; a shape's latency is the time
 * until its follower (a raw HTTP long-poll client) has received all 10 of its rows. A follower of
 * the dependency shape itself (same definition, so the same shape) shows when the dependency's
 * log had the change.
 *
 * Memory per dependency value: before the rounds, with nothing else loaded, the service gets in
 * turn a shape whose subquery selects no value (warms up the code paths), another such shape (the
 * fixed cost of a dependency and its reader), one whose subquery is the real dependency (10,000
 * values) and one with another 10,000-value dependency. The service runs with `--expose-gc` and
 * scratchpad/bench/memory-probe.ts, which on SIGUSR2 runs full GCs and reports
 * `process.memoryUsage()`; a 10,000-value step's difference minus the fixed cost, divided by
 * 10,000, is the figure (the heap's is the one to trust; RSS moves with what the allocator keeps).
 * The readers select no outer row (`outer_group = -1`), so what grows is the dependency's; they are
 * removed again (DELETE, integration-testing mode) before the latency rounds.
 *
 * The CPU table shows, per phase, the CPU time of the service, of every Postgres process and of
 * this process from BEGIN until the last shape had its rows (from /proc, 10 ms ticks): beside the
 * wall time it tells whether the service was busy or waiting. With BENCH_CPU_PROFILE the phases'
 * spans on the monotonic clock are written to <dir>/phases.json, to slice the profile by phase.
 *
 * Run with `npm run bench:subqueries` (or `node --import tsx scratchpad/bench/subqueries.ts`);
 * BENCH_ROUNDS (default 3) sets the number of rounds; BENCH_CPU_PROFILE=<dir> writes a CPU profile
 * of the service (`node --cpu-prof`) to <dir> when it stops; BENCH_STORAGE_PARENT=<dir> puts the
 * service's storage there (e.g. /dev/shm, where fsync costs nothing) instead of beside Postgres;
 * BENCH_HEAP_SNAPSHOT_DIR=<dir> makes the service write a heap snapshot at each memory reading.
 */

const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 3)
/** A directory: the service runs with `--cpu-prof` and writes its profile there when it stops. */
const PROFILE_DIR = process.env["BENCH_CPU_PROFILE"]
/** Where the service keeps its storage (default: beside the bench's Postgres); e.g. /dev/shm to take the disk's syncs out. */
const STORAGE_PARENT = process.env["BENCH_STORAGE_PARENT"]
const GROUPS = 100
const VALUES = 10_000
const ISSUES = 100_000
const MOVED = 1_000
const PER_PROJECT = 10
const MOVED_PROJECTS = MOVED / PER_PROJECT
const FIRST_MOVED_ISSUE = ISSUES - MOVED + 1
const STREAM = "bench_subq"
const LONG_POLL_MS = 20_000
const PHASE_TIMEOUT_MS = 60_000
const SETTLE_MS = 300
const DEPENDENCY = "SELECT id FROM bench_projects WHERE active"

const outerWhere = (k: number) => `outer_group = ${k} AND project_id IN (${DEPENDENCY})`
const plainWhere = (k: number) => `outer_group = ${k} AND active`

interface Message {
  readonly headers: { readonly operation?: string; readonly control?: string }
  readonly key?: string
  readonly value?: Record<string, string | null>
}

type Operation = "insert" | "update" | "delete"

/** What a follower is waiting for in the current phase: these row ids, each with this operation. */
interface Expectation {
  readonly op: Operation
  readonly pending: Set<number>
  readonly resolve: (at: number) => void
}

const idOf = (m: Message): number => {
  const fromValue = m.value?.["id"]
  if (fromValue !== undefined && fromValue !== null) return Number(fromValue)
  const match = /"(\d+)"$/.exec(m.key ?? "")
  return match === null ? NaN : Number(match[1])
}

/**
 * A strict raw-HTTP follower of one shape: initial sync from -1, then long-polls. An insert of a
 * held row, or an update or delete of a row it does not hold, is recorded as an error, and so is
 * any change the current phase did not announce.
 */
class Follower {
  readonly rows = new Map<string, Record<string, string | null>>()
  readonly errors: Array<string> = []
  private handle = ""
  private offset = "-1"
  private cursor = ""
  private expectation: Expectation | undefined
  private readonly abort = new AbortController()
  private loop: Promise<void> | undefined

  constructor(readonly name: string, private readonly base: () => string, private readonly params: string) {}

  /** Reads the shape until up-to-date. */
  async sync(): Promise<void> {
    for (;;) {
      if ((await this.request(false)).upToDate) return
    }
  }

  /** Starts long-polling. */
  follow(): void {
    this.loop = (async () => {
      while (!this.abort.signal.aborted) {
        try {
          await this.request(true)
        } catch (error) {
          if (this.abort.signal.aborted) return
          this.errors.push(`request failed: ${(error as Error).message}`)
          await new Promise((r) => setTimeout(r, 100))
        }
      }
    })()
  }

  async stop(): Promise<void> {
    this.abort.abort()
    await this.loop
  }

  /** Resolves with the time the last of `ids` arrived with `op`. */
  expect(op: Operation, ids: ReadonlyArray<number>): Promise<number> {
    return new Promise((resolve) => {
      this.expectation = { op, pending: new Set(ids), resolve }
    })
  }

  /** How many rows of the current expectation have not arrived. */
  waiting(): number {
    return this.expectation?.pending.size ?? 0
  }

  get shapeHandle(): string {
    return this.handle
  }

  ids(): Set<number> {
    return new Set([...this.rows.values()].map((v) => Number(v["id"])))
  }

  private async request(live: boolean): Promise<{ upToDate: boolean }> {
    const url = `${this.base()}/v1/shape?${this.params}&offset=${this.offset}${this.handle === "" ? "" : `&handle=${this.handle}`}${
      live ? `&live=true${this.cursor === "" ? "" : `&cursor=${this.cursor}`}` : ""
    }`
    const res = await fetch(url, { signal: this.abort.signal })
    const text = await res.text()
    const at = performance.now()
    if (res.status !== 200) {
      if (res.status === 204) return { upToDate: true }
      throw new Error(`${this.name}: GET ${url}: ${res.status} ${text}`)
    }
    this.handle = res.headers.get("electric-handle") ?? this.handle
    this.offset = res.headers.get("electric-offset") ?? this.offset
    this.cursor = res.headers.get("electric-cursor") ?? this.cursor
    const messages = JSON.parse(text) as Array<Message>
    let upToDate = false
    for (const m of messages) {
      if (m.headers.control === "up-to-date") upToDate = true
      const op = m.headers.operation as Operation | undefined
      if (op === undefined || m.key === undefined) continue
      this.apply(op, m, live, at)
    }
    return { upToDate }
  }

  private apply(op: Operation, m: Message, live: boolean, at: number): void {
    const key = m.key!
    const held = this.rows.get(key)
    if (op === "insert") {
      if (held !== undefined) this.errors.push(`${this.name}: insert of held row ${key}`)
      this.rows.set(key, { ...m.value })
    } else if (held === undefined) {
      this.errors.push(`${this.name}: ${op} of a row not held: ${key}`)
    } else if (op === "update") {
      this.rows.set(key, { ...held, ...m.value })
    } else {
      this.rows.delete(key)
    }
    if (!live) return
    const id = idOf(m)
    const e = this.expectation
    if (e === undefined || e.op !== op || !e.pending.delete(id)) {
      this.errors.push(`${this.name}: unexpected ${op} of ${key}`)
      return
    }
    if (e.pending.size === 0) {
      this.expectation = undefined
      e.resolve(at)
    }
  }
}

const TICK_MS = 10

/** CPU time (user + system) of one process, in ms; 0 once it is gone. */
const processCpuMs = (pid: number): number => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) * TICK_MS
  } catch {
    return 0
  }
}

/** CPU time of a postmaster and its children (backends, WAL sender, background workers), in ms. */
const postgresCpuMs = (postmaster: number): number => {
  let total = processCpuMs(postmaster)
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8")
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === postmaster) total += processCpuMs(Number(entry))
    } catch {
      // Gone while we looked.
    }
  }
  return total
}

/** Nearest-rank percentile of ascending `sorted`. */
const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!

const ms = (n: number) => n.toFixed(1)
const mb = (bytes: number) => (bytes / 1024 / 1024).toFixed(1)

interface Memory {
  readonly rss: number
  readonly heapUsed: number
  readonly heapTotal: number
  readonly external: number
  readonly arrayBuffers: number
}

interface Registry {
  prepare(sql: string): { all(): Array<Record<string, unknown>>; get(): Record<string, unknown> | undefined }
  close(): void
}

const main = async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-bench-"))
  // As root the embedded Postgres runs as another user, which must be able to enter the directory.
  await fs.chmod(dir, 0o755)
  const postgres = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    // The disk is not what is measured: no fsync, like the test cluster. But synchronous_commit stays
    // on: with it off, a commit reaches the WAL senders only when the WAL writer next flushes (up to
    // wal_writer_delay, 200 ms, later), which would be part of every latency below.
    settings: { fsync: "off", synchronous_commit: "on", full_page_writes: "off" }
  })
  const pool = new pg.Pool({ connectionString: postgres.url, max: 4 })
  let stopping = false
  pool.on("error", (error) => {
    if (!stopping) console.error(`idle bench connection: ${error.message}`)
  })
  const storageDir = STORAGE_PARENT === undefined ? path.join(dir, "syncline") : await fs.mkdtemp(path.join(STORAGE_PARENT, "syncline-bench-"))
  const memoryFile = path.join(dir, "memory.jsonl")
  let child: ChildService | undefined
  const followers: Array<Follower> = []
  const anomalies: Array<string> = []
  const results: Array<Array<string>> = []
  const memoryRows: Array<Array<string>> = []
  const cpuRows: Array<Array<string>> = []
  const started = performance.now()
  try {
    await pool.query(`CREATE TABLE bench_projects (id int PRIMARY KEY, active bool NOT NULL)`)
    await pool.query(`CREATE TABLE bench_issues (id int PRIMARY KEY, project_id int NOT NULL, outer_group int NOT NULL, v text NOT NULL)`)
    await pool.query(`CREATE TABLE bench_plain (id int PRIMARY KEY, project_id int NOT NULL, outer_group int NOT NULL, v text NOT NULL, active bool NOT NULL)`)
    await pool.query(`INSERT INTO bench_projects SELECT i, i <= $1 FROM generate_series(1, $2) i`, [VALUES, VALUES + MOVED_PROJECTS])
    await pool.query(
      `INSERT INTO bench_issues
       SELECT i, CASE WHEN i < $2 THEN 1 + (i - 1) % $1 ELSE $1 + 1 + (i - $2) / $3 END, (i - 1) % $4, 'issue ' || i
       FROM generate_series(1, $5) i`,
      [VALUES, FIRST_MOVED_ISSUE, PER_PROJECT, GROUPS, ISSUES]
    )
    await pool.query(`INSERT INTO bench_plain SELECT id, project_id, outer_group, v, id < $1 FROM bench_issues`, [FIRST_MOVED_ISSUE])
    // A move asks for the rows whose project_id moved; like any foreign key in an application, it is indexed.
    await pool.query(`CREATE INDEX ON bench_issues (project_id)`)
    await pool.query(`VACUUM ANALYZE bench_projects, bench_issues, bench_plain`)
    {
      const { rows } = await pool.query<{ n: string }>(
        `SELECT count(*) AS n FROM bench_issues i JOIN bench_projects p ON p.id = i.project_id WHERE NOT p.active`
      )
      if (Number(rows[0]!.n) !== MOVED) throw new Error(`the toggle set owns ${rows[0]!.n} issues, expected ${MOVED}`)
    }

    // Other clusters may run on the machine: only this one's processes count.
    const postmaster = Number((await fs.readFile(path.join(dir, "data", "postmaster.pid"), "utf8")).split("\n")[0])

    // The service as a child process: its memory is its own.
    const port = await freePort()
    const loader = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href
    const probe = pathToFileURL(path.join(REPO_ROOT, "scratchpad", "bench", "memory-probe.ts")).href
    child = spawnCommand(
      process.execPath,
      [
        "--expose-gc",
        ...(PROFILE_DIR === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${path.resolve(PROFILE_DIR)}`]),
        "--import",
        loader,
        "--import",
        probe,
        path.join(REPO_ROOT, "main.ts")
      ],
      {
        env: serviceEnv({
          databaseUrl: postgres.url,
          port,
          storageDir,
          streamId: STREAM,
          extra: { ELECTRIC_LONG_POLL_TIMEOUT: String(LONG_POLL_MS), BENCH_MEMORY_FILE: memoryFile }
        })
      }
    )
    const baseUrl = `http://127.0.0.1:${port}`
    await waitHealthy(baseUrl, 60_000, child)
    const service = child

    let samples = 0
    const memory = async (): Promise<Memory> => {
      // Whatever the last step left in flight (snapshots, responses) settles first.
      await new Promise((r) => setTimeout(r, 1_000))
      service.kill("SIGUSR2")
      // A heap snapshot (BENCH_HEAP_SNAPSHOT_DIR) takes a while.
      const deadline = Date.now() + 120_000
      for (;;) {
        const lines = (await fs.readFile(memoryFile, "utf8").catch(() => "")).split("\n").filter((l) => l !== "")
        if (lines.length > samples) {
          samples = lines.length
          return JSON.parse(lines[lines.length - 1]!) as Memory
        }
        if (Date.now() > deadline) throw new Error(`no memory report from the service; output:\n${service.output()}`)
        await new Promise((r) => setTimeout(r, 20))
      }
    }
    const readShape = async (params: string): Promise<{ handle: string; rows: number }> => {
      const f = new Follower(params, () => baseUrl, params)
      await f.sync()
      if (f.errors.length > 0) throw new Error(f.errors.join("\n"))
      return { handle: f.shapeHandle, rows: f.rows.size }
    }
    const probeParams = (subquery: string) =>
      `table=bench_issues&where=${encodeURIComponent(`outer_group = -1 AND project_id IN (${subquery})`)}`

    // Memory: no shapes; a dependency with no value (warms up the code paths); another one (the fixed
    // cost of a dependency and its reader); the real dependency; another 10,000-value one.
    const m0 = await memory()
    const warm = await readShape(probeParams("SELECT id FROM bench_projects WHERE active AND id < 0"))
    const m1 = await memory()
    const empty = await readShape(probeParams("SELECT id FROM bench_projects WHERE active AND id < -1"))
    const m2 = await memory()
    const real = await readShape(probeParams(DEPENDENCY))
    const m3 = await memory()
    const second = await readShape(probeParams(`SELECT id FROM bench_projects WHERE id <= ${VALUES}`))
    const m4 = await memory()
    const probes = [warm, empty, real, second]
    for (const probeShape of probes) {
      if (probeShape.rows !== 0) anomalies.push(`a memory probe shape holds ${probeShape.rows} rows, expected 0`)
    }
    const kb = (bytes: number) => `${(bytes / 1024).toFixed(0)} kB`
    const fixedHeap = m2.heapUsed - m1.heapUsed
    const fixedRss = m2.rss - m1.rss
    const memoryRow = (label: string, from: Memory, to: Memory, values = 0) => {
      const dHeap = to.heapUsed - from.heapUsed
      const dRss = to.rss - from.rss
      const per = (d: number, fixed: number) => `${Math.round((d - fixed) / values)} B`
      memoryRows.push([
        label,
        `${mb(to.heapUsed)} MB`,
        `${mb(to.rss)} MB`,
        from === to ? "" : kb(dHeap),
        from === to ? "" : kb(dRss),
        from === to ? "" : kb(to.external - from.external),
        values === 0 ? "" : `${per(dHeap, fixedHeap)} heap, ${per(dRss, fixedRss)} RSS`
      ])
    }
    memoryRow("service up, no shapes", m0, m0)
    memoryRow("+ reader of a 0-value dependency (warm-up)", m0, m1)
    memoryRow("+ reader of another 0-value dependency (fixed cost)", m1, m2)
    memoryRow(`+ reader of the ${VALUES.toLocaleString("en-US")}-value dependency`, m2, m3, VALUES)
    memoryRow(`+ reader of another ${VALUES.toLocaleString("en-US")}-value dependency`, m3, m4, VALUES)
    for (const probeShape of probes) {
      const res = await fetch(`${baseUrl}/v1/shape?handle=${probeShape.handle}`, { method: "DELETE" })
      await res.arrayBuffer()
      if (res.status !== 202) anomalies.push(`DELETE of memory probe shape ${probeShape.handle}: ${res.status}`)
    }

    // The followed shapes.
    const outer = Array.from({ length: GROUPS }, (_, k) =>
      new Follower(`outer ${k}`, () => baseUrl, `table=bench_issues&where=${encodeURIComponent(outerWhere(k))}`))
    const plain = Array.from({ length: GROUPS }, (_, k) =>
      new Follower(`plain ${k}`, () => baseUrl, `table=bench_plain&where=${encodeURIComponent(plainWhere(k))}`))
    const dependency = new Follower("dependency", () => baseUrl, `table=bench_projects&where=active&columns=id&replica=full`)
    followers.push(...outer, ...plain, dependency)
    const beforeShapes = await memory()
    const syncStarted = performance.now()
    {
      let next = 0
      const queue = [...outer, ...plain]
      await Promise.all(Array.from({ length: 4 }, async () => {
        while (next < queue.length) await queue[next++]!.sync()
      }))
      await dependency.sync()
    }
    const syncMs = performance.now() - syncStarted
    const heldPerShape = ISSUES / GROUPS - MOVED / GROUPS
    for (const f of [...outer, ...plain]) {
      if (f.rows.size !== heldPerShape) anomalies.push(`${f.name} holds ${f.rows.size} rows after its initial sync, expected ${heldPerShape}`)
    }
    if (dependency.rows.size !== VALUES) anomalies.push(`the dependency follower holds ${dependency.rows.size} rows, expected ${VALUES}`)
    for (const f of followers) f.follow()
    const afterShapes = await memory()

    // Every shape's ids of the toggled rows, and of the rows the in-place updates touch.
    // (FIRST_MOVED_ISSUE - 1) is a multiple of GROUPS, so the toggled issue FIRST_MOVED_ISSUE + k is in group k.
    const movedIds = (k: number) => Array.from({ length: MOVED / GROUPS }, (_, j) => FIRST_MOVED_ISSUE + k + j * GROUPS)
    const updatedIds = (k: number) => Array.from({ length: MOVED / GROUPS }, (_, j) => 1 + k + j * GROUPS)
    const toggledProjects = Array.from({ length: MOVED_PROJECTS }, (_, i) => VALUES + 1 + i)

    interface Phase {
      readonly label: string
      readonly statement: string
      readonly shapes: ReadonlyArray<Follower>
      readonly op: Operation
      readonly ids: (k: number) => ReadonlyArray<number>
      readonly dependencyOp?: Operation
    }
    const phases: ReadonlyArray<Phase> = [
      { label: "subquery move-in", statement: `UPDATE bench_projects SET active = true WHERE id > ${VALUES}`, shapes: outer, op: "insert", ids: movedIds, dependencyOp: "insert" },
      { label: "subquery move-out", statement: `UPDATE bench_projects SET active = false WHERE id > ${VALUES}`, shapes: outer, op: "delete", ids: movedIds, dependencyOp: "delete" },
      { label: "plain move-in", statement: `UPDATE bench_plain SET active = true WHERE id >= ${FIRST_MOVED_ISSUE}`, shapes: plain, op: "insert", ids: movedIds },
      { label: "plain move-out", statement: `UPDATE bench_plain SET active = false WHERE id >= ${FIRST_MOVED_ISSUE}`, shapes: plain, op: "delete", ids: movedIds },
      { label: "subquery shapes, in-place update", statement: `UPDATE bench_issues SET v = v || '+' WHERE id <= ${MOVED}`, shapes: outer, op: "update", ids: updatedIds },
      { label: "plain shapes, in-place update", statement: `UPDATE bench_plain SET v = v || '+' WHERE id <= ${MOVED}`, shapes: plain, op: "update", ids: updatedIds }
    ]
    const perShape = new Map<string, Array<number>>()
    const allDelivered = new Map<string, Array<number>>()
    const dependencyLatency = new Map<string, Array<number>>()
    const firstRound = new Map<string, { p50: number; max: number }>()
    /** CPU ms from just before BEGIN until every shape had its rows, summed over the rounds. */
    const cpu = new Map<string, { service: number; postgres: number; bench: number }>()
    /** Each phase's span on the monotonic clock the profile's timestamps use (µs), for slicing the profile. */
    const windows: Array<{ phase: string; round: number; fromUs: string; toUs: string }> = []
    const loadBefore = os.loadavg()[0]!
    const writer = await pool.connect()
    try {
      for (let round = 0; round < ROUNDS; round++) {
        for (const phase of phases) {
          const waits = phase.shapes.map((f, k) => f.expect(phase.op, phase.ids(k)))
          const depWait = phase.dependencyOp === undefined ? undefined : dependency.expect(phase.dependencyOp, toggledProjects)
          const windowStart = process.hrtime.bigint() / 1000n
          const cpuBefore = { service: processCpuMs(service.pid), postgres: postgresCpuMs(postmaster), bench: process.cpuUsage() }
          await writer.query("BEGIN")
          await writer.query(phase.statement)
          await writer.query("COMMIT")
          const committed = performance.now()
          const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), PHASE_TIMEOUT_MS).unref())
          const done = await Promise.race([Promise.all(waits), timeout])
          if (done === "timeout") {
            const missing = phase.shapes.filter((f) => f.waiting() > 0).map((f) => `${f.name} (${f.waiting()} rows missing)`)
            throw new Error(
              `${phase.label}, round ${round + 1}: ${missing.length} shapes lack rows after ${PHASE_TIMEOUT_MS} ms: ${missing.slice(0, 10).join(", ")}; errors:\n${
                followers.flatMap((f) => f.errors).slice(0, 20).join("\n")
              }`
            )
          }
          const bench = process.cpuUsage(cpuBefore.bench)
          windows.push({ phase: phase.label, round: round + 1, fromUs: String(windowStart), toUs: String(process.hrtime.bigint() / 1000n) })
          const used = cpu.get(phase.label) ?? { service: 0, postgres: 0, bench: 0 }
          cpu.set(phase.label, {
            service: used.service + processCpuMs(service.pid) - cpuBefore.service,
            postgres: used.postgres + postgresCpuMs(postmaster) - cpuBefore.postgres,
            bench: used.bench + (bench.user + bench.system) / 1000
          })
          const latencies = done.map((at) => Math.max(0, at - committed)).sort((a, b) => a - b)
          perShape.set(phase.label, [...(perShape.get(phase.label) ?? []), ...latencies])
          allDelivered.set(phase.label, [...(allDelivered.get(phase.label) ?? []), latencies[latencies.length - 1]!])
          if (round === 0) firstRound.set(phase.label, { p50: percentile(latencies, 50), max: latencies[latencies.length - 1]! })
          if (depWait !== undefined) {
            const at = await Promise.race([depWait, timeout])
            if (at === "timeout") throw new Error(`${phase.label}: the dependency follower did not see the toggle`)
            dependencyLatency.set(phase.label, [...(dependencyLatency.get(phase.label) ?? []), Math.max(0, at - committed)])
          }
          // Nothing else may arrive: a late duplicate or stray change shows up as a follower error.
          await new Promise((r) => setTimeout(r, SETTLE_MS))
        }
      }
    } finally {
      writer.release()
    }
    const loadAfter = os.loadavg()[0]!
    const afterRounds = await memory()
    if (PROFILE_DIR !== undefined) await fs.writeFile(path.join(PROFILE_DIR, "phases.json"), JSON.stringify(windows, null, 1))

    // Every shape must equal Postgres.
    for (const [k, f] of outer.entries()) {
      const { rows } = await pool.query<{ id: number }>(`SELECT id FROM bench_issues WHERE ${outerWhere(k)}`)
      const ids = f.ids()
      if (rows.length !== ids.size || rows.some((r) => !ids.has(r.id))) anomalies.push(`${f.name}: ${ids.size} rows at the client, ${rows.length} in Postgres, or different ids`)
    }
    for (const [k, f] of plain.entries()) {
      const { rows } = await pool.query<{ id: number }>(`SELECT id FROM bench_plain WHERE ${plainWhere(k)}`)
      const ids = f.ids()
      if (rows.length !== ids.size || rows.some((r) => !ids.has(r.id))) anomalies.push(`${f.name}: ${ids.size} rows at the client, ${rows.length} in Postgres, or different ids`)
    }
    for (const f of followers) anomalies.push(...f.errors)

    // Shared dependency: the registry should list one dependency for the 100 readers.
    let registry = ""
    try {
      const Database = createRequire(import.meta.url)("better-sqlite3") as new (file: string, options: { readonly: boolean }) => Registry
      const db = new Database(registryFile(storageDir), { readonly: true })
      try {
        const shapes = Number(db.prepare(`SELECT count(*) AS n FROM shapes`).get()?.["n"])
        const edges = db.prepare(`SELECT dependency, count(*) AS readers FROM shape_dependencies GROUP BY dependency`).all()
        registry = `${shapes} shapes in the registry; dependencies: ${edges.map((e) => `${String(e["dependency"])} (${String(e["readers"])} readers)`).join(", ")}`
        if (edges.length !== 1 || Number(edges[0]!["readers"]) !== GROUPS) anomalies.push(`expected one dependency with ${GROUPS} readers: ${registry}`)
      } finally {
        db.close()
      }
    } catch (error) {
      registry = `registry not readable: ${(error as Error).message}`
    }

    for (const phase of phases) {
      const all = perShape.get(phase.label)!
      const sorted = [...all].sort((a, b) => a - b)
      const whole = allDelivered.get(phase.label)!
      const first = firstRound.get(phase.label)!
      const dep = dependencyLatency.get(phase.label)
      const used = cpu.get(phase.label)!
      const wall = whole.reduce((a, b) => a + b, 0) / whole.length
      cpuRows.push([phase.label, ms(wall), ms(used.service / ROUNDS), ms(used.postgres / ROUNDS), ms(used.bench / ROUNDS)])
      results.push([
        phase.label,
        `${MOVED.toLocaleString("en-US")} ${phase.op}s`,
        ms(percentile(sorted, 50)),
        ms(percentile(sorted, 99)),
        whole.map(ms).join(" / "),
        `${ms(first.p50)} / ${ms(first.max)}`,
        dep === undefined ? "" : dep.map(ms).join(" / ")
      ])
    }
    memoryRow(`probes removed, before the ${GROUPS * 2 + 1} followed shapes`, beforeShapes, beforeShapes)
    memoryRow(`after their initial sync (${(syncMs / 1000).toFixed(1)} s)`, beforeShapes, afterShapes)
    memoryRow(`after ${ROUNDS} rounds`, afterShapes, afterRounds)

    const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
      const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
      const line = (r: ReadonlyArray<string>) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()
      console.log(line(header))
      console.log(widths.map((w) => "-".repeat(w)).join("  "))
      for (const r of rows) console.log(line(r))
    }
    console.log(`\nLatency, commit -> rows at the client, ms (${GROUPS} shapes x ${ROUNDS} rounds; 10 rows per shape)`)
    table(
      ["phase", "change", "p50", "p99", "all 1,000 delivered, per round", "round 1 p50 / max", "dependency shape, per round"],
      results
    )
    console.log(`\nWhere the time goes: mean per round, ms (CPU from BEGIN until the last shape had its rows; ${TICK_MS} ms ticks)`)
    table(["phase", "wall, all delivered", "service CPU", "Postgres CPU", "bench CPU"], cpuRows)
    console.log(`\nService memory after full GC (heapUsed, RSS); differences against the previous step`)
    table(["step", "heap", "RSS", "heap diff", "RSS diff", "external diff", "per value, net of the fixed cost"], memoryRows)
    console.log(`\n${registry}`)
    console.log(`node ${process.version}, ${os.cpus().length} CPUs, Postgres with fsync=off, synchronous_commit=on; total ${((performance.now() - started) / 1000).toFixed(0)} s`)
    // The machine's other work competes for the same CPUs; the latencies are only comparable at a similar load.
    console.log(`load average (1 min): ${loadBefore.toFixed(2)} before the rounds, ${loadAfter.toFixed(2)} after`)
    if (anomalies.length > 0) {
      console.log(`\n${anomalies.length} anomalies:`)
      for (const a of anomalies.slice(0, 50)) console.log(`  ${a}`)
    } else {
      console.log("no anomalies: every follower saw exactly the expected changes and equals Postgres")
    }
  } finally {
    stopping = true
    await Promise.all(followers.map((f) => f.stop()))
    if (child !== undefined) {
      child.kill("SIGTERM")
      await Promise.race([child.exited, new Promise((r) => setTimeout(r, 15_000))])
      await child.stop()
      const tail = child.output().split("\n").filter((l) => /error|warn|fatal/i.test(l)).slice(-20)
      if (tail.length > 0) console.log(`\nservice log lines with error/warn:\n${tail.join("\n")}`)
    }
    await pool.end()
    await postgres.stop()
    await fs.rm(dir, { recursive: true, force: true })
    await fs.rm(storageDir, { recursive: true, force: true })
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
