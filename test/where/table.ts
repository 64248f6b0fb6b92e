import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import type { ColumnInfo, TableInfo } from "../../src/domain/Table.js"
import { selectedColumns, type Shape } from "../../src/shapes/Shape.js"

/**
 * Builds the `TableInfo` of a test table from `[name, typname, notNull?]` triples; the first column is the primary
 * key (and not null).
 */
export const tableInfo = (
  name: string,
  columns: ReadonlyArray<readonly [string, string, boolean?]>,
  schema = "public"
): TableInfo => ({
  oid: 1,
  schema,
  name,
  pk: [columns[0]![0]],
  columns: columns.map(([column, typeName, notNull], i): ColumnInfo => ({
    name: column,
    attnum: i + 1,
    typeName,
    typeOid: 0,
    elementTypeOid: 0,
    typeKind: "b",
    baseTypeName: typeName,
    dims: 0,
    typeMod: -1,
    notNull: i === 0 || notNull === true,
    pkIndex: i === 0 ? 0 : undefined
  }))
})

/** The shape of every row and column of `table`: no where clause, no subquery, the default replica mode. */
export const wholeTableShape = (handle: string, table: TableInfo): Shape => ({
  handle: ShapeHandle(handle),
  definition: { table: { schema: table.schema, name: table.name }, where: undefined, columns: undefined, replica: "default", log: "full" },
  table,
  where: undefined,
  dependencies: [],
  columns: selectedColumns(table, undefined)
})
