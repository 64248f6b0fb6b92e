import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import pg from "pg"
import { inject } from "vitest"
import type { Row } from "../../src/domain/Change.js"
import { parseWhere } from "../../src/where/WhereClause.js"
import { tableInfo } from "./table.js"

// Random where clauses over a table with a column of every supported type are
// run by Postgres and by `matches`; both must select the same rows, and so
// must Postgres given the canonical `sql`.

const TABLE = `where_oracle_${process.pid}_${Date.now().toString(36)}`

const COLUMNS = [
  ["id", "int4", "int4 PRIMARY KEY"],
  ["i2", "int2", "int2"],
  ["i4", "int4", "int4"],
  ["i8", "int8", "int8"],
  ["f4", "float4", "float4"],
  ["f8", "float8", "float8"],
  ["num", "numeric", "numeric"],
  ["t", "text", `text COLLATE "C"`],
  ["vc", "varchar", `varchar(20) COLLATE "C"`],
  ["bc", "bpchar", `char(4) COLLATE "C"`],
  ["nm", "name", "name"],
  ["b", "bool", "bool"],
  ["u", "uuid", "uuid"],
  ["d", "date", "date"],
  ["ts", "timestamp", "timestamp"],
  ["tz", "timestamptz", "timestamptz"]
] as const

type Col = (typeof COLUMNS)[number][0]

const TEXTS = ["", "a", "A", "ab", "ab  ", "abc", "ABC", "a%b", "a_b", "a\\b", "é", "É", "😀", "\uE000", "x y", "ß", "it's"]
const UUIDS = [
  "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
  "00000000-0000-0000-0000-000000000000",
  "ffffffff-ffff-ffff-ffff-ffffffffffff",
  "123e4567-e89b-12d3-a456-426614174000"
]
const DATES = ["2024-01-01", "2024-02-29", "1970-01-01", "0044-03-15 BC", "infinity", "-infinity", "10000-01-01", "1999-12-31"]
const TIMESTAMPS = [
  "2024-01-01 00:00:00",
  "2024-01-01 12:34:56.789",
  "1999-12-31 23:59:59.999999",
  "infinity",
  "-infinity",
  "0044-03-15 12:00:00 BC",
  "294276-12-31 23:59:59",
  "1970-01-01 00:00:00"
]
const TIMESTAMPTZS = [
  "2024-01-01 00:00:00+00",
  "2024-01-01 05:30:00+05:30",
  "2023-12-31 18:30:00-05:30",
  "infinity",
  "-infinity",
  "1999-12-31 23:59:59.999999+00",
  "0044-03-15 12:00:00+00 BC",
  "2024-01-01 12:34:56.789+00"
]

const POOLS: Record<Exclude<Col, "id">, ReadonlyArray<string>> = {
  i2: ["-32768", "32767", "0", "1", "-1", "5", "100"],
  i4: ["-2147483648", "2147483647", "0", "1", "-1", "5", "42"],
  i8: ["-9223372036854775808", "9223372036854775807", "0", "5", "9007199254740993", "-9007199254740993", "123456789012345"],
  f4: ["1.1", "-0", "0", "NaN", "Infinity", "-Infinity", "3.4028235e38", "1e-45", "5", "0.1"],
  f8: ["1.1", "0.1", "-0", "NaN", "Infinity", "-Infinity", "1e308", "5", "9007199254740993", "2.5"],
  num: ["0", "-0.0", "12.500", "-12.5", "123456789012345678901234567890.123456789", "NaN", "Infinity", "-Infinity", "0.000001", "5", "1.1", "9007199254740993"],
  t: TEXTS,
  vc: TEXTS,
  bc: ["", "a", "ab", "ab  ", "abc", "A", " a", "é"],
  nm: ["a", "ab", "ab  ", "B", "é"],
  b: ["true", "false"],
  u: UUIDS,
  d: DATES,
  ts: TIMESTAMPS,
  tz: TIMESTAMPTZS
}

const ROW_COUNT = 48

const mulberry32 = (seed: number) => () => {
  seed |= 0
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const makeRows = (): ReadonlyArray<ReadonlyArray<string | null>> => {
  const random = mulberry32(20240101)
  const rows: Array<Array<string | null>> = []
  for (let id = 1; id <= ROW_COUNT; id++) {
    const row: Array<string | null> = [String(id)]
    for (const [name] of COLUMNS.slice(1)) {
      const pool = POOLS[name as Exclude<Col, "id">]
      row.push(id === 1 || random() < 0.12 ? null : pool[Math.floor(random() * pool.length)]!)
    }
    rows.push(row)
  }
  return rows
}

const quote = (s: string) => `'${s.replace(/'/g, "''")}'`
// Parameters are marked while generating and numbered once the clause is complete.
const param = (value: string) => `\u0001${value}\u0002`

type Kind = "int" | "float" | "numeric" | "text" | "bpchar" | "bool" | "uuid" | "time"

const KIND: Record<Col, Kind> = {
  id: "int",
  i2: "int",
  i4: "int",
  i8: "int",
  f4: "float",
  f8: "float",
  num: "numeric",
  t: "text",
  vc: "text",
  bc: "bpchar",
  nm: "text",
  b: "bool",
  u: "uuid",
  d: "time",
  ts: "time",
  tz: "time"
}

const pick = <A>(values: ReadonlyArray<A>) => fc.constantFrom(...values)

const literal = (col: Col): fc.Arbitrary<string> => {
  switch (KIND[col]) {
    case "int":
      return fc.oneof(
        pick(["0", "1", "-1", "5", "42", "100", "-32768", "32767", "2147483647", "-2147483648", "9223372036854775807"]),
        pick(["-9223372036854775808", "9007199254740993", "123456789012345", "5.0", "1.5", "-0.5", "'5'", "'-1'"]),
        pick(["'5'::float8", "'NaN'::float8", "5::int8", "1e3", "'42'::numeric"]),
        pick(["5", "1", "-1", "42"]).map(param)
      )
    case "float":
      return fc.oneof(
        pick(["1.1", "'1.1'", "0.1", "'0.1'", "'NaN'", "'Infinity'", "'-Infinity'", "5", "'-0'", "2.5", "1e308"]),
        pick(["3.4028235e38", "'1e-45'", "9007199254740993", "'NaN'::numeric", "'1.1'::float4", "'1.1'::float8", "0"]),
        pick(["1.1", "NaN", "5", "-Infinity"]).map(param)
      )
    case "numeric":
      return fc.oneof(
        pick(["12.5", "'12.500'", "-12.5", "'NaN'", "'Infinity'", "'-Infinity'", "5", "1.1", "0", "0.000001", "1e-6"]),
        pick(["'1.1'::float8", "'NaN'::float8", "123456789012345678901234567890.123456789", "9007199254740993", "-0.0"]),
        pick(["-12.50", "NaN", "5"]).map(param)
      )
    case "text":
      return fc.oneof(pick(TEXTS).map(quote), pick(TEXTS).map(param), pick(["'ab  '::bpchar", "'ab'::varchar"]))
    case "bpchar":
      return fc.oneof(
        pick(POOLS.bc).map(quote),
        pick(["'ab  '::text", "'ab'::text", "'ab '::varchar", "'ab'::name"]),
        pick(POOLS.bc).map(param)
      )
    case "bool":
      return fc.oneof(pick(["true", "false", "'t'", "'f'", "'yes'", "'off'"]), pick(["true", "f"]).map(param))
    case "uuid":
      return fc.oneof(
        pick(UUIDS).map(quote),
        pick(UUIDS).map((u) => quote(u.toUpperCase())),
        pick(UUIDS).map((u) => quote(`{${u.replace(/-/g, "")}}`)),
        pick(UUIDS).map(param)
      )
    case "time": {
      const all = [...DATES, ...TIMESTAMPS, ...TIMESTAMPTZS, "2024-01-01T05:30:00Z", "2024-01-01 10:00:00+0530"]
      return fc.oneof(
        pick(all).map(quote),
        pick(DATES).map((d) => `${quote(d)}::date`),
        pick(TIMESTAMPS).map((d) => `${quote(d)}::timestamp`),
        pick(TIMESTAMPTZS).map((d) => `${quote(d)}::timestamptz`),
        pick(all).map(param)
      )
    }
  }
}

// Literals Postgres refuses for a column of that kind: both sides must refuse the clause.
const BAD_LITERALS: Record<Kind, ReadonlyArray<string>> = {
  int: ["'abc'", "'1.5'", "true", "'9223372036854775808'", "'a'::text"],
  float: ["'abc'", "'1e400'", "true", "'1e-400'"],
  numeric: ["'abc'", "true", "'x'::text", "'1..2'"],
  text: ["5", "true", "1.5", "'2024-01-01'::date"],
  bpchar: ["5", "false"],
  bool: ["5", "'maybe'", "'o'", "1.0"],
  uuid: ["'xyz'", "5", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1'", "'a'::text"],
  time: ["'2024-13-01'", "5", "'2024-02-30'", "true", "'2023-02-29'"]
}

const COLS = COLUMNS.map(([name]) => name).filter((c) => c !== "id") as ReadonlyArray<Col>
const COMPARABLE_PAIRS: ReadonlyArray<readonly [Col, Col]> = [
  ["i2", "i8"], ["i4", "i2"], ["i4", "num"], ["i8", "f8"], ["f4", "f8"], ["num", "f4"], ["num", "f8"],
  ["i8", "num"], ["t", "vc"], ["t", "bc"], ["vc", "bc"], ["nm", "t"], ["bc", "nm"], ["d", "ts"], ["d", "tz"],
  ["ts", "tz"], ["b", "b"], ["u", "u"]
]
const OPS = ["=", "<>", "!=", "<", "<=", ">", ">="]
const TEXT_COLS: ReadonlyArray<Col> = ["t", "vc", "bc", "nm"]
const PATTERNS = [
  "%", "a%", "%b", "_b%", "A%", "ab  ", "ab", "%\\%%", "a\\_b", "%😀", "_", "__", "é%", "%É", "", "a_", "%a%", "ab%  ", "%''%"
]

const column = pick(COLS)

const comparison = column.chain((col) =>
  fc.tuple(pick(OPS), literal(col), fc.boolean()).map(([op, lit, flip]) => (flip ? `${lit} ${op} ${col}` : `${col} ${op} ${lit}`))
)
const badComparison = column.chain((col) =>
  fc.tuple(pick(OPS), pick(BAD_LITERALS[KIND[col]])).map(([op, lit]) => `${col} ${op} ${lit}`)
)
const columnComparison = fc
  .tuple(pick(COMPARABLE_PAIRS), pick(OPS), fc.boolean())
  .map(([[a, b], op, flip]) => (flip ? `${b} ${op} ${a}` : `${a} ${op} ${b}`))
const FAMILY: Record<Kind, string> = {
  int: "number",
  float: "number",
  numeric: "number",
  text: "text",
  bpchar: "text",
  bool: "bool",
  uuid: "uuid",
  time: "time"
}
const sameFamily = (col: Col) => pick(COLS.filter((c) => FAMILY[KIND[c]] === FAMILY[KIND[col]]))
const inList = column.chain((col) =>
  fc
    .tuple(
      fc.boolean(),
      fc.array(
        fc.oneof(
          { weight: 6, arbitrary: literal(col) },
          { weight: 1, arbitrary: fc.constant("NULL") },
          { weight: 1, arbitrary: sameFamily(col) }
        ),
        { minLength: 1, maxLength: 4 }
      )
    )
    .map(([not, items]) => `${col} ${not ? "NOT " : ""}IN (${items.join(", ")})`)
)
const between = column.chain((col) =>
  fc
    .tuple(fc.boolean(), fc.boolean(), fc.oneof(literal(col), sameFamily(col)), literal(col))
    .map(([not, sym, lo, hi]) => `${col} ${not ? "NOT " : ""}BETWEEN ${sym ? "SYMMETRIC " : ""}${lo} AND ${hi}`)
)
const like = fc
  .tuple(pick(TEXT_COLS), fc.boolean(), fc.boolean(), pick(PATTERNS), fc.boolean())
  .map(
    ([col, not, ci, pattern, asParam]) =>
      `${col} ${not ? "NOT " : ""}${ci ? "ILIKE" : "LIKE"} ${asParam ? param(pattern) : quote(pattern)}`
  )
const likeEscape = fc
  .tuple(pick(TEXT_COLS), pick(["a#%%", "#_%", "%#%", "a_b"]))
  .map(([col, pattern]) => `${col} LIKE ${quote(pattern)} ESCAPE '#'`)
const isNull = fc.tuple(column, fc.boolean()).map(([col, not]) => `${col} IS ${not ? "NOT " : ""}NULL`)
const boolTest = fc.oneof(
  pick(["b", "NOT b", "b IS TRUE", "b IS NOT TRUE", "b IS FALSE", "b IS NOT FALSE", "b IS UNKNOWN", "b IS NOT UNKNOWN"]),
  pick(["TRUE", "FALSE", "NULL"])
)
const distinct = column.chain((col) =>
  fc.tuple(fc.boolean(), literal(col)).map(([not, lit]) => `${col} IS ${not ? "NOT " : ""}DISTINCT FROM ${lit}`)
)

// `= ANY` over an array in Postgres's array syntax, as a parameter or a literal: Postgres reads its elements as
// values of the column's type, NULL (unquoted) as SQL NULL.
const arrayText = (items: ReadonlyArray<string | null>): string =>
  `{${items.map((v) => (v === null ? "NULL" : `"${v.replace(/[\\"]/g, "\\$&")}"`)).join(",")}}`
const anyOf = column.chain((col) =>
  fc
    .tuple(fc.array(fc.option(pick(POOLS[col as Exclude<Col, "id">]), { nil: null, freq: 5 }), { maxLength: 4 }), fc.boolean())
    .map(([items, asParam]) => `${col} = ANY(${asParam ? param(arrayText(items)) : quote(arrayText(items))})`)
)

const atom = fc.oneof(
  { weight: 6, arbitrary: comparison },
  { weight: 1, arbitrary: badComparison },
  { weight: 2, arbitrary: columnComparison },
  { weight: 2, arbitrary: inList },
  { weight: 2, arbitrary: anyOf },
  { weight: 2, arbitrary: between },
  { weight: 2, arbitrary: like },
  { weight: 1, arbitrary: likeEscape },
  { weight: 1, arbitrary: isNull },
  { weight: 1, arbitrary: boolTest },
  { weight: 1, arbitrary: distinct }
)

const clause: fc.Arbitrary<string> = fc.letrec<{ node: string }>((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    { weight: 4, arbitrary: atom },
    { weight: 1, arbitrary: fc.tuple(tie("node"), tie("node")).map(([a, b]) => `(${a} AND ${b})`) },
    { weight: 1, arbitrary: fc.tuple(tie("node"), tie("node")).map(([a, b]) => `(${a} OR ${b})`) },
    { weight: 1, arbitrary: tie("node").map((a) => `NOT (${a})`) }
  )
})).node

const numberParams = (marked: string): { readonly sql: string; readonly values: ReadonlyArray<string> } => {
  const values: Array<string> = []
  const sql = marked.replace(/\u0001([^\u0002]*)\u0002/g, (_, value: string) => {
    values.push(value)
    return `$${values.length}`
  })
  return { sql, values }
}

const table = tableInfo(
  TABLE,
  COLUMNS.map(([name, type]) => [name, type] as const)
)

describe("where clauses against Postgres", () => {
  let client: pg.Client
  let textRows: ReadonlyArray<Row> = []

  beforeAll(async () => {
    client = new pg.Client({ connectionString: inject("databaseUrl") })
    await client.connect()
    await client.query("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, DMY'; SET extra_float_digits = 1")
    await client.query(`CREATE TABLE ${TABLE} (${COLUMNS.map(([n, , sql]) => `${n} ${sql}`).join(", ")})`)
    for (const row of makeRows()) {
      await client.query(
        `INSERT INTO ${TABLE} VALUES (${row.map((_, i) => `$${i + 1}`).join(", ")})`,
        row as Array<string | null>
      )
    }
    const selectText = COLUMNS.map(([n]) =>
      n === "bc" ? `CASE WHEN bc IS NULL THEN NULL ELSE concat(bc, '') END AS bc` : `${n}::text AS ${n}`
    ).join(", ")
    const result = await client.query<Record<string, string | null>>(`SELECT ${selectText} FROM ${TABLE}`)
    textRows = result.rows
  })

  afterAll(async () => {
    await client.query(`DROP TABLE IF EXISTS ${TABLE}`)
    await client.end()
  })

  const postgresIds = async (where: string, values: ReadonlyArray<string>): Promise<Array<number> | string> => {
    try {
      const result = await client.query<{ id: number }>(
        `SELECT id FROM ${TABLE} WHERE ${where} ORDER BY id`,
        values as Array<string>
      )
      return result.rows.map((r) => r.id)
    } catch (error) {
      return `error: ${(error as Error).message}`
    }
  }

  it("reads back rows with every supported type", () => {
    expect(textRows.length).toBe(ROW_COUNT)
    expect(textRows.some((r) => r["f4"] === "NaN")).toBe(true)
    expect(textRows.some((r) => r["bc"] === "ab  ")).toBe(true)
  })

  it("selects the same rows as Postgres for random clauses", async () => {
    await fc.assert(
      fc.asyncProperty(clause, fc.boolean(), async (marked, replicationBools) => {
        const { sql, values } = numberParams(marked)
        const params = Object.fromEntries(values.map((v, i) => [String(i + 1), v]))
        const parsed = parseWhere(sql, params, table)
        const expected = await postgresIds(sql, values)
        if (Either.isLeft(parsed)) {
          // Both refuse it (a type error or an out-of-range literal).
          expect({ sql, expected, ours: parsed.left.message }).toMatchObject({ expected: expect.stringMatching(/^error/) })
          return
        }
        const clauseOut = parsed.right
        expect({ sql, expected }).not.toMatchObject({ expected: expect.stringMatching(/^error/) })
        const rows: ReadonlyArray<Row> = replicationBools
          ? textRows.map((r) => ({ ...r, b: r["b"] === null ? null : r["b"] === "true" ? "t" : "f" }))
          : textRows
        const ours = rows.filter((r) => clauseOut.matches(r)).map((r) => Number(r["id"])).sort((a, b) => a - b)
        expect({ sql, ids: ours }).toEqual({ sql, ids: expected })
        const canonical = await postgresIds(clauseOut.sql, [])
        expect({ sql, canonical: clauseOut.sql, ids: canonical }).toEqual({ sql, canonical: clauseOut.sql, ids: expected })
        const again = parseWhere(clauseOut.sql, {}, table)
        expect(Either.map(again, (c) => c.sql)).toEqual(Either.right(clauseOut.sql))
      }),
      { numRuns: 1500 }
    )
  })
})
