import * as Either from "effect/Either"
import { loadModule, type Node, parseSync } from "libpg-query"
import type { TableInfo } from "../domain/Table.js"
import { quoteIdent } from "./Sql.js"

await loadModule()

const PREFIX = "SELECT 1 ORDER BY "

/** Built-in types without a default ordering (Postgres: "could not identify an ordering operator"). */
const UNORDERED_TYPES: ReadonlySet<string> = new Set(["json", "xml", "point", "lseg", "box", "path", "polygon", "line", "circle"])
const NUL = "\u0000"

const DIRECTIONS: Readonly<Record<string, string>> = {
  SORTBY_DEFAULT: "",
  SORTBY_ASC: " ASC",
  SORTBY_DESC: " DESC"
}
const NULLS: Readonly<Record<string, string>> = {
  SORTBY_NULLS_DEFAULT: "",
  SORTBY_NULLS_FIRST: " NULLS FIRST",
  SORTBY_NULLS_LAST: " NULLS LAST"
}

/**
 * Checks a subset's `order_by` with Postgres's parser (as
 * `SELECT 1 ORDER BY <order_by>`) and renders it anew: a list of the table's
 * columns, each with an optional direction and NULLS placement. Anything else
 * (expressions, functions, positions, `USING`, parameters) is refused, so the
 * text that reaches Postgres is always one this function wrote. The error is
 * the client-facing message.
 */
export const parseOrderBy = (orderBy: string, table: TableInfo): Either.Either<string, string> => {
  if (orderBy.includes(NUL)) return Either.left("must not contain a NUL byte")
  let tree: { stmts?: ReadonlyArray<{ stmt?: Node }> }
  try {
    tree = parseSync(PREFIX + orderBy)
  } catch (error) {
    const details = (error as { sqlDetails?: { cursorPosition?: number } }).sqlDetails
    const message = error instanceof Error ? error.message : String(error)
    return Either.left(`At location ${details?.cursorPosition ?? 0}: ${message}`)
  }
  const stmts = tree.stmts ?? []
  const stmt = stmts.length === 1 ? stmts[0]!.stmt : undefined
  if (stmt === undefined || !("SelectStmt" in stmt)) return Either.left("expected a list of columns to order by")
  const select = stmt.SelectStmt
  const extra = Object.keys(select).find((k) => k !== "targetList" && k !== "sortClause" && k !== "op" && k !== "limitOption")
  if (extra !== undefined || select.op !== "SETOP_NONE") return Either.left("expected a list of columns to order by")
  const columns = new Set(table.columns.map((c) => c.name))
  const parts: Array<string> = []
  for (const item of select.sortClause ?? []) {
    if (!("SortBy" in item)) return Either.left("expected a list of columns to order by")
    const sort = item.SortBy
    if (sort.useOp !== undefined) return Either.left("ORDER BY … USING is not supported")
    const node = sort.node
    if (node === undefined || !("ColumnRef" in node)) {
      const kind = node === undefined ? "unknown" : Object.keys(node)[0] ?? "unknown"
      return Either.left(`only columns can be ordered by, not ${describe(kind)}`)
    }
    const fields = node.ColumnRef.fields ?? []
    const names = fields.map((f) => ("String" in f ? f.String.sval ?? "" : undefined))
    if (names.some((n) => n === undefined)) return Either.left("only columns can be ordered by, not *")
    const name = names[names.length - 1]!
    const qualified = names.length === 1 || (names.length === 2 && names[0] === table.name) ||
      (names.length === 3 && names[0] === table.schema && names[1] === table.name)
    if (!qualified || !columns.has(name)) return Either.left(`Unknown column "${names.join(".")}"`)
    const column = table.columns.find((c) => c.name === name)!
    if (UNORDERED_TYPES.has(column.baseTypeName)) {
      return Either.left(`column "${name}" cannot be ordered by: type ${column.baseTypeName} has no ordering`)
    }
    const direction = DIRECTIONS[sort.sortby_dir ?? "SORTBY_DEFAULT"]
    const nulls = NULLS[sort.sortby_nulls ?? "SORTBY_NULLS_DEFAULT"]
    if (direction === undefined || nulls === undefined) return Either.left("unsupported sort direction")
    parts.push(`${quoteIdent(name)}${direction}${nulls}`)
  }
  if (parts.length === 0) return Either.left("expected a list of columns to order by")
  return Either.right(parts.join(", "))
}

const describe = (kind: string): string => {
  switch (kind) {
    case "A_Const":
      return "a constant or a column position"
    case "ParamRef":
      return "a parameter"
    case "FuncCall":
      return "a function call"
    default:
      return "an expression"
  }
}
