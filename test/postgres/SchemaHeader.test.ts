import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { inject } from "vitest"
import type { ColumnInfo, TableInfo } from "../../src/domain/Table.js"
import { Inspector } from "../../src/postgres/Inspector.js"
import { PgPool } from "../../src/postgres/PgPool.js"
import { schemaHeader } from "../../src/postgres/SchemaHeader.js"

const Live = Layer.provideMerge(Inspector.layer, PgPool.layer({ connectionString: inject("databaseUrl"), max: 2 }))

const exec = (sql: string) => Effect.flatMap(PgPool, (pg) => pg.query(sql))

layer(Live, { excludeTestServices: true })("schemaHeader against a real table", (it) => {
  it.effect("describes every kind of column exactly", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS schema_header_all;
        DROP TYPE IF EXISTS schema_header_mood;
        DROP DOMAIN IF EXISTS schema_header_posint;
        CREATE TYPE schema_header_mood AS ENUM ('sad', 'ok');
        CREATE DOMAIN schema_header_posint AS int4 CHECK (VALUE > 0);
        CREATE TABLE schema_header_all (
          id int8 NOT NULL,
          name varchar(20) NOT NULL,
          code char(4),
          amount numeric(8,3),
          plain_numeric numeric,
          negative_scale numeric(4,-2),
          at timestamptz(3),
          at_default timestamptz,
          clock time(0),
          span interval minute to second,
          span_precise interval(2),
          span_year interval year,
          span_day interval day to second(3),
          span_any interval,
          flags bit(3),
          varflags varbit(5),
          ids int8[],
          grid int4[][],
          labels varchar(10)[],
          mood schema_header_mood,
          positive schema_header_posint NOT NULL,
          body text,
          PRIMARY KEY (name, id)
        );`)
      const table = yield* Effect.flatMap(Inspector, (i) => i.load({ schema: "public", name: "schema_header_all" }))
      const all = table.columns.map((c) => c.name)
      expect(schemaHeader(table, all)).toBe(
        "{" + [
          `"id":{"type":"int8","pk_index":1,"not_null":true}`,
          `"name":{"type":"varchar","pk_index":0,"not_null":true,"max_length":20}`,
          `"code":{"type":"bpchar","length":4}`,
          `"amount":{"type":"numeric","precision":8,"scale":3}`,
          `"plain_numeric":{"type":"numeric"}`,
          `"negative_scale":{"type":"numeric","precision":4,"scale":-2}`,
          `"at":{"type":"timestamptz","precision":3}`,
          `"at_default":{"type":"timestamptz"}`,
          `"clock":{"type":"time","precision":0}`,
          `"span":{"type":"interval","fields":"MINUTE TO SECOND"}`,
          `"span_precise":{"type":"interval","precision":2}`,
          `"span_year":{"type":"interval","fields":"YEAR"}`,
          `"span_day":{"type":"interval","fields":"DAY TO SECOND","precision":3}`,
          `"span_any":{"type":"interval"}`,
          `"flags":{"type":"bit","length":3}`,
          `"varflags":{"type":"varbit","length":5}`,
          `"ids":{"type":"int8","dims":1}`,
          `"grid":{"type":"int4","dims":2}`,
          `"labels":{"type":"varchar","dims":1,"max_length":10}`,
          `"mood":{"type":"schema_header_mood"}`,
          `"positive":{"type":"schema_header_posint","not_null":true}`,
          `"body":{"type":"text"}`
        ].join(",") + "}"
      )
      // Selected columns only, always in table order whatever order they were asked in.
      expect(schemaHeader(table, ["body", "ids", "id"])).toBe(
        `{"id":{"type":"int8","pk_index":1,"not_null":true},"ids":{"type":"int8","dims":1},"body":{"type":"text"}}`
      )
    }))

  it.effect("has no pk_index when the table has no primary key", () =>
    Effect.gen(function*() {
      yield* exec(`DROP TABLE IF EXISTS schema_header_nopk; CREATE TABLE schema_header_nopk (a int4 NOT NULL, b text);`)
      const table = yield* Effect.flatMap(Inspector, (i) => i.load({ schema: "public", name: "schema_header_nopk" }))
      expect(schemaHeader(table, ["a", "b"])).toBe(`{"a":{"type":"int4","not_null":true},"b":{"type":"text"}}`)
    }))
})

describe("schemaHeader", () => {
  const column = (overrides: Partial<ColumnInfo>): ColumnInfo => ({
    name: "c", attnum: 1, typeName: "text", typeOid: 25, elementTypeOid: 25, typeKind: "b", baseTypeName: "text",
    dims: 0, typeMod: -1, notNull: false, pkIndex: undefined, ...overrides
  })
  const table = (columns: ReadonlyArray<ColumnInfo>): TableInfo => ({ oid: 1, schema: "public", name: "t", columns, pk: [] })

  it("passes an unknown type's modifier through as type_mod", () => {
    expect(schemaHeader(table([column({ typeName: "geometry", typeMod: 1107460 })]), ["c"]))
      .toBe(`{"c":{"type":"geometry","type_mod":1107460}}`)
  })

  it("escapes column names and is an empty object when nothing is selected", () => {
    const t = table([column({ name: "we\"ird\\" })])
    expect(JSON.parse(schemaHeader(t, ["we\"ird\\"]))).toEqual({ "we\"ird\\": { type: "text" } })
    expect(schemaHeader(t, [])).toBe("{}")
  })
})
