import * as Either from "effect/Either"
import type { Row } from "../domain/Change.js"
import { InvalidWhere } from "../domain/errors.js"
import type { TableInfo } from "../domain/Table.js"
import type { Column, Expr, InSubquery } from "./Ast.js"
import { compile, type SubqueryViews } from "./Evaluator.js"
import { type ParsedWhere, parseWhereAst, subqueryTables, type TableName, WhereError } from "./Parser.js"
import { renderSql } from "./Sql.js"
import { trimSpaces } from "./Values.js"

/**
 * A shape's `where` clause, parsed by Postgres's own parser, type-checked
 * against the table the way Postgres would, and compiled for evaluation.
 *
 * Evaluation follows Postgres's semantics (three-valued logic, exact int8 and
 * numeric comparison, float ordering with `NaN` above everything and equal to
 * itself, dates and timestamps as instants in UTC) with one deliberate
 * difference: text is ordered by code point, i.e. the `C` collation, whatever
 * the column's collation is. Text equality is exact in every collation Syncline
 * supports (deterministic ones).
 */
export interface WhereClause {
  /**
   * Canonical SQL of the clause with params substituted as typed literals, e.g.
   * `("id" = 5) AND ("name" IS NOT NULL)`; safe to splice into `SELECT ... WHERE <sql>`;
   * equal for inputs that differ only in whitespace, keyword case or redundant
   * parentheses. Part of a shape's identity.
   */
  readonly sql: string
  /** Columns the clause reads. */
  readonly columns: ReadonlyArray<string>
  /**
   * Top-level AND-ed conjuncts of the form `col = const` on a column whose text
   * form is canonical (int2/int4/int8, text, varchar, uuid, bool), with `value`
   * the constant's text exactly as pgoutput prints it (bool as `t`/`f`). A bare
   * boolean column counts as `col = true`, `NOT col` as `col = false`. Used by
   * the routing index.
   */
  readonly equalities: ReadonlyArray<{ readonly column: string; readonly value: string }>
  /**
   * True iff the clause evaluates to TRUE for the row (FALSE and NULL give false). Never throws. For a clause
   * with subqueries it is true for every row (routing cannot know the views): use `bind`.
   */
  readonly matches: (row: Row) => boolean
  /** One per distinct subquery (`InSubquery.dependency` indexes it): the dependency shapes. */
  readonly dependencies: ReadonlyArray<DependencyClause>
  /** Every `IN (SELECT …)` of the clause, with how it reacts to NULLs. */
  readonly positions: ReadonlyArray<SubqueryPosition>
  /** `matches`, with the subqueries answered by `views`. */
  readonly bind: (views: SubqueryViews) => (row: Row) => boolean
  /**
   * For a clause with subqueries: the SQL of its top-level AND-ed conditions that hold no subquery (a row failing
   * one is out whatever the subqueries say), or undefined when there is none.
   */
  readonly plainConditionsSql: string | undefined
}

/** A subquery of a clause: a dependency shape's table, its selected columns and its own clause. */
export interface DependencyClause {
  readonly table: TableInfo
  /** The selected columns, in the order written. */
  readonly select: ReadonlyArray<Column>
  readonly where: WhereClause | undefined
  /** Canonical SQL of the subquery. */
  readonly sql: string
}

/** One `IN (SELECT …)` in a clause. */
export interface SubqueryPosition {
  readonly node: InSubquery
  /**
   * Whether a NULL entering or leaving the subquery's values, or the set becoming empty or not, can change the
   * clause's result for rows whose values did not move: the position sits under a NOT, an IS test or a
   * comparison of truth values. Elsewhere NULL and FALSE both leave a row out.
   */
  readonly nullSensitive: boolean
}

/**
 * Parses a `where` clause over `table`, substituting `params` (`"1"` for `$1`, …).
 * Fails with `InvalidWhere` for syntax errors (`At location N: <message>`, N
 * counted from the start of `SELECT 1 WHERE <where>`), unknown columns or
 * parameters, type errors, constructs the evaluator does not support, and a
 * NUL byte in the clause or in any parameter value.
 */
export const parseWhere = (
  where: string,
  params: Readonly<Record<string, string>>,
  table: TableInfo,
  tables?: (name: TableName) => TableInfo | undefined,
  paramsName?: string
): Either.Either<WhereClause, InvalidWhere> => {
  try {
    return Either.right(toClause(parseWhereAst(where, { table, params, tables, paramsName })))
  } catch (error) {
    if (error instanceof WhereError) return Either.left(new InvalidWhere({ message: error.message }))
    throw error
  }
}

/** The tables a clause's subqueries read, to load before `parseWhere`; a clause that does not parse names none. */
export const subqueryTablesOf = (where: string): ReadonlyArray<TableName> => {
  try {
    return subqueryTables(where)
  } catch (error) {
    if (error instanceof WhereError) return []
    throw error
  }
}

const toClause = (parsed: ParsedWhere): WhereClause => {
  const { expr, columns } = parsed
  const dependencies = parsed.dependencies.map((d): DependencyClause => ({
    table: d.table,
    select: d.select,
    where: d.where === undefined ? undefined : toClause(d.where),
    sql: d.sql
  }))
  const positions: Array<SubqueryPosition> = []
  collectPositions(expr, false, positions)
  if (dependencies.length === 0) {
    const predicate = compile(expr)
    const matches = (row: Row) => predicate(row) === true
    return {
      sql: renderSql(expr),
      columns,
      equalities: equalitiesOf(expr),
      matches,
      dependencies,
      positions,
      bind: () => matches,
      plainConditionsSql: undefined
    }
  }
  const plain = (expr._tag === "And" ? expr.args : [expr]).filter((e) => !hasSubquery(e))
  return {
    sql: renderSql(expr),
    columns,
    equalities: equalitiesOf(expr),
    matches: () => true,
    dependencies,
    positions,
    bind: (views) => {
      const predicate = compile(expr, views)
      return (row) => predicate(row) === true
    },
    plainConditionsSql: plain.length === 0 ? undefined : renderSql(plain.length === 1 ? plain[0]! : { _tag: "And", args: plain })
  }
}

const hasSubquery = (e: Expr): boolean => {
  switch (e._tag) {
    case "InSubquery":
      return true
    case "And":
    case "Or":
      return e.args.some(hasSubquery)
    case "Not":
    case "BoolTest":
      return hasSubquery(e.arg)
    case "IsNull":
      return e.arg._tag !== "Column" && e.arg._tag !== "Const" && hasSubquery(e.arg)
    default:
      return false
  }
}

const collectPositions = (e: Expr, sensitive: boolean, out: Array<SubqueryPosition>): void => {
  switch (e._tag) {
    case "InSubquery":
      out.push({ node: e, nullSensitive: sensitive })
      return
    case "And":
    case "Or":
      for (const a of e.args) collectPositions(a, sensitive, out)
      return
    case "Not":
    case "BoolTest":
      collectPositions(e.arg, true, out)
      return
    case "IsNull":
      if (e.arg._tag !== "Column" && e.arg._tag !== "Const") collectPositions(e.arg, true, out)
      return
    default:
      return
  }
}

const ROUTABLE = new Set(["int2", "int4", "int8", "text", "varchar", "uuid", "bool"])

const equalitiesOf = (expr: Expr): ReadonlyArray<{ readonly column: string; readonly value: string }> => {
  const out: Array<{ readonly column: string; readonly value: string }> = []
  for (const conjunct of expr._tag === "And" ? expr.args : [expr]) {
    const eq = equalityOf(conjunct)
    if (eq !== undefined) out.push(eq)
  }
  return out
}

const equalityOf = (e: Expr): { readonly column: string; readonly value: string } | undefined => {
  if (e._tag === "Column") return e.type === "bool" ? { column: e.name, value: "t" } : undefined
  if (e._tag === "Not" && e.arg._tag === "Column" && e.arg.type === "bool") return { column: e.arg.name, value: "f" }
  if (e._tag !== "Compare" || e.op !== "=") return undefined
  const [column, constant] =
    e.left._tag === "Column" && e.right._tag === "Const"
      ? [e.left, e.right]
      : e.right._tag === "Column" && e.left._tag === "Const"
        ? [e.right, e.left]
        : [undefined, undefined]
  if (column === undefined || constant === undefined || constant.text === null || !ROUTABLE.has(column.type)) {
    return undefined
  }
  switch (e.domain) {
    case "int4":
    case "int8":
      return { column: column.name, value: constant.text }
    case "text":
      // A bpchar constant compares with its trailing spaces stripped.
      return { column: column.name, value: constant.type === "bpchar" ? trimSpaces(constant.text) : constant.text }
    case "uuid":
      return { column: column.name, value: constant.text }
    case "bool":
      return { column: column.name, value: constant.text === "true" ? "t" : "f" }
    default:
      return undefined
  }
}
