import { Shape, ShapeStream } from "@electric-sql/client"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

const STREAM = "sync_basic"
let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await pool.query(`CREATE TABLE sync_items (id int PRIMARY KEY, title text, done bool NOT NULL DEFAULT false)`)
  await pool.query(`INSERT INTO sync_items SELECT i, 'item ' || i, i % 2 = 0 FROM generate_series(1, 1000) i`)
  server = await startSyncline({ streamId: STREAM })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const pgRows = async () =>
  (await pool.query(`SELECT id, title, done FROM sync_items ORDER BY id`)).rows.map((r) => ({ ...r }))

const sorted = (rows: ReadonlyArray<Record<string, unknown>>) => [...rows].sort((a, b) => (a.id as number) - (b.id as number))

const waitFor = async (check: () => boolean | Promise<boolean>, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out")
    await new Promise((r) => setTimeout(r, 50))
  }
}

describe("ShapeStream against a real Postgres", () => {
  it("syncs 1,000 rows, then 100 live changes", async () => {
    const stream = new ShapeStream({ url: `${server.baseUrl}/v1/shape`, params: { table: "sync_items" } })
    const shape = new Shape(stream as never)
    const initial = await shape.rows
    expect(sorted(initial)).toEqual(await pgRows())

    for (let i = 0; i < 100; i++) {
      const id = 1 + ((i * 37) % 1100)
      if (i % 3 === 0) await pool.query(`INSERT INTO sync_items VALUES ($1, 'new', true) ON CONFLICT (id) DO UPDATE SET title = 'upserted'`, [id])
      else if (i % 3 === 1) await pool.query(`UPDATE sync_items SET title = title || '!', done = NOT done WHERE id = $1`, [id])
      else await pool.query(`DELETE FROM sync_items WHERE id = $1`, [id])
    }
    const expected = await pgRows()
    await waitFor(() => JSON.stringify(sorted(shape.currentRows)) === JSON.stringify(expected))
    expect(sorted(shape.currentRows)).toEqual(expected)
    stream.unsubscribeAll()
  })
})
