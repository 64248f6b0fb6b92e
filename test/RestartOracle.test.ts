import { FastCheck as fc } from "effect"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, inject, it, onTestFailed } from "vitest"
import { DISPLAY_SETTINGS, parseClientValue } from "./support/clientValues.js"
import { envInt, OracleClient, prng, sleep } from "./support/oracle.js"
import {
  ddl,
  draw,
  type GeneratedShape,
  type Mutation,
  type ParentPick,
  burstArb,
  parentPickArb,
  planOf,
  type RestartKind,
  rowValuesArb,
  seedFor,
  type TableSpec,
  transactionArb,
  type Value
} from "./support/oracleGenerator.js"
import { freePort, serviceEnv, spawnSyncline, stopAllChildren } from "./support/process.js"
import { type Instance, restartService, waitStatus } from "./support/restarts.js"
import { asJson, difference, NO_DIFFERENCE, sameRows, type ServerRef, StrictFollower, type Tuple } from "./support/subqueryOracle.js"
import { dropReplication, tempDir, testPool } from "./support/syncline.js"

/**
 * The restart oracle (DESIGN.md "Testing", architecture.md §8.2). From one seed, fast-check
 * generates a schema of related tables, shapes over it (comparisons, AND/OR/NOT, IN lists,
 * IS NULL, LIKE, BETWEEN, `$n`, casts, `IN (SELECT …)` and `NOT IN` nested up to three levels,
 * random columns, both replica modes, `log=changes_only`), created at random moments, and
 * transactions of 1–20 mutations written by concurrent writers. The service restarts every few
 * batches — graceful, kill -9, in-process, rolling, the kind drawn from the seed — and after each
 * restart some followers resume with their handle and offset while others start again from -1.
 *
 * Each shape is followed by the official client or by the strict raw-HTTP client; a duplicate
 * insert, an update or delete of a row not held, a 409, a 5xx other than 503 with `retry-after`,
 * a new handle for an existing shape, or a skipped row version fails the run. After every batch
 * each shape must equal its query on Postgres. At every kill -9 the slot's acknowledged position
 * is checked against the durable logs, and at the end every raw follower of a shape without
 * subqueries must have received exactly the writer transactions that touched it.
 *
 * Sizes: ORACLE_SHAPES, ORACLE_BATCHES, ORACLE_TXNS_PER_BATCH, ORACLE_RESTART_EVERY,
 * ORACLE_WRITERS, ORACLE_CHUNK_BYTES (a number, or `default`); ORACLE_SEED replays a run (the
 * seed is printed). ORACLE_PROFILE=long (`npm run test:oracle`) picks the long run's sizes.
 */

const LONG = process.env["ORACLE_PROFILE"] === "long"
const SEED = envInt("ORACLE_SEED", 3)
const SHAPES = envInt("ORACLE_SHAPES", LONG ? 200 : 60)
const BATCHES = envInt("ORACLE_BATCHES", LONG ? 50 : 9)
const TXNS_PER_BATCH = envInt("ORACLE_TXNS_PER_BATCH", LONG ? 10 : 20)
const RESTART_EVERY = Math.max(1, envInt("ORACLE_RESTART_EVERY", LONG ? 3 : 1))
const WRITERS = Math.max(1, envInt("ORACLE_WRITERS", 2))
const RESTART_BATCHES = Array.from({ length: BATCHES }, (_, b) => b).filter((b) => b > 0 && b % RESTART_EVERY === 0)

const STREAM = "restart_oracle"
const SLOT = `electric_slot_${STREAM}`
const PREFIX = "ro"
const LONG_POLL_MS = 1_000
const CONVERGE_MS = 60_000
/** Rows each table starts with, by its place in the chain. */
const INITIAL_ROWS = [6, 12, 24, 30] as const
/** Parent ids no row ever has: fresh ids stay far below. */
const DANGLING = 900_000
/** Transactions in the burst a restart lands in. */
const BURST = 30

const PLAN = planOf(SEED, { shapes: SHAPES, batches: BATCHES, txnsPerBatch: TXNS_PER_BATCH, restartCount: RESTART_BATCHES.length }, PREFIX)
const CHUNK_BYTES = process.env["ORACLE_CHUNK_BYTES"] === undefined || process.env["ORACLE_CHUNK_BYTES"] === ""
  ? PLAN.chunkBytes
  : process.env["ORACLE_CHUNK_BYTES"] === "default"
  ? undefined
  : envInt("ORACLE_CHUNK_BYTES", 0)
const TABLES = PLAN.schema.tables
const tableSpec = (name: string): TableSpec => TABLES.find((t) => t.name === name)!

const replay = () =>
  `ORACLE_SEED=${SEED} ORACLE_SHAPES=${SHAPES} ORACLE_BATCHES=${BATCHES} ORACLE_TXNS_PER_BATCH=${TXNS_PER_BATCH} ` +
  `ORACLE_RESTART_EVERY=${RESTART_EVERY} ORACLE_WRITERS=${WRITERS} ORACLE_CHUNK_BYTES=${CHUNK_BYTES ?? "default"}`

// The model -----------------------------------------------------------------------------------

type ModelRow = Record<string, Value>

/**
 * What the test knows of a table. Writer `w` owns the rows whose id is `w` modulo the writer
 * count, so writers never wait on each other's row locks and each one's model is exact.
 */
interface TableModel {
  readonly spec: TableSpec
  readonly owned: ReadonlyArray<Map<number, ModelRow>>
  readonly initialOwned: ReadonlyArray<number>
  readonly nextId: Array<number>
  /** id → the sequence number of the transaction that created it (0 for the initial rows). */
  readonly born: Map<string, number>
}

const models = new Map<string, TableModel>()
/** Incremented as each writer transaction begins. */
let seq = 0
/** Writer transactions by xid: the sequence number they began at. */
const began = new Map<string, number>()
/** xids of writer transactions that wrote, recorded before COMMIT; and of those that committed. */
const written = new Set<string>()
const committed = new Set<string>()
let mutationsApplied = 0
const journal: Array<string> = []

const ownedIds = (model: TableModel, writer: number): Array<number> => [...model.owned[writer]!.keys()].sort((a, b) => a - b)

const resolveParent = (table: TableSpec, writer: number, pick: ParentPick): number | null => {
  switch (pick._tag) {
    case "Null":
      return null
    case "Dangling":
      return DANGLING + writer
    case "Existing": {
      const ids = ownedIds(models.get(table.parent!)!, writer)
      return ids.length === 0 ? null : ids[Math.floor(pick.pick * ids.length)]!
    }
  }
}

/** Whether the row `id` of `table` was created by a transaction that began after `startSeq`. */
const bornAfter = (table: string, id: string, startSeq: number): boolean => (models.get(table)!.born.get(id) ?? 0) > startSeq

const idOfKey = (key: string): string => key.slice(key.lastIndexOf("/") + 1).replace(/"/g, "")

// Writing -------------------------------------------------------------------------------------

const imagesTable = (table: string) => `${table}_images`

/**
 * Runs one generated transaction for `writer`. Every row image it writes (before and after) goes
 * into the images tables in the same transaction, so Postgres can later say which shapes it
 * touched; mutations that would touch a row twice, or empty a table, are skipped.
 */
const runTransaction = async (client: pg.Client, writer: number, mutations: ReadonlyArray<Mutation>): Promise<void> => {
  const begin = ++seq
  const touched = new Set<string>()
  const images = new Map<string, Array<ModelRow>>()
  const done: Array<string> = []
  let ord = 0
  /** Records a row image: before or after the transaction's `ord`-th write. */
  const image = (table: string, row: ModelRow, side: "before" | "after") => {
    const list = images.get(table) ?? []
    list.push({ ...row, seq: begin, ord, side })
    images.set(table, list)
  }
  await client.query("BEGIN")
  try {
    for (const m of mutations) {
      const model = models.get(TABLES[m.table]!.name)!
      const { spec } = model
      const rows = model.owned[writer]!
      if (m._tag === "Insert") {
        const id = model.nextId[writer]!
        model.nextId[writer] = id + WRITERS
        const row: ModelRow = { id, ...(spec.parent === undefined ? {} : { parent_id: resolveParent(spec, writer, m.parent) }), ...m.values, v: 0 }
        const columns = spec.columns.map((c) => c.name)
        await client.query(
          `INSERT INTO ${spec.name} (${columns.join(", ")}) VALUES (${columns.map((_, i) => `$${i + 1}`).join(", ")})`,
          columns.map((c) => row[c])
        )
        rows.set(id, row)
        model.born.set(String(id), begin)
        touched.add(`${spec.name}/${id}`)
        image(spec.name, row, "after")
        ord++
        done.push(`insert ${spec.name} ${JSON.stringify(row)}`)
        continue
      }
      const ids = ownedIds(model, writer)
      const id = ids[Math.floor(m.target * ids.length)]
      if (id === undefined || touched.has(`${spec.name}/${id}`)) continue
      const before = rows.get(id)!
      if (m._tag === "Delete") {
        if (ids.length <= Math.ceil(model.initialOwned[writer]! / 2)) continue
        await client.query(`DELETE FROM ${spec.name} WHERE id = $1`, [id])
        rows.delete(id)
        touched.add(`${spec.name}/${id}`)
        image(spec.name, before, "before")
        ord++
        done.push(`delete ${spec.name} ${id}`)
        continue
      }
      if (m._tag === "Rekey") {
        const fresh = model.nextId[writer]!
        model.nextId[writer] = fresh + WRITERS
        await client.query(`UPDATE ${spec.name} SET id = $2, v = v + 1 WHERE id = $1`, [id, fresh])
        const after = { ...before, id: fresh, v: (before["v"] as number) + 1 }
        rows.delete(id)
        rows.set(fresh, after)
        model.born.set(String(fresh), begin)
        touched.add(`${spec.name}/${id}`).add(`${spec.name}/${fresh}`)
        image(spec.name, before, "before")
        image(spec.name, after, "after")
        ord++
        done.push(`rekey ${spec.name} ${id} -> ${fresh}`)
        continue
      }
      let set: Record<string, Value>
      switch (m._tag) {
        case "Update":
          set = m.values
          break
        case "Toggle": {
          // NOT NULL flags flip; a nullable one cycles NULL → true → false → NULL.
          const old = before[m.column]
          set = { [m.column]: old === null ? true : old === false && spec.columns.find((c) => c.name === m.column)!.nullable ? null : !old }
          break
        }
        case "Reparent":
          set = { parent_id: resolveParent(spec, writer, m.parent) }
          break
      }
      const names = Object.keys(set)
      await client.query(
        `UPDATE ${spec.name} SET ${names.map((n, i) => `${n} = $${i + 2}`).join(", ")}, v = v + 1 WHERE id = $1`,
        [id, ...names.map((n) => set[n])]
      )
      const after = { ...before, ...set, v: (before["v"] as number) + 1 }
      rows.set(id, after)
      touched.add(`${spec.name}/${id}`)
      image(spec.name, before, "before")
      image(spec.name, after, "after")
      ord++
      done.push(`${m._tag.toLowerCase()} ${spec.name} ${id} ${JSON.stringify(set)}`)
    }
    if (images.size > 0) {
      const tables = [...images.keys()]
      const { rows: [{ xid }] } = await client.query<{ xid: string }>(
        `WITH ${
          tables.map((t, i) =>
            `i${i} AS (INSERT INTO ${imagesTable(t)} SELECT pg_current_xact_id()::xid::text, r.seq, r.ord, r.side, ${
              tableSpec(t).columns.map((c) => `r.${c.name}`).join(", ")
            } FROM json_populate_recordset(null::${imagesTable(t)}, $${i + 1}) r)`
          ).join(", ")
        } SELECT pg_current_xact_id()::xid::text AS xid`,
        tables.map((t) => JSON.stringify(images.get(t)))
      )
      began.set(xid, begin)
      written.add(xid)
      await client.query("COMMIT")
      committed.add(xid)
      journal.push(`txn ${begin} (xid ${xid}, writer ${writer}): ${done.join("; ")}`)
    } else {
      await client.query("COMMIT")
    }
    mutationsApplied += done.length
  } catch (error) {
    await client.query("ROLLBACK").catch(() => undefined)
    throw error
  }
}

// Followers -----------------------------------------------------------------------------------

const columnsOf = (shape: GeneratedShape): ReadonlyArray<string> =>
  shape.columns ?? tableSpec(shape.table).columns.map((c) => c.name)

/** One follower of a shape: the official client or the strict raw-HTTP client. */
class Follower {
  /** `seq` when its first response arrived: transactions begun later are all in its log. */
  startSeq: number | undefined
  readonly raw: OracleClient | undefined
  readonly official: StrictFollower | undefined
  readonly failures: Array<string> = []

  constructor(readonly shape: GeneratedShape) {
    const table = tableSpec(shape.table)
    if (shape.checker === "official") {
      this.official = new StrictFollower({
        label: shape.label,
        table: shape.table,
        ...(shape.where === undefined ? {} : { where: shape.where }),
        ...(shape.params.length === 0 ? {} : { params: shape.params }),
        columns: columnsOf(shape),
        booleans: table.columns.filter((c) => c.type === "bool").map((c) => c.name),
        ...(shape.columns === undefined ? {} : { selected: shape.columns }),
        replica: shape.replica,
        versions: shape.subqueries === 0 ? "stepByOne" : "neverBack"
      }, () => server)
    } else {
      this.raw = new OracleClient(
        {
          label: shape.label,
          ...(shape.where === undefined ? {} : { where: shape.where }),
          ...(shape.columns === undefined ? {} : { columns: shape.columns }),
          ...(shape.params.length === 0 ? {} : { params: shape.params }),
          replica: shape.replica,
          log: shape.log
        },
        shape.table,
        LONG_POLL_MS,
        this.failures,
        {
          onStart: () => {
            this.startSeq = seq
          },
          versions: shape.subqueries === 0 ? "stepByOne" : "neverBack",
          ...(shape.log === "changes_only"
            ? { unknownAllowed: (key: string) => this.startSeq !== undefined && !bornAfter(shape.table, idOfKey(key), this.startSeq) }
            : {})
        }
      )
      void this.raw.run(() => server)
    }
  }

  get allFailures(): ReadonlyArray<string> {
    return this.official?.failures ?? this.failures
  }

  get handle(): string | undefined {
    return this.official?.handle ?? this.raw?.handle
  }

  get changes(): number {
    return this.official?.changes ?? this.raw?.changes ?? 0
  }

  /** Whether the last response ended up-to-date. */
  get upToDate(): boolean {
    return this.official?.upToDate ?? this.raw!.live
  }

  /** The rows it holds, as tuples of the client's values in `columnsOf` order, ordered by id. */
  view(): Array<Tuple> {
    const columns = columnsOf(this.shape)
    if (this.official !== undefined) {
      return this.official.values().map((r) => columns.map((c) => r[c] ?? null)).sort(byId)
    }
    const types = tableSpec(this.shape.table).columns
    return this.raw!.sortedRows().map((r) =>
      columns.map((c) => parseClientValue(r[c] ?? null, { type: types.find((t) => t.name === c)!.type, dims: 0 }))
    )
  }

  /**
   * What it must hold, given the shape's query result on Postgres and, for a changes_only log, which
   * rows it must hold (true) or not (false) by the writes after it started (`sentAfterStart`); it may
   * hold any other row the query returns, as it was sent.
   */
  expected(rows: ReadonlyArray<Tuple>, sent: ReadonlyMap<string, boolean> | undefined): Array<Tuple> {
    if (this.shape.log === "full") return [...rows]
    const held = new Set(this.raw!.sortedRows().map((r) => r["id"]))
    return rows.filter((r) => sent?.get(String(r[0])) ?? held.has(String(r[0])))
  }

  /** Whether the slot's acknowledgement and the transactions it received can be checked from row images. */
  get xidChecked(): boolean {
    return this.raw !== undefined && this.shape.subqueries === 0 && (this.shape.columns === undefined || this.shape.columns.includes("v"))
  }

  stop(): void {
    this.official?.stop()
    this.raw?.stop()
  }
}

const byId = (a: Tuple, b: Tuple): number => Number(a[0]) - Number(b[0])


// The run -------------------------------------------------------------------------------------

let pool: pg.Pool
let storageDir: string
let current: Instance
let server: ServerRef = { url: "", generation: 0 }
const instances: Array<Instance> = []
const followers = new Map<string, Follower>()
const retired: Array<Follower> = []
/** The handle each shape got first: it must keep it for the whole run. */
const handles = new Map<string, string>()
const restartsDone: Record<RestartKind, number> = { graceful: 0, kill9: 0, admin: 0, rolling: 0 }

const spawnInstance = async (): Promise<Instance> => {
  const port = await freePort()
  const child = spawnSyncline({
    env: serviceEnv({
      databaseUrl: inject("databaseUrl"),
      port,
      storageDir,
      streamId: STREAM,
      extra: {
        ELECTRIC_LONG_POLL_TIMEOUT: String(LONG_POLL_MS),
        SYNCLINE_SHUTDOWN_TIMEOUT: "15000",
        ...(CHUNK_BYTES === undefined ? {} : { ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD: String(CHUNK_BYTES) })
      }
    })
  })
  const instance = { child, baseUrl: `http://127.0.0.1:${port}` }
  instances.push(instance)
  return instance
}

const switchTo = (instance: Instance) => {
  server = { url: instance.baseUrl, generation: server.generation + 1 }
}

const clientFailures = (): Array<string> => [...followers.values(), ...retired].flatMap((f) => f.allFailures)

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    const failures = clientFailures()
    if (failures.length > 0) throw new Error(`client failures while waiting for ${what}:\n${failures.join("\n")}`)
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

const follow = (shape: GeneratedShape): void => {
  followers.set(shape.label, new Follower(shape))
}

const slotState = async (): Promise<{ active: boolean; confirmedFlush: string } | undefined> => {
  const { rows } = await pool.query<{ active: boolean; confirmed_flush_lsn: string }>(
    `SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`,
    [SLOT]
  )
  return rows[0] === undefined ? undefined : { active: rows[0].active, confirmedFlush: rows[0].confirmed_flush_lsn }
}

/** The writer transactions among `xids` that touched `shape`: one of their row images (before or after) matches its `where`. */
const touching = async (shape: GeneratedShape, xids: ReadonlyArray<string>): Promise<Set<string>> => {
  const { rows } = await pool.query<{ xid: string }>(
    `SELECT DISTINCT xid FROM ${imagesTable(shape.table)} AS ${shape.table} WHERE xid = ANY($${shape.params.length + 1})${
      shape.where === undefined ? "" : ` AND (${shape.where})`
    }`,
    [...shape.params, xids]
  )
  return new Set(rows.map((r) => r.xid))
}

/**
 * For a changes_only log that started at `startSeq`: the rows whose presence the writes since then
 * decide, by replaying each row's writes in order. A write into the clause (its row before does not
 * match, after does) is sent as an insert, so the row is held; one out of it, as a delete; one that
 * stays inside is an update, which changes nothing for a row not held.
 */
const sentAfterStart = async (shape: GeneratedShape, startSeq: number): Promise<Map<string, boolean>> => {
  const where = shape.where === undefined ? "true" : `(${shape.where})`
  const { rows } = await pool.query<{ id: string; before: boolean; after: boolean }>(
    `SELECT id::text AS id, bool_or(side = 'before' AND coalesce(${where}, false)) AS before,
            bool_or(side = 'after' AND coalesce(${where}, false)) AS after
       FROM ${imagesTable(shape.table)} AS ${shape.table}
      WHERE seq > $${shape.params.length + 1}
      GROUP BY id, seq, ord ORDER BY id, seq, ord`,
    [...shape.params, startSeq]
  )
  const sent = new Map<string, boolean>()
  for (const r of rows) {
    if (!r.before && r.after) sent.set(r.id, true)
    else if (r.before && !r.after) sent.set(r.id, false)
  }
  return sent
}

/** Transactions among `xids` that began after `follower` started: all of them belong in its log. */
const after = (follower: Follower, xids: Iterable<string>): Array<string> =>
  [...xids].filter((x) => (began.get(x) ?? 0) > follower.startSeq!)

/**
 * A kill -9, and the soundness check of the ack (DESIGN.md invariant 3). On restart Postgres
 * resends only transactions whose commit record starts at or after confirmed_flush_lsn; every
 * earlier one is gone for good. So each writer transaction that committed before it must already
 * be in the durable log of every shape it touched. Holding the slot's advisory lock keeps the next
 * process read-only: it serves exactly what the killed one made durable. Followers read those logs
 * to their end through it (they continue from their own offsets, so with what they had they hold
 * the whole durable log), then the check runs.
 */
const killAndCheckAck = async (scanned: { lsn: string }): Promise<void> => {
  current.child.kill("SIGKILL")
  await current.child.exited
  await waitFor("the slot to become inactive", async () => (await slotState())?.active === false)
  const lock = new pg.Client({ connectionString: inject("databaseUrl") })
  await lock.connect()
  let locked = true
  const unlock = async () => {
    if (locked) await lock.end()
    locked = false
  }
  try {
    await waitFor("the killed process's advisory lock", async () =>
      (await lock.query<{ ok: boolean }>("SELECT pg_try_advisory_lock(hashtext($1)) AS ok", [SLOT])).rows[0]!.ok)
    const flush = (await slotState())!.confirmedFlush
    const { rows: [bounds] } = await pool.query<{ sane: boolean; advanced: boolean }>(
      "SELECT $1::pg_lsn <= pg_current_wal_lsn() AS sane, $1::pg_lsn > $2::pg_lsn AS advanced",
      [flush, scanned.lsn]
    )
    expect(bounds!.sane).toBe(true)
    if (bounds!.advanced) {
      const { rows: commits } = await pool.query<{ xid: string }>(
        `SELECT xid::text AS xid FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
         WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' AND start_lsn < $2::pg_lsn`,
        [scanned.lsn, flush]
      )
      for (const { xid } of commits) if (written.has(xid)) acked.add(xid)
      scanned.lsn = flush
    }
    const next = await spawnInstance()
    await waitStatus(next, "waiting")
    switchTo(next)
    const checked = [...followers.values()].filter((f) => f.xidChecked && f.handle !== undefined)
    await waitFor("every checked follower to read the durable logs to their end", () =>
      checked.every((f) => f.raw!.upToDateGeneration === server.generation))
    for (const f of checked) {
      const missing = [...(await touching(f.shape, after(f, acked)))].filter((xid) => !f.raw!.xids.has(xid))
      expect({ shape: f.shape.label, slotAckedUpTo: flush, missingFromDurableLog: missing }).toEqual({
        shape: f.shape.label,
        slotAckedUpTo: flush,
        missingFromDurableLog: []
      })
    }
    journal.push(`kill -9: slot acked ${flush}, ${acked.size} acked writer transactions checked in ${checked.length} logs`)
    await unlock()
    await waitStatus(next, "active")
    current = next
  } finally {
    await unlock().catch(() => undefined)
  }
}

const acked = new Set<string>()

const restart = async (kind: RestartKind, scanned: { lsn: string }): Promise<void> => {
  const started = Date.now()
  if (kind === "kill9") await killAndCheckAck(scanned)
  else current = await restartService(kind, current, spawnInstance, switchTo)
  restartsDone[kind]++
  journal.push(`restart: ${kind} took ${Date.now() - started} ms`)
}

/** Every shape's query on Postgres, in one snapshot, as the client would parse the values. */
const postgresViews = async (shapes: ReadonlyArray<GeneratedShape>): Promise<Map<string, Array<Tuple>>> => {
  const client = await pool.connect()
  try {
    for (const statement of DISPLAY_SETTINGS) await client.query(statement)
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    const views = new Map<string, Array<Tuple>>()
    for (const shape of shapes) {
      const types = tableSpec(shape.table).columns
      const columns = columnsOf(shape)
      const { rows } = await client.query<Array<string | null>>({
        text: `SELECT ${columns.map((c) => `${shape.table}.${c}::text`).join(", ")} FROM ${shape.table}${
          shape.where === undefined ? "" : ` WHERE ${shape.where}`
        } ORDER BY ${shape.table}.id`,
        values: [...shape.params],
        rowMode: "array"
      })
      views.set(
        shape.label,
        rows.map((r) => r.map((text, i) => parseClientValue(text, { type: types.find((t) => t.name === columns[i])!.type, dims: 0 })))
      )
    }
    await client.query("COMMIT")
    return views
  } finally {
    await client.query("RESET ALL").catch(() => undefined)
    client.release()
  }
}

/** The shape as a new raw client reads it from -1 to up-to-date (bounded), as `Follower.view` gives rows. */
const readFromStart = async (shape: GeneratedShape): Promise<Array<Tuple> | undefined> => {
  const reader = new Follower({ ...shape, checker: "raw" })
  try {
    const deadline = Date.now() + 15_000
    while (!reader.upToDate && reader.allFailures.length === 0 && Date.now() < deadline) await sleep(100)
    return reader.upToDate ? reader.view() : undefined
  } finally {
    reader.stop()
  }
}



/**
 * With the writers idle: waits (bounded) until every follower holds what its shape's query
 * returns on Postgres, then asserts it, and that each shape kept the handle it first had.
 */
const expectConverged = async (when: string): Promise<void> => {
  const active = [...followers.values()]
  const views = await postgresViews(active.map((f) => f.shape))
  const sent = new Map<Follower, ReadonlyMap<string, boolean>>()
  for (const f of active) if (f.shape.log === "changes_only" && f.startSeq !== undefined) sent.set(f, await sentAfterStart(f.shape, f.startSeq))
  const expected = (f: Follower) => f.expected(views.get(f.shape.label)!, sent.get(f))
  const agrees = (f: Follower) => f.upToDate && sameRows(f.view(), expected(f))
  await waitFor(`every shape to equal Postgres ${when}`, () => active.every(agrees), CONVERGE_MS).catch(() => undefined)
  // For a follower that does not agree: whether the server's log is wrong, or only this follower's view of it.
  for (const f of active.filter((f) => !agrees(f) && f.shape.log === "full")) {
    const fresh = await readFromStart(f.shape)
    journal.push(
      `${f.shape.label} disagrees ${when}: its follower is ${f.upToDate ? "" : "not "}up to date at handle ${f.handle}; ` +
        `a read from -1 now ${fresh === undefined ? "did not reach up-to-date" : `differs by ${asJson(difference(fresh, expected(f)))}`}`
    )
  }
  expect(clientFailures(), when).toEqual([])
  for (const f of active) {
    const label = `${f.shape.label} (${f.shape.table} WHERE ${f.shape.where ?? "true"} ${asJson(f.shape.params)})`
    expect({ when, shape: label, ...difference(f.view(), expected(f)) })
      .toEqual({ when, shape: label, ...NO_DIFFERENCE })
    expect({ when, shape: label, upToDate: f.upToDate }).toEqual({ when, shape: label, upToDate: true })
    const first = handles.get(f.shape.label)
    if (first === undefined) handles.set(f.shape.label, f.handle!)
    else expect({ shape: label, handle: f.handle }).toEqual({ shape: label, handle: first })
  }
}

beforeAll(async () => {
  pool = testPool()
  const names = TABLES.map((t) => t.name)
  await pool.query(`DROP TABLE IF EXISTS ${[...names, ...names.map(imagesTable)].join(", ")}`)
  for (const table of TABLES) {
    await pool.query(ddl(table))
    await pool.query(
      `CREATE TABLE ${imagesTable(table.name)} (xid text NOT NULL, seq bigint NOT NULL, ord int NOT NULL, side text NOT NULL, LIKE ${table.name})`
    )
  }
  for (const [index, spec] of TABLES.entries()) {
    const count = INITIAL_ROWS[index]!
    const owned = Array.from({ length: WRITERS }, () => new Map<number, ModelRow>())
    const nextId = Array.from({ length: WRITERS }, (_, w) => Math.ceil((count + 1) / WRITERS) * WRITERS + w)
    const model: TableModel = { spec, owned, initialOwned: [], nextId, born: new Map() }
    models.set(spec.name, model)
    const initial = draw(fc.array(fc.tuple(rowValuesArb(spec), parentPickArb), { minLength: count, maxLength: count }), seedFor(SEED, "rows", index))
    const rows = initial.map(([values, parent], i): ModelRow => {
      const id = i + 1
      const writer = id % WRITERS
      const row: ModelRow = { id, ...(spec.parent === undefined ? {} : { parent_id: resolveParent(spec, writer, parent) }), ...values, v: 0 }
      owned[writer]!.set(id, row)
      return row
    })
    ;(model.initialOwned as Array<number>).push(...owned.map((m) => m.size))
    await pool.query(`INSERT INTO ${spec.name} SELECT * FROM json_populate_recordset(null::${spec.name}, $1)`, [JSON.stringify(rows)])
  }
  // Another file may create it at the same moment; either way it exists afterwards.
  await pool.query(`CREATE EXTENSION IF NOT EXISTS pg_walinspect`).catch(() => undefined)
  await pool.query(`SELECT 'pg_get_wal_records_info'::regproc`)
  storageDir = await tempDir(STREAM)
  current = await spawnInstance()
  switchTo(current)
  await waitStatus(current, "active")
}, 120_000)

afterAll(async () => {
  for (const f of [...followers.values(), ...retired]) f.stop()
  await stopAllChildren()
  if (pool !== undefined) {
    await dropReplication(pool, STREAM)
    await pool.end()
  }
})

describe("restart oracle", () => {
  it(`generated shapes and transactions stay exact across generated restarts (seed ${SEED})`, {
    timeout: 120_000 + BATCHES * 30_000 + SHAPES * 1_000
  }, async () => {
    onTestFailed(() => {
      console.error(`restart oracle: replay with ${replay()}`)
      console.error(`schema:\n${TABLES.map(ddl).join("\n")}`)
      console.error(`last events:\n${journal.slice(-60).join("\n")}`)
      for (const i of instances.slice(-2)) console.error(`service ${i.baseUrl} output (tail):\n${i.child.output().slice(-8_000)}`)
    })
    console.log(`restart oracle: ${replay()}`)
    const { rows: [{ lsn }] } = await pool.query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")
    const scanned = { lsn }
    const writers = await Promise.all(Array.from({ length: WRITERS }, async () => {
      const client = new pg.Client({ connectionString: inject("databaseUrl") })
      await client.connect()
      return client
    }))
    try {
      let restarts = 0
      for (let batch = 0; batch < BATCHES; batch++) {
        const started = Date.now()
        const shapes = PLAN.shapes.filter((s) => s.batch === batch)
        for (const s of shapes.filter((s) => s.moment === "start")) follow(s)
        const kind = RESTART_BATCHES.includes(batch) ? PLAN.restarts[restarts++] : undefined
        const perWriter = (w: number) => Math.floor(TXNS_PER_BATCH / WRITERS) + (w < TXNS_PER_BATCH % WRITERS ? 1 : 0)
        // Each draw of the batch from a stream of its own, so that a replay draws the same whatever the timing.
        const restartRand = prng(seedFor(SEED, "restart", batch))
        const restartAt = kind === undefined ? -1 : Math.floor(restartRand() * perWriter(0))
        // Settled with its error, if any, so that a failed restart is reported after the batch.
        let restarting: Promise<unknown> | undefined
        /**
         * Before the first writer's transaction `t`: creations; and at `restartAt`, the shapes created just
         * before the restart, then a burst of small transactions committed back to back, with the restart
         * starting in its middle. A burst keeps several transactions in flight in the service, so the restart
         * lands while some are routed and not yet durable everywhere.
         */
        const hook = async (client: pg.Client, t: number) => {
          for (const s of shapes.filter((s) => s.moment === "during" && Math.min(s.position, perWriter(0) - 1) === t)) follow(s)
          if (t !== restartAt) return
          for (const s of shapes.filter((s) => s.moment === "beforeRestart")) follow(s)
          const burst = draw(burstArb(PLAN.schema, BURST), seedFor(SEED, "burst", batch))
          const restartAfter = Math.floor(BURST / 3 + restartRand() * (BURST / 2))
          for (const [i, mutations] of burst.entries()) {
            await runTransaction(client, 0, mutations)
            if (i === restartAfter) startRestart()
          }
        }
        const startRestart = () => {
          // Some of the shapes followed when it starts resume with their handle and offset, the others start
          // again from -1 once it is done.
          const freshRand = prng(seedFor(SEED, "fresh", batch))
          const fresh = [...followers.values()].sort((a, b) => a.shape.label.localeCompare(b.shape.label)).filter(() => freshRand() < 0.25)
          restarting = restart(kind!, scanned).then(() => {
            for (const f of fresh) {
              f.stop()
              retired.push(f)
              follow(f.shape)
            }
          }).then(() => undefined, (error: unknown) => error ?? new Error("restart failed"))
        }
        const scripts = Array.from({ length: WRITERS }, (_, w) =>
          draw(fc.array(transactionArb(PLAN.schema), { minLength: perWriter(w), maxLength: perWriter(w) }), seedFor(SEED, "writer", batch, w)))
        await Promise.all(writers.map(async (client, w) => {
          const pause = prng(seedFor(SEED, "pause", batch, w))
          for (const [t, mutations] of scripts[w]!.entries()) {
            if (w === 0) await hook(client, t)
            await runTransaction(client, w, mutations)
            await sleep(pause() * 10)
          }
        }))
        // A shape planned "before the restart" in a batch without one is created at its end.
        if (kind === undefined) for (const s of shapes.filter((s) => s.moment === "beforeRestart")) follow(s)
        const restartError = await restarting
        if (restartError !== undefined) throw restartError
        const when = `after batch ${batch}${kind === undefined ? "" : ` (${kind} restart)`}`
        await expectConverged(when)
        journal.push(`${when}: ${followers.size} shapes converged, ${Date.now() - started} ms`)
      }

      // Every raw follower of a shape without subqueries received exactly the writer transactions that touched it.
      for (const f of followers.values()) {
        if (!f.xidChecked || f.startSeq === undefined) continue
        const expected = await touching(f.shape, after(f, committed))
        const received = after(f, [...f.raw!.xids.keys()].filter((x) => written.has(x)))
        const missing = [...expected].filter((x) => !f.raw!.xids.has(x))
        const unexpected = received.filter((x) => !expected.has(x))
        expect({ shape: f.shape.label, missing, unexpected }).toEqual({ shape: f.shape.label, missing: [], unexpected: [] })
      }
    } finally {
      for (const w of writers) await w.end()
    }

    const all = [...followers.values(), ...retired]
    const count = (p: (s: GeneratedShape) => boolean) => PLAN.shapes.filter(p).length
    const summary = [
      `restart oracle seed ${SEED}: ${PLAN.shapes.length} shapes over ${TABLES.length} tables, chunks of ${CHUNK_BYTES ?? "default"} bytes`,
      `shapes: ${count((s) => s.subqueries > 0)} with subqueries (${[1, 2, 3].map((d) => `${count((s) => s.subqueries === d)} at depth ${d}`).join(", ")}), ` +
      `${count((s) => s.where === undefined)} without where, ${count((s) => s.log === "changes_only")} changes_only, ` +
      `${count((s) => s.replica === "full")} replica=full, ${count((s) => s.columns !== undefined)} with columns; ` +
      `${count((s) => s.checker === "official")} followed by the official client, ${count((s) => s.checker === "raw")} raw; ` +
      `created ${count((s) => s.moment === "start")} at a batch start, ${count((s) => s.moment === "during")} while writing, ` +
      `${count((s) => s.moment === "beforeRestart")} just before a restart`,
      `${committed.size} writer transactions, ${mutationsApplied} mutations; ${all.reduce((n, f) => n + f.changes, 0)} changes checked ` +
      `by ${all.length} followers (${retired.length} restarted from -1)`,
      `restarts: ${Object.entries(restartsDone).map(([k, n]) => `${n} ${k}`).join(", ")}`
    ]
    console.log([...summary, ...journal.filter((l) => !l.startsWith("txn"))].join("\n"))
    // Every planned restart ran to its end.
    const planned = { graceful: 0, kill9: 0, admin: 0, rolling: 0 }
    for (const k of PLAN.restarts) planned[k]++
    expect(restartsDone).toEqual(planned)
    for (const f of all) f.stop()
    current.child.kill("SIGTERM")
    expect(await current.child.exited).toEqual({ code: 0, signal: null })
  })
})
