import type pg from "pg"

/**
 * Turns Postgres's text form of a value into what `@electric-sql/client` hands to the app, so
 * tests can compare synced rows with the same query run on Postgres.
 *
 * The rules mirror the client's default parser: the schema's `type` is the element type for
 * arrays and the type's own name otherwise (so enums and domains keep their names and come
 * through as text), and `dims > 0` means the text is a Postgres array literal.
 */

/** What the client knows about a column from `electric-schema`. */
export interface ClientColumn {
  readonly name: string
  readonly type: string
  readonly dims: number
}

export type ClientValue = null | string | number | bigint | boolean | object | ReadonlyArray<ClientValue>

/** Postgres display settings the server applies to its snapshot and replication sessions. */
export const DISPLAY_SETTINGS = [
  "SET TimeZone = 'UTC'",
  "SET DateStyle = 'ISO, DMY'",
  "SET extra_float_digits = 1",
  "SET IntervalStyle = 'iso_8601'",
  "SET bytea_output = 'hex'"
] as const

/** Parses one scalar (or array element) by the client's type rules. */
export const parseScalar = (text: string, type: string): ClientValue => {
  switch (type) {
    case "int2":
    case "int4":
    case "float4":
    case "float8":
      return Number(text)
    case "int8":
      return BigInt(text)
    case "bool":
      return text === "true" || text === "t"
    case "json":
    case "jsonb":
      return JSON.parse(text) as ClientValue
    default:
      return text
  }
}

/**
 * Parses a Postgres array literal as `array_out` writes it: nested braces, elements separated by
 * commas, quoted elements with backslash escapes, and an unquoted `NULL` for a null element. A
 * quoted `"NULL"` is the four-letter string.
 */
export const parsePgArray = (text: string, element: (text: string) => ClientValue): ClientValue => {
  let i = 0
  // array_out writes a `[lo:hi]=` prefix only for non-default lower bounds.
  if (text.startsWith("[")) {
    const eq = text.indexOf("=")
    if (eq < 0) throw new Error(`bad array literal: ${text}`)
    i = eq + 1
  }
  const fail = (): never => {
    throw new Error(`bad array literal at ${i}: ${text}`)
  }
  const parseLevel = (): Array<ClientValue> => {
    if (text[i] !== "{") fail()
    i++
    const out: Array<ClientValue> = []
    if (text[i] === "}") {
      i++
      return out
    }
    for (;;) {
      if (text[i] === "{") {
        out.push(parseLevel())
      } else if (text[i] === '"') {
        i++
        let s = ""
        while (text[i] !== '"') {
          if (i >= text.length) fail()
          if (text[i] === "\\") i++
          s += text[i]
          i++
        }
        i++
        out.push(element(s))
      } else {
        const start = i
        while (i < text.length && text[i] !== "," && text[i] !== "}") i++
        const raw = text.slice(start, i).trim()
        out.push(raw === "NULL" ? null : element(raw))
      }
      if (text[i] === ",") {
        i++
      } else if (text[i] === "}") {
        i++
        return out
      } else {
        fail()
      }
    }
  }
  const result = parseLevel()
  if (i !== text.length) fail()
  return result
}

/** Parses one column's text value (or SQL NULL) the way the client would. */
export const parseClientValue = (text: string | null, column: Pick<ClientColumn, "type" | "dims">): ClientValue => {
  if (text === null) return null
  if (column.dims > 0) return parsePgArray(text, (t) => parseScalar(t, column.type))
  return parseScalar(text, column.type)
}

/**
 * The table's columns with the name and dimensions `electric-schema` reports: the element type's
 * name for arrays (`int4` for `int4[]`), the type's own name for everything else.
 */
export const tableColumns = async (pool: pg.Pool, table: string): Promise<ReadonlyArray<ClientColumn>> => {
  const { rows } = await pool.query<{ name: string; type: string; dims: number }>(
    `SELECT a.attname AS name,
            CASE WHEN t.typcategory = 'A' THEN et.typname ELSE t.typname END AS type,
            CASE WHEN t.typcategory = 'A' THEN GREATEST(a.attndims, 1) ELSE 0 END AS dims
       FROM pg_attribute a
       JOIN pg_type t ON t.oid = a.atttypid
       LEFT JOIN pg_type et ON et.oid = t.typelem
      WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum`,
    [table]
  )
  return rows
}

const quoteIdent = (name: string): string => `"${name.replace(/"/g, '""')}"`

/**
 * `col::text`, except for `char(n)`: its cast to text strips the padding, while the log and the
 * client keep it, so the output function's form is taken through `concat`.
 */
const textForm = (column: ClientColumn): string => {
  const name = quoteIdent(column.name)
  return column.type === "bpchar" && column.dims === 0
    ? `CASE WHEN ${name} IS NULL THEN NULL ELSE concat(${name}, '') END`
    : `${name}::text`
}

/**
 * Runs `SELECT col::text ... FROM table WHERE where ORDER BY id` under the server's display
 * settings and parses every value with the client's rules.
 */
export const pgClientRows = async (
  pool: pg.Pool,
  table: string,
  options: {
    readonly columns?: ReadonlyArray<string>
    readonly where?: string
    readonly params?: ReadonlyArray<unknown>
    readonly orderBy?: string
  } = {}
): Promise<Array<Record<string, ClientValue>>> => {
  const all = await tableColumns(pool, table)
  const selected =
    options.columns === undefined
      ? all
      : options.columns.map((name) => {
          const column = all.find((c) => c.name === name)
          if (column === undefined) throw new Error(`no column ${name} on ${table}`)
          return column
        })
  const client = await pool.connect()
  try {
    for (const statement of DISPLAY_SETTINGS) await client.query(statement)
    const list = selected.map((c) => `${textForm(c)} AS ${quoteIdent(c.name)}`).join(", ")
    const where = options.where === undefined ? "" : ` WHERE ${options.where}`
    const { rows } = await client.query<Record<string, string | null>>(
      // The order is by the table's column: a bare `id` would name the `id::text` output column.
      `SELECT ${list} FROM ${table} AS _t${where} ORDER BY ${options.orderBy ?? "_t.id"}`,
      options.params === undefined ? [] : [...options.params]
    )
    return rows.map((row) => Object.fromEntries(selected.map((c) => [c.name, parseClientValue(row[c.name] ?? null, c)])))
  } finally {
    // Display settings are session state; drop them before the connection goes back to the pool.
    await client.query("RESET ALL").catch(() => undefined)
    client.release()
  }
}
