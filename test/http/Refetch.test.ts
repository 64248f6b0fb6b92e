import { isControlMessage, type Message, type Row, Shape, ShapeStream } from "@electric-sql/client"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

const STREAM = "refetch_client"
const TABLE = "refetch_items"
let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await pool.query(`DROP TABLE IF EXISTS ${TABLE}`)
  await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, title text, n int NOT NULL)`)
  await pool.query(`INSERT INTO ${TABLE} SELECT i, 'item ' || i, i * 10 FROM generate_series(1, 50) i`)
  server = await startSyncline({ streamId: STREAM, settings: { longPollTimeoutMs: 2000 } })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const pgRows = async () => (await pool.query(`SELECT id, title, n FROM ${TABLE} ORDER BY id`)).rows.map((r) => ({ ...r }))

const sorted = (rows: ReadonlyArray<Row>) => [...rows].sort((a, b) => (a["id"] as number) - (b["id"] as number))

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const deleteShape = async (query: Record<string, string>) =>
  (await fetch(`${server.baseUrl}/v1/shape?${new URLSearchParams(query)}`, { method: "DELETE" })).status

describe("ShapeStream recovers from a deleted shape", () => {
  it("gets must-refetch, resyncs under a new handle and keeps matching Postgres", async () => {
    const errors: Array<unknown> = []
    const stream = new ShapeStream({
      url: `${server.baseUrl}/v1/shape`,
      params: { table: TABLE },
      onError: (error) => {
        errors.push(error)
      }
    })
    const shape = new Shape(stream as never)
    let mustRefetches = 0
    const unsubscribe = stream.subscribe((batch: Array<Message<Row>>) => {
      for (const m of batch) if (isControlMessage(m) && m.headers.control === "must-refetch") mustRefetches++
    })
    const matchesPostgres = async () => JSON.stringify(sorted(shape.currentRows)) === JSON.stringify(await pgRows())

    try {
      expect(sorted(await shape.rows)).toEqual(await pgRows())
      const firstHandle = stream.shapeHandle
      expect(firstHandle).toBeDefined()
      await waitFor("the stream to go live", () => stream.isUpToDate)

      // Deleted by definition while the client sits in a live long-poll.
      expect(await deleteShape({ table: TABLE })).toBe(202)
      await pool.query(`INSERT INTO ${TABLE} SELECT i, 'late ' || i, i FROM generate_series(51, 60) i`)
      await pool.query(`UPDATE ${TABLE} SET title = 'renamed', n = n + 1 WHERE id % 7 = 0`)
      await pool.query(`DELETE FROM ${TABLE} WHERE id % 5 = 0`)
      await waitFor(
        "recovery after the first delete",
        async () => mustRefetches >= 1 && stream.shapeHandle !== firstHandle && (await matchesPostgres())
      )
      const secondHandle = stream.shapeHandle!
      expect(secondHandle).not.toBe(firstHandle)

      // Writes after the refetch keep flowing under the new handle.
      await pool.query(`INSERT INTO ${TABLE} VALUES (100, 'after refetch', 1)`)
      await pool.query(`UPDATE ${TABLE} SET n = -1 WHERE id = 1`)
      await waitFor("post-refetch writes", matchesPostgres)

      // Deleted by handle: a second rotation, to a third handle.
      expect(await deleteShape({ handle: secondHandle })).toBe(202)
      await pool.query(`DELETE FROM ${TABLE} WHERE id < 10`)
      await pool.query(`INSERT INTO ${TABLE} VALUES (200, 'second rotation', 2)`)
      await waitFor(
        "recovery after the second delete",
        async () => mustRefetches >= 2 && stream.shapeHandle !== secondHandle && (await matchesPostgres())
      )
      expect([firstHandle, secondHandle]).not.toContain(stream.shapeHandle)

      await pool.query(`UPDATE ${TABLE} SET title = 'final' WHERE id = 200`)
      await waitFor("writes after the second refetch", matchesPostgres)
      expect(sorted(shape.currentRows)).toEqual(await pgRows())
      expect(errors).toEqual([])
    } finally {
      unsubscribe()
      stream.unsubscribeAll()
    }
  })
})

describe("ShapeStream recovers from a schema change", () => {
  it("a column added to the table invalidates the shape; the client refetches and gets the new column", async () => {
    await pool.query(`CREATE TABLE refetch_schema (id int PRIMARY KEY, title text)`)
    await pool.query(`INSERT INTO refetch_schema SELECT i, 'row ' || i FROM generate_series(1, 5) i`)
    const stream = new ShapeStream({ url: `${server.baseUrl}/v1/shape`, params: { table: "refetch_schema" } })
    const shape = new Shape(stream as never)
    let mustRefetches = 0
    const unsubscribe = stream.subscribe((batch: Array<Message<Row>>) => {
      for (const m of batch) if (isControlMessage(m) && m.headers.control === "must-refetch") mustRefetches++
    })
    const expected = async () =>
      (await pool.query(`SELECT * FROM refetch_schema ORDER BY id`)).rows.map((r) => ({ ...r }))
    try {
      expect(sorted(await shape.rows)).toEqual(await expected())
      const firstHandle = stream.shapeHandle
      await pool.query(`ALTER TABLE refetch_schema ADD COLUMN n int NOT NULL DEFAULT 7`)
      await pool.query(`INSERT INTO refetch_schema VALUES (6, 'row 6', 8)`)
      await waitFor("the rows with the new column", async () =>
        JSON.stringify(sorted(shape.currentRows)) === JSON.stringify(await expected()))
      expect(mustRefetches).toBe(1)
      expect(stream.shapeHandle).not.toBe(firstHandle)
      expect(sorted(shape.currentRows)[0]).toEqual({ id: 1, title: "row 1", n: 7 })
    } finally {
      unsubscribe()
      stream.unsubscribeAll()
      await pool.query(`DROP TABLE refetch_schema`)
    }
  })
})
