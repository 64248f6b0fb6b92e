import * as http from "node:http"
import {
  type ChangeMessage,
  isChangeMessage,
  type Message,
  type Row,
  Shape,
  ShapeStream,
  type ShapeStreamOptions
} from "@electric-sql/client"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

// Subset snapshots (protocol.md §2.3, §8.7) against the real server: every answer is compared with what
// Postgres returns for the same query, refusals carry the protocol's error body and never reach SQL, and
// the official client's requestSnapshot/fetchSnapshot keep a changes_only Shape equal to Postgres while
// changes, one of them committed in parallel with the snapshot, stream in.

const STREAM = "subset_snapshots"
// Read by the raw HTTP tests only: its rows never change, so every comparison with Postgres is deterministic.
const ITEMS = "sub_items"
const PROJECTS = "sub_projects"
// Written by the client tests.
const LIVE = "sub_live"
const CANARY = "sub_canary_calls"

let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await pool.query(`DROP TABLE IF EXISTS ${ITEMS}, ${PROJECTS}, ${LIVE}, ${CANARY}`)
  await pool.query(`DROP FUNCTION IF EXISTS sub_canary()`)
  await pool.query(`CREATE TABLE ${PROJECTS} (id int PRIMARY KEY, active bool NOT NULL)`)
  await pool.query(`INSERT INTO ${PROJECTS} SELECT i, i % 2 = 1 FROM generate_series(1, 4) i`)
  // NULL titles and numbers, and repeated numbers, so that NULLS FIRST/LAST and tie-breaks matter.
  await pool.query(`CREATE TABLE ${ITEMS} (id int PRIMARY KEY, project_id int, title text, n int)`)
  await pool.query(
    `INSERT INTO ${ITEMS}
       SELECT i, 1 + i % 4, CASE WHEN i % 9 = 0 THEN NULL ELSE 'item ' || i END,
              CASE WHEN i % 7 = 0 THEN NULL ELSE (i * 37) % 50 * 10 END
         FROM generate_series(1, 60) i`
  )
  await pool.query(`CREATE TABLE ${LIVE} (id int PRIMARY KEY, project_id int NOT NULL, title text, n int NOT NULL)`)
  await pool.query(`INSERT INTO ${LIVE} SELECT i, 1 + i % 4, 'live ' || i, i * 10 FROM generate_series(1, 40) i`)
  // Any call of this function leaves a row behind: a clause that reached Postgres with it would show.
  await pool.query(`CREATE TABLE ${CANARY} (at timestamptz NOT NULL)`)
  await pool.query(
    `CREATE FUNCTION sub_canary() RETURNS int LANGUAGE sql VOLATILE AS $$ INSERT INTO ${CANARY} VALUES (now()) RETURNING 1 $$`
  )
  server = await startSyncline({ streamId: STREAM, settings: { longPollTimeoutMs: 1000 } })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
}

interface InsertMessage {
  readonly key: string
  readonly value: Record<string, string | null>
  readonly headers: { readonly operation: string; readonly relation: ReadonlyArray<string>; readonly snapshot_mark: number }
}

interface SubsetBody {
  readonly metadata: {
    readonly xmin: string
    readonly xmax: string
    readonly xip_list: ReadonlyArray<string>
    readonly snapshot_mark: number
    readonly database_lsn: string
  }
  readonly data: ReadonlyArray<InsertMessage>
}

const shapeUrl = (query: Record<string, string>) => `${server.baseUrl}/v1/shape?${new URLSearchParams(query)}`

const get = async (query: Record<string, string>, headers: Record<string, string> = {}): Promise<Reply> => {
  const res = await fetch(shapeUrl(query), { headers })
  return { status: res.status, headers: res.headers, text: await res.text() }
}

const post = async (query: Record<string, string>, body: string): Promise<Reply> => {
  const res = await fetch(shapeUrl(query), { method: "POST", body, headers: { "content-type": "application/json" } })
  return { status: res.status, headers: res.headers, text: await res.text() }
}

const subsetOf = (reply: Reply): SubsetBody => {
  if (reply.status !== 200) throw new Error(`expected 200, got ${reply.status}: ${reply.text}`)
  return JSON.parse(reply.text) as SubsetBody
}

const header = (reply: Reply, name: string): string => {
  const value = reply.headers.get(name)
  if (value === null) throw new Error(`missing header ${name} (status ${reply.status}: ${reply.text})`)
  return value
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

/** Postgres's rows for a query, every value as its text (as the protocol sends them). */
const textRows = async (sql: string, values: ReadonlyArray<string> = []): Promise<Array<Record<string, string | null>>> => {
  const { rows } = await pool.query({
    text: sql,
    values: values as Array<string>,
    types: { getTypeParser: () => (value: string) => value }
  })
  return rows as Array<Record<string, string | null>>
}

const itemsKey = (id: string) => `"public"."${ITEMS}"/"${id}"`

/** A normal request of a shape from the start: its handle. */
const handleOf = async (query: Record<string, string>): Promise<string> =>
  header(await get({ ...query, offset: "-1" }), "electric-handle")

describe("GET subset snapshots", () => {
  const base = { table: ITEMS, log: "changes_only" }

  it.each([
    {
      name: "where with params, order by with NULLS LAST and a tie-break, limit and offset",
      subset: {
        subset__where: "n > $1 AND title LIKE $2",
        subset__params: JSON.stringify({ "1": "100", "2": "item%" }),
        subset__order_by: "n DESC NULLS LAST, id",
        subset__limit: "7",
        subset__offset: "3"
      },
      sql: `WHERE n > $1 AND title LIKE $2 ORDER BY n DESC NULLS LAST, id LIMIT 7 OFFSET 3`,
      values: ["100", "item%"]
    },
    {
      name: "NULLS FIRST on text, descending tie-break, no where",
      subset: { subset__order_by: "title NULLS FIRST, id DESC", subset__limit: "12" },
      sql: `ORDER BY title NULLS FIRST, id DESC LIMIT 12`,
      values: []
    },
    {
      name: "qualified and quoted columns in order_by",
      subset: { subset__order_by: `${ITEMS}.n ASC NULLS FIRST, "public"."${ITEMS}"."id" DESC`, subset__offset: "50" },
      sql: `ORDER BY n ASC NULLS FIRST, id DESC OFFSET 50`,
      values: []
    },
    {
      name: "params as a JSON array, numbers turned into text",
      subset: { subset__where: "id <= $1 AND project_id = $2", subset__params: "[20, \"3\"]", subset__order_by: "id" },
      sql: `WHERE id <= $1 AND project_id = $2 ORDER BY id`,
      values: ["20", "3"]
    },
    {
      name: "= ANY over an array parameter with a NULL element",
      subset: { subset__where: "project_id = ANY($1)", subset__params: JSON.stringify({ "1": "{1,3,NULL}" }), subset__order_by: "id" },
      sql: `WHERE project_id = ANY($1) ORDER BY id`,
      values: ["{1,3,NULL}"]
    },
    {
      name: "= ANY over an empty array",
      subset: { subset__where: "id = ANY($1)", subset__params: JSON.stringify({ "1": "{}" }) },
      sql: `WHERE id = ANY($1)`,
      values: ["{}"]
    },
    {
      name: "a page past the last row",
      subset: { subset__order_by: "id", subset__limit: "5", subset__offset: "60" },
      sql: `ORDER BY id LIMIT 5 OFFSET 60`,
      values: []
    }
  ])("$name: exactly Postgres's rows, in order", async ({ subset, sql, values }) => {
    const body = subsetOf(await get({ ...base, offset: "-1", ...subset }))
    const expected = await textRows(`SELECT id, project_id, title, n FROM ${ITEMS} ${sql}`, values)
    const ordered = "subset__order_by" in subset
    const ids = (rows: ReadonlyArray<Record<string, string | null>>) => rows.map((r) => Number(r["id"]))
    const got = body.data.map((m) => m.value)
    if (ordered) expect(got).toEqual(expected)
    else expect(ids(got).sort((a, b) => a - b)).toEqual(ids(expected).sort((a, b) => a - b))
    expect(got.length).toBe(expected.length)
    for (const m of body.data) {
      expect(m.key).toBe(itemsKey(m.value["id"]!))
      expect(m.headers).toEqual({ operation: "insert", relation: ["public", ITEMS], snapshot_mark: body.metadata.snapshot_mark })
    }
  })

  it("answers with the snapshot's metadata as decimal strings, the protocol's headers and no etag", async () => {
    const handle = await handleOf(base)
    const side = new pg.Client({ connectionString: inject("databaseUrl") })
    await side.connect()
    try {
      const lsnBefore = (await textRows(`SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::text AS lsn`))[0]!["lsn"]!
      // A transaction in progress while the snapshot is taken: its xid is in xip_list, its change is not in the rows.
      await side.query("BEGIN")
      await side.query(`UPDATE ${ITEMS} SET title = 'uncommitted' WHERE id = 2`)
      const xid = (await side.query<{ xid: string }>("SELECT pg_current_xact_id()::text AS xid")).rows[0]!.xid
      // A later transaction that completes moves xmax past the open one, which is then listed as in progress.
      await pool.query("SELECT pg_current_xact_id()")
      const reply = await get({ ...base, offset: "-1", subset__where: "id <= 3", subset__order_by: "id" }, { "if-none-match": "*" })
      await side.query("ROLLBACK")
      const after = (await textRows(
        `SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::text AS lsn, pg_current_xact_id()::text AS xid`
      ))[0]!

      expect(reply.status).toBe(200)
      expect(reply.headers.get("cache-control")).toBe("no-cache")
      expect(reply.headers.get("electric-snapshot")).toBe("true")
      expect(reply.headers.get("electric-handle")).toBe(handle)
      expect(JSON.parse(header(reply, "electric-schema"))).toEqual({
        id: { type: "int4", pk_index: 0, not_null: true },
        project_id: { type: "int4" },
        title: { type: "text" },
        n: { type: "int4" }
      })
      expect(header(reply, "electric-offset")).toMatch(/^\d+_(\d+|inf)$/)
      expect(reply.headers.get("etag")).toBeNull()
      expect(reply.headers.get("content-type")).toMatch(/^application\/json/)

      const body = subsetOf(reply)
      expect(Object.keys(body).sort()).toEqual(["data", "metadata"])
      const { xmin, xmax, xip_list, snapshot_mark, database_lsn } = body.metadata
      for (const decimal of [xmin, xmax, database_lsn, ...xip_list]) expect(decimal).toMatch(/^\d+$/)
      expect(Number.isSafeInteger(snapshot_mark)).toBe(true)
      expect(xip_list).toContain(xid)
      expect(BigInt(xmin)).toBeLessThanOrEqual(BigInt(xid))
      expect(BigInt(xid)).toBeLessThan(BigInt(xmax))
      expect(BigInt(xmax)).toBeLessThanOrEqual(BigInt(after["xid"]!))
      expect(BigInt(database_lsn)).toBeGreaterThanOrEqual(BigInt(lsnBefore))
      expect(BigInt(database_lsn)).toBeLessThanOrEqual(BigInt(after["lsn"]!))
      expect(body.data.map((m) => m.value)).toEqual(
        await textRows(`SELECT id, project_id, title, n FROM ${ITEMS} WHERE id <= 3 ORDER BY id`)
      )
      expect(body.data[1]!.value["title"]).toBe("item 2")
    } finally {
      await side.end()
    }
  })

  it("echoes a real request offset as electric-offset; from -1 answers an offset the shape can be read from", async () => {
    const handle = await handleOf(base)
    const fromReal = await get({ ...base, offset: "0_0", handle, subset__where: "id = 1" })
    expect(fromReal.status).toBe(200)
    expect(header(fromReal, "electric-offset")).toBe("0_0")
    expect(header(fromReal, "electric-handle")).toBe(handle)

    const fromStart = await get({ ...base, offset: "-1", subset__where: "id = 1" })
    const offset = header(fromStart, "electric-offset")
    const next = await get({ ...base, offset, handle })
    expect(next.status).toBe(200)
    expect(JSON.parse(next.text)).toEqual([expect.objectContaining({ headers: expect.objectContaining({ control: "up-to-date" }) })])
  })

  it("intersects the shape's where (with its own params) and the subset's", async () => {
    const shape = { ...base, where: "project_id <> $1", "params[1]": "4" }
    const body = subsetOf(
      await get({
        ...shape,
        offset: "-1",
        subset__where: "n < $1 OR title IS NULL",
        subset__params: JSON.stringify({ "1": "250" }),
        subset__order_by: "id"
      })
    )
    const expected = await textRows(
      `SELECT id, project_id, title, n FROM ${ITEMS} WHERE project_id <> 4 AND (n < 250 OR title IS NULL) ORDER BY id`
    )
    expect(expected.length).toBeGreaterThan(5)
    expect(body.data.map((m) => m.value)).toEqual(expected)
  })

  it("sends only the shape's columns, while where and order_by may use any column of the table", async () => {
    const body = subsetOf(
      await get({
        ...base,
        columns: "id,title",
        offset: "-1",
        subset__where: "n >= $1",
        subset__params: `["300"]`,
        subset__order_by: "n DESC NULLS LAST, id",
        subset__limit: "6"
      })
    )
    expect(body.data.map((m) => m.value)).toEqual(
      await textRows(`SELECT id, title FROM ${ITEMS} WHERE n >= 300 ORDER BY n DESC NULLS LAST, id LIMIT 6`)
    )
  })

  it("reads a subset whose where has a subquery, and one on a shape whose where has one", async () => {
    const inActive = `project_id IN (SELECT id FROM ${PROJECTS} WHERE active)`
    const sub = subsetOf(await get({ ...base, offset: "-1", subset__where: `${inActive} AND n >= $1`, subset__params: `["200"]` }))
    const expected = await textRows(`SELECT id, project_id, title, n FROM ${ITEMS} WHERE ${inActive} AND n >= 200 ORDER BY id`)
    expect(expected.length).toBeGreaterThan(3)
    expect([...sub.data.map((m) => m.value)].sort((a, b) => Number(a["id"]) - Number(b["id"]))).toEqual(expected)

    const onSubqueryShape = subsetOf(
      await get({ table: ITEMS, where: inActive, offset: "-1", subset__where: "title LIKE 'item 1%'", subset__order_by: "id DESC" })
    )
    expect(onSubqueryShape.data.map((m) => m.value)).toEqual(
      await textRows(`SELECT id, project_id, title, n FROM ${ITEMS} WHERE ${inActive} AND title LIKE 'item 1%' ORDER BY id DESC`)
    )
  })

  it("creates the shape for a subset request at offset -1 and answers with its handle", async () => {
    const definition = { ...base, where: "id BETWEEN 10 AND 19" }
    const reply = await get({ ...definition, offset: "-1", subset__where: "id > 15", subset__order_by: "id" })
    const body = subsetOf(reply)
    expect(body.data.map((m) => m.value["id"])).toEqual(["16", "17", "18", "19"])
    expect(await handleOf(definition)).toBe(header(reply, "electric-handle"))
  })

  it("answers a stale handle with 409 and the definition's current handle", async () => {
    const definition = { ...base, where: "id BETWEEN 20 AND 29" }
    const old = await handleOf(definition)
    const deleted = await fetch(shapeUrl({ handle: old }), { method: "DELETE" })
    expect(deleted.status).toBe(202)
    const reply = await get({ ...definition, offset: "0_0", handle: old, subset__where: "id > 25" })
    expect(reply.status).toBe(409)
    const current = header(reply, "electric-handle")
    expect(current).not.toBe(old)
    expect(JSON.parse(reply.text)).toEqual([{ headers: { control: "must-refetch" } }])
    const again = subsetOf(await get({ ...definition, offset: "0_0", handle: current, subset__where: "id > 25", subset__order_by: "id" }))
    expect(again.data.map((m) => m.value["id"])).toEqual(["26", "27", "28", "29"])

    const unknown = await get({ ...definition, offset: "0_0", handle: "1-2", subset__where: "id > 25" })
    expect(unknown.status).toBe(409)
    expect(header(unknown, "electric-handle")).toBe(current)
  })

  it("refuses a position the log has not reached, as a long-poll from it would be", async () => {
    const definition = { ...base, where: "id BETWEEN 30 AND 39" }
    const handle = await handleOf(definition)
    const reply = await get({ ...definition, offset: "999999999_5", handle, subset__where: "id > 35" })
    expect(reply.status).toBe(400)
    expect(JSON.parse(reply.text)).toEqual({ message: "Invalid request", errors: { offset: ["out of bounds for this shape"] } })
  })

    it("ignores unknown parameters and the _expr forms", async () => {
    const body = subsetOf(
      await get({
        ...base,
        offset: "-1",
        subset__where: "id < 3",
        subset__where_expr: JSON.stringify({ type: "func", name: "eq", args: [] }),
        subset__order_by_expr: "[]",
        subset__order_by: "id",
        customParam: "x",
        "cache-buster": "1"
      })
    )
    expect(body.data.map((m) => m.value["id"])).toEqual(["1", "2"])
  })
})

describe("POST subset snapshots", () => {
  const base = { table: ITEMS, log: "changes_only", offset: "-1" }
  const values = (reply: Reply) => subsetOf(reply).data.map((m) => m.value)

  it("gives the GET form's rows, with the subset at the top level or under `subset`", async () => {
    const subset = { where: "n BETWEEN $1 AND $2", params: { "1": 100, "2": "400" }, order_by: "n DESC NULLS FIRST, id", limit: 9, offset: 2 }
    const viaGet = values(
      await get({
        ...base,
        subset__where: subset.where,
        subset__params: JSON.stringify(subset.params),
        subset__order_by: subset.order_by,
        subset__limit: "9",
        subset__offset: "2"
      })
    )
    const expected = await textRows(
      `SELECT id, project_id, title, n FROM ${ITEMS} WHERE n BETWEEN 100 AND 400 ORDER BY n DESC NULLS FIRST, id LIMIT 9 OFFSET 2`
    )
    expect(viaGet).toEqual(expected)
    const topLevel = await post(base, JSON.stringify(subset))
    expect(topLevel.headers.get("electric-snapshot")).toBe("true")
    expect(topLevel.headers.get("cache-control")).toBe("no-cache")
    expect(values(topLevel)).toEqual(expected)
    expect(values(await post(base, JSON.stringify({ subset })))).toEqual(expected)
    expect(values(await post(base, JSON.stringify({ ...subset, params: [100, "400"] })))).toEqual(expected)
  })

  it("lets the body override the query's subset, and takes a subset from the query with an empty body", async () => {
    const query = { ...base, subset__where: "id > 50", subset__order_by: "id", subset__limit: "1" }
    expect(values(await post(query, JSON.stringify({ limit: 3 }))).map((r) => r["id"])).toEqual(["51", "52", "53"])
    expect(values(await post(query, JSON.stringify({ where: "id > 55" }))).map((r) => r["id"])).toEqual(["56"])
    expect(values(await post(query, "")).map((r) => r["id"])).toEqual(["51"])
  })
})

describe("refused subset requests", () => {
  const base = { table: ITEMS, log: "changes_only", offset: "-1" }
  const errorsOf = (reply: Reply) => {
    expect({ status: reply.status, text: reply.text }).toMatchObject({ status: 400 })
    const body = JSON.parse(reply.text) as { message: string; errors: Record<string, Array<string>> }
    expect(body.message).toBe("Invalid request")
    expect(reply.headers.get("electric-snapshot")).toBeNull()
    return body.errors
  }

  it.each([
    ["a syntax error", { subset__where: "1 x 1" }, { subset__where: [`At location 17: syntax error at or near "x"`] }],
    ["an unknown column in where", { subset__where: "nope = 1" }, { subset__where: [`Unknown reference "nope"`] }],
    ["a parameter without a value", { subset__where: "id = $1" }, { subset__where: ["Parameter $1 has no value: subset__params[1] is missing"] }],
    [
      "a parameter of the wrong type",
      { subset__where: "id = $1", subset__params: `{"1":"abc"}` },
      { subset__where: [`invalid input syntax for type integer: "abc"`] }
    ],
    [
      "a malformed array parameter",
      { subset__where: "id = ANY($1)", subset__params: `{"1":"{1,"}` },
      { subset__where: [`malformed array literal: "{1," (unexpected end of input)`] }
    ],
    [
      "a multidimensional array parameter",
      { subset__where: "id = ANY($1)", subset__params: `{"1":"{{1},{2}}"}` },
      { subset__where: ["multidimensional arrays are not supported"] }
    ],
    ["an unknown column in order_by", { subset__order_by: "nope" }, { subset__order_by: [`Unknown column "nope"`] }],
    ["a function in order_by", { subset__order_by: "lower(title)" }, { subset__order_by: ["only columns can be ordered by, not a function call"] }],
    ["limit 0", { subset__limit: "0", subset__order_by: "id" }, { subset__limit: ["must be greater than 0"] }],
    ["a limit that is not a number", { subset__limit: "x", subset__order_by: "id" }, { subset__limit: ["is invalid"] }],
    ["a negative offset", { subset__offset: "-1", subset__order_by: "id" }, { subset__offset: ["must be greater than or equal to 0"] }],
    ["limit without order_by", { subset__limit: "5" }, { subset__order_by: ["order_by is required when limit or offset is present"] }],
    ["params that are not JSON", { subset__params: "{" }, { subset__params: ["subset__params must be valid JSON"] }],
    ["a params key that is not a number", { subset__params: `{"a":"1"}` }, { subset__params: ["parameter names must be positive integers, got: a"] }],
    ["queryable_columns", { subset__where: "true", queryable_columns: "id" }, { queryable_columns: ["is not supported by this server"] }],
    [
      "experimental_compaction",
      { subset__where: "true", experimental_compaction: "true" },
      { experimental_compaction: ["log compaction is not supported by this server"] }
    ]
  ])("GET with %s is 400 on that parameter", async (_, subset, errors) => {
    expect(errorsOf(await get({ ...base, ...subset }))).toEqual(errors)
  })

  it("refuses live with a subset", async () => {
    const handle = await handleOf({ table: ITEMS, log: "changes_only" })
    const reply = await get({ ...base, offset: "0_0", handle, live: "true", subset__where: "true" })
    expect(errorsOf(reply)).toEqual({ live: ["can't be true for a subset snapshot"] })
  })

  it.each([
    ["{", /^Invalid JSON in request body/],
    ["[]", /^Request body must be a JSON object$/],
    ["\"where\"", /^Request body must be a JSON object$/],
    ["{}", /^a POST request must carry a subset/],
    [`{"table":"other","where":"true"}`, /^only a subset .* may be sent in the body, got: table$/],
    [`{"subset":{"where":"true","handle":"h"}}`, /^unknown subset key: handle$/]
  ])("POST %s → 400 on body", async (body, message) => {
    const errors = errorsOf(await post(base, body))
    expect(Object.keys(errors)).toEqual(["body"])
    expect(errors["body"]).toEqual([expect.stringMatching(message)])
  })

  it.each([
    ["a limit that is not a number", { limit: "many", order_by: "id" }, { subset__limit: ["is invalid"] }],
    ["a where that is not a string", { where: 5 }, { subset__where: ["must be a string"] }],
    [
      "a parameter that is an object",
      { where: "id = $1", params: { "1": { x: 1 } } },
      { subset__params: [`parameter values must be strings, got: {"x":1} for 1`] }
    ],
    ["a NUL in where", { where: "id = 1\u0000 OR true" }, { subset__where: ["Invalid where clause: contains a NUL byte"] }],
    ["a NUL in order_by", { order_by: "id\u0000" }, { subset__order_by: ["must not contain a NUL byte"] }],
    [
      "a NUL in a parameter",
      { where: "title = $1", params: ["a\u0000"] },
      { subset__params: ["parameter values must not contain a NUL byte, got one for 1"] }
    ]
  ])("POST with %s is 400 on that parameter", async (_, body, errors) => {
    expect(errorsOf(await post(base, JSON.stringify(body)))).toEqual(errors)
  })

  const rawPost = (body: Buffer, chunked: boolean): Promise<Reply> =>
    new Promise((resolve, reject) => {
      const url = new URL(shapeUrl(base))
      const req = http.request(
        url,
        { method: "POST", headers: chunked ? { "transfer-encoding": "chunked" } : { "content-length": String(body.length) } },
        (res) => {
          const chunks: Array<Buffer> = []
          res.on("data", (c: Buffer) => chunks.push(c))
          res.on("end", () =>
            resolve({
              status: res.statusCode ?? 0,
              headers: new Headers(res.headers as Record<string, string>),
              text: Buffer.concat(chunks).toString("utf8")
            }))
        }
      )
      // The server may answer before it has read the whole body; a connection dropped without an answer fails.
      let answered = false
      req.on("response", () => {
        answered = true
      })
      req.on("error", (e: NodeJS.ErrnoException) => {
        if (!answered) reject(new Error(`no response (chunked: ${chunked}, ${body.length} bytes): ${e.code ?? e.message}`))
      })
      if (chunked) {
        for (let at = 0; at < body.length; at += 64 * 1024) req.write(body.subarray(at, at + 64 * 1024))
        req.end()
      } else req.end(body)
    })

  const MIB = 1024 * 1024
  const bodyOfSize = (size: number) => {
    const head = `{"where":"id = 1`
    const tail = `"}`
    return Buffer.from(head + " ".repeat(size - head.length - tail.length) + tail)
  }

  it("reads a body of exactly 1 MiB and answers 413 for one byte more, declared or chunked", async () => {
    const atLimit = await rawPost(bodyOfSize(MIB), false)
    expect(subsetOf(atLimit).data.map((m) => m.value["id"])).toEqual(["1"])
    for (const chunked of [false, true]) {
      const over = await rawPost(bodyOfSize(MIB + 1), chunked)
      expect({ chunked, status: over.status }).toEqual({ chunked, status: 413 })
      expect(JSON.parse(over.text)).toEqual({ message: "Request body too large", errors: { body: ["is larger than 1 MiB"] } })
    }
  })

  describe("injection attempts", () => {
    it.each([
      ["subset__order_by", "sub_canary()"],
      ["subset__order_by", "id, sub_canary()"],
      ["subset__order_by", "id; SELECT sub_canary()"],
      ["subset__order_by", "(SELECT sub_canary())"],
      ["subset__order_by", "id) , (SELECT sub_canary()) --"],
      ["subset__order_by", "id LIMIT (SELECT sub_canary())"],
      ["subset__order_by", "id USING <"],
      ["subset__order_by", "1"],
      ["subset__order_by", "$1"],
      ["subset__order_by", "title COLLATE \"C\""],
      ["subset__order_by", `id; DROP TABLE ${ITEMS}`],
      ["subset__order_by", `"id"" DESC; DROP TABLE ${ITEMS}; --"`],
      ["subset__where", "sub_canary() = 1"],
      ["subset__where", "true; SELECT sub_canary()"],
      ["subset__where", "true) OR (sub_canary() = 1"],
      ["subset__where", "id IN (SELECT sub_canary())"],
      ["subset__where", `id IN (SELECT id FROM ${PROJECTS} WHERE sub_canary() = 1)`],
      ["subset__where", `true; DROP TABLE ${ITEMS}`],
      ["subset__where", "id = 1 UNION SELECT sub_canary()"]
    ])("%s=%s is 400 on that parameter and never reaches Postgres", async (param, text) => {
      const query: Record<string, string> = { ...base, [param]: text }
      if (param === "subset__order_by") query["subset__where"] = "true"
      const errors = errorsOf(await get(query))
      expect(Object.keys(errors)).toEqual([param])
      const viaPost = errorsOf(await post(base, JSON.stringify({ [param.slice("subset__".length)]: text })))
      expect(viaPost).toEqual(errors)
      expect((await pool.query(`SELECT count(*)::int AS n FROM ${CANARY}`)).rows[0].n).toBe(0)
    })

    it("takes a parameter as a value, never as SQL", async () => {
      const attack = `x'); SELECT sub_canary(); DROP TABLE ${ITEMS}; --`
      const body = subsetOf(await get({ ...base, subset__where: "title = $1 OR title = $2", subset__params: JSON.stringify([attack, "item 1"]) }))
      expect(body.data.map((m) => m.value["id"])).toEqual(["1"])
      expect(errorsOf(await get({ ...base, subset__where: "id = $1", subset__params: JSON.stringify(["1; SELECT sub_canary()"]) })))
        .toEqual({ subset__where: [`invalid input syntax for type integer: "1; SELECT sub_canary()"`] })
      expect((await pool.query(`SELECT count(*)::int AS n FROM ${CANARY}`)).rows[0].n).toBe(0)
      expect((await pool.query(`SELECT count(*)::int AS n FROM ${ITEMS}`)).rows[0].n).toBe(60)
    })
  })
})

describe("the official client", () => {
  type LiveRow = { id: number; project_id: number; title: string | null; n: number }

  /** Postgres's rows of `LIVE` with these ids, parsed as the client parses them. */
  const liveRows = async (ids: Iterable<number>): Promise<Array<LiveRow>> =>
    (await pool.query<LiveRow>(`SELECT id, project_id, title, n FROM ${LIVE} WHERE id = ANY($1) ORDER BY id`, [[...ids]])).rows
      .map((r) => ({ ...r }))

  const byId = (rows: ReadonlyArray<Row>) => [...rows].sort((a, b) => (a["id"] as number) - (b["id"] as number))

  const streamOf = (where: string, options: Partial<ShapeStreamOptions> = {}) =>
    new ShapeStream<LiveRow>({ url: `${server.baseUrl}/v1/shape`, params: { table: LIVE, where }, log: "changes_only", ...options })

  it("requestSnapshot: the Shape holds the subset, then follows updates, moves, deletes and a parallel commit", async () => {
    const stream = streamOf("project_id <> 4")
    const shape = new Shape(stream as never) as Shape<LiveRow>
    const errors: Array<unknown> = []
    const unsubscribe = stream.subscribe(() => undefined, (e) => errors.push(e))
    const side = new pg.Client({ connectionString: inject("databaseUrl") })
    await side.connect()
    try {
      expect(await shape.rows).toEqual([])

      const expectedSubset = (await pool.query<{ id: number }>(
        `SELECT id FROM ${LIVE} WHERE project_id <> 4 AND n <= 200 ORDER BY n DESC LIMIT 12`
      )).rows.map((r) => r.id)
      const [parallel, a, b, c, d] = expectedSubset
      // Committed only after the snapshot is taken: the snapshot must not count it as seen.
      await side.query("BEGIN")
      await side.query(`UPDATE ${LIVE} SET title = 'parallel' WHERE id = $1`, [parallel])
      const xid = (await side.query<{ xid: string }>("SELECT pg_current_xact_id()::text AS xid")).rows[0]!.xid
      const snapshot = await stream.requestSnapshot({ where: "n <= $1", params: { "1": 200 }, orderBy: "n DESC", limit: 12 })
      await side.query("COMMIT")

      expect(snapshot.data.map((m) => m.value.id)).toEqual(expectedSubset)
      expect(snapshot.data.find((m) => m.value.id === parallel)!.value.title).toBe(`live ${parallel}`)
      // Not visible in the snapshot: listed as in progress, or at or past xmax.
      const { xmax, xip_list } = snapshot.metadata
      expect(xip_list.map(String).includes(xid) || BigInt(xid) >= BigInt(xmax)).toBe(true)

      const held = new Set(expectedSubset)
      const shapeIds = () => byId(shape.currentRows).map((r) => r["id"])
      await waitFor("the snapshot rows in the Shape", () => shapeIds().length === held.size)

      await waitFor("the parallel update", () => shape.currentRows.find((r) => r["id"] === parallel)?.["title"] === "parallel")

      const movedIn = (await pool.query<{ id: number }>(`SELECT id FROM ${LIVE} WHERE project_id = 4 ORDER BY id LIMIT 1`)).rows[0]!.id
      const notHeld = (await pool.query<{ id: number }>(
        `SELECT id FROM ${LIVE} WHERE project_id <> 4 AND NOT (id = ANY($1)) ORDER BY id LIMIT 1`,
        [[...held]]
      )).rows[0]!.id
      await pool.query(`UPDATE ${LIVE} SET title = 'renamed' WHERE id = $1`, [a])
      await pool.query(`UPDATE ${LIVE} SET n = 9000 WHERE id = $1`, [b]) // out of the subset, still in the shape
      await pool.query(`UPDATE ${LIVE} SET project_id = 4 WHERE id = $1`, [c]) // out of the shape
      await pool.query(`DELETE FROM ${LIVE} WHERE id = $1`, [d])
      await pool.query(`INSERT INTO ${LIVE} VALUES (1000, 1, 'inserted', 5)`)
      await pool.query(`UPDATE ${LIVE} SET project_id = 1 WHERE id = $1`, [movedIn]) // into the shape
      await pool.query(`UPDATE ${LIVE} SET title = 'not held' WHERE id = $1`, [notHeld])
      await pool.query(`UPDATE ${LIVE} SET n = n + 1 WHERE id = ANY($1)`, [[a, parallel]])

      const expectedIds = new Set([...held].filter((id) => id !== c && id !== d))
      expectedIds.add(1000)
      expectedIds.add(movedIn)
      const expected = await liveRows(expectedIds)
      await waitFor("the Shape to match Postgres", () => JSON.stringify(byId(shape.currentRows)) === JSON.stringify(expected))
      expect(byId(shape.currentRows)).toEqual(expected)
      expect(shapeIds()).not.toContain(notHeld)

      // A second snapshot over POST adds the rows it selects; later changes to them are applied too.
      await stream.requestSnapshot({ where: "id = ANY($1)", params: { "1": `{${notHeld},${c}}` }, method: "POST" })
      await pool.query(`UPDATE ${LIVE} SET n = -1 WHERE id = $1`, [notHeld])
      expectedIds.add(notHeld)
      const expectedAfter = await liveRows(expectedIds)
      await waitFor("the second snapshot and its follow-up", () => JSON.stringify(byId(shape.currentRows)) === JSON.stringify(expectedAfter))
      expect(errors).toEqual([])
    } finally {
      await side.end()
      unsubscribe()
      stream.unsubscribeAll()
    }
  })

  it("requestSnapshot before the stream has synced creates the shape and is followed by its changes", async () => {
    const stream = streamOf("n >= 0")
    const messages: Array<Message<LiveRow>> = []
    const unsubscribe = stream.subscribe((batch) => {
      messages.push(...batch)
    })
    try {
      const { data } = await stream.requestSnapshot({ where: "id <= $1", params: { "1": "5" }, orderBy: "id" })
      expect(data.map((m) => m.value)).toEqual(
        (await pool.query<LiveRow>(`SELECT id, project_id, title, n FROM ${LIVE} WHERE n >= 0 AND id <= 5 ORDER BY id`)).rows
          .map((r) => ({ ...r }))
      )
      await pool.query(`UPDATE ${LIVE} SET title = 'after cold snapshot' WHERE id = 5`)
      await waitFor("the update after the snapshot", () =>
        messages.some((m) => isChangeMessage(m) && m.key.endsWith(`/"5"`) && m.value.title === "after cold snapshot"))
      const inserted = messages.filter((m): m is ChangeMessage<LiveRow> => isChangeMessage(m) && m.headers.operation === "insert")
      expect(inserted.map((m) => m.value.id)).toEqual(data.map((m) => m.value.id))
    } finally {
      unsubscribe()
      stream.unsubscribeAll()
    }
  })

  it("fetchSnapshot over GET and POST returns the rows without changing the stream", async () => {
    const methods: Array<string> = []
    const fetchClient = (input: string | URL | Request, init?: RequestInit) => {
      if (String(input).includes("subset__") || init?.method === "POST") methods.push(init?.method ?? "GET")
      return fetch(input, init)
    }
    // A definition of its own: its log holds only what happens from now on.
    const stream = streamOf("project_id <> 4 AND id > 0", { subsetMethod: "POST", fetchClient: fetchClient as typeof fetch })
    const shape = new Shape(stream as never) as Shape<LiveRow>
    try {
      await shape.rows
      // Once the stream has this insert, no write is left for it to receive: its position stays put.
      await pool.query(`INSERT INTO ${LIVE} VALUES (2000, 1, 'marker', 100000)`)
      await waitFor("the marker row", () => stream.isUpToDate && shape.currentRows.some((r) => r["id"] === 2000))
      const before = { offset: stream.lastOffset, handle: stream.shapeHandle, rows: shape.currentRows }
      const subset = { where: "n BETWEEN $1 AND $2", params: { "1": "50", "2": "150" }, orderBy: "id DESC", limit: 4 }
      const expected = (await pool.query<LiveRow>(
        `SELECT id, project_id, title, n FROM ${LIVE} WHERE project_id <> 4 AND n BETWEEN 50 AND 150 ORDER BY id DESC LIMIT 4`
      )).rows.map((r) => ({ ...r }))
      const viaDefault = await stream.fetchSnapshot(subset)
      const viaGet = await stream.fetchSnapshot({ ...subset, method: "GET" })
      for (const result of [viaDefault, viaGet]) {
        expect(result.data.map((m) => m.value)).toEqual(expected)
        expect(result.responseHandle).toBe(before.handle)
        expect(result.metadata.snapshot_mark).toEqual(expect.any(Number))
      }
      expect(methods).toEqual(["POST", "GET"])
      expect({ offset: stream.lastOffset, handle: stream.shapeHandle, rows: shape.currentRows }).toEqual(before)
      expect(shape.currentRows).toEqual(await liveRows([2000]))
    } finally {
      stream.unsubscribeAll()
    }
  })
})
