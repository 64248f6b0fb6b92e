import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

const STREAM = "creation_abort"
const ROWS = 400_000
let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await pool.query(`CREATE TABLE abort_items (id int PRIMARY KEY, pad text)`)
  await pool.query(`INSERT INTO abort_items SELECT i, repeat('x', 100) FROM generate_series(1, ${ROWS}) i`)
  server = await startSyncline({ streamId: STREAM })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const slotPosition = async () =>
  (await pool.query(`SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1`, [
    `electric_slot_${STREAM}`
  ])).rows[0]!.lsn as string

const lsnValue = (text: string) => {
  const [hi, lo] = text.split("/")
  return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`)
}

describe("a client that goes away while its shape is created", () => {
  it("does not cut the snapshot short: the shape completes and acknowledgements keep moving", async () => {
    // The snapshot of 400k rows takes a while: the client gives up while its COPY runs, and a change
    // commits meanwhile (routed to the shape, applied after the snapshot).
    const aborted = new AbortController()
    const first = fetch(`${server.baseUrl}/v1/shape?table=abort_items&offset=-1`, { signal: aborted.signal })
    const deadline0 = Date.now() + 20_000
    for (;;) {
      const { rows } = await pool.query(
        `SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'COPY%abort_items%'`
      )
      if (rows.length > 0) break
      if (Date.now() > deadline0) throw new Error("the snapshot never started")
      await new Promise((r) => setTimeout(r, 5))
    }
    await pool.query(`INSERT INTO abort_items VALUES (${ROWS + 1}, 'during')`)
    aborted.abort()
    await expect(first).rejects.toThrow()

    const again = await fetch(`${server.baseUrl}/v1/shape?table=abort_items&offset=-1`)
    expect(again.status).toBe(200)
    await again.arrayBuffer()

    // A transaction committed now is acknowledged: nothing holds the slot back.
    const { rows } = await pool.query(`INSERT INTO abort_items VALUES (${ROWS + 2}, 'after') RETURNING pg_current_wal_lsn()::text AS lsn`)
    const written = lsnValue(rows[0]!.lsn as string)
    const deadline = Date.now() + 20_000
    while (lsnValue(await slotPosition()) < written) {
      if (Date.now() > deadline) throw new Error("the slot's position never passed the last write")
      await new Promise((r) => setTimeout(r, 100))
    }

    // The shape holds every row, including the changes made during and after its snapshot, exactly once.
    let offset = "-1"
    let handle = ""
    const keys = new Set<string>()
    let count = 0
    for (;;) {
      const res = await fetch(
        `${server.baseUrl}/v1/shape?table=abort_items&offset=${offset}${handle === "" ? "" : `&handle=${handle}`}`
      )
      expect(res.status).toBe(200)
      const body = (await res.json()) as Array<{ key?: string; headers: Record<string, unknown> }>
      for (const m of body) {
        if (m.key === undefined) continue
        keys.add(m.key)
        count++
      }
      handle = res.headers.get("electric-handle")!
      offset = res.headers.get("electric-offset")!
      if (res.headers.has("electric-up-to-date")) break
    }
    expect(keys.size).toBe(ROWS + 2)
    expect(count).toBe(ROWS + 2)
  })
})
