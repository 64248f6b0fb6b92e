import { Effect, Either } from "effect"
import type { ShapeDefinition } from "../domain/ShapeDefinition.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { TableInfo, TableRef } from "../domain/Table.js"
import { InvalidRequest, type InvalidWhere, type PostgresError } from "../domain/errors.js"
import type { Inspector } from "../postgres/Inspector.js"
import { parseWhere } from "../where/WhereClause.js"
import { selectedColumns, type Shape } from "./Shape.js"

/** A shape request's definition parameters, before they are checked against the catalog. */
export interface ShapeSpec {
  readonly table: TableRef
  readonly where: string | undefined
  readonly params: Readonly<Record<string, string>>
  readonly columns: ReadonlyArray<string> | undefined
  readonly replica: "default" | "full"
  readonly log: "full" | "changes_only"
}

/** A shape definition checked against the catalog (its where in canonical form). */
export interface ResolvedSpec {
  readonly definition: ShapeDefinition
  readonly table: TableInfo
  readonly build: (handle: ShapeHandle) => Shape
}

/** Compiles a definition against its table; the where is parsed with `params` substituted. */
export const buildShape = (
  table: TableInfo,
  definition: ShapeDefinition,
  params: Readonly<Record<string, string>>
): Either.Either<(handle: ShapeHandle) => Shape, InvalidWhere> => {
  const where = definition.where === undefined ? undefined : parseWhere(definition.where, params, table)
  if (where !== undefined && Either.isLeft(where)) return Either.left(where.left)
  const clause = where === undefined ? undefined : where.right
  const canonical: ShapeDefinition = clause === undefined ? definition : { ...definition, where: clause.sql }
  const columns = selectedColumns(table, definition.columns)
  return Either.right((handle: ShapeHandle): Shape => ({ handle, definition: canonical, table, where: clause, columns }))
}

/**
 * Checks a spec against the catalog: an unknown table, a table that is never
 * replicated, unknown columns, a selection without the primary key or a bad
 * where become `InvalidRequest` naming the parameter.
 */
export const resolveSpec = (
  inspector: Inspector["Type"],
  spec: ShapeSpec
): Effect.Effect<ResolvedSpec, InvalidRequest | PostgresError> =>
  Effect.gen(function*() {
    const table = yield* inspector.load(spec.table).pipe(
      Effect.catchIf(
        (e) => e.reason === "TableNotFound" || e.reason === "UnsupportedTable",
        (e) => Effect.fail(InvalidRequest.single("table", e.message))
      )
    )
    let columns: ReadonlyArray<string> | undefined
    if (spec.columns !== undefined) {
      const known = new Set(table.columns.map((c) => c.name))
      const unknown = spec.columns.filter((c) => !known.has(c))
      if (unknown.length > 0) {
        return yield* InvalidRequest.single(
          "columns",
          `The following columns are not found on the table: ${unknown.join(", ")}`
        )
      }
      const chosen = new Set(spec.columns)
      const hasPk = table.columns.some((c) => c.pkIndex !== undefined)
      const missing = hasPk ? table.pk.filter((c) => !chosen.has(c)) : []
      if (missing.length > 0) {
        return yield* InvalidRequest.single(
          "columns",
          `The list of columns must include all primary key columns, missing: ${missing.join(", ")}`
        )
      }
      columns = [...chosen].sort()
    }
    const definition: ShapeDefinition = {
      table: { schema: table.schema, name: table.name },
      where: spec.where,
      columns,
      replica: spec.replica,
      log: spec.log
    }
    const built = buildShape(table, definition, spec.params)
    if (Either.isLeft(built)) return yield* InvalidRequest.single("where", built.left.message)
    const probe = built.right("" as ShapeHandle)
    return { definition: probe.definition, table, build: built.right }
  })
