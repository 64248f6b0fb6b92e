import type { ColumnValue } from "./Change.js"
import type { TableInfo } from "./Table.js"

/**
 * The key of a row in a shape log: `"<schema>"."<table>"/"<pk1>"/"<pk2>"…`.
 * Names in the prefix have `"` doubled; each primary-key value (its Postgres
 * output text, as pgoutput sends it) has every `/` doubled and is wrapped in
 * `"`; a NULL part is a bare `_`. A table without a primary key uses all its
 * columns, ordered by name (`TableInfo.pk`). Snapshots build their keys with
 * the same functions, from the same output text.
 */
export const rowKey = (table: TableInfo, row: Readonly<Record<string, ColumnValue>>): string => {
  let key = rowKeyPrefix(table)
  const pk = table.pk
  for (let i = 0; i < pk.length; i++) key += rowKeyPart(row[pk[i]!])
  return key
}

/** One primary-key part of a row key, with its leading `/`: `/"<value, / doubled>"`, or `/_` for NULL. */
export const rowKeyPart = (value: ColumnValue): string =>
  value === null || value === undefined ? "/_" : `/"${value.includes("/") ? value.replaceAll("/", "//") : value}"`

const prefixes = new WeakMap<TableInfo, string>()

/** `"<schema>"."<table>"`, the part of every row key that names the table. */
export const rowKeyPrefix = (table: TableInfo): string => {
  let prefix = prefixes.get(table)
  if (prefix === undefined) {
    prefix = `"${table.schema.replaceAll("\"", "\"\"")}"."${table.name.replaceAll("\"", "\"\"")}"`
    prefixes.set(table, prefix)
  }
  return prefix
}
