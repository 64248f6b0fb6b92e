import * as path from "node:path"
import type pg from "pg"
import {
  createShapes,
  dropSlot,
  fmtInt,
  fmtMb,
  fmtRatio,
  fmtS,
  fmtShortRate,
  makeAgent,
  publicationName,
  rawDecode,
  type Service,
  sized,
  sleep,
  slotBacklog,
  slotName,
  syncShape,
  writeTxns
} from "../harness.js"
import type { Part } from "./part.js"

/*
 * 1,000 idle shapes (`where id = <k>`, k never written) and 20k single-row transactions on their
 * table that match none of them, committed by 4 writers.
 *
 * When the service has handled a transaction shows in its slot: a marker shape (`where id = 0`)
 * matches the last transaction, and the service acknowledges a change only once it is durable, so
 * the slot's confirmed_flush_lsn passing a position read inside that last transaction means every
 * transaction before it went through.
 *
 * Live: transactions committed while the service runs, timed from the first write until the slot
 * passes the marker, beside the writers' commit rate. Catch-up: the service is stopped, 20k more
 * are committed (and the marker), the service is started, timed from the moment its stack became
 * active (as its metrics say) until the slot passes the marker, beside raw pgoutput decoding of
 * the same WAL by a second slot.
 */

const STREAM = "bench_idle"
const TABLE = "bench_idle"
const RAW_SLOT = "bench_idle_raw"
const FAR = 1_000_000

export const idle: Part = {
  name: "idle",
  describe: "non-matching txns past 1,000 idle shapes, live and in catch-up",
  run: async ({ db, dir, report, startService }) => {
    const shapes = sized("IDLE_SHAPES", 1_000, 100)
    const txns = sized("TXNS", 20_000, 2_000)
    await db.pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, n int NOT NULL)`)
    const options = { stream: STREAM, storageDir: path.join(dir, "idle") }
    let service: Service | undefined = await startService(options)
    try {
      const where = (k: number) => `table=${TABLE}&where=${encodeURIComponent(`id = ${k}`)}`
      const createMs = await createShapes(service.baseUrl, shapes, 8, (k) => where(FAR + k), () => 0)
      await createShapes(service.baseUrl, 1, 1, () => where(0), () => 0)

      // Live.
      const live = await writeTxns(db.pool, txns, (client, k) => client.query(`INSERT INTO ${TABLE} VALUES ($1, $2)`, [1 + k, k]))
      const lsn = await marker(db.pool, `INSERT INTO ${TABLE} VALUES (0, 0)`)
      const passedAt = await slotPasses(db.pool, lsn)
      const liveRate = txns / ((passedAt - live.startedAt) / 1000)
      const commitRate = txns / ((live.doneAt - live.startedAt) / 1000)

      // Catch-up.
      await service.stop()
      service = undefined
      await db.pool.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [RAW_SLOT])
      await writeTxns(db.pool, txns, (client, k) => client.query(`INSERT INTO ${TABLE} VALUES ($1, $2)`, [1 + txns + k, k]))
      const lsn2 = await marker(db.pool, `UPDATE ${TABLE} SET n = n + 1 WHERE id = 0`)
      // Work in the catch-up's time that the raw decoding does not do.
      const slot = await slotBacklog(db.pool, slotName(STREAM))
      service = await startService(options)
      const caughtUpAt = await slotPasses(db.pool, lsn2)
      const catchUpMs = caughtUpAt - service.activeAt
      const catchUpRate = txns / (catchUpMs / 1000)
      // The marker shape has the marker row; an idle shape has nothing.
      const agent = makeAgent(1)
      try {
        const markerShape = await syncShape(agent, service.baseUrl, where(0))
        if (markerShape.inserts !== 1 || markerShape.changes !== 2) {
          throw new Error(`the marker shape has ${markerShape.inserts} inserts and ${markerShape.changes} changes, expected 1 and 2`)
        }
        const idleShape = await syncShape(agent, service.baseUrl, where(FAR))
        if (idleShape.changes !== 0) throw new Error(`an idle shape has ${idleShape.changes} changes`)
      } finally {
        await agent.close()
      }
      const raw = await rawDecode(db.pool, RAW_SLOT, publicationName(STREAM))
      // The transactions and the marker.
      if (raw.commits !== txns + 1) throw new Error(`raw decoding found ${raw.commits} transactions, expected ${txns + 1}`)
      const rawRate = raw.commits / (raw.ms / 1000)
      const n = shapes.toLocaleString("en-US")
      const t = txns.toLocaleString("en-US")
      report.rows.push({
        figure: `${n} idle shapes, ${t} non-matching txns, live`,
        syncline: `${fmtShortRate(liveRate)} txn/s`,
        limit: `commit rate: ${fmtShortRate(commitRate)} txn/s`,
        ratio: `${fmtRatio(liveRate / commitRate)} of commits`,
        target: "≥ 0.9",
        met: liveRate / commitRate >= 0.9
      })
      report.rows.push({
        figure: `${n} idle shapes, ${t} non-matching txns in catch-up, from active`,
        syncline: `${fmtShortRate(catchUpRate)} txn/s`,
        limit: `raw decoding: ${fmtShortRate(rawRate)} txn/s`,
        ratio: `${fmtRatio(catchUpRate / rawRate)} of decoding`,
        target: "≥ 0.5",
        met: catchUpRate / rawRate >= 0.5
      })
      report.notes.push(
        `idle shapes: ${n} created in ${fmtS(createMs)} s (8 at a time); live: slot passed the marker ` +
          `${fmtS(passedAt - live.doneAt)} s after the last commit; catch-up: start-up to active ${fmtS(service.startupMs)} s as /v1/health answered, ` +
          `${fmtInt(service.activeAnsweredLateMs)} ms after the stack became active (from which the catch-up is timed), ` +
          `then ${fmtS(catchUpMs)} s (${fmtShortRate(txns / ((caughtUpAt - service.spawnedAt) / 1000))} txn/s from spawn); raw decoding ${fmtS(raw.ms)} s (${fmtInt(raw.messages)} messages). ` +
          `The restarted walsender decoded ${fmtMb(slot.before)} MB of WAL from the slot's restart_lsn to its confirmed position again (sending nothing), then the catch-up's ${fmtMb(slot.after)} MB.`
      )
    } finally {
      await service?.stop()
      await dropSlot(db.pool, RAW_SLOT)
    }
  }
}

/** Runs `statement` (which matches the marker shape) in a transaction; the WAL position inside it, before its commit. */
const marker = async (pool: pg.Pool, statement: string): Promise<string> => {
  const client = await pool.connect()
  try {
    await client.query("BEGIN")
    await client.query(statement)
    const lsn = (await client.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn")).rows[0]!.lsn
    await client.query("COMMIT")
    return lsn
  } finally {
    client.release()
  }
}

/** performance.now() when the service's slot has confirmed `lsn` (polled every 5 ms, 5 minutes at most). */
const slotPasses = async (pool: pg.Pool, lsn: string): Promise<number> => {
  const deadline = Date.now() + 300_000
  for (;;) {
    const { rows } = await pool.query<{ passed: boolean }>(
      `SELECT confirmed_flush_lsn >= $2::pg_lsn AS passed FROM pg_replication_slots WHERE slot_name = $1`,
      [slotName(STREAM), lsn]
    )
    if (rows[0]?.passed === true) return performance.now()
    if (Date.now() > deadline) throw new Error(`the slot did not pass ${lsn} within 5 minutes`)
    await sleep(5)
  }
}
