import type { ShapeDefinition } from "../domain/ShapeDefinition.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { TableInfo } from "../domain/Table.js"
import type { WhereClause } from "../where/WhereClause.js"

/**
 * A shape ready to filter changes: its definition plus what was resolved
 * against the catalog (table, compiled where, selected columns in table order).
 */
export interface Shape {
  readonly handle: ShapeHandle
  readonly definition: ShapeDefinition
  readonly table: TableInfo
  readonly where: WhereClause | undefined
  /** Selected columns in table (attnum) order. */
  readonly columns: ReadonlyArray<string>
  /** The dependency shapes of its subqueries, in `where.dependencies` order. */
  readonly dependencies: ReadonlyArray<ShapeHandle>
}

// Every shape of a table that selects all its columns shares one list.
const allColumns = new WeakMap<TableInfo, ReadonlyArray<string>>()

/** The selected columns of a definition in table order (every column when none were given). */
export const selectedColumns = (table: TableInfo, columns: ReadonlyArray<string> | undefined): ReadonlyArray<string> => {
  if (columns === undefined) {
    let all = allColumns.get(table)
    if (all === undefined) allColumns.set(table, all = table.columns.map((c) => c.name))
    return all
  }
  const wanted = new Set(columns)
  return table.columns.filter((c) => wanted.has(c.name)).map((c) => c.name)
}
