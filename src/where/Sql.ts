import type { Const, Expr, PgType, Value } from "./Ast.js"

/**
 * Renders a typed `where` tree as canonical SQL: quoted identifiers, every
 * constant as a literal of its resolved type, one pair of parentheses per
 * operator, nested ANDs/ORs flattened. Two clauses that differ only in
 * spacing, keyword case or redundant parentheses render identically, and the
 * result means the same to Postgres as the tree does to the evaluator.
 */
export const renderSql = (expr: Expr): string =>
  expr._tag === "And" || expr._tag === "Or" ? junction(expr._tag, expr.args) : render(expr)

/** Quotes an identifier for Postgres. */
export const quoteIdent = (name: string): string => `"${name.replace(/"/g, '""')}"`

// Backslashes go in an E'' string, which means the same whatever standard_conforming_strings is.
const quoteString = (s: string): string =>
  s.includes("\\") ? `E'${s.replace(/\\/g, "\\\\").replace(/'/g, "''")}'` : `'${s.replace(/'/g, "''")}'`

const TEXT_TYPES: ReadonlySet<PgType> = new Set(["text", "varchar", "bpchar", "name"])

const junction = (tag: "And" | "Or", args: ReadonlyArray<Expr>): string =>
  args.map(render).join(tag === "And" ? " AND " : " OR ")

const render = (e: Expr): string => {
  switch (e._tag) {
    case "Column":
      return quoteIdent(e.name)
    case "Const":
      return constant(e, undefined)
    case "Compare":
      return `(${value(e.left, e.right)} ${e.op} ${value(e.right, e.left)})`
    case "Distinct":
      return `(${value(e.left, e.right)} IS ${e.negated ? "NOT " : ""}DISTINCT FROM ${value(e.right, e.left)})`
    case "And":
    case "Or":
      return `(${junction(e._tag, e.args)})`
    case "Not":
      return `(NOT ${render(e.arg)})`
    case "IsNull":
      return `(${render(e.arg)} IS ${e.negated ? "NOT " : ""}NULL)`
    case "BoolTest":
      return `(${render(e.arg)} IS ${e.negated ? "NOT " : ""}${e.test.toUpperCase()})`
    case "In":
      return `(${value(e.arg, e.items[0]?.value)} ${e.negated ? "NOT " : ""}IN (${e.items
        .map((i) => value(i.value, e.arg))
        .join(", ")}))`
    case "Like": {
      const op = (e.negated ? "NOT " : "") + (e.caseInsensitive ? "ILIKE" : "LIKE")
      const pattern = e.pattern === null ? "NULL" : quoteString(e.pattern)
      const escape = e.escape === "\\" ? "" : ` ESCAPE ${quoteString(e.escape)}`
      return `(${value(e.arg, undefined)} ${op} ${pattern}${escape})`
    }
    case "InSubquery": {
      const left = e.args.length === 1 ? quoteIdent(e.args[0]!.name) : `(${e.args.map((a) => quoteIdent(a.name)).join(", ")})`
      return `(${left} IN (${e.subquerySql}))`
    }
    case "Between": {
      const op = `${e.negated ? "NOT " : ""}BETWEEN${e.symmetric ? " SYMMETRIC" : ""}`
      return `(${value(e.arg, e.low)} ${op} ${value(e.low, e.arg)} AND ${value(e.high, e.arg)})`
    }
  }
}

/** An operand; `sibling` is what it is compared with, which decides whether a text literal needs a cast. */
const value = (v: Value, sibling: Value | undefined): string =>
  v._tag === "Column" ? quoteIdent(v.name) : constant(v, sibling)

const constant = (c: Const, sibling: Value | undefined): string => {
  if (c.text === null) return "NULL"
  const text = c.text
  switch (c.type) {
    case "int2":
    case "int4":
    case "int8":
      return text
    case "bool":
      return text
    case "numeric":
      return text.includes(".") ? text : `${quoteString(text)}::numeric`
    case "text":
    case "varchar":
    case "bpchar":
    case "name":
      // A bare literal takes the type of what it is compared with, so it only
      // needs a cast when that is not already its type.
      return sibling !== undefined && sibling.type === c.type && TEXT_TYPES.has(sibling.type)
        ? quoteString(text)
        : `${quoteString(text)}::${c.type}`
    default:
      return `${quoteString(text)}::${c.type}`
  }
}
