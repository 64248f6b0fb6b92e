import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import pg from "pg"
import { inject } from "vitest"
import { Inspector } from "../../src/postgres/Inspector.js"
import { PgPool } from "../../src/postgres/PgPool.js"

const Db = PgPool.layer({ connectionString: inject("databaseUrl"), max: 4 })
const Live = Layer.provideMerge(Inspector.layer, Db)

const exec = (sql: string) => Effect.flatMap(PgPool, (pg) => pg.query(sql))

/** What loading a table gives, as plain values: `[reason, message]` of a failure, or `["loaded", "schema.name"]`. */
const outcome = (schema: string, name: string) =>
  Effect.flatMap(Inspector, (i) => i.load({ schema, name })).pipe(
    Effect.match({
      onFailure: (e) => [e.reason, e.message],
      onSuccess: (info) => ["loaded", `${info.schema}.${info.name}`]
    })
  )

layer(Live, { excludeTestServices: true })("Inspector", (it) => {
  it.effect("reads columns, types and the primary key in key order, leaving out generated columns", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS inspector_items;
        DROP TYPE IF EXISTS inspector_mood;
        DROP DOMAIN IF EXISTS inspector_posint2;
        DROP DOMAIN IF EXISTS inspector_posint;
        CREATE TYPE inspector_mood AS ENUM ('sad', 'ok');
        CREATE DOMAIN inspector_posint AS int4 CHECK (VALUE > 0);
        CREATE DOMAIN inspector_posint2 AS inspector_posint;
        CREATE TABLE inspector_items (
          a text NOT NULL,
          gone int4,
          b int8 NOT NULL,
          tags varchar(10)[],
          grid int4[][],
          mood inspector_mood,
          n inspector_posint2,
          twice int8 GENERATED ALWAYS AS (b * 2) STORED,
          PRIMARY KEY (b, a)
        );
        ALTER TABLE inspector_items DROP COLUMN gone;`)
      const inspector = yield* Inspector
      const info = yield* inspector.load({ schema: "public", name: "inspector_items" })
      const [{ oid }] = (yield* exec(`SELECT 'inspector_items'::regclass::oid AS oid`)) as Array<{ oid: number }>
      expect(info.oid).toBe(oid)
      expect(info.schema).toBe("public")
      expect(info.name).toBe("inspector_items")
      expect(info.pk).toEqual(["b", "a"])
      expect(info.columns.map((c) => c.name)).toEqual(["a", "b", "tags", "grid", "mood", "n"])
      const col = (name: string) => info.columns.find((c) => c.name === name)!
      expect(col("a")).toEqual({
        name: "a", attnum: 1, typeName: "text", typeOid: 25, elementTypeOid: 25, typeKind: "b",
        baseTypeName: "text", dims: 0, typeMod: -1, notNull: true, pkIndex: 1
      })
      expect(col("b")).toMatchObject({ attnum: 3, typeName: "int8", typeOid: 20, notNull: true, pkIndex: 0 })
      expect(col("tags")).toMatchObject({
        typeName: "varchar", typeOid: 1015, elementTypeOid: 1043, dims: 1, typeMod: 14, notNull: false, pkIndex: undefined
      })
      expect(col("grid")).toMatchObject({ typeName: "int4", typeOid: 1007, elementTypeOid: 23, dims: 2 })
      expect(col("mood")).toMatchObject({ typeName: "inspector_mood", typeKind: "e", baseTypeName: "inspector_mood", dims: 0 })
      expect(col("n")).toMatchObject({ typeName: "inspector_posint2", typeKind: "d", baseTypeName: "int4", dims: 0 })
      expect(info.columns.find((c) => c.name === "twice")).toBeUndefined()
    }))

  it.effect("gives array columns made by CREATE TABLE AS one dimension", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS inspector_ctas;
        CREATE TABLE inspector_ctas AS SELECT ARRAY[1, 2]::int8[] AS xs, 'x'::text AS label;`)
      const info = yield* Effect.flatMap(Inspector, (i) => i.load({ schema: "public", name: "inspector_ctas" }))
      expect(info.columns[0]).toMatchObject({ name: "xs", typeName: "int8", dims: 1 })
      expect(info.columns[1]).toMatchObject({ name: "label", dims: 0 })
    }))

  it.effect("keys a table without a primary key on all columns by name", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS "Inspector NoPk";
        CREATE TABLE "Inspector NoPk" (zeta int4, "Alpha" text, beta bool);`)
      const info = yield* Effect.flatMap(Inspector, (i) => i.load({ schema: "public", name: "Inspector NoPk" }))
      expect(info.name).toBe("Inspector NoPk")
      expect(info.pk).toEqual(["Alpha", "beta", "zeta"])
      expect(info.columns.every((c) => c.pkIndex === undefined)).toBe(true)
    }))

  it.effect("reports an unknown table with the name as requested", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Effect.flatMap(Inspector, (i) => i.load({ schema: "public", name: "nonexistent" })))
      expect(error.reason).toBe("TableNotFound")
      expect(error.message).toBe(
        `Table "public"."nonexistent" does not exist. If the table name contains capitals or special characters you must quote it.`
      )
      const other = yield* Effect.flip(Effect.flatMap(Inspector, (i) => i.load({ schema: "nope", name: "Items" })))
      expect(other.message).toMatch(/^Table "nope"\."Items" does not exist\./)
    }))

  it.effect("does not treat views as tables", () =>
    Effect.gen(function*() {
      yield* exec(`DROP VIEW IF EXISTS inspector_view; CREATE VIEW inspector_view AS SELECT 1 AS one;`)
      const error = yield* Effect.flip(Effect.flatMap(Inspector, (i) => i.load({ schema: "public", name: "inspector_view" })))
      expect(error.reason).toBe("TableNotFound")
    }))

  it.effect("refuses tables in system and temporary schemas, whether or not they exist", () =>
    Effect.gen(function*() {
      const system = (schema: string, name: string, kind: string) => [
        "UnsupportedTable",
        `Table "${schema}"."${name}" is in the ${kind} schema "${schema}", whose tables are never replicated`
      ]
      expect(yield* outcome("pg_catalog", "pg_authid")).toEqual(system("pg_catalog", "pg_authid", "system"))
      expect(yield* outcome("information_schema", "sql_features")).toEqual(
        system("information_schema", "sql_features", "system")
      )
      expect(yield* outcome("pg_toast", "pg_toast_1262")).toEqual(system("pg_toast", "pg_toast_1262", "system"))
      expect(yield* outcome("pg_catalog", "no_such_table")).toEqual(system("pg_catalog", "no_such_table", "system"))
      expect(yield* outcome("pg_temp_3", "t")).toEqual(system("pg_temp_3", "t", "temporary"))
      expect(yield* outcome("pg_toast_temp_3", "t")).toEqual(system("pg_toast_temp_3", "t", "temporary"))
      // Names that only look like system schemas are ordinary ones.
      for (const schema of ["pg_temp_x", "Pg_catalog", "pg_catalog2", "information_schema_x"]) {
        const [reason] = yield* outcome(schema, "t")
        expect([schema, reason]).toEqual([schema, "TableNotFound"])
      }
    }))

  it.effect("refuses an unlogged table, whose changes never reach the WAL", () =>
    Effect.gen(function*() {
      yield* exec(`DROP TABLE IF EXISTS inspector_unlogged; CREATE UNLOGGED TABLE inspector_unlogged (id int4 PRIMARY KEY);`)
      expect(yield* outcome("public", "inspector_unlogged")).toEqual([
        "UnsupportedTable",
        `Table "public"."inspector_unlogged" is unlogged: its changes are never written to the WAL, so they cannot be replicated`
      ])
      // Once logged, the same table is served (the refusal was not cached).
      yield* exec(`ALTER TABLE inspector_unlogged SET LOGGED`)
      expect(yield* outcome("public", "inspector_unlogged")).toEqual(["loaded", "public.inspector_unlogged"])
    }))

  it.effect("refuses another session's temporary table, named by its temporary schema", () =>
    Effect.acquireUseRelease(
      Effect.promise(async () => {
        const client = new pg.Client({ connectionString: inject("databaseUrl") })
        await client.connect()
        return client
      }),
      (client) =>
        Effect.gen(function*() {
          const schema = yield* Effect.promise(async () => {
            await client.query(`CREATE TEMPORARY TABLE inspector_temp (id int4 PRIMARY KEY)`)
            const { rows } = await client.query<{ schema: string }>(`SELECT pg_my_temp_schema()::regnamespace::text AS schema`)
            return rows[0]!.schema
          })
          expect(schema).toMatch(/^pg_temp_\d+$/)
          expect(yield* outcome(schema, "inspector_temp")).toEqual([
            "UnsupportedTable",
            `Table "${schema}"."inspector_temp" is in the temporary schema "${schema}", whose tables are never replicated`
          ])
        }),
      (client) => Effect.promise(() => client.end())
    ))

  it.effect("caches by name until invalidated by oid or by name", () =>
    Effect.gen(function*() {
      const inspector = yield* Inspector
      const ref = { schema: "public", name: "inspector_cached" }
      yield* exec(`DROP TABLE IF EXISTS inspector_cached; CREATE TABLE inspector_cached (id int4 PRIMARY KEY);`)
      const first = yield* inspector.load(ref)
      yield* exec(`ALTER TABLE inspector_cached ADD COLUMN extra text`)
      expect(yield* inspector.load(ref)).toBe(first)
      yield* inspector.invalidate(first.oid)
      const second = yield* inspector.load(ref)
      expect(second.columns.map((c) => c.name)).toEqual(["id", "extra"])
      yield* exec(`ALTER TABLE inspector_cached ADD COLUMN more text`)
      yield* inspector.invalidate(ref)
      expect((yield* inspector.load(ref)).columns.map((c) => c.name)).toEqual(["id", "extra", "more"])
    }))
})

describe("Inspector.layerTest", () => {
  const table = { oid: 1, schema: "public", name: "t", columns: [], pk: [] }
  it.effect("serves the given tables and rejects others", () =>
    Effect.gen(function*() {
      const inspector = yield* Inspector
      expect(yield* inspector.load({ schema: "public", name: "t" })).toBe(table)
      const error = yield* Effect.flip(inspector.load({ schema: "public", name: "u" }))
      expect(error.reason).toBe("TableNotFound")
    }).pipe(Effect.provide(Inspector.layerTest([table]))))
})
