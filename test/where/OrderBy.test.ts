import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import pg from "pg"
import { inject } from "vitest"
import { parseOrderBy } from "../../src/where/OrderBy.js"
import { tableInfo } from "./table.js"

// A subset's `order_by` is checked by Postgres's own parser and written anew from the parse tree: only
// column names (plain, quoted or qualified by this table) with a direction and a NULLS placement get through,
// so the text that reaches Postgres is always the server's own.

const table = tableInfo(
  "Items",
  [
    ["id", "int4"],
    ["name", "text"],
    ["Mixed Case", "text"],
    [`has"quote`, "text"],
    ["n", "int4"]
  ],
  "app"
)

const rendered = (orderBy: string): string =>
  Either.getOrThrowWith(parseOrderBy(orderBy, table), (e) => new Error(`${orderBy}: ${e}`))

const refusal = (orderBy: string): string =>
  Either.match(parseOrderBy(orderBy, table), { onLeft: (e) => e, onRight: (sql) => `accepted: ${sql}` })

describe("parseOrderBy accepts", () => {
  it.each([
    ["id", `"id"`],
    ["ID", `"id"`],
    [`"id"`, `"id"`],
    ["id ASC", `"id" ASC`],
    ["id desc", `"id" DESC`],
    ["name NULLS FIRST", `"name" NULLS FIRST`],
    ["name nulls last", `"name" NULLS LAST`],
    ["name DESC NULLS LAST", `"name" DESC NULLS LAST`],
    ["n ASC NULLS FIRST, id DESC", `"n" ASC NULLS FIRST, "id" DESC`],
    ["n, n DESC", `"n", "n" DESC`],
    [`"Mixed Case" DESC`, `"Mixed Case" DESC`],
    [`"has""quote"`, `"has""quote"`],
    ["(id)", `"id"`],
    ["  id\n,\tname  ", `"id", "name"`]
  ])("%j as %s", (orderBy, sql) => {
    expect(rendered(orderBy)).toBe(sql)
  })

  it("columns qualified by this table, with or without its schema, in Postgres's identifier case rules", () => {
    expect(rendered(`"Items".id`)).toBe(`"id"`)
    expect(rendered(`app."Items"."n" DESC`)).toBe(`"n" DESC`)
    expect(rendered(`"app"."Items".name NULLS FIRST`)).toBe(`"name" NULLS FIRST`)
  })

  it("drops comments, which never reach Postgres", () => {
    expect(rendered("id -- then name")).toBe(`"id"`)
    expect(rendered("id /* ; DROP TABLE x */ DESC")).toBe(`"id" DESC`)
  })
})

describe("parseOrderBy refuses", () => {
  it.each([
    ["id + 1", "only columns can be ordered by, not an expression"],
    ["-id", "only columns can be ordered by, not an expression"],
    ["id::text", "only columns can be ordered by, not an expression"],
    ["CASE WHEN n > 1 THEN id END", "only columns can be ordered by, not an expression"],
    ["(SELECT 1)", "only columns can be ordered by, not an expression"],
    [`name COLLATE "C"`, "only columns can be ordered by, not an expression"],
    ["lower(name)", "only columns can be ordered by, not a function call"],
    ["pg_sleep(10)", "only columns can be ordered by, not a function call"],
    ["1", "only columns can be ordered by, not a constant or a column position"],
    ["2 DESC", "only columns can be ordered by, not a constant or a column position"],
    ["'id'", "only columns can be ordered by, not a constant or a column position"],
    ["NULL", "only columns can be ordered by, not a constant or a column position"],
    ["$1", "only columns can be ordered by, not a parameter"],
    ["id USING <", "ORDER BY … USING is not supported"],
    ["id USING OPERATOR(pg_catalog.<)", "ORDER BY … USING is not supported"],
    [`"Items".*`, "only columns can be ordered by, not *"]
  ])("an expression: %j", (orderBy, message) => {
    expect(refusal(orderBy)).toBe(message)
  })

  it.each([
    ["nope", `Unknown column "nope"`],
    [`"ID"`, `Unknown column "ID"`],
    ["Mixed", `Unknown column "mixed"`],
    ["items.id", `Unknown column "items.id"`],
    ["other.id", `Unknown column "other.id"`],
    [`public."Items".id`, `Unknown column "public.Items.id"`],
    [`db.app."Items".id`, `Unknown column "db.app.Items.id"`],
    ["id, nope DESC", `Unknown column "nope"`]
  ])("a column this table does not have: %j", (orderBy, message) => {
    expect(refusal(orderBy)).toBe(message)
  })

  it.each([
    "id; DROP TABLE x",
    "id; SELECT 1",
    "id LIMIT 1",
    "id OFFSET 5",
    "id FETCH FIRST 1 ROWS ONLY",
    "id FOR UPDATE"
  ])("anything after the list: %j", (orderBy) => {
    expect(refusal(orderBy)).toBe("expected a list of columns to order by")
  })

  it.each([
    ["", `At location 18: syntax error at end of input`],
    ["   ", `At location 21: syntax error at end of input`],
    ["*", `At location 18: syntax error at or near "*"`],
    ["id,", `At location 21: syntax error at end of input`],
    ["id ASC DESC", `At location 25: syntax error at or near "DESC"`],
    ["id NULLS", `At location 21: syntax error at or near "NULLS"`],
    ["Mixed Case", `At location 24: syntax error at or near "Case"`],
    ["id) ; DROP TABLE x; --", `At location 20: syntax error at or near ")"`],
    ["id UNION SELECT 1", `At location 21: syntax error at or near "UNION"`],
    [`"has"quote"`, `At location 23: syntax error at or near "quote"`],
    ["'unterminated", `At location 18: unterminated quoted string at or near "'unterminated"`]
  ])("a syntax error, at the 0-based position in `SELECT 1 ORDER BY <order_by>`: %j", (orderBy, message) => {
    expect(refusal(orderBy)).toBe(message)
  })

  it("a column of a type without an ordering, before Postgres would refuse it", () => {
    const odd = tableInfo("odd", [["id", "int4"], ["doc", "json"], ["at", "point"], ["body", "jsonb"]])
    const refuse = (orderBy: string) => Either.match(parseOrderBy(orderBy, odd), { onLeft: (e) => e, onRight: (sql) => sql })
    expect(refuse("doc")).toBe(`column "doc" cannot be ordered by: type json has no ordering`)
    expect(refuse("id, at DESC")).toBe(`column "at" cannot be ordered by: type point has no ordering`)
    expect(refuse("body")).toBe(`"body"`)
  })

    it("a NUL byte, which would end the text for the parser", () => {
    expect(refusal("id\u0000; DROP TABLE x")).toBe("must not contain a NUL byte")
    expect(refusal("\u0000")).toBe("must not contain a NUL byte")
  })
})

describe("parseOrderBy against Postgres", () => {
  // The rendered order must sort as the client's text does when Postgres runs it.
  const TABLE = `order_by_${process.pid}_${Date.now().toString(36)}`
  let client: pg.Client
  beforeAll(async () => {
    client = new pg.Client({ connectionString: inject("databaseUrl") })
    await client.connect()
    await client.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, name text COLLATE "C", n int)`)
    await client.query(
      `INSERT INTO ${TABLE} SELECT i, CASE WHEN i % 5 = 0 THEN NULL ELSE chr(65 + i % 7) END, CASE WHEN i % 4 = 0 THEN NULL ELSE i % 3 END
         FROM generate_series(1, 30) i`
    )
  })
  afterAll(async () => {
    await client.query(`DROP TABLE IF EXISTS ${TABLE}`)
    await client.end()
  })

  const pgTable = tableInfo(TABLE, [["id", "int4"], ["name", "text"], ["n", "int4"]])

  it.each([
    "n, id",
    "n DESC, id",
    "n NULLS FIRST, id DESC",
    "n DESC NULLS LAST, name, id",
    "name DESC NULLS FIRST, n ASC NULLS LAST, id",
    "public.TABLE.n, id"
  ])("%j", async (orderBy) => {
    const text = orderBy.replace("TABLE", TABLE)
    const sql = Either.getOrThrow(parseOrderBy(text, pgTable))
    const ids = async (order: string) =>
      (await client.query<{ id: number }>(`SELECT id FROM ${TABLE} ORDER BY ${order}`)).rows.map((r) => r.id)
    expect(await ids(sql)).toEqual(await ids(text))
  })
})
