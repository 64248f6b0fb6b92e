import pg from "pg"
import { afterAll, beforeAll, describe, expect, inject, it, onTestFailed } from "vitest"
import { OracleClient, prng, type Row, type ShapeSpec, sleep } from "./support/oracle.js"
import { freePort, serviceEnv, spawnSyncline, stopAllChildren } from "./support/process.js"
import { type Instance, restartService, waitStatus } from "./support/restarts.js"
import { dropReplication, tempDir, testPool } from "./support/syncline.js"

/**
 * The restart-aware oracle (DESIGN.md "Testing", architecture.md §8.2): 20 shapes followed by
 * strict raw-HTTP clients while 3 connections write, across 20 restarts of four kinds (graceful,
 * kill -9, in-process, rolling). Clients keep their handle and offset across every restart; any
 * 409, 400, non-503 5xx, duplicate insert, update/delete of an unknown row, skipped row version,
 * or repeated log position fails. At the end every shape must equal the same query run on
 * Postgres, and must have received exactly the writer transactions that touched it.
 */

const STREAM = "restart_oracle"
const SLOT = `electric_slot_${STREAM}`
const TABLE = "oracle_items"
/** Every row image (before and after) of every writer transaction, so Postgres can say which shapes it touched. */
const IMAGES = "oracle_item_images"
const LONG_POLL_MS = 1_000
const SEED = 20240611
const SEED_ROWS = 300
const ID_RANGE = 450
const WRITERS = 3
const ROUNDS_PER_KIND = 5
const COLUMNS = ["id", "grp", "status", "n", "note", "v"] as const
const COLUMNS_TEXT = "id::text AS id, grp::text AS grp, status, n::text AS n, note, v::text AS v"
const STATUSES = ["open", "closed", "pending", "archived"] as const

const SHAPES: ReadonlyArray<ShapeSpec> = [
  { label: "all" },
  { label: "columns", where: "n < 500", columns: ["id", "grp", "v"] },
  { label: "grp0", where: "grp = 0" },
  { label: "grp1", where: "grp = 1" },
  { label: "grp3", where: "grp = 3" },
  { label: "n-mid", where: "n BETWEEN 100 AND 400" },
  { label: "n-low", where: "n BETWEEN 0 AND 99" },
  { label: "open-closed", where: "status IN ('open', 'closed')" },
  { label: "pending", where: "status = 'pending'" },
  { label: "grp2-open", where: "grp = 2 AND status = 'open'" },
  { label: "grp4-or-high", where: "grp = 4 OR n > 900" },
  { label: "not-grp1", where: "NOT (grp = 1)" },
  { label: "note-a", where: "note LIKE 'a%'" },
  { label: "note-null", where: "note IS NULL" },
  { label: "note-grp12", where: "note IS NOT NULL AND grp IN (1, 2)" },
  { label: "live-high", where: "NOT (status = 'archived') AND n >= 500" },
  { label: "grp05-low", where: "(grp = 0 OR grp = 5) AND n < 700" },
  { label: "not-open", where: "status <> 'open'" },
  { label: "id-range", where: "id BETWEEN 50 AND 150" },
  { label: "note-no-z", where: "note NOT LIKE '%z%' AND status NOT IN ('closed')" }
]

type Kind = "graceful" | "kill9" | "admin" | "rolling"

interface Image {
  readonly xid: string
  readonly row: Row
}

let pool: pg.Pool
let storageDir: string
const failures: Array<string> = []
const clients: Array<OracleClient> = []
const instances: Array<Instance> = []
const log: Array<string> = []

const randomRow = (rand: () => number, id: number): Row => ({
  id: String(id),
  grp: String(Math.floor(rand() * 6)),
  status: STATUSES[Math.floor(rand() * STATUSES.length)]!,
  n: String(Math.floor(rand() * 1000)),
  note: rand() < 0.25
    ? null
    : Array.from({ length: 2 + Math.floor(rand() * 4) }, () => "abcxyz"[Math.floor(rand() * 6)]).join(""),
  v: "0"
})

beforeAll(async () => {
  pool = testPool()
  await pool.query(`DROP TABLE IF EXISTS ${TABLE}, ${IMAGES}`)
  await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, grp int NOT NULL, status text NOT NULL, n int NOT NULL, note text, v int NOT NULL)`)
  await pool.query(`CREATE TABLE ${IMAGES} (xid text NOT NULL, id int, grp int, status text, n int, note text, v int)`)
  const rand = prng(SEED)
  const seed = Array.from({ length: SEED_ROWS }, (_, i) => randomRow(rand, i + 1))
  await pool.query(`INSERT INTO ${TABLE} SELECT * FROM json_populate_recordset(null::${TABLE}, $1)`, [JSON.stringify(seed)])
  // Another file may create it at the same moment; either way it exists afterwards.
  await pool.query(`CREATE EXTENSION IF NOT EXISTS pg_walinspect`).catch(() => undefined)
  await pool.query(`SELECT 'pg_get_wal_records_info'::regproc`)
  storageDir = await tempDir(STREAM)
})

afterAll(async () => {
  for (const c of clients) c.stop()
  await stopAllChildren()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const spawnInstance = async (): Promise<Instance> => {
  const port = await freePort()
  const child = spawnSyncline({
    env: serviceEnv({
      databaseUrl: inject("databaseUrl"),
      port,
      storageDir,
      streamId: STREAM,
      extra: { ELECTRIC_LONG_POLL_TIMEOUT: String(LONG_POLL_MS), SYNCLINE_SHUTDOWN_TIMEOUT: "15000" }
    })
  })
  const instance = { child, baseUrl: `http://127.0.0.1:${port}` }
  instances.push(instance)
  return instance
}

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (failures.length > 0) throw new Error(`client failures while waiting for ${what}:\n${failures.join("\n")}`)
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

/**
 * One writer connection: small transactions of 1–3 statements on distinct rows (inserts, updates
 * that move rows between groups/statuses/ranges, primary-key changes, deletes), each recording
 * its xid and every row image it wrote. Images are recorded before COMMIT, so a transaction
 * that Postgres committed is always known to the test.
 */
const writer = async (
  index: number,
  stopped: () => boolean,
  images: Array<Image>,
  written: Set<string>,
  committed: Set<string>
): Promise<number> => {
  const rand = prng(SEED + 1 + index)
  const client = new pg.Client({ connectionString: inject("databaseUrl") })
  await client.connect()
  let nextKeyChange = 100_000 * (index + 1)
  let commits = 0
  try {
    while (!stopped()) {
      const count = 1 + Math.floor(rand() * 3)
      const ids = new Set<number>()
      while (ids.size < count) ids.add(1 + Math.floor(rand() * ID_RANGE))
      // Ascending ids keep concurrent writers from deadlocking on each other's row locks.
      const ordered = [...ids].sort((a, b) => a - b)
      const rowImages: Array<Row> = []
      await client.query("BEGIN")
      try {
        const { rows: [{ xid }] } = await client.query<{ xid: string }>("SELECT pg_current_xact_id()::xid::text AS xid")
        for (const id of ordered) {
          const dice = rand()
          if (dice < 0.3) {
            const row = randomRow(rand, id)
            const { rows } = await client.query<Row>(
              `INSERT INTO ${TABLE} (id, grp, status, n, note, v) VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (id) DO NOTHING RETURNING ${COLUMNS_TEXT}`,
              [id, row["grp"], row["status"], row["n"], row["note"]]
            )
            rowImages.push(...rows)
          } else if (dice < 0.85) {
            const { rows: old } = await client.query<Row>(`SELECT ${COLUMNS_TEXT} FROM ${TABLE} WHERE id = $1 FOR UPDATE`, [id])
            if (old.length === 0) continue
            const fresh = randomRow(rand, id)
            const pick = (column: string) => (rand() < 0.5 ? fresh[column] : old[0]![column])
            const keyChange = dice > 0.8
            const { rows } = keyChange
              ? await client.query<Row>(`UPDATE ${TABLE} SET id = $2, v = v + 1 WHERE id = $1 RETURNING ${COLUMNS_TEXT}`, [
                id,
                nextKeyChange++
              ])
              : await client.query<Row>(
                `UPDATE ${TABLE} SET grp = $2, status = $3, n = $4, note = $5, v = v + 1 WHERE id = $1 RETURNING ${COLUMNS_TEXT}`,
                [id, pick("grp"), pick("status"), pick("n"), pick("note")]
              )
            rowImages.push(...old, ...rows)
          } else {
            const { rows } = await client.query<Row>(`DELETE FROM ${TABLE} WHERE id = $1 RETURNING ${COLUMNS_TEXT}`, [id])
            rowImages.push(...rows)
          }
        }
        for (const row of rowImages) images.push({ xid, row })
        if (rowImages.length > 0) written.add(xid)
        await client.query("COMMIT")
        if (rowImages.length > 0) committed.add(xid)
        commits++
      } catch (error) {
        await client.query("ROLLBACK")
        // Concurrent writers may still deadlock on an insert conflict; such a transaction never happened.
        if ((error as { code?: string }).code !== "40P01") throw error
      }
      await sleep(20 + rand() * 60)
    }
  } finally {
    await client.end()
  }
  return commits
}

const slotState = async (): Promise<{ active: boolean; confirmedFlush: string } | undefined> => {
  const { rows } = await pool.query<{ active: boolean; confirmed_flush_lsn: string }>(
    `SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`,
    [SLOT]
  )
  return rows[0] === undefined ? undefined : { active: rows[0].active, confirmedFlush: rows[0].confirmed_flush_lsn }
}

/** Copies the images not yet in Postgres into the images table, so `where` clauses can be evaluated on them. */
const flushImages = async (images: Array<Image>, flushed: { count: number }): Promise<void> => {
  const batch = images.slice(flushed.count)
  if (batch.length === 0) return
  await pool.query(`INSERT INTO ${IMAGES} SELECT * FROM json_populate_recordset(null::${IMAGES}, $1)`, [
    JSON.stringify(batch.map((i) => ({ xid: i.xid, ...i.row })))
  ])
  flushed.count += batch.length
}

/** The writer transactions among `xids` that touched `shape`: one of their row images (before or after) matches its `where`. */
const touching = async (shape: ShapeSpec, xids: ReadonlyArray<string>): Promise<Set<string>> => {
  const { rows } = await pool.query<{ xid: string }>(
    `SELECT DISTINCT xid FROM ${IMAGES} AS ${TABLE} WHERE xid = ANY($1)${shape.where === undefined ? "" : ` AND (${shape.where})`}`,
    [xids]
  )
  return new Set(rows.map((r) => r.xid))
}

const oracleRows = async (shape: ShapeSpec): Promise<Array<Row>> => {
  const columns = shape.columns ?? COLUMNS
  const select = COLUMNS_TEXT.split(", ").filter((c) => columns.includes(c.split(" AS ")[1] ?? c)).join(", ")
  const { rows } = await pool.query<Row>(
    `SELECT ${select} FROM ${TABLE}${shape.where === undefined ? "" : ` WHERE ${shape.where}`} ORDER BY ${TABLE}.id`
  )
  return rows
}

describe("restart-aware oracle", () => {
  it("20 shapes stay exact across graceful, kill -9, in-process and rolling restarts under a steady write load", {
    timeout: 300_000
  }, async () => {
    onTestFailed(() => {
      console.error(log.join("\n"))
      for (const i of instances.slice(-3)) console.error(`service ${i.baseUrl} output (tail):\n${i.child.output().slice(-6_000)}`)
    })
    const rand = prng(SEED + 100)
    // Clients read `server` for every request: switching it is what a load balancer does.
    let current = await spawnInstance()
    let server = { url: current.baseUrl, generation: 0 }
    const switchTo = (instance: Instance) => {
      server = { url: instance.baseUrl, generation: server.generation + 1 }
    }
    await waitStatus(current, "active")
    for (const spec of SHAPES) clients.push(new OracleClient(spec, TABLE, LONG_POLL_MS, failures))
    const runs = clients.map((c) => c.run(() => server))
    await waitFor("the initial sync of every shape", () => clients.every((c) => c.live), 60_000)

    // Every writer transaction starts after every shape's snapshot, so each one belongs in the logs.
    const images: Array<Image> = []
    const committed = new Set<string>()
    const written = new Set<string>()
    const flushed = { count: 0 }
    let writersStopped = false
    const writers = Array.from({ length: WRITERS }, (_, i) => writer(i, () => writersStopped, images, written, committed))
    const { rows: [{ lsn: writersStart }] } = await pool.query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")
    let scannedTo = writersStart
    const acked = new Set<string>()

    const kinds: Array<Kind> = (["graceful", "kill9", "admin", "rolling"] as const).flatMap((k) => Array<Kind>(ROUNDS_PER_KIND).fill(k))
    for (let i = kinds.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1))
      ;[kinds[i], kinds[j]] = [kinds[j]!, kinds[i]!]
    }

    for (const [round, kind] of kinds.entries()) {
      // Let the load run (and the clients cycle) between restarts.
      await sleep(700 + rand() * 1_000)
      expect(failures).toEqual([])
      const started = Date.now()
      switch (kind) {
        case "graceful":
        case "admin":
        case "rolling":
          current = await restartService(kind, current, spawnInstance, switchTo)
          break
        case "kill9": {
          current.child.kill("SIGKILL")
          await current.child.exited
          await waitFor("the slot to become inactive", async () => (await slotState())?.active === false)
          // Holding the slot's advisory lock keeps the next process read-only: it serves exactly
          // what the killed one made durable, and cannot ack or write anything new meanwhile.
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
              [flush, scannedTo]
            )
            expect(bounds!.sane).toBe(true)
            /*
             * The soundness check of the ack (DESIGN.md invariant 3). On restart Postgres resends
             * only transactions whose commit record starts at or after confirmed_flush_lsn; every
             * earlier one is gone for good. So each writer transaction that committed before it
             * must already be in the durable log of every shape it touched. Read those logs
             * through the read-only process (clients continue from their own offsets, so together
             * with what they had, they hold the whole durable log), then check.
             */
            if (bounds!.advanced) {
              const { rows: commits } = await pool.query<{ xid: string }>(
                `SELECT xid::text AS xid FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
                 WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' AND start_lsn < $2::pg_lsn`,
                [scannedTo, flush]
              )
              for (const { xid } of commits) if (written.has(xid)) acked.add(xid)
              scannedTo = flush
            }
            const next = await spawnInstance()
            await waitStatus(next, "waiting")
            switchTo(next)
            await waitFor("every client to read the durable logs to their end", () =>
              clients.every((c) => c.upToDateGeneration === server.generation))
            await flushImages(images, flushed)
            const ackedList = [...acked]
            for (const c of clients) {
              const missing = [...(await touching(c.spec, ackedList))].filter((xid) => !c.xids.has(xid))
              expect({ round, shape: c.spec.label, slotAckedUpTo: flush, missingFromDurableLog: missing }).toEqual({
                round,
                shape: c.spec.label,
                slotAckedUpTo: flush,
                missingFromDurableLog: []
              })
            }
            log.push(`round ${round}: kill -9, slot acked ${flush}, ${acked.size} acked writer transactions checked`)
            await unlock()
            await waitStatus(next, "active")
            current = next
          } finally {
            await unlock().catch(() => undefined)
          }
          break
        }
      }
      log.push(`round ${round}: ${kind} took ${Date.now() - started} ms; ${committed.size} writer transactions so far`)
    }

    writersStopped = true
    const commits = await Promise.all(writers)
    log.push(`writers committed ${commits.join(" + ")} transactions`)
    await flushImages(images, flushed)
    const committedList = [...committed]
    const expectedXids = await Promise.all(clients.map((c) => touching(c.spec, committedList)))
    const expectedRows = await Promise.all(clients.map((c) => oracleRows(c.spec)))
    const converged = () =>
      clients.every((c, i) =>
        c.xids.size === expectedXids[i]!.size &&
        JSON.stringify(c.sortedRows()) === JSON.stringify(expectedRows[i]))
    await waitFor("every shape to equal its query on Postgres", converged, 60_000).catch(() => undefined)
    for (const c of clients) c.stop()
    await Promise.all(runs)

    expect(failures).toEqual([])
    expect(committed.size).toBeGreaterThan(0)
    for (const [i, c] of clients.entries()) {
      const expected = expectedXids[i]!
      const missing = [...expected].filter((xid) => !c.xids.has(xid))
      const unexpected = [...c.xids.keys()].filter((xid) => !expected.has(xid))
      expect({ shape: c.spec.label, missing, unexpected }).toEqual({ shape: c.spec.label, missing: [], unexpected: [] })
      expect({ shape: c.spec.label, rows: c.sortedRows() }).toEqual({ shape: c.spec.label, rows: expectedRows[i] })
    }
    log.push(`client requests ${clients.reduce((n, c) => n + c.requests, 0)}, retries ${clients.reduce((n, c) => n + c.retries, 0)}`)
    console.log(log.join("\n"))
    current.child.kill("SIGTERM")
    expect(await current.child.exited).toEqual({ code: 0, signal: null })
  })
})
