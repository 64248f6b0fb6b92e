import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import type { Row } from "../domain/Change.js"
import { PostgresError, SubsetTooLarge } from "../domain/errors.js"
import { rowKey } from "../domain/RowKey.js"
import type { TableInfo } from "../domain/Table.js"
import { type RowsFilter, Snapshot } from "../postgres/Snapshot.js"
import type { Domain, InSubquery } from "../where/Ast.js"
import { type SubqueryViews, valueKey, valuesKey } from "../where/Evaluator.js"
import { parseWhere, type WhereClause } from "../where/WhereClause.js"
import type { FakePostgres } from "./FakePostgres.js"

/**
 * Snapshots of the fake database: a table's current rows matching the
 * shape's `where` as the shape log's insert messages, and visibility
 * information in which every committed fake transaction is visible. `rows`
 * answers a move's query (`RowsRequest`): the rows among the moved values,
 * each with its key, its selected values and whether the clause holds for it
 * now.
 *
 * A `where` is parsed with the project's own parser against the fake catalog
 * and evaluated over the fake rows; its subqueries are answered by value sets
 * computed from the fake rows of each dependency (recursively), keyed as the
 * materializer keys them. `take` passes through `db.intercept.snapshot` and
 * `rows` through `db.intercept.rows`, so a test can hold either. `subset`
 * filters and pages the rows in their stored order; it refuses an order, which
 * only Postgres can follow.
 */
export const FakeSnapshot = {
  layer: (db: FakePostgres): Layer.Layer<Snapshot> =>
    Layer.succeed(
      Snapshot,
      Snapshot.of({
        take: (table, options) =>
          db.intercept.snapshot.around({ schema: table.schema, name: table.name }, Effect.gen(function*() {
            const holds = yield* predicateOf(db, table, options.whereSql, "Snapshot")
            const rows = db.rows(table.name).filter(holds)
            const relation = [table.schema, table.name]
            const lines = rows.map((row) => {
              const value: Record<string, string | null> = {}
              for (const c of options.columns) value[c] = row[c] ?? null
              return JSON.stringify({ key: rowKey(table, row), value, headers: { operation: "insert", relation } })
            })
            const info = db.snapshotInfo(lines.length)
            if (lines.length > 0) yield* options.onRows({ bytes: Buffer.from(lines.map((l) => `${l}\n`).join("")), count: lines.length })
            return info
          })),
        rows: (request) =>
          db.intercept.rows.around({ schema: request.table.schema, name: request.table.name }, Effect.gen(function*() {
            const clause = yield* parse(db, request.table, request.whereSql, "Query")
            const holds = predicate(db, clause)
            const among = request.filters === undefined ? () => true : amongFilters(clause, request.filters)
            const found = db.rows(request.table.name).filter(among).map((row) => {
              const picked: Record<string, string | null> = {}
              for (const c of request.columns) picked[c] = row[c] ?? null
              return { key: rowKey(request.table, row), row: picked, included: holds(row) }
            })
            const { xmin, xmax, xip } = db.snapshotInfo(found.length)
            return { xmin, xmax, xip, rows: found }
          })),
        subset: (request) =>
          Effect.gen(function*() {
            if (request.orderBySql !== undefined) {
              return yield* new PostgresError({ reason: "Query", message: "the fake database cannot order a subset" })
            }
            const holds = yield* predicateOf(db, request.table, request.whereSql, "Query")
            const start = request.offset ?? 0
            const picked = db.rows(request.table.name).filter(holds).slice(start, request.limit === undefined ? undefined : start + request.limit)
            const relation = [request.table.schema, request.table.name]
            const lines = picked.map((row) => {
              const value: Record<string, string | null> = {}
              for (const c of request.columns) value[c] = row[c] ?? null
              return JSON.stringify({
                key: rowKey(request.table, row),
                value,
                headers: { operation: "insert", relation, snapshot_mark: request.mark }
              })
            })
            const bytes = lines.reduce((n, line) => n + line.length + 1, 0)
            if (bytes > request.maxBytes) return yield* new SubsetTooLarge({ maxBytes: request.maxBytes })
            const { xmin, xmax, xip, lsn } = db.snapshotInfo(lines.length)
            return { xmin, xmax, xip, lsn, lines }
          })
      })
    )
} as const

const lookup = (db: FakePostgres) => (name: { readonly schema?: string | undefined; readonly name: string }) =>
  db.catalog.find((t) => t.schema === (name.schema ?? "public") && t.name === name.name)

const parse = (db: FakePostgres, table: TableInfo, whereSql: string, reason: "Snapshot" | "Query") => {
  const parsed = parseWhere(whereSql, {}, table, lookup(db))
  return Either.isLeft(parsed)
    ? Effect.fail(new PostgresError({ reason, message: `the fake database cannot evaluate ${whereSql}: ${parsed.left.message}` }))
    : Effect.succeed(parsed.right)
}

/** The rows a snapshot reads: every row without a `where`, none for `false` (`changes_only`). */
const predicateOf = (db: FakePostgres, table: TableInfo, whereSql: string | undefined, reason: "Snapshot" | "Query") => {
  if (whereSql === undefined) return Effect.succeed((_: Row) => true)
  if (whereSql === "false") return Effect.succeed((_: Row) => false)
  return Effect.map(parse(db, table, whereSql, reason), (clause) => predicate(db, clause))
}

interface ValueSet {
  readonly keys: Set<string>
  nulls: number
}

/** Whether a row satisfies the clause now, its subqueries answered by the dependencies' current fake rows. */
const predicate = (db: FakePostgres, clause: WhereClause): (row: Row) => boolean => {
  if (clause.dependencies.length === 0) return clause.matches
  const dependencyRows = clause.dependencies.map((d) => {
    const holds = d.where === undefined ? () => true : predicate(db, d.where)
    return db.rows(d.table.name).filter(holds)
  })
  const sets = new Map<InSubquery, ValueSet>()
  for (const { node } of clause.positions) {
    const dependency = clause.dependencies[node.dependency]!
    const names = dependency.select.map((c) => c.name)
    const types = dependency.select.map((c) => c.type)
    const set: ValueSet = { keys: new Set(), nulls: 0 }
    for (const row of dependencyRows[node.dependency]!) {
      const values = names.map((n) => row[n] ?? null)
      if (values.some((v) => v === null)) set.nulls++
      else set.keys.add(valuesKey(node.domains, types, values as ReadonlyArray<string>))
    }
    sets.set(node, set)
  }
  const views: SubqueryViews = {
    has: (node, key) => sets.get(node)!.keys.has(key),
    hasNull: (node) => sets.get(node)!.nulls > 0,
    isEmpty: (node) => sets.get(node)!.keys.size === 0 && sets.get(node)!.nulls === 0
  }
  return clause.bind(views)
}

/**
 * Whether a row's values in some filter's columns are among that filter's values, compared in the domain of
 * the `IN (SELECT …)` over those columns (as the materializer keys them); as text when no position matches.
 */
const amongFilters = (clause: WhereClause, filters: ReadonlyArray<RowsFilter>) => {
  const tests = filters.map((f) => {
    const node = clause.positions.find((p) =>
      p.node.args.length === f.columns.length && p.node.args.every((a, i) => a.name === f.columns[i])
    )?.node
    const domains: ReadonlyArray<Domain> = node?.domains ?? f.columns.map(() => "text")
    const rowTypes = node?.args.map((a) => a.type) ?? f.types
    const wanted = new Set(f.values.map((v) => valuesKey(domains, f.types, v)))
    return (row: Row) => {
      let key = ""
      for (let i = 0; i < f.columns.length; i++) {
        const text = row[f.columns[i]!]
        if (text === null || text === undefined) return false
        key += (i === 0 ? "" : "\u0000") + valueKey(domains[i]!, rowTypes[i]!, text)
      }
      return wanted.has(key)
    }
  })
  return (row: Row) => tests.some((t) => t(row))
}
