import type { ColumnInfo, TableInfo } from "../domain/Table.js"

const TIME_TYPES = new Set(["time", "timetz", "timestamp", "timestamptz"])

// Postgres's interval range bits (INTERVAL_MASK in datetime.h), in the order a range is spelled.
const INTERVAL_FIELDS: ReadonlyArray<readonly [string, number]> = [
  ["YEAR", 1 << 2],
  ["MONTH", 1 << 1],
  ["DAY", 1 << 3],
  ["HOUR", 1 << 10],
  ["MINUTE", 1 << 11],
  ["SECOND", 1 << 12]
]
const INTERVAL_FULL_RANGE = 0x7fff

const int16 = (n: number): number => (n << 16) >> 16

const intervalFields = (range: number): string | undefined => {
  if (range === INTERVAL_FULL_RANGE) return undefined
  const units = INTERVAL_FIELDS.filter(([, mask]) => (range & mask) !== 0).map(([unit]) => unit)
  if (units.length === 0) return undefined
  return units.length === 1 ? units[0] : `${units[0]} TO ${units[units.length - 1]}`
}

/** The typmod-derived entries, decoded as Postgres encodes each type's modifier. */
const modifiers = (column: ColumnInfo, out: Array<readonly [string, unknown]>): void => {
  const { typeName: type, typeMod: mod } = column
  if (mod < 0) return
  if (type === "varchar" || type === "text") {
    if (mod > 4) out.push(["max_length", mod - 4])
  } else if (type === "bpchar") {
    if (mod > 4) out.push(["length", mod - 4])
  } else if (type === "bit" || type === "varbit") {
    out.push(["length", mod])
  } else if (type === "interval") {
    const fields = intervalFields((mod >>> 16) & 0xffff)
    const precision = int16(mod & 0xffff)
    if (fields !== undefined) out.push(["fields", fields])
    if (precision >= 0) out.push(["precision", precision])
  } else if (TIME_TYPES.has(type)) {
    out.push(["precision", mod])
  } else if (type === "numeric") {
    if (mod < 4) return
    const packed = mod - 4
    // The scale is an 11-bit signed field (negative scales exist since Postgres 15).
    out.push(["precision", (packed >>> 16) & 0xffff], ["scale", ((packed & 0x7ff) ^ 1024) - 1024])
  } else {
    out.push(["type_mod", mod])
  }
}

const entry = (column: ColumnInfo): string => {
  const fields: Array<readonly [string, unknown]> = [["type", column.typeName]]
  if (column.dims > 0) fields.push(["dims", column.dims])
  if (column.pkIndex !== undefined) fields.push(["pk_index", column.pkIndex])
  if (column.notNull) fields.push(["not_null", true])
  modifiers(column, fields)
  return `{${fields.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(",")}}`
}

/**
 * The `electric-schema` response header: a JSON object describing the
 * selected columns, in table order, the way the client's parser expects
 * (element type and `dims` for arrays, `pk_index`, `not_null` only when true,
 * and the type modifier decoded per type).
 */
export const schemaHeader = (table: TableInfo, columns: ReadonlyArray<string>): string => {
  const selected = new Set(columns)
  const parts: Array<string> = []
  for (const column of table.columns) {
    if (selected.has(column.name)) parts.push(`${JSON.stringify(column.name)}:${entry(column)}`)
  }
  return `{${parts.join(",")}}`
}
