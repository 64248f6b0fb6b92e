import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, startSyncline, tempDir, testPool } from "../support/syncline.js"

const STREAM = "schema_change"
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await pool.query(`CREATE TABLE schema_items (id int PRIMARY KEY, title text)`)
  await pool.query(`INSERT INTO schema_items VALUES (1, 'one'), (2, 'two')`)
})

afterAll(async () => {
  await dropReplication(pool, STREAM)
  await pool.end()
})

interface Message {
  readonly value?: Record<string, string | null>
  readonly headers: Record<string, unknown>
}

const get = async (base: string, query: string) => {
  const res = await fetch(`${base}/v1/shape?table=schema_items&${query}`)
  return { status: res.status, handle: res.headers.get("electric-handle"), offset: res.headers.get("electric-offset"), body: (await res.json()) as Array<Message> }
}

describe("a table whose columns changed while the service was stopped", () => {
  it("has its shapes removed at start: a client holding one gets 409 and a new shape with the new column", async () => {
    const storageDir = await tempDir(STREAM)
    const first = await startSyncline({ streamId: STREAM, storageDir })
    const initial = await get(first.baseUrl, "offset=-1")
    expect(initial.status).toBe(200)
    const caughtUp = await get(first.baseUrl, `offset=${initial.offset}&handle=${initial.handle}`)
    expect(caughtUp.status).toBe(200)
    await first.stop()

    await pool.query(`ALTER TABLE schema_items ADD COLUMN n int NOT NULL DEFAULT 7`)

    const second = await startSyncline({ streamId: STREAM, storageDir })
    try {
      const stale = await get(second.baseUrl, `offset=${caughtUp.offset}&handle=${initial.handle}`)
      expect(stale.status).toBe(409)
      expect(stale.handle).not.toBe(initial.handle)
      const fresh = await get(second.baseUrl, "offset=-1")
      expect(fresh.handle).toBe(stale.handle)
      const rows = fresh.body.filter((m) => m.value !== undefined).map((m) => m.value)
      expect(rows).toEqual([{ id: "1", title: "one", n: "7" }, { id: "2", title: "two", n: "7" }])
    } finally {
      await second.stop()
    }
  })
})
