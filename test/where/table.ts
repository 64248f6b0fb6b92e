import type { ColumnInfo, TableInfo } from "../../src/domain/Table.js"

/** Builds the `TableInfo` of a test table from `[name, typname]` pairs; the first column is the primary key. */
export const tableInfo = (name: string, columns: ReadonlyArray<readonly [string, string]>): TableInfo => ({
  oid: 1,
  schema: "public",
  name,
  pk: [columns[0]![0]],
  columns: columns.map(([column, typeName], i): ColumnInfo => ({
    name: column,
    attnum: i + 1,
    typeName,
    typeOid: 0,
    elementTypeOid: 0,
    typeKind: "b",
    baseTypeName: typeName,
    dims: 0,
    typeMod: -1,
    notNull: i === 0,
    pkIndex: i === 0 ? 0 : undefined
  }))
})
