import { isChangeMessage, type Message, type Row, Shape, ShapeStream, type ShapeStreamOptions } from "@electric-sql/client"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type ClientValue, pgClientRows } from "../support/clientValues.js"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

const STREAM = "where_columns"
const TABLE = "wc_items"
const SELECTED = ["id", "status", "priority", "note"] as const
const WHERE = "status = 'open' AND priority >= 2"
let server: RunningSyncline
let pool: pg.Pool
// Streams keep long-polling after their subscribers leave; aborting them before the server stops
// keeps shutdown from answering their in-flight requests.
const streams = new AbortController()

beforeAll(async () => {
  pool = testPool()
  await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, status text NOT NULL, priority int, note text, secret text)`)
  await pool.query(
    `INSERT INTO ${TABLE} VALUES
       (1, 'open', 1, 'low', 's1'),
       (2, 'open', 2, 'two', 's2'),
       (3, 'open', 3, NULL, 's3'),
       (4, 'closed', 5, 'closed five', 's4'),
       (5, 'open', 5, 'five', 's5'),
       (6, 'closed', 1, 'closed one', 's6'),
       (7, 'open', NULL, 'no priority', 's7'),
       (8, 'open', 4, 'four', 's8')`
  )
  server = await startSyncline({ streamId: STREAM, settings: { longPollTimeoutMs: 2_000 } })
})

afterAll(async () => {
  streams.abort()
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const key = (id: number) => `"public"."${TABLE}"/"${id}"`

const byId = (rows: ReadonlyArray<Record<string, unknown>>) => [...rows].sort((a, b) => Number(a.id) - Number(b.id))

const waitFor = async (check: () => boolean | Promise<boolean>, timeoutMs = 15_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out")
    await new Promise((r) => setTimeout(r, 50))
  }
}

interface Synced {
  readonly stream: ShapeStream<Row>
  readonly shape: Shape<Row>
  /** Every change message the stream delivered, in order. */
  readonly changes: Array<{ key: string; operation: string; value: Row; old_value?: Row }>
}

const sync = (params: NonNullable<ShapeStreamOptions<Row>["params"]>): Synced => {
  const stream = new ShapeStream<Row>({ url: `${server.baseUrl}/v1/shape`, params, signal: streams.signal })
  const changes: Synced["changes"] = []
  stream.subscribe((messages: Array<Message<Row>>) => {
    for (const m of messages) {
      if (!isChangeMessage(m)) continue
      const oldValue = (m as { old_value?: Row }).old_value
      changes.push({
        key: m.key,
        operation: m.headers.operation,
        value: m.value,
        ...(oldValue !== undefined ? { old_value: oldValue } : {})
      })
    }
  })
  const shape = new Shape(stream as never) as Shape<Row>
  return { stream, shape, changes }
}

/** Waits until the client's rows equal Postgres's rows for the same where and columns. */
const converge = async (synced: Synced, expected: () => Promise<Array<Record<string, ClientValue>>>) => {
  let want = await expected()
  await waitFor(async () => {
    want = await expected()
    return JSON.stringify(byId(synced.shape.currentRows), bigintSafe) === JSON.stringify(want, bigintSafe)
  })
  expect(byId(synced.shape.currentRows)).toEqual(want)
}

const bigintSafe = (_: string, v: unknown) => (typeof v === "bigint" ? `${v}n` : v)

const selectedRows = () => pgClientRows(pool, TABLE, { columns: SELECTED, where: WHERE })

describe("where + columns shape with @electric-sql/client", () => {
  it("syncs only matching rows and selected columns, with move-in/move-out as insert/delete", async () => {
    const s = sync({ table: TABLE, where: WHERE, columns: [...SELECTED] })
    const initial = await s.shape.rows
    expect(byId(initial)).toEqual(await selectedRows())
    expect(byId(initial).map((r) => r.id)).toEqual([2, 3, 5, 8])
    // The snapshot rows are typed by the schema: int4 arrives as a number.
    expect(byId(initial)[0]).toEqual({ id: 2, status: "open", priority: 2, note: "two" })

    const opsFor = (from: number, id: number) =>
      s.changes.slice(from).filter((c) => c.key === key(id)).map((c) => c.operation)

    // Move in: closed -> open (row 4) and priority 1 -> 3 (row 1) become inserts.
    let mark = s.changes.length
    await pool.query(`UPDATE ${TABLE} SET status = 'open' WHERE id = 4`)
    await pool.query(`UPDATE ${TABLE} SET priority = 3 WHERE id = 1`)
    await converge(s, selectedRows)
    expect(opsFor(mark, 4)).toEqual(["insert"])
    expect(opsFor(mark, 1)).toEqual(["insert"])
    expect(s.changes.slice(mark).find((c) => c.key === key(4))?.value).toEqual({
      id: 4,
      status: "open",
      priority: 5,
      note: "closed five"
    })

    // Move out: open -> closed (row 2), priority 3 -> 1 (row 3), priority -> NULL (row 5) become deletes.
    mark = s.changes.length
    await pool.query(`UPDATE ${TABLE} SET status = 'closed' WHERE id = 2`)
    await pool.query(`UPDATE ${TABLE} SET priority = 1 WHERE id = 3`)
    await pool.query(`UPDATE ${TABLE} SET priority = NULL WHERE id = 5`)
    await converge(s, selectedRows)
    expect(opsFor(mark, 2)).toEqual(["delete"])
    expect(opsFor(mark, 3)).toEqual(["delete"])
    expect(opsFor(mark, 5)).toEqual(["delete"])

    // Updates within the where stay updates.
    mark = s.changes.length
    await pool.query(`UPDATE ${TABLE} SET note = 'four!', priority = 9 WHERE id = 8`)
    await pool.query(`UPDATE ${TABLE} SET note = NULL WHERE id = 4`)
    await converge(s, selectedRows)
    expect(opsFor(mark, 8)).toEqual(["update"])
    expect(opsFor(mark, 4)).toEqual(["update"])

    // Deletes: one inside the where (a delete message), one outside (nothing).
    // Inserts: one inside (an insert), one outside (nothing).
    mark = s.changes.length
    await pool.query(`DELETE FROM ${TABLE} WHERE id = 1`)
    await pool.query(`DELETE FROM ${TABLE} WHERE id = 6`)
    await pool.query(`INSERT INTO ${TABLE} VALUES (10, 'open', 7, 'ten', 's10'), (11, 'closed', 7, 'eleven', 's11')`)
    await converge(s, selectedRows)
    expect(opsFor(mark, 1)).toEqual(["delete"])
    expect(opsFor(mark, 6)).toEqual([])
    expect(opsFor(mark, 10)).toEqual(["insert"])
    expect(opsFor(mark, 11)).toEqual([])

    // An update of an unselected column only must produce no message. A later visible change
    // on another row proves the server has processed the first transaction.
    mark = s.changes.length
    await pool.query(`UPDATE ${TABLE} SET secret = 'changed' WHERE id = 8`)
    await pool.query(`UPDATE ${TABLE} SET note = 'marker' WHERE id = 10`)
    await waitFor(() => s.changes.slice(mark).some((c) => c.key === key(10)))
    await converge(s, selectedRows)
    expect(s.changes.slice(mark).map((c) => [c.key, c.operation])).toEqual([[key(10), "update"]])

    // A multi-row transaction mixing all of the above.
    mark = s.changes.length
    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      await client.query(`UPDATE ${TABLE} SET status = 'open', priority = 2 WHERE id = 11`)
      await client.query(`UPDATE ${TABLE} SET status = 'closed' WHERE id = 10`)
      await client.query(`UPDATE ${TABLE} SET secret = 'again' WHERE id = 4`)
      await client.query(`INSERT INTO ${TABLE} VALUES (12, 'open', 2, 'twelve', 's12')`)
      await client.query("COMMIT")
    } finally {
      client.release()
    }
    await converge(s, selectedRows)
    expect(opsFor(mark, 11)).toEqual(["insert"])
    expect(opsFor(mark, 10)).toEqual(["delete"])
    expect(opsFor(mark, 4)).toEqual([])
    expect(opsFor(mark, 12)).toEqual(["insert"])

    // The unselected column never reaches the client, in any message.
    expect(s.changes.length).toBeGreaterThan(0)
    for (const change of s.changes) {
      expect(Object.keys(change.value)).not.toContain("secret")
      for (const column of Object.keys(change.value)) expect(SELECTED).toContain(column)
    }
    for (const row of s.shape.currentRows) expect(Object.keys(row).sort()).toEqual([...SELECTED].sort())
    s.stream.unsubscribeAll()
  })

  it("accepts the client's quoted columns list on the wire and reports only those columns", async () => {
    const url = new URL(`${server.baseUrl}/v1/shape`)
    url.searchParams.set("table", TABLE)
    url.searchParams.set("where", WHERE)
    // What the client sends for `columns: [...]`: every identifier quoted, comma-joined.
    url.searchParams.set("columns", SELECTED.map((c) => `"${c}"`).join(","))
    url.searchParams.set("offset", "-1")
    const res = await fetch(url)
    expect(res.status).toBe(200)
    const schema = JSON.parse(res.headers.get("electric-schema") ?? "null") as Record<string, { type: string }>
    expect(Object.keys(schema).sort()).toEqual([...SELECTED].sort())
    expect(schema.priority?.type).toBe("int4")
    const body = (await res.json()) as Array<{ value?: Record<string, unknown> }>
    const rows = body.flatMap((m) => (m.value === undefined ? [] : [m.value]))
    expect(rows.length).toBeGreaterThan(0)
    for (const row of rows) {
      expect(Object.keys(row).sort()).toEqual([...SELECTED].sort())
      // On the wire every value is a string or null; the client does the typing.
      for (const v of Object.values(row)) expect(v === null || typeof v === "string").toBe(true)
    }
  })

  it("binds $1 params in the where clause", async () => {
    const s = sync({ table: TABLE, where: "priority > $1", params: ["3"] })
    const expected = () => pgClientRows(pool, TABLE, { where: "priority > $1", params: [3] })
    const initial = await s.shape.rows
    expect(byId(initial)).toEqual(await expected())
    expect(initial.length).toBeGreaterThan(0)

    await pool.query(`UPDATE ${TABLE} SET priority = 4 WHERE id = 12`)
    await pool.query(`UPDATE ${TABLE} SET priority = 3 WHERE id = 8`)
    await converge(s, expected)
    s.stream.unsubscribeAll()

    // The object form of params gives the same shape.
    const o = sync({ table: TABLE, where: "status = $1 AND priority > $2", params: { "1": "open", "2": "1" } })
    const objectExpected = () =>
      pgClientRows(pool, TABLE, { where: "status = $1 AND priority > $2", params: ["open", 1] })
    expect(byId(await o.shape.rows)).toEqual(await objectExpected())
    o.stream.unsubscribeAll()
  })

  it("replica=full sends the full row and the old values of changed columns", async () => {
    await pool.query(`INSERT INTO ${TABLE} VALUES (20, 'open', 2, 'full', 'hidden')`)
    const s = sync({
      table: TABLE,
      where: "status = 'open'",
      columns: [...SELECTED],
      replica: "full"
    })
    await s.shape.rows
    const mark = s.changes.length
    await pool.query(`UPDATE ${TABLE} SET note = 'fuller', priority = 6, secret = 'still hidden' WHERE id = 20`)
    await waitFor(() => s.changes.slice(mark).some((c) => c.key === key(20)))
    const update = s.changes.slice(mark).filter((c) => c.key === key(20))
    expect(update).toHaveLength(1)
    expect(update[0]!.operation).toBe("update")
    expect(update[0]!.value).toEqual({ id: 20, status: "open", priority: 6, note: "fuller" })
    expect(update[0]!.old_value).toEqual({ priority: 2, note: "full" })

    // With replica=full a delete carries the whole old row.
    const mark2 = s.changes.length
    await pool.query(`DELETE FROM ${TABLE} WHERE id = 20`)
    await waitFor(() => s.changes.slice(mark2).some((c) => c.key === key(20)))
    const deleted = s.changes.slice(mark2).filter((c) => c.key === key(20))
    expect(deleted.map((c) => c.operation)).toEqual(["delete"])
    expect(deleted[0]!.value).toEqual({ id: 20, status: "open", priority: 6, note: "fuller" })
    await converge(s, () => pgClientRows(pool, TABLE, { columns: SELECTED, where: "status = 'open'" }))
    s.stream.unsubscribeAll()
  })
})
