import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import pg from "pg"
import { inject } from "vitest"
import type { Row } from "../../src/domain/Change.js"
import { InputError, parseArrayLiteral } from "../../src/where/Values.js"
import { parseWhere } from "../../src/where/WhereClause.js"
import { tableInfo } from "./table.js"

// Arrays in Postgres's text syntax (`{1,"a b",NULL}`), as `col = ANY($1)` receives them: parsed as
// Postgres's `array_in` parses them, and `= ANY` selecting the rows Postgres selects, NULLs included.

const elements = (text: string): Array<string | null> => parseArrayLiteral(text)

const failure = (text: string): string => {
  try {
    return `parsed: ${JSON.stringify(parseArrayLiteral(text))}`
  } catch (error) {
    expect(error).toBeInstanceOf(InputError)
    return (error as Error).message
  }
}

describe("parseArrayLiteral", () => {
  it("reads unquoted and quoted elements", () => {
    expect(elements("{}")).toEqual([])
    expect(elements("{1,2,3}")).toEqual(["1", "2", "3"])
    expect(elements(`{"a b","c,d","{e}"}`)).toEqual(["a b", "c,d", "{e}"])
    expect(elements(`{'x',é,😀}`)).toEqual(["'x'", "é", "😀"])
    expect(elements(`{""}`)).toEqual([""])
  })

  it("tells NULL from the text NULL", () => {
    expect(elements("{NULL,null,Null, NULL }")).toEqual([null, null, null, null])
    expect(elements(`{"NULL","null"}`)).toEqual(["NULL", "null"])
    expect(elements(`{\\NULL,N\\ULL,NULLx}`)).toEqual(["NULL", "NULL", "NULLx"])
  })

  it("takes the character after a backslash as it is, quoted or not", () => {
    expect(elements(`{"a\\"b","a\\\\b","\\n"}`)).toEqual([`a"b`, "a\\b", "n"])
    expect(elements(`{a\\,b,a\\}b,a\\"b}`)).toEqual(["a,b", "a}b", `a"b`])
    expect(elements(`{a\\ ,\\ a}`)).toEqual(["a ", " a"])
  })

  it("drops the spaces around unquoted elements and keeps those inside and in quotes", () => {
    expect(elements("  { 1 , 2 }  ")).toEqual(["1", "2"])
    expect(elements("{a b  ,\t c\td \n}")).toEqual(["a b", "c\td"])
    expect(elements(`{ " a " , "b" }`)).toEqual([" a ", "b"])
    expect(elements("{ }")).toEqual([])
    expect(elements("\n{\u000b1\f}\r")).toEqual(["1"])
  })

  it.each([
    ["", `malformed array literal: "" (array value must start with "{")`],
    ["1,2", `malformed array literal: "1,2" (array value must start with "{")`],
    ["{1,2", `malformed array literal: "{1,2" (unexpected end of input)`],
    ["{a,}", `malformed array literal: "{a,}" (unexpected delimiter)`],
    ["{,a}", `malformed array literal: "{,a}" (unexpected delimiter)`],
    ["{a,,b}", `malformed array literal: "{a,,b}" (unexpected delimiter)`],
    ["{ , }", `malformed array literal: "{ , }" (unexpected delimiter)`],
    ["{a}x", `malformed array literal: "{a}x" (junk after closing right brace)`],
    ["{a}}", `malformed array literal: "{a}}" (junk after closing right brace)`],
    [`{"a"b}`, `malformed array literal: "{"a"b}" (unexpected character after an element)`],
    [`{"a" b}`, `malformed array literal: "{"a" b}" (unexpected character after an element)`],
    [`{a"b"}`, `malformed array literal: "{a"b"}" (unexpected character in an unquoted element)`],
    ["{a{b}", `malformed array literal: "{a{b}" (unexpected character in an unquoted element)`],
    [`{"a}`, `malformed array literal: "{"a}" (unterminated quoted element)`],
    ["{a\\}", `malformed array literal: "{a\\}" (unexpected end of input)`],
    ["[1:2]={1,2}", `malformed array literal: "[1:2]={1,2}" (dimension decorations are not supported)`],
    ["{{1},{2}}", "multidimensional arrays are not supported"],
    ["{ {1} }", "multidimensional arrays are not supported"],
    ["{{}}", "multidimensional arrays are not supported"]
  ])("refuses %j", (text, message) => {
    expect(failure(text)).toBe(message)
  })
})

describe("parseArrayLiteral against Postgres's array_in", () => {
  let client: pg.Client
  beforeAll(async () => {
    client = new pg.Client({ connectionString: inject("databaseUrl") })
    await client.connect()
  })
  afterAll(async () => {
    await client.end()
  })

  const LITERALS = [
    "{}", "{ }", "  {}  ", "{1,2}", "{ 1 , 2 }", "{a b, c}", `{"a b","c"}`, "{NULL}", "{null}", `{"NULL"}`, "{ NULL }",
    "{NULLx}", "{\\NULL}", "{N\\ULL}", "{a\\,b}", `{"a\\"b"}`, `{"a\\\\b"}`, "{a\\\\b}", `{""}`, `{"\\n"}`, "{a b  }",
    "{a\\ }", "{\\ a}", "{a\tb}", "{\t a \t}", "{é,😀}", "{'x'}", `{ "a" , "b" }`, `{NULL,"NULL",null,Null}`, "{x y z}",
    "{\n1\n}", "{1}\n", "\n{1}", "{\u000b1}", `{"a",b}`, `{"{}"}`, `{"}"}`, `{"\\\\",\\\\}`,
    "{a,}", "{,a}", "{a,,b}", "{a", "a}", "1,2", "{a}x", `{"a"b}`, `{a"b"}`, `{"a" b}`, "{a{b}", "{a}b}", "", " ", `{"}`,
    "{\\}", "{a\\}", "{a,{b}}", "{a}}", "{}}", "{{a}", "{ , }", "{ ,}"
  ]

  it.each(LITERALS)("%j: the same elements, or refused by both", async (text) => {
    let theirs: ReadonlyArray<string | null> | "refused"
    try {
      theirs = (await client.query<{ a: Array<string | null> }>("SELECT $1::text[] AS a", [text])).rows[0]!.a
    } catch {
      theirs = "refused"
    }
    let ours: ReadonlyArray<string | null> | "refused"
    try {
      ours = parseArrayLiteral(text)
    } catch {
      ours = "refused"
    }
    expect(ours).toEqual(theirs)
  })
})

describe("= ANY against Postgres", () => {
  const TABLE = `any_oracle_${process.pid}_${Date.now().toString(36)}`
  const table = tableInfo(TABLE, [
    ["id", "int4"],
    ["i8", "int8"],
    ["t", "text"],
    ["bc", "bpchar"],
    ["f8", "float8"],
    ["num", "numeric"],
    ["b", "bool"],
    ["u", "uuid"],
    ["d", "date"]
  ])
  let client: pg.Client
  let rows: ReadonlyArray<Row> = []

  beforeAll(async () => {
    client = new pg.Client({ connectionString: inject("databaseUrl") })
    await client.connect()
    await client.query(
      `CREATE TABLE ${TABLE} (id int4 PRIMARY KEY, i8 int8, t text COLLATE "C", bc char(4) COLLATE "C", f8 float8,
         num numeric, b bool, u uuid, d date)`
    )
    await client.query(
      `INSERT INTO ${TABLE} VALUES
         (1, 5, 'a', 'ab', 1.5, 2.5, true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-01-01'),
         (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
         (3, -1, 'NULL', 'ab  ', 'NaN', 'NaN', false, '00000000-0000-0000-0000-000000000000', 'infinity'),
         (4, 9007199254740993, 'a b', 'x', 0, 0, true, NULL, '1999-12-31'),
         (5, 7, '', '', '-0', '-0.0', false, NULL, NULL),
         (6, 8, 'it''s', 'q"', 2, 1e3, NULL, NULL, NULL),
         (7, 9, 'a,b', 'a\\b', 3, 3, true, NULL, NULL)`
    )
    rows = (await client.query<Row>(
      `SELECT id::text, i8::text, t, CASE WHEN bc IS NULL THEN NULL ELSE concat(bc, '') END AS bc, f8::text, num::text,
              b::text, u::text, d::text
         FROM ${TABLE}`
    )).rows
  })

  afterAll(async () => {
    await client.query(`DROP TABLE IF EXISTS ${TABLE}`)
    await client.end()
  })

  const postgresIds = async (where: string, values: ReadonlyArray<string>): Promise<Array<number> | "refused"> => {
    try {
      return (await client.query<{ id: number }>(`SELECT id FROM ${TABLE} WHERE ${where} ORDER BY id`, values as Array<string>))
        .rows.map((r) => r.id)
    } catch {
      return "refused"
    }
  }

  /** What we select for the clause, by `matches` and by Postgres running our SQL; "refused" when parseWhere refuses it. */
  const ourIds = async (where: string, values: ReadonlyArray<string>) => {
    const parsed = parseWhere(where, Object.fromEntries(values.map((v, i) => [String(i + 1), v])), table)
    if (Either.isLeft(parsed)) return { matches: "refused", sql: "refused" }
    const matches = rows.filter((r) => parsed.right.matches(r)).map((r) => Number(r["id"])).sort((a, b) => a - b)
    return { matches, sql: await postgresIds(parsed.right.sql, []) }
  }

  const agrees = async (where: string, values: ReadonlyArray<string> = []) => {
    const expected = await postgresIds(where, values)
    expect({ where, values, ...(await ourIds(where, values)) }).toEqual({ where, values, matches: expected, sql: expected })
  }

  it.each([
    ["id = ANY($1)", ["{1,2}"]],
    ["id = ANY($1)", ["{ 3 , 4 }"]],
    ["id = SOME($1)", ["{1}"]],
    ["id = ANY ($1)", [" {5} "]],
    ["i8 = ANY($1)", ["{9007199254740993,7}"]],
    ["t = ANY($1)", [`{"a b","NULL",it's}`]],
    ["t = ANY($1)", [`{a\\,b,"a,b"}`]],
    ["t = ANY($1)", [`{"", " a "}`]],
    ["t = ANY($1)", ["{ a }"]],
    ["bc = ANY($1)", ["{ab}"]],
    ["bc = ANY($1)", [`{"ab  "}`]],
    ["bc = ANY($1)", [`{"a\\\\b","q\\""}`]],
    ["f8 = ANY($1)", ["{NaN,0}"]],
    ["num = ANY($1)", ["{NaN,1000,2.50}"]],
    ["b = ANY($1)", ["{t}"]],
    ["b = ANY($1)", ["{yes,off}"]],
    ["u = ANY($1)", ["{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11,{00000000000000000000000000000000}}"]],
    ["d = ANY($1)", ["{infinity,1999-12-31}"]],
    ["id = ANY('{1,2}')", []],
    ["t = ANY('{a,\"a b\"}')", []],
    ["i8 = ANY(ARRAY[5, 7])", []],
    ["id = ANY(ARRAY[1, 2.5])", []],
    ["id = ANY(ARRAY[i8, 1])", []],
    ["t = ANY(ARRAY[t, 'x'])", []],
    ["t = ANY(ARRAY['a', NULL])", []],
    ["t IN ('a') OR id = ANY($1)", ["{5}"]],
    ["i8 = ANY('{5}') AND id = ANY($1)", ["{1,3}"]]
  ])("%s with %j", async (where, values) => {
    await agrees(where, values)
  })

  it.each([
    ["an empty array is false", "id = ANY($1)", ["{}"]],
    ["NOT over an empty array is true, even for a NULL", "NOT (t = ANY($1))", ["{}"]],
    ["an empty array is never unknown", "(t = ANY($1)) IS NULL", ["{}"]],
    ["only NULL elements is unknown", "(id = ANY($1)) IS NULL", ["{NULL}"]],
    ["a NULL element makes a miss unknown", "(id = ANY($1)) IS NULL", ["{1,NULL}"]],
    ["NOT over a NULL element selects nothing", "NOT (id = ANY($1))", ["{1,NULL}"]],
    ["a hit with a NULL element is true", "id = ANY($1)", ["{1,NULL}"]],
    ["a NULL column is unknown", "(i8 = ANY($1)) IS NULL", ["{5,7}"]],
    ["the text NULL is a value", "t = ANY($1)", [`{"NULL"}`]],
    ["an ANY of NULL is unknown", "(id = ANY(NULL)) IS NULL", []]
  ])("NULLs: %s", async (_, where, values) => {
    await agrees(where, values)
  })

  it.each([
    ["an element that is not of the column's type", "id = ANY($1)", ["{1,x}"]],
    ["an element out of the column's range", "id = ANY($1)", ["{3000000000}"]],
    ["a malformed array", "id = ANY($1)", ["1,2"]],
    ["a malformed literal", "id = ANY('{1,')", []],
    ["a value that is not an array", "id = ANY(5)", []],
    ["a column that is not an array", "id = ANY(id)", []]
  ])("both refuse %s", async (_, where, values) => {
    await agrees(where, values)
  })

  // Postgres types an ARRAY[…] from its elements alone: untyped literals and NULLs make it text[], which is
  // then compared with the column as text (or not at all), unlike an IN list whose items take the column's type.
  it.each([
    ["'ab  ' compared as text with a char(4) column (its trailing spaces dropped)", "bc = ANY(ARRAY['ab  '])", []],
    ["a text[] against an int8 column", "i8 = ANY(ARRAY['5'])", []],
    ["ARRAY[NULL] (a text[]) against an int4 column", "id = ANY(ARRAY[NULL])", []],
    ["an untyped parameter in ARRAY[…] (a text[]) against an int4 column", "id = ANY(ARRAY[$1])", ["1"]]
  ])("ARRAY[…] as Postgres types it: %s", async (_, where, values) => {
    await agrees(where, values)
  })
})
