import type { Domain, PgType } from "./Ast.js"

/**
 * The parts of Postgres's type resolution that `where` clauses need, reduced
 * to the supported types: which operator (comparison domain) a pair of
 * operand types selects, and the common type of an `IN` list.
 */

type Category = "number" | "text" | "time" | "bool" | "uuid"

const category = (t: PgType): Category => {
  switch (t) {
    case "int2":
    case "int4":
    case "int8":
    case "float4":
    case "float8":
    case "numeric":
      return "number"
    case "text":
    case "varchar":
    case "bpchar":
    case "name":
      return "text"
    case "date":
    case "timestamp":
    case "timestamptz":
      return "time"
    case "bool":
      return "bool"
    case "uuid":
      return "uuid"
  }
}

const PREFERRED: ReadonlySet<PgType> = new Set(["float8", "text", "timestamptz", "bool"])

// pg_cast entries with castcontext 'i' between the supported types.
const IMPLICIT: Readonly<Record<PgType, ReadonlyArray<PgType>>> = {
  int2: ["int4", "int8", "numeric", "float4", "float8"],
  int4: ["int8", "numeric", "float4", "float8"],
  int8: ["numeric", "float4", "float8"],
  numeric: ["float4", "float8"],
  float4: ["float8"],
  float8: [],
  text: ["bpchar", "name", "varchar"],
  varchar: ["bpchar", "name", "text"],
  bpchar: ["name", "text", "varchar"],
  name: ["text"],
  bool: [],
  uuid: [],
  date: ["timestamp", "timestamptz"],
  timestamp: ["timestamptz"],
  timestamptz: []
}

const implicitly = (from: PgType, to: PgType): boolean => from === to || IMPLICIT[from].includes(to)

/**
 * The comparison domain Postgres's operator resolution picks for two operand
 * types, or `undefined` when no operator exists (Postgres: "operator does not
 * exist").
 */
export const domainOf = (a: PgType, b: PgType): Domain | undefined => {
  const ca = category(a)
  if (ca !== category(b)) return undefined
  switch (ca) {
    case "number":
      if (a === "float4" || a === "float8" || b === "float4" || b === "float8") return "float"
      if (a === "numeric" || b === "numeric") return "numeric"
      return a === "int8" || b === "int8" ? "int8" : "int4"
    case "text":
      // bpchar's operators win against varchar, text's (the preferred type) against bpchar.
      return (a === "bpchar" && (b === "bpchar" || b === "varchar")) || (b === "bpchar" && a === "varchar")
        ? "bpchar"
        : "text"
    case "time":
      return "time"
    case "bool":
      return "bool"
    case "uuid":
      return "uuid"
  }
}

/**
 * Postgres's `select_common_type` over known types (unknown literals are left
 * out by the caller), followed by `verify_common_type`: `undefined` when the
 * types do not share one.
 */
export const selectCommonType = (types: ReadonlyArray<PgType>): PgType | undefined => {
  let common = types[0]
  if (common === undefined) return undefined
  let preferred = PREFERRED.has(common)
  for (const t of types) {
    if (category(t) !== category(common)) return undefined
    if (!preferred && implicitly(common, t) && !implicitly(t, common)) {
      common = t
      preferred = PREFERRED.has(t)
    }
  }
  const target = common
  return types.every((t) => implicitly(t, target)) ? target : undefined
}
