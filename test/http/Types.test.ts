import { type Row, Shape, ShapeStream } from "@electric-sql/client"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { parseClientValue, parsePgArray, parseScalar, pgClientRows } from "../support/clientValues.js"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

const STREAM = "types_all"
const TABLE = "ty_all"
let server: RunningSyncline
let pool: pg.Pool
// Aborted before the server stops, so shutdown does not answer the stream's in-flight long-poll.
const streams = new AbortController()

const COLUMNS = `
  id int PRIMARY KEY,
  c_int2 int2,
  c_int4 int4,
  c_int8 int8,
  c_numeric numeric(8,3),
  c_float4 float4,
  c_float8 float8,
  c_bool bool,
  c_text text,
  c_varchar varchar(20),
  c_char char(4),
  c_uuid uuid,
  c_date date,
  c_time time,
  c_timetz timetz,
  c_timestamp timestamp,
  c_timestamptz timestamptz,
  c_interval interval,
  c_bytea bytea,
  c_json json,
  c_jsonb jsonb,
  c_int4_arr int4[],
  c_int8_arr int8[],
  c_text_arr text[],
  c_int4_2d int4[][],
  c_float8_arr float8[],
  c_jsonb_arr jsonb[],
  c_bool_arr bool[],
  c_mood ty_mood,
  c_mood_arr ty_mood[],
  c_posint ty_posint`

const INSERT = `INSERT INTO ${TABLE} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
  $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)`

/** One value per column after `id`, as Postgres input text (null = SQL NULL). */
type Values = ReadonlyArray<string | null>

const ROW_A: Values = [
  "32767",
  "2147483647",
  "9223372036854775807",
  "12.5",
  "1.1",
  "4.5",
  "true",
  "plain text",
  "varchar value",
  "ab",
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  "2024-01-02",
  "10:11:12.5",
  "10:11:12+02",
  "2024-01-02 03:04:05.123",
  "2024-01-02 03:04:05+02",
  "1 day 2 hours 3 minutes",
  "\\xdeadbeef",
  '{"a": 1, "b": [true, null]}',
  '{"b": [1, 2], "a": {"nested": "x"}}',
  "{1,NULL,3}",
  "{9223372036854775807,-9223372036854775808,0}",
  '{"a b",c,NULL,"d,e","quote\\"d","back\\\\slash","","NULL","{brace}"}',
  "{{1,2},{3,4}}",
  "{1.5,Infinity,-Infinity,NaN}",
  '{"{\\"a\\": 1}","[1, 2]","\\"str\\"",null}',
  "{t,f,NULL}",
  "happy",
  "{happy,sad,NULL}",
  "5"
]

const ROW_B: Values = [
  "-32768",
  "-2147483648",
  "-9223372036854775808",
  "-0.001",
  "-Infinity",
  "NaN",
  "false",
  "with 'quotes', \"double\", \\ backslash, tab\t, newline\n and ünïcödé ✓",
  "",
  "abcd",
  "00000000-0000-0000-0000-000000000000",
  "0044-03-15 BC",
  "00:00:00",
  "23:59:59.999999-11:30",
  "infinity",
  "-infinity",
  "-1 years -2 months 3 days 04:05:06.5",
  "\\x",
  '[1, "two", {"three": 3}]',
  '"just a string"',
  "{}",
  "{}",
  '{" leading and trailing ",NULL}',
  "{{NULL,2},{3,NULL}}",
  "{-0,1e308,5e-324}",
  "{}",
  "{f}",
  "sad",
  "{}",
  "2147483647"
]

const ROW_C: Values = [
  "0",
  "0",
  "0",
  "99999.999",
  "3.4028235e38",
  "Infinity",
  "true",
  "NULL",
  "x,y",
  "a",
  "ffffffff-ffff-ffff-ffff-ffffffffffff",
  "infinity",
  "24:00:00",
  "00:00:00+00",
  "1999-12-31 23:59:59.999999",
  "2000-01-01 00:00:00+00",
  "0 seconds",
  "\\x00ff5c22",
  "null",
  "12.50",
  "{-1}",
  "{-1}",
  '{"\\\\","\\""}',
  "{{0}}",
  "{-Infinity}",
  '{"{}","[]"}',
  "{t}",
  "ok",
  "{ok}",
  "1"
]

const ALL_NULL: Values = ROW_A.map(() => null)

const insert = (id: number, values: Values) => pool.query(INSERT, [id, ...values])

const byId = (rows: ReadonlyArray<Record<string, unknown>>) => [...rows].sort((a, b) => Number(a.id) - Number(b.id))

const bigintSafe = (_: string, v: unknown) => (typeof v === "bigint" ? `${v}n` : typeof v === "number" ? `${Object.is(v, -0) ? "-0" : v}` : v)

const waitFor = async (check: () => boolean | Promise<boolean>, timeoutMs = 15_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out")
    await new Promise((r) => setTimeout(r, 50))
  }
}

beforeAll(async () => {
  pool = testPool()
  await pool.query(`CREATE TYPE ty_mood AS ENUM ('happy', 'sad', 'ok')`)
  await pool.query(`CREATE DOMAIN ty_posint AS int4 CHECK (VALUE > 0)`)
  await pool.query(`CREATE TABLE ${TABLE} (${COLUMNS})`)
  await insert(1, ROW_A)
  await insert(2, ROW_B)
  await insert(3, ALL_NULL)
  await insert(4, ROW_C)
  server = await startSyncline({ streamId: STREAM, settings: { longPollTimeoutMs: 2_000 } })
})

afterAll(async () => {
  streams.abort()
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

describe("client value parsing rules", () => {
  it("parses Postgres array literals like the client", () => {
    const text = (t: string) => parseScalar(t, "text")
    expect(parsePgArray('{"a b",c,NULL,"d,e","q\\"x","NULL",""}', text)).toEqual(["a b", "c", null, "d,e", 'q"x', "NULL", ""])
    expect(parsePgArray("{{1,2},{3,NULL}}", (t) => parseScalar(t, "int4"))).toEqual([[1, 2], [3, null]])
    expect(parsePgArray("{}", text)).toEqual([])
    expect(parseClientValue("{t,f}", { type: "bool", dims: 1 })).toEqual([true, false])
    expect(parseClientValue("f", { type: "bool", dims: 0 })).toBe(false)
    expect(parseClientValue("true", { type: "bool", dims: 0 })).toBe(true)
    expect(parseClientValue("NaN", { type: "float8", dims: 0 })).toBeNaN()
    expect(parseClientValue("-9223372036854775808", { type: "int8", dims: 0 })).toBe(-9223372036854775808n)
    expect(parseClientValue("ab  ", { type: "bpchar", dims: 0 })).toBe("ab  ")
    expect(parseClientValue(null, { type: "int4", dims: 1 })).toBeNull()
  })
})

describe("every type through snapshot and log, as @electric-sql/client parses it", () => {
  it("matches Postgres's text form for snapshot rows and for live inserts, updates and deletes", async () => {
    const stream = new ShapeStream<Row>({
      url: `${server.baseUrl}/v1/shape`,
      params: { table: TABLE },
      signal: streams.signal
    })
    const shape = new Shape(stream as never) as Shape<Row>

    const snapshot = byId(await shape.rows)
    const expectedSnapshot = await pgClientRows(pool, TABLE)
    expect(snapshot.map((r) => r.id)).toEqual([1, 2, 3, 4])
    expect(snapshot).toEqual(expectedSnapshot)

    // Spot checks that the comparison really covers the client's parsing rules.
    const a = snapshot[0]!
    expect(a.c_int8).toBe(9223372036854775807n)
    expect(a.c_bool).toBe(true)
    expect(a.c_char).toBe("ab  ")
    expect(a.c_numeric).toBe("12.500")
    expect(a.c_jsonb).toEqual({ a: { nested: "x" }, b: [1, 2] })
    expect(a.c_text_arr).toEqual(["a b", "c", null, "d,e", 'quote"d', "back\\slash", "", "NULL", "{brace}"])
    expect(a.c_float8_arr).toEqual([1.5, Infinity, -Infinity, NaN])
    expect(a.c_int8_arr).toEqual([9223372036854775807n, -9223372036854775808n, 0n])
    expect(a.c_jsonb_arr).toEqual([{ a: 1 }, [1, 2], "str", null])
    expect(a.c_posint).toBe("5")
    expect(a.c_mood_arr).toEqual(["happy", "sad", null])
    expect(Object.entries(snapshot[2]!).filter(([k, v]) => k !== "id" && v !== null)).toEqual([])

    // Live path: inserts of the same values (bool arrives as t/f from pgoutput), then updates
    // between values, to and from NULL, and a delete.
    await insert(11, ROW_A)
    await insert(12, ROW_B)
    await insert(13, ALL_NULL)
    await insert(14, ROW_C)
    await pool.query(
      `UPDATE ${TABLE} AS t SET (${columnList}) = (SELECT ${columnList} FROM ${TABLE} WHERE id = 2) WHERE t.id IN (1, 3)`
    )
    await pool.query(
      `UPDATE ${TABLE} AS t SET (${columnList}) = (SELECT ${columnList} FROM ${TABLE} WHERE id = 13) WHERE t.id = 4`
    )
    await pool.query(
      `UPDATE ${TABLE} SET c_bool = NOT c_bool, c_float8 = 'NaN', c_int8 = -1, c_char = 'z', c_text_arr = '{"x y",NULL}' WHERE id = 14`
    )
    await pool.query(`DELETE FROM ${TABLE} WHERE id = 12`)

    const expected = await pgClientRows(pool, TABLE)
    expect(expected.map((r) => r.id)).toEqual([1, 2, 3, 4, 11, 13, 14])
    await waitFor(() => JSON.stringify(byId(shape.currentRows), bigintSafe) === JSON.stringify(expected, bigintSafe))
    expect(byId(shape.currentRows)).toEqual(expected)

    // Rows inserted live with the same input as snapshot rows parse to the same values.
    const live = byId(shape.currentRows)
    const row = (id: number) => live.find((r) => r.id === id)!
    expect({ ...row(11), id: 0 }).toEqual({ ...snapshot[0]!, id: 0 })
    expect({ ...row(13), id: 0 }).toEqual({ ...snapshot[2]!, id: 0 })
    expect(row(14).c_bool).toBe(false)
    expect(row(14).c_char).toBe("z   ")
    stream.unsubscribeAll()
  })
})

const columnList = [
  "c_int2",
  "c_int4",
  "c_int8",
  "c_numeric",
  "c_float4",
  "c_float8",
  "c_bool",
  "c_text",
  "c_varchar",
  "c_char",
  "c_uuid",
  "c_date",
  "c_time",
  "c_timetz",
  "c_timestamp",
  "c_timestamptz",
  "c_interval",
  "c_bytea",
  "c_json",
  "c_jsonb",
  "c_int4_arr",
  "c_int8_arr",
  "c_text_arr",
  "c_int4_2d",
  "c_float8_arr",
  "c_jsonb_arr",
  "c_bool_arr",
  "c_mood",
  "c_mood_arr",
  "c_posint"
].join(", ")
