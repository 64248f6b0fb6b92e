import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { PostgresError } from "../domain/errors.js"
import type { ColumnInfo, TableInfo, TableRef } from "../domain/Table.js"
import { PgPool } from "./PgPool.js"

const TABLE_SQL = `
SELECT c.oid, n.nspname, c.relname, c.relpersistence
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`

// indkey is an int2vector, whose subscripts start at 0; pk_position is counted from its lower bound.
// An array type is one with an element type and variable length (as Postgres's
// own IsTrueArrayType); `typelem` alone would also match fixed-size types like `point`.
// Generated columns are left out because pgoutput leaves them out of Relation messages and
// tuples (unless publish_generated_columns is on): the snapshot, the schema and the column
// signature must match what the replication stream carries.
const COLUMNS_SQL = `
SELECT a.attname AS name,
       a.attnum AS attnum,
       a.atttypid AS type_oid,
       a.atttypmod AS type_mod,
       a.attnotnull AS not_null,
       a.attndims AS attndims,
       (t.typelem <> 0 AND t.typlen = -1) AS is_array,
       et.oid AS element_oid,
       et.typname AS type_name,
       et.typtype AS type_kind,
       (WITH RECURSIVE chain(oid, base, kind) AS (
          SELECT et.oid, et.typbasetype, et.typtype
          UNION ALL
          SELECT p.oid, p.typbasetype, p.typtype
            FROM pg_catalog.pg_type p JOIN chain ON p.oid = chain.base
           WHERE chain.kind = 'd')
        SELECT b.typname FROM chain JOIN pg_catalog.pg_type b ON b.oid = chain.oid
         WHERE chain.kind <> 'd' LIMIT 1) AS base_type_name,
       array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1) AS pk_position
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_type et
    ON et.oid = CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN t.typelem ELSE t.oid END
  LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
 ORDER BY a.attnum`

interface ColumnRow {
  readonly [key: string]: unknown
  readonly name: string
  readonly attnum: number
  readonly type_oid: number
  readonly type_mod: number
  readonly not_null: boolean
  readonly attndims: number
  readonly is_array: boolean
  readonly element_oid: number
  readonly type_name: string
  readonly type_kind: string
  readonly base_type_name: string | null
  readonly pk_position: number | null
}

/** The message of a `TableNotFound` error for the table as the request named it. */
export const tableNotFoundMessage = (ref: TableRef): string =>
  `Table "${ref.schema}"."${ref.name}" does not exist. If the table name contains capitals or special characters you must quote it.`

const cacheKey = (ref: TableRef): string => `${ref.schema}\u0000${ref.name}`

const TEMPORARY_SCHEMA = /^pg_(toast_)?temp_[0-9]+$/
const SYSTEM_SCHEMAS: ReadonlySet<string> = new Set(["pg_catalog", "information_schema", "pg_toast"])

/**
 * Why a table in this schema can never be synced, if it cannot: logical
 * replication leaves system catalogs out, and temporary schemas hold only
 * temporary tables, which are never written to the WAL.
 */
const schemaRefusal = (ref: TableRef): string | undefined => {
  const kind = TEMPORARY_SCHEMA.test(ref.schema) ? "temporary" : SYSTEM_SCHEMAS.has(ref.schema) ? "system" : undefined
  return kind === undefined
    ? undefined
    : `Table "${ref.schema}"."${ref.name}" is in the ${kind} schema "${ref.schema}", whose tables are never replicated`
}

/** Why a table with this `pg_class.relpersistence` can never be synced, if it cannot. */
const persistenceRefusal = (ref: TableRef, relpersistence: string): string | undefined => {
  const kind = relpersistence === "u" ? "unlogged" : relpersistence === "t" ? "temporary" : undefined
  return kind === undefined
    ? undefined
    : `Table "${ref.schema}"."${ref.name}" is ${kind}: its changes are never written to the WAL, so they cannot be replicated`
}

const toColumn = (row: ColumnRow): ColumnInfo => ({
  name: row.name,
  attnum: row.attnum,
  typeName: row.type_name,
  typeOid: row.type_oid,
  elementTypeOid: row.element_oid,
  typeKind: row.type_kind,
  baseTypeName: row.base_type_name ?? row.type_name,
  // Postgres leaves attndims 0 for array columns it did not get from a declaration (CREATE TABLE AS).
  dims: row.is_array ? Math.max(row.attndims, 1) : 0,
  typeMod: row.type_mod,
  notNull: row.not_null,
  pkIndex: row.pk_position ?? undefined
})

/** Primary-key columns in key order, or every column by name when there is no primary key. */
const pkOf = (columns: ReadonlyArray<ColumnInfo>): ReadonlyArray<string> => {
  const keyed = columns.filter((c) => c.pkIndex !== undefined)
  if (keyed.length > 0) return keyed.sort((a, b) => a.pkIndex! - b.pkIndex!).map((c) => c.name)
  return columns.map((c) => c.name).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
}

/**
 * Reads tables from the catalog (columns, types, primary key) and keeps them
 * in memory by `(schema, name)` until invalidated, e.g. after a schema change
 * seen on the replication stream.
 */
export class Inspector extends Context.Tag("syncline/Inspector")<Inspector, {
  /**
   * The table as it is now (or as last cached); `TableNotFound` for anything
   * but an ordinary or partitioned table, `UnsupportedTable` for one whose
   * changes never reach logical replication (system, unlogged, temporary).
   */
  readonly load: (ref: TableRef) => Effect.Effect<TableInfo, PostgresError>
  /** Forgets the cached table with this oid, or with this name. */
  readonly invalidate: (target: number | TableRef) => Effect.Effect<void>
}>() {
  /** An inspector reading through the pool. */
  static readonly make: Effect.Effect<Inspector["Type"], never, PgPool> = Effect.gen(function*() {
    const pg = yield* PgPool
    const cache = new Map<string, TableInfo>()

    const fetch = Effect.fn("Inspector.fetch")(function*(ref: TableRef) {
      // Decided on the name alone, so TOAST tables, which the query below does not find, get the reason too.
      const inSystemSchema = schemaRefusal(ref)
      if (inSystemSchema !== undefined) {
        return yield* new PostgresError({ reason: "UnsupportedTable", message: inSystemSchema })
      }
      const tables = yield* pg.query<{ oid: number; nspname: string; relname: string; relpersistence: string }>(
        TABLE_SQL,
        [ref.schema, ref.name]
      )
      const table = tables[0]
      if (table === undefined) {
        return yield* new PostgresError({ reason: "TableNotFound", message: tableNotFoundMessage(ref) })
      }
      const notLogged = persistenceRefusal(ref, table.relpersistence)
      if (notLogged !== undefined) {
        return yield* new PostgresError({ reason: "UnsupportedTable", message: notLogged })
      }
      const rows = yield* pg.query<ColumnRow>(COLUMNS_SQL, [table.oid])
      // A table dropped between the two queries has no columns left.
      if (rows.length === 0) {
        return yield* new PostgresError({ reason: "TableNotFound", message: tableNotFoundMessage(ref) })
      }
      const columns = rows.map(toColumn)
      const info: TableInfo = { oid: table.oid, schema: table.nspname, name: table.relname, columns, pk: pkOf(columns) }
      return info
    })

    const load = (ref: TableRef): Effect.Effect<TableInfo, PostgresError> =>
      Effect.suspend(() => {
        const cached = cache.get(cacheKey(ref))
        if (cached !== undefined) return Effect.succeed(cached)
        return Effect.tap(fetch(ref), (info) => Effect.sync(() => cache.set(cacheKey(ref), info)))
      })

    const invalidate = (target: number | TableRef): Effect.Effect<void> =>
      Effect.sync(() => {
        if (typeof target !== "number") {
          cache.delete(cacheKey(target))
          return
        }
        for (const [key, info] of cache) if (info.oid === target) cache.delete(key)
      })

    return { load, invalidate }
  })

  /** The inspector as a layer over `PgPool`. */
  static readonly layer: Layer.Layer<Inspector, never, PgPool> = Layer.effect(Inspector, Inspector.make)

  /** A fixed set of tables, for tests that have no database. */
  static layerTest(tables: ReadonlyArray<TableInfo>): Layer.Layer<Inspector> {
    return Layer.succeed(Inspector, {
      load: (ref) => {
        const found = tables.find((t) => t.schema === ref.schema && t.name === ref.name)
        return found === undefined
          ? Effect.fail(new PostgresError({ reason: "TableNotFound", message: tableNotFoundMessage(ref) }))
          : Effect.succeed(found)
      },
      invalidate: () => Effect.void
    })
  }
}
