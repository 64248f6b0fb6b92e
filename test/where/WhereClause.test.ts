import { describe, expect, it } from "@effect/vitest"
import { Either, FastCheck as fc } from "effect"
import type { Row } from "../../src/domain/Change.js"
import type { TableInfo } from "../../src/domain/Table.js"
import { parseWhere, type WhereClause } from "../../src/where/WhereClause.js"
import { tableInfo } from "./table.js"

const table = tableInfo("items", [
  ["id", "int4"],
  ["name", "text"],
  ["done", "bool"],
  ["big", "int8"],
  ["price", "numeric"],
  ["ratio", "float8"],
  ["code", "bpchar"],
  ["tag", "varchar"],
  ["ref", "uuid"],
  ["day", "date"],
  ["at", "timestamptz"],
  ["spot", "point"]
])

const parse = (where: string, params: Record<string, string> = {}, info: TableInfo = table): WhereClause =>
  Either.getOrThrowWith(parseWhere(where, params, info), (e) => new Error(e.message))

const errorOf = (where: string, params: Record<string, string> = {}): string =>
  Either.match(parseWhere(where, params, table), { onLeft: (e) => e.message, onRight: (c) => `parsed: ${c.sql}` })

describe("parseWhere errors", () => {
  it("reports syntax errors at the 0-based position in `SELECT 1 WHERE <where>`", () => {
    expect(errorOf("1 x 1")).toBe(`At location 17: syntax error at or near "x"`)
    expect(errorOf("id = ")).toBe("At location 20: syntax error at end of input")
  })

  it("names unsupported constructs", () => {
    expect(errorOf("upper(name) = 'X'")).toBe("Unsupported function: upper")
    expect(errorOf("id IN (SELECT 1)")).toBe(
      "Unsupported expression: a subquery must read exactly one table (no joins, no nested SELECT in FROM)"
    )
    expect(errorOf("spot IS NULL")).toBe("Unsupported type: point")
    expect(errorOf("id <> ANY('{1,2}')")).toBe("Unsupported expression: <> ANY")
    expect(errorOf("id = ANY('{{1},{2}}')")).toBe("multidimensional arrays are not supported")
    expect(errorOf("name SIMILAR TO 'a'")).toBe("Unsupported expression: SIMILAR TO")
    expect(errorOf("name = 'a' COLLATE \"C\"")).toBe("Unsupported expression: COLLATE")
    expect(errorOf("'1'::interval IS NULL")).toBe("Unsupported type: interval")
    expect(errorOf("name::varchar(3) = 'a'")).toMatch(/^Unsupported/)
  })

  it("refuses anything but one boolean expression", () => {
    expect(errorOf("true GROUP BY 1")).toBe("Invalid where clause: expected one boolean expression")
    expect(errorOf("true; SELECT 1")).toBe("Invalid where clause: expected one boolean expression")
    expect(errorOf("true UNION SELECT 1")).toBe("Invalid where clause: expected one boolean expression")
  })

  it("names unknown columns and missing parameters", () => {
    expect(errorOf("nope = 1")).toBe(`Unknown reference "nope"`)
    expect(errorOf("other.id = 1")).toBe(`Unknown reference "other.id"`)
    expect(errorOf("id = $1 OR id = $3", { "1": "1" })).toBe("Parameter $3 has no value: params[3] is missing")
  })

  it("refuses a NUL byte in the clause or in a parameter value, which the parser would read as the end of the text", () => {
    expect(errorOf("(true)\u0000) AND id = 5")).toBe("Invalid where clause: contains a NUL byte")
    expect(errorOf("id = 1\u0000 OR true")).toBe("Invalid where clause: contains a NUL byte")
    expect(errorOf("name = $1", { "1": "a\u0000b" })).toBe("Parameter $1 contains a NUL byte")
    expect(errorOf("id = 1", { "2": "\u0000" })).toBe("Parameter $2 contains a NUL byte")
  })

  it("refuses what Postgres would refuse on types", () => {
    expect(errorOf("id = 'abc'")).toBe(`invalid input syntax for type integer: "abc"`)
    expect(errorOf("id = true")).toBe("operator does not exist: integer = boolean")
    expect(errorOf("name = 5")).toBe("operator does not exist: text = integer")
    expect(errorOf("id")).toBe("argument of WHERE must be type boolean, not type integer")
    expect(errorOf("done AND id")).toBe("argument of AND must be type boolean, not type integer")
    expect(errorOf("id = $1", { "1": "3000000000" })).toBe(`value "3000000000" is out of range for type integer`)
    expect(errorOf("day = '2023-02-29'")).toBe(`invalid input syntax for type date: "2023-02-29"`)
    expect(errorOf("ref = 'xyz'")).toBe(`invalid input syntax for type uuid: "xyz"`)
    expect(errorOf("name LIKE 'a\\'")).toBe("LIKE pattern must not end with escape character")
    expect(errorOf("id LIKE 'a'")).toBe("operator does not exist: integer ~~ unknown")
  })
})

describe("parseWhere canonical sql", () => {
  it("renders quoted identifiers, typed literals and one pair of parentheses per operator", () => {
    expect(parse("id = 5 and name is not null").sql).toBe(`("id" = 5) AND ("name" IS NOT NULL)`)
    expect(parse("day >= '2024-01-02' AND at < '2024-01-02 05:30:00+05:30'").sql).toBe(
      `("day" >= '2024-01-02'::date) AND ("at" < '2024-01-02 00:00:00+00'::timestamptz)`
    )
    expect(parse("ref = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'").sql).toBe(
      `("ref" = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid)`
    )
    expect(parse("name NOT ILIKE 'a%' OR price BETWEEN -1.50 AND 1e3").sql).toBe(
      `("name" NOT ILIKE 'a%') OR ("price" BETWEEN -1.5 AND '1000'::numeric)`
    )
    expect(parse("NOT done OR id NOT IN (1, 2, NULL)").sql).toBe(`(NOT "done") OR ("id" NOT IN (1, 2, NULL))`)
    expect(parse("name = 'it''s'").sql).toBe(`("name" = 'it''s')`)
  })

  it("is the same for inputs differing only in spacing, keyword case and redundant parentheses", () => {
    const variants = [
      "id = 5 AND (name IS NOT NULL OR done)",
      "  ID=5   and ((name is not null) or (DONE))",
      "(((id) = (5))) AnD (name IS NOT NULL OR done)",
      "id = 5 AND (name IS NOT NULL OR done = true)".replace(" = true", "")
    ]
    const sqls = new Set(variants.map((v) => parse(v).sql))
    expect([...sqls]).toEqual([`("id" = 5) AND (("name" IS NOT NULL) OR "done")`])
  })

  it("flattens nested conjunctions", () => {
    expect(parse("(id = 1 AND id = 2) AND (id = 3 AND (id = 4))").sql).toBe(
      `("id" = 1) AND ("id" = 2) AND ("id" = 3) AND ("id" = 4)`
    )
  })

  it("substitutes parameters as literals of the type their context gives them", () => {
    const clause = parse("id = $1 AND name = $2 AND day < $3 AND price > $1", { "1": "5", "2": "x'y", "3": "2024-01-01" })
    expect(clause.sql).toBe(
      `("id" = 5) AND ("name" = 'x''y') AND ("day" < '2024-01-01'::date) AND ("price" > '5'::numeric)`
    )
    expect(clause.sql).toBe(parse(`id = 5 AND name = 'x''y' AND day < '2024-01-01' AND price > '5'`).sql)
  })

  it("parses its own output back to itself", () => {
    for (const where of ["code = 'ab ' OR tag IN ('a', 'b')", "ratio > 'NaN' OR big BETWEEN SYMMETRIC 10 AND -10"]) {
      const sql = parse(where).sql
      expect(parse(sql).sql).toBe(sql)
    }
  })
})

describe("parseWhere columns and equalities", () => {
  it("lists the columns read, in order of first use", () => {
    expect(parse("name = 'a' OR id = 1 OR name = 'b'").columns).toEqual(["name", "id"])
    expect(parse("true").columns).toEqual([])
  })

  it("extracts top-level `col = const` conjuncts with pgoutput's text for the value", () => {
    const clause = parse(
      "id = '7' AND 'x' = name AND done AND big = 9223372036854775807 AND ref = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11' AND price = 5 AND (tag = 'q' OR id = 2)"
    )
    expect(clause.equalities).toEqual([
      { column: "id", value: "7" },
      { column: "name", value: "x" },
      { column: "done", value: "t" },
      { column: "big", value: "9223372036854775807" },
      { column: "ref", value: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" }
    ])
    expect(parse("NOT done").equalities).toEqual([{ column: "done", value: "f" }])
    expect(parse("done = false").equalities).toEqual([{ column: "done", value: "f" }])
    expect(parse("code = 'ab'").equalities).toEqual([])
    expect(parse("id = 5 OR id = 6").equalities).toEqual([])
    expect(parse("id = 1.0").equalities).toEqual([])
  })
})

describe("WhereClause.matches", () => {
  const row = (values: Record<string, string | null | undefined>): Row => values

  it("reads booleans in both the replication and the ::text form", () => {
    const clause = parse("done")
    expect(clause.matches(row({ done: "t" }))).toBe(true)
    expect(clause.matches(row({ done: "true" }))).toBe(true)
    expect(clause.matches(row({ done: "f" }))).toBe(false)
    expect(clause.matches(row({ done: "false" }))).toBe(false)
    expect(clause.matches(row({ done: null }))).toBe(false)
  })

  it("follows three-valued logic", () => {
    expect(parse("id = 1 OR name = 'a'").matches(row({ id: null, name: "a" }))).toBe(true)
    expect(parse("NOT (id = 1 AND name = 'a')").matches(row({ id: null, name: "b" }))).toBe(true)
    expect(parse("NOT (id = 1 AND name = 'a')").matches(row({ id: null, name: "a" }))).toBe(false)
    expect(parse("id NOT IN (1, NULL)").matches(row({ id: "2" }))).toBe(false)
    expect(parse("(id IN (1, NULL)) IS UNKNOWN").matches(row({ id: "2" }))).toBe(true)
    expect(parse("id IN (2, NULL)").matches(row({ id: "2" }))).toBe(true)
    expect(parse("id IS DISTINCT FROM NULL").matches(row({ id: "2" }))).toBe(true)
    expect(parse("id IS NOT DISTINCT FROM NULL").matches(row({ id: null }))).toBe(true)
  })

  it("compares int8 and numeric exactly and floats with NaN above everything", () => {
    expect(parse("big > 9007199254740992").matches(row({ big: "9007199254740993" }))).toBe(true)
    expect(parse("price > 0.30000000000000001").matches(row({ price: "0.30000000000000002" }))).toBe(true)
    expect(parse("price = 12.5").matches(row({ price: "12.500" }))).toBe(true)
    expect(parse("ratio > 'Infinity'").matches(row({ ratio: "NaN" }))).toBe(true)
    expect(parse("ratio = 'NaN'").matches(row({ ratio: "NaN" }))).toBe(true)
    expect(parse("ratio = 0").matches(row({ ratio: "-0" }))).toBe(true)
  })

  it("compares character(n) without trailing spaces, but LIKE sees them", () => {
    expect(parse("code = 'ab'").matches(row({ code: "ab  " }))).toBe(true)
    expect(parse("code LIKE 'ab'").matches(row({ code: "ab  " }))).toBe(false)
    expect(parse("code LIKE 'ab%'").matches(row({ code: "ab  " }))).toBe(true)
  })

  it("orders text by code point and matches LIKE/ILIKE with escapes", () => {
    expect(parse("name > '\uffff'").matches(row({ name: "😀" }))).toBe(true)
    expect(parse("name LIKE 'a\\%%'").matches(row({ name: "a%b" }))).toBe(true)
    expect(parse("name LIKE 'a\\%%'").matches(row({ name: "ab" }))).toBe(false)
    expect(parse("name LIKE 'a_c'").matches(row({ name: "a😀c" }))).toBe(true)
    expect(parse("name ILIKE 'ABC'").matches(row({ name: "abc" }))).toBe(true)
    expect(parse("name ILIKE 'É'").matches(row({ name: "é" }))).toBe(false)
    expect(parse("name LIKE 'a#_' ESCAPE '#'").matches(row({ name: "a_" }))).toBe(true)
    expect(parse("name LIKE 'a#_' ESCAPE '#'").matches(row({ name: "ab" }))).toBe(false)
  })

  it("compares uuids, dates and timestamps as values", () => {
    expect(parse("ref = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'").matches(row({ ref: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" }))).toBe(true)
    expect(parse("at = '2024-01-02 05:30:00+05:30'").matches(row({ at: "2024-01-02 00:00:00+00" }))).toBe(true)
    expect(parse("at >= day").matches(row({ at: "2024-01-02 00:00:00+00", day: "2024-01-02" }))).toBe(true)
    expect(parse("day < 'infinity'").matches(row({ day: "0044-03-15 BC" }))).toBe(true)
    expect(parse("day > '0044-03-15 BC'").matches(row({ day: "0001-01-01" }))).toBe(true)
    expect(parse("at > '2024-01-01'").matches(row({ at: "2024-01-01 00:00:00.000001+00" }))).toBe(true)
  })

  it("treats an unchanged TOAST value as unknown but not NULL, and never throws on odd text", () => {
    expect(parse("name = 'a'").matches(row({ name: undefined }))).toBe(false)
    expect(parse("name IS NULL").matches(row({ name: undefined }))).toBe(false)
    expect(parse("name IS NOT NULL").matches(row({}))).toBe(true)
    const everything = parse("big > 1 OR price > 1 OR ratio > 1 OR day > '2024-01-01' OR at > '2024-01-01' OR ref > '00000000-0000-0000-0000-000000000000'")
    expect(everything.matches(row({ big: "garbage", price: "x", ratio: "y", day: "z", at: "?", ref: "?" }))).toBe(false)
  })

  it("returns a boolean for any row, whatever its text", () => {
    const clause = parse(
      "(id > 1 OR big < -5 OR price BETWEEN 1 AND 2 OR ratio <> 'NaN') AND (name LIKE '%a_' OR code = 'x' OR tag IN ('a', 'b'))" +
        " OR done IS NOT TRUE OR ref = '00000000-0000-0000-0000-000000000000' OR day < at OR at IS DISTINCT FROM '2024-01-01'"
    )
    const value = fc.oneof(fc.string(), fc.fullUnicodeString(), fc.constantFrom(null, undefined, "NaN", "1e999999", "-", "9".repeat(40)))
    const names = table.columns.map((c) => c.name)
    fc.assert(
      fc.property(fc.array(value, { minLength: names.length, maxLength: names.length }), (values) => {
        const r: Record<string, string | null | undefined> = {}
        names.forEach((n, i) => (r[n] = values[i]))
        expect(typeof clause.matches(r)).toBe("boolean")
      }),
      { numRuns: 1000 }
    )
  })
})

describe("parseWhere = ANY", () => {
  const row = (values: Record<string, string | null | undefined>): Row => values

  it("renders an array parameter or literal as the IN list of its elements, typed by the column", () => {
    expect(parse(`id = ANY($1)`, { "1": "{1,2}" }).sql).toBe(`("id" IN (1, 2))`)
    expect(parse(`id = ANY($1)`, { "1": "{1,2}" }).sql).toBe(parse("id IN (1, 2)").sql)
    expect(parse(`name = ANY($1)`, { "1": `{"a b",it's,NULL,"NULL",""}` }).sql).toBe(
      `("name" IN ('a b', 'it''s', NULL, 'NULL', ''))`
    )
    expect(parse(`price = ANY('{1.50, 2}')`).sql).toBe(`("price" IN (1.5, '2'::numeric))`)
    expect(parse(`day = ANY($1)`, { "1": "{2024-01-02}" }).sql).toBe(`("day" IN ('2024-01-02'::date))`)
    expect(parse(`id = SOME($1)`, { "1": "{7}" }).sql).toBe(`("id" IN (7))`)
    expect(parse(`id = ANY(ARRAY[1, 2])`).sql).toBe(`("id" IN (1, 2))`)
  })

  it("is false over an empty array and unknown over NULL", () => {
    expect(parse(`id = ANY($1)`, { "1": "{}" }).sql).toBe("false")
    expect(parse(`NOT (id = ANY('{ }'))`).sql).toBe("(NOT false)")
    expect(parse(`id = ANY(NULL)`).sql).toBe("NULL")
    expect(parse(`id = ANY($1)`, { "1": "{}" }).matches(row({ id: null }))).toBe(false)
    expect(parse(`NOT (id = ANY($1))`, { "1": "{}" }).matches(row({ id: null }))).toBe(true)
  })

  it("follows three-valued logic over NULL elements", () => {
    const params = { "1": "{1,NULL}" }
    expect(parse("id = ANY($1)", params).matches(row({ id: "1" }))).toBe(true)
    expect(parse("id = ANY($1)", params).matches(row({ id: "2" }))).toBe(false)
    expect(parse("NOT (id = ANY($1))", params).matches(row({ id: "2" }))).toBe(false)
    expect(parse("(id = ANY($1)) IS UNKNOWN", params).matches(row({ id: "2" }))).toBe(true)
    expect(parse("(id = ANY($1)) IS UNKNOWN", params).matches(row({ id: "1" }))).toBe(false)
    expect(parse(`name = ANY('{"NULL"}')`).matches(row({ name: "NULL" }))).toBe(true)
    expect(parse(`name = ANY('{NULL}')`).matches(row({ name: "NULL" }))).toBe(false)
  })

  it("compares elements as values of the column's type", () => {
    expect(parse("code = ANY($1)", { "1": "{ab}" }).matches(row({ code: "ab  " }))).toBe(true)
    expect(parse("big = ANY($1)", { "1": "{9007199254740993}" }).matches(row({ big: "9007199254740992" }))).toBe(false)
    expect(parse("ratio = ANY($1)", { "1": "{NaN}" }).matches(row({ ratio: "NaN" }))).toBe(true)
    expect(parse("ref = ANY($1)", { "1": "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}" }).matches(
      row({ ref: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" })
    )).toBe(true)
    expect(parse("done = ANY($1)", { "1": "{yes}" }).matches(row({ done: "t" }))).toBe(true)
  })

  it("refuses what Postgres refuses, and the forms it does not support", () => {
    expect(errorOf("id = ANY($1)", { "1": "{1,x}" })).toBe(`invalid input syntax for type integer: "x"`)
    expect(errorOf("id = ANY($1)", { "1": "{3000000000}" })).toBe(`value "3000000000" is out of range for type integer`)
    expect(errorOf("id = ANY($1)", { "1": "1,2" })).toBe(`malformed array literal: "1,2" (array value must start with "{")`)
    expect(errorOf("id = ANY('{1,')")).toBe(`malformed array literal: "{1," (unexpected end of input)`)
    expect(errorOf("id = ANY($1)", { "1": "{{1},{2}}" })).toBe("multidimensional arrays are not supported")
    expect(errorOf("id = ANY(id)")).toBe("Unsupported expression: = ANY over a value that is not an array")
    expect(errorOf("id = ANY(5)")).toBe("Unsupported expression: = ANY over a value that is not an array")
    expect(errorOf("id = ALL($1)", { "1": "{1}" })).toBe("Unsupported expression: = ALL")
    expect(errorOf("id < ANY($1)", { "1": "{1}" })).toBe("Unsupported expression: < ANY")
    expect(errorOf("id = ANY($1)")).toBe("Parameter $1 has no value: params[1] is missing")
    expect(errorOf("id = ANY($1)", { "1": "{1,\u0000}" })).toBe("Parameter $1 contains a NUL byte")
    expect(errorOf("id = ANY($1::int[])", { "1": "{1}" })).toMatch(/^Unsupported type/)
  })
})
