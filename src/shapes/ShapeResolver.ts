import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import type { ShapeDefinition } from "../domain/ShapeDefinition.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { TableInfo, TableRef } from "../domain/Table.js"
import { InvalidRequest, type InvalidWhere, type PostgresError } from "../domain/errors.js"
import type { Inspector } from "../postgres/Inspector.js"
import type { TableName } from "../where/Parser.js"
import { type DependencyClause, parseWhere, subqueryTablesOf, type WhereClause } from "../where/WhereClause.js"
import { selectedColumns, type Shape } from "./Shape.js"
import type { ShapeRouting } from "./ShapeStatus.js"

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
  /** The shape under a handle, with the handles of its dependency shapes (`dependencies` order). */
  readonly build: (handle: ShapeHandle, dependencies?: ReadonlyArray<ShapeHandle>) => Shape
  /** The dependency shapes its subqueries read, one per distinct subquery. */
  readonly dependencies: ReadonlyArray<ResolvedSpec>
  /** What routing finds its shape by, recorded with it so that a restart need not parse its where. */
  readonly routing: ShapeRouting
}

/** A table lookup for the subqueries of a clause (see `loadSubqueryTables`). */
export type TableLookup = (name: TableName) => TableInfo | undefined

/** Compiles a definition against its table; the where is parsed with `params` substituted. */
export const buildShape = (
  table: TableInfo,
  definition: ShapeDefinition,
  params: Readonly<Record<string, string>>,
  tables?: TableLookup
): Either.Either<ResolvedSpec, InvalidWhere> => {
  const where = definition.where === undefined ? undefined : parseWhere(definition.where, params, table, tables)
  if (where !== undefined && Either.isLeft(where)) return Either.left(where.left)
  return Either.right(specOf(table, definition, where === undefined ? undefined : where.right))
}

const specOf = (table: TableInfo, definition: ShapeDefinition, clause: WhereClause | undefined): ResolvedSpec => {
  const canonical: ShapeDefinition = clause === undefined ? definition : { ...definition, where: clause.sql }
  const columns = selectedColumns(table, definition.columns)
  return {
    definition: canonical,
    table,
    build: (handle, dependencies = []): Shape => ({ handle, definition: canonical, table, where: clause, columns, dependencies }),
    dependencies: (clause?.dependencies ?? []).map(dependencySpec),
    routing: clause?.equalities[0] ?? null
  }
}

/**
 * A shape restored from the registry whose where is parsed when something first reads it (a transaction that
 * reaches it, a request that needs the clause), not at start-up: a restart with many shapes on disk then costs
 * one registry read, not one parse per shape. Only for shapes without subqueries (their dependency shapes must
 * be checked at start-up); the where parsed the same way when the shape was created, against a table whose
 * columns are checked to be the same, so parsing it again gives the same clause.
 */
class RestoredShape implements Shape {
  #where: WhereClause | undefined | null = null
  constructor(
    readonly handle: ShapeHandle,
    readonly definition: ShapeDefinition,
    readonly table: TableInfo,
    readonly columns: ReadonlyArray<string>,
    readonly dependencies: ReadonlyArray<ShapeHandle>
  ) {}
  get where(): WhereClause | undefined {
    if (this.#where === null) {
      const compiled = compileWhere(this)
      if (Either.isLeft(compiled)) throw new Error(`shape ${this.handle}: its where no longer parses: ${compiled.left.message}`)
      this.#where = compiled.right
    }
    return this.#where
  }
  /** Whether the where was parsed already. */
  get compiled(): boolean {
    return this.#where !== null
  }
  compile(): Either.Either<WhereClause | undefined, InvalidWhere> {
    if (this.#where !== null) return Either.right(this.#where)
    const compiled = compileWhere(this)
    if (Either.isRight(compiled)) this.#where = compiled.right
    return compiled
  }
}

const compileWhere = (shape: RestoredShape): Either.Either<WhereClause | undefined, InvalidWhere> =>
  shape.definition.where === undefined
    ? Either.right(undefined)
    : parseWhere(shape.definition.where, {}, shape.table)

/**
 * A restored shape without subqueries, its where parsed on first use (`RestoredShape`). `definition` is the
 * registered one, its where already in canonical form.
 */
export const restoreShape = (
  table: TableInfo,
  definition: ShapeDefinition,
  handle: ShapeHandle,
  dependencies: ReadonlyArray<ShapeHandle>
): Shape => new RestoredShape(handle, definition, table, selectedColumns(table, definition.columns), dependencies)

/**
 * A shape's where, parsed now if it was not yet; a `Left` when it no longer parses (only a restored shape's can:
 * see `RestoredShape`).
 */
export const shapeWhere = (shape: Shape): Either.Either<WhereClause | undefined, InvalidWhere> =>
  shape instanceof RestoredShape ? shape.compile() : Either.right(shape.where)

/** Whether a shape's where is parsed (always, but for a restored shape nothing has needed yet). */
export const whereCompiled = (shape: Shape): boolean => !(shape instanceof RestoredShape) || shape.compiled

/**
 * The shape a subquery reads: its table and clause, the selected columns plus the primary key, every column in
 * its updates (`replica=full`), so that its materializer always knows each row's values.
 */
const dependencySpec = (d: DependencyClause): ResolvedSpec => {
  const columns = [...new Set([...d.select.map((c) => c.name), ...d.table.pk])].sort()
  return specOf(d.table, {
    table: { schema: d.table.schema, name: d.table.name },
    where: d.where?.sql,
    columns,
    replica: "full",
    log: "full"
  }, d.where)
}

/**
 * Loads the tables a clause's subqueries read. A table that does not exist or cannot be replicated is an
 * `InvalidRequest` naming `where`.
 */
export const loadSubqueryTables = (
  inspector: Inspector["Type"],
  where: string | undefined
): Effect.Effect<TableLookup, InvalidRequest | PostgresError> =>
  Effect.gen(function*() {
    const names = where === undefined ? [] : subqueryTablesOf(where)
    const loaded = new Map<string, TableInfo>()
    for (const name of names) {
      const ref = { schema: name.schema ?? "public", name: name.name }
      const table = yield* inspector.load(ref).pipe(
        Effect.map((t): TableInfo | undefined => t),
        Effect.catchIf((e) => e.reason === "TableNotFound", () => Effect.succeed(undefined)),
        Effect.catchIf(
          (e) => e.reason === "UnsupportedTable",
          (e) => Effect.fail(InvalidRequest.single("where", `subquery: ${e.message}`))
        )
      )
      if (table !== undefined) loaded.set(JSON.stringify([ref.schema, ref.name]), table)
    }
    return (name: TableName) => loaded.get(JSON.stringify([name.schema ?? "public", name.name]))
  })

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
    const tables = yield* loadSubqueryTables(inspector, spec.where)
    const built = buildShape(table, definition, spec.params, tables)
    if (Either.isLeft(built)) return yield* InvalidRequest.single("where", built.left.message)
    if (built.right.dependencies.length > 0 && spec.log === "changes_only") {
      return yield* InvalidRequest.single("log", "log=changes_only is not supported for a shape with subqueries")
    }
    return built.right
  })
