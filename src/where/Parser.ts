import { loadModule, type Node, parseSync, type TypeName } from "libpg-query"
import type { ColumnInfo, TableInfo } from "../domain/Table.js"
import type { Column, CompareOp, Const, Domain, Expr, InSubquery, PgType, Value } from "./Ast.js"
import { supportedTypes } from "./Ast.js"
import { formatDateTime, parseDateTime, type TimeKind } from "./DateTime.js"
import { compileLike, PatternError } from "./Like.js"
import { domainOf, selectCommonType } from "./Resolution.js"
import { quoteIdent, renderSql } from "./Sql.js"
import {
  displayType,
  fitsInt,
  formatFloat,
  InputError,
  inputValue,
  normalizeNumeric,
  parseArrayLiteral,
  trimSpaces
} from "./Values.js"

// The parser is Postgres's own, compiled to WASM; loading it is asynchronous
// once, so the module waits for it and `parseWhereAst` can stay synchronous.
await loadModule()

// The first parse also compiles most of the parser's code (tens of milliseconds): done once here, soon after
// start-up and off the path of the first request or transaction that needs a clause.
setImmediate(() => {
  try {
    parseSync("SELECT 1 FROM t WHERE a = 1 AND b IN (SELECT c FROM d WHERE e > 2) AND f LIKE 'g%'")
  } catch {
    // Nothing depends on the warm-up: the next real parse compiles what this one did not.
  }
}).unref()

/** Why a `where` clause was refused; the message is what the client sees. */
export class WhereError extends Error {}

/** A string literal or parameter whose type comes from where it is used, or an untyped NULL. */
interface Unknown {
  readonly _tag: "Unknown"
  readonly text: string | null
}

type Typed = Expr | Unknown

/** A table named in a subquery's FROM, as written (`schema` undefined when unqualified). */
export interface TableName {
  readonly schema: string | undefined
  readonly name: string
}

/** What the parser needs besides the text: the table (for column types) and the `$n` values. */
export interface ParseContext {
  readonly table: TableInfo
  readonly params: Readonly<Record<string, string>>
  /** The tables subqueries read, loaded beforehand (see `subqueryTables`); undefined refuses every subquery. */
  readonly tables?: ((name: TableName) => TableInfo | undefined) | undefined
  /** How the request names the parameters, for messages (`params`, or `subset__params` for a subset). */
  readonly paramsName?: string | undefined
}

/** The typed tree of a clause, plus the columns it reads in order of first use. */
export interface ParsedWhere {
  readonly expr: Expr
  readonly columns: ReadonlyArray<string>
  /** One per distinct subquery, in order of first use; `InSubquery.dependency` indexes it. */
  readonly dependencies: ReadonlyArray<ParsedDependency>
}

/** A subquery `SELECT cols FROM table [WHERE …]`: what a dependency shape is made of. */
export interface ParsedDependency {
  readonly table: TableInfo
  /** The selected columns, in the order written. */
  readonly select: ReadonlyArray<Column>
  /** The subquery's own clause, over its table, with its own subqueries. */
  readonly where: ParsedWhere | undefined
  /** Canonical SQL of the whole subquery. */
  readonly sql: string
}

/** How deep subqueries may nest. */
const MAX_DEPTH = 8

const PREFIX = "SELECT 1 WHERE "
const NUL = "\u0000"
const ALLOWED_SELECT_KEYS = new Set(["targetList", "whereClause", "limitOption", "op"])
const COMPARE_OPS: Record<string, CompareOp> = {
  "=": "=",
  "<>": "<>",
  "!=": "<>",
  "<": "<",
  "<=": "<=",
  ">": ">",
  ">=": ">="
}
const NUMBER_TYPES: ReadonlySet<PgType> = new Set(["int2", "int4", "int8", "float4", "float8", "numeric"])
const TEXT_TYPES: ReadonlySet<PgType> = new Set(["text", "varchar", "bpchar", "name"])
const TIME_TYPES: ReadonlySet<PgType> = new Set(["date", "timestamp", "timestamptz"])

/**
 * Parses `where` with Postgres's parser (as `SELECT 1 WHERE <where>`), resolves
 * columns, parameters and types as Postgres would, and returns the typed tree.
 * Throws `WhereError` with the client-facing message when the clause is
 * invalid or uses something the evaluator does not support.
 */
export const parseWhereAst = (where: string, ctx: ParseContext): ParsedWhere => {
  // libpg-query reads a C string: a NUL would end the clause there and drop whatever follows it.
  // Postgres refuses NUL in text, so a parameter value holding one could never be sent to it either.
  if (where.includes(NUL)) throw new WhereError("Invalid where clause: contains a NUL byte")
  for (const [n, value] of Object.entries(ctx.params)) {
    if (value.includes(NUL)) throw new WhereError(`Parameter $${n} contains a NUL byte`)
  }
  const whereClause = parseClause(where)
  const resolver = new Resolver(ctx, 0)
  const expr = resolver.predicate(resolver.typeNode(whereClause), "WHERE")
  return { expr, columns: resolver.used, dependencies: resolver.dependencies }
}

const parseClause = (where: string): Node => {
  const text = PREFIX + where
  let tree: { stmts?: ReadonlyArray<{ stmt?: Node }> }
  try {
    tree = parseSync(text)
  } catch (error) {
    const details = (error as { sqlDetails?: { cursorPosition?: number } }).sqlDetails
    const message = error instanceof Error ? error.message : String(error)
    throw new WhereError(`At location ${details?.cursorPosition ?? 0}: ${message}`)
  }
  const stmts = tree.stmts ?? []
  const stmt = stmts.length === 1 ? stmts[0]!.stmt : undefined
  if (stmt === undefined || !("SelectStmt" in stmt)) throw new WhereError("Invalid where clause: expected one boolean expression")
  const select = stmt.SelectStmt
  const extra = Object.keys(select).find((k) => !ALLOWED_SELECT_KEYS.has(k))
  if (extra !== undefined || select.op !== "SETOP_NONE" || select.whereClause === undefined) {
    throw new WhereError("Invalid where clause: expected one boolean expression")
  }
  return select.whereClause
}

/**
 * The tables the clause's subqueries read (at any depth), for loading before
 * `parseWhereAst`. Throws `WhereError` when the clause does not parse.
 */
export const subqueryTables = (where: string): ReadonlyArray<TableName> => {
  if (where.includes(NUL)) throw new WhereError("Invalid where clause: contains a NUL byte")
  // A clause names a table only in a subquery, written with the keyword SELECT (or TABLE); keywords are never
  // escaped, so a clause without either word names none and needs no parse here (most shapes, at every start).
  if (!MAY_NAME_TABLE.test(where)) return []
  const found = new Map<string, TableName>()
  const visit = (value: unknown): void => {
    if (Array.isArray(value)) {
      for (const v of value) visit(v)
      return
    }
    if (typeof value !== "object" || value === null) return
    for (const [k, v] of Object.entries(value)) {
      if (k === "RangeVar" && typeof v === "object" && v !== null) {
        const r = v as { schemaname?: string; relname?: string }
        if (r.relname !== undefined) found.set(JSON.stringify([r.schemaname, r.relname]), { schema: r.schemaname, name: r.relname })
      } else {
        visit(v)
      }
    }
  }
  visit(parseClause(where))
  return [...found.values()]
}

const MAY_NAME_TABLE = /select|table/i

const SUBSELECT_KEYS = new Set(["targetList", "fromClause", "whereClause", "limitOption", "op"])

/** What the parts of a SELECT the parser names are called in SQL. */
const CLAUSE_NAMES: Readonly<Record<string, string>> = {
  distinctClause: "DISTINCT",
  groupClause: "GROUP BY",
  havingClause: "HAVING",
  windowClause: "WINDOW",
  sortClause: "ORDER BY",
  limitCount: "LIMIT",
  limitOffset: "OFFSET",
  lockingClause: "FOR UPDATE / FOR SHARE",
  withClause: "WITH",
  valuesLists: "VALUES",
  intoClause: "INTO",
  larg: "UNION, INTERSECT or EXCEPT",
  rarg: "UNION, INTERSECT or EXCEPT"
}

class Resolver {
  readonly used: Array<string> = []
  readonly dependencies: Array<ParsedDependency> = []
  private readonly byName: Map<string, ColumnInfo>

  constructor(private readonly ctx: ParseContext, private readonly depth: number) {
    this.byName = new Map(ctx.table.columns.map((c) => [c.name, c]))
  }

  /** `(cols) IN (SELECT …)`: the subquery becomes a dependency, compared column by column. */
  private subLink(link: {
    readonly subLinkType?: string
    readonly testexpr?: Node
    readonly operName?: ReadonlyArray<Node>
    readonly subselect?: Node
  }): InSubquery {
    const kind = link.subLinkType ?? ""
    const operator = (link.operName ?? []).map(stringOf)
    if (kind !== "ANY_SUBLINK" || (operator.length > 0 && operator[operator.length - 1] !== "=")) {
      const what = kind === "EXISTS_SUBLINK"
        ? "EXISTS (SELECT …)"
        : kind === "ALL_SUBLINK"
        ? "ALL (SELECT …)"
        : kind === "ANY_SUBLINK"
        ? `${operator.join(".")} ANY (SELECT …)`
        : "a subquery used as a value"
      throw new WhereError(
        `Unsupported expression: ${what}; only x IN (SELECT …) and x NOT IN (SELECT …) can be kept up to date`
      )
    }
    if (this.depth + 1 > MAX_DEPTH) throw new WhereError(`Unsupported expression: subqueries nested more than ${MAX_DEPTH} deep`)
    const test = link.testexpr
    const leftNodes = test !== undefined && "RowExpr" in test ? (test.RowExpr.args ?? []) : test === undefined ? [] : [test]
    const args = leftNodes.map((n) => {
      if (!("ColumnRef" in n)) {
        throw new WhereError("Unsupported expression: the left side of IN (SELECT …) must be a column or a row of columns")
      }
      return this.column(n.ColumnRef.fields ?? [])
    })
    const sub = link.subselect
    if (sub === undefined || !("SelectStmt" in sub)) throw new WhereError("Unsupported expression: subquery")
    const select = sub.SelectStmt
    const extra = Object.keys(select).find((k) => !SUBSELECT_KEYS.has(k))
    if (extra !== undefined || select.op !== "SETOP_NONE") {
      const found = select.op !== "SETOP_NONE" ? "UNION, INTERSECT or EXCEPT" : (CLAUSE_NAMES[extra!] ?? extra)
      throw new WhereError(`Unsupported expression: a subquery may only be SELECT columns FROM one table [WHERE …] (found ${found})`)
    }
    const from = select.fromClause ?? []
    const range = from.length === 1 && "RangeVar" in from[0]! ? from[0]!.RangeVar : undefined
    if (range === undefined || range.relname === undefined) {
      throw new WhereError("Unsupported expression: a subquery must read exactly one table (no joins, no nested SELECT in FROM)")
    }
    if (range.alias !== undefined) throw new WhereError("Unsupported expression: a table alias in a subquery")
    // The parser leaves `inh` out for `FROM ONLY t`.
    if (range.inh !== true) throw new WhereError("Unsupported expression: ONLY in a subquery")
    const table = this.ctx.tables?.({ schema: range.schemaname, name: range.relname })
    if (table === undefined) {
      throw new WhereError(`Unknown table "${range.schemaname === undefined ? "" : range.schemaname + "."}${range.relname}" in subquery`)
    }
    const inner = new Resolver({ table, params: this.ctx.params, tables: this.ctx.tables }, this.depth + 1)
    const targets = select.targetList ?? []
    const selected = targets.map((t) => {
      const target = "ResTarget" in t ? t.ResTarget : undefined
      const value = target?.val
      if (value === undefined || !("ColumnRef" in value)) {
        throw new WhereError("Unsupported expression: a subquery must select plain columns of its table")
      }
      return inner.column(value.ColumnRef.fields ?? [])
    })
    if (selected.length !== args.length) {
      throw new WhereError(`subquery has too ${selected.length > args.length ? "many" : "few"} columns`)
    }
    const innerWhere = select.whereClause === undefined
      ? undefined
      : (() => {
        const expr = inner.predicate(inner.typeNode(select.whereClause), "WHERE")
        return { expr, columns: inner.used, dependencies: inner.dependencies }
      })()
    const domains = args.map((arg, i) => {
      const column = selected[i]!
      const domain = domainOf(arg.type, column.type)
      if (domain === undefined) {
        throw new WhereError(`operator does not exist: ${displayType(arg.type)} = ${displayType(column.type)}`)
      }
      return domain
    })
    if (args.length > 1) {
      const nullable = [
        ...args.filter((a) => this.byName.get(a.name)?.notNull !== true).map((a) => `"${a.name}"`),
        ...selected.filter((c) => table.columns.find((t) => t.name === c.name)?.notNull !== true).map((c) =>
          `"${table.name}"."${c.name}"`
        )
      ]
      if (nullable.length > 0) {
        throw new WhereError(
          `Unsupported expression: (…) IN (SELECT …) over nullable columns (${nullable.join(", ")}); ` +
            "a row of columns can only be compared when none of them can be NULL"
        )
      }
    }
    const sql = `SELECT ${selected.map((c) => quoteIdent(c.name)).join(", ")} FROM ${quoteIdent(table.schema)}.${quoteIdent(table.name)}` +
      (innerWhere === undefined ? "" : ` WHERE ${renderSql(innerWhere.expr)}`)
    let dependency = this.dependencies.findIndex((d) => d.sql === sql)
    if (dependency === -1) {
      dependency = this.dependencies.length
      this.dependencies.push({ table, select: selected, where: innerWhere, sql })
    }
    return { _tag: "InSubquery", args, domains, dependency, subquerySql: sql }
  }

  typeNode(node: Node): Typed {
    if ("ColumnRef" in node) return this.column(node.ColumnRef.fields ?? [])
    if ("A_Const" in node) return constant(node.A_Const)
    if ("ParamRef" in node) return this.param(node.ParamRef.number ?? 0)
    if ("TypeCast" in node) return this.cast(node.TypeCast.arg, node.TypeCast.typeName)
    if ("A_Expr" in node) return this.aExpr(node.A_Expr)
    if ("BoolExpr" in node) {
      const { boolop, args = [] } = node.BoolExpr
      if (boolop === "NOT_EXPR") return { _tag: "Not", arg: this.predicate(this.typeNode(args[0]!), "NOT") }
      const tag = boolop === "AND_EXPR" ? "And" : "Or"
      const flat: Array<Expr> = []
      for (const arg of args) {
        const p = this.predicate(this.typeNode(arg), tag.toUpperCase())
        if (p._tag === tag) flat.push(...p.args)
        else flat.push(p)
      }
      return { _tag: tag, args: flat }
    }
    if ("NullTest" in node) {
      const arg = this.typeNode(node.NullTest.arg!)
      return {
        _tag: "IsNull",
        negated: node.NullTest.nulltesttype === "IS_NOT_NULL",
        arg: arg._tag === "Unknown" ? coerce(arg, "text") : arg
      }
    }
    if ("BooleanTest" in node) {
      const kind = node.BooleanTest.booltesttype ?? "IS_TRUE"
      const negated = kind.startsWith("IS_NOT_")
      const test = kind.endsWith("TRUE") ? "true" : kind.endsWith("FALSE") ? "false" : "unknown"
      const label = `IS ${negated ? "NOT " : ""}${test.toUpperCase()}`
      return { _tag: "BoolTest", test, negated, arg: this.predicate(this.typeNode(node.BooleanTest.arg!), label) }
    }
    if ("FuncCall" in node) {
      const names = (node.FuncCall.funcname ?? []).map(stringOf)
      throw new WhereError(`Unsupported function: ${names.filter((n) => n !== "pg_catalog").join(".")}`)
    }
    if ("SubLink" in node) return this.subLink(node.SubLink)
    if ("CollateClause" in node) throw new WhereError("Unsupported expression: COLLATE")
    throw new WhereError(`Unsupported expression: ${Object.keys(node)[0] ?? "unknown"}`)
  }

  predicate(t: Typed, context: string): Expr {
    if (t._tag === "Unknown") return coerce(t, "bool")
    if ((t._tag === "Column" || t._tag === "Const") && t.type !== "bool") {
      throw new WhereError(`argument of ${context} must be type boolean, not type ${displayType(t.type)}`)
    }
    return t
  }

  private operand(t: Typed): Value | Unknown {
    if (t._tag === "Unknown" || t._tag === "Column" || t._tag === "Const") return t
    throw new WhereError("Unsupported expression: a boolean expression used as a value")
  }

  private column(fields: ReadonlyArray<Node>): Column {
    if (fields.some((f) => !("String" in f))) throw new WhereError("Unsupported expression: *")
    const names = fields.map(stringOf)
    const { schema, name: table } = this.ctx.table
    const qualified =
      names.length === 1 ||
      (names.length === 2 && names[0] === table) ||
      (names.length === 3 && names[0] === schema && names[1] === table)
    const name = names[names.length - 1]!
    const info = qualified ? this.byName.get(name) : undefined
    if (info === undefined) throw new WhereError(`Unknown reference "${names.join(".")}"`)
    if (!this.used.includes(name)) this.used.push(name)
    return { _tag: "Column", name, type: columnType(info) }
  }

  private param(n: number): Unknown {
    const value = this.ctx.params[String(n)]
    if (value === undefined) {
      throw new WhereError(`Parameter $${n} has no value: ${this.ctx.paramsName ?? "params"}[${n}] is missing`)
    }
    return { _tag: "Unknown", text: value }
  }

  private cast(arg: Node | undefined, typeName: TypeName | undefined): Typed {
    const target = castTarget(typeName)
    const value = this.operand(this.typeNode(arg!))
    if (value._tag === "Unknown") return coerce(value, target)
    if (value._tag === "Column") {
      if (value.type === target) return value
      throw new WhereError(`Unsupported expression: cast of column "${value.name}" to ${target}`)
    }
    return castConst(value, target)
  }

  private aExpr(e: {
    readonly kind?: string
    readonly name?: ReadonlyArray<Node>
    readonly lexpr?: Node
    readonly rexpr?: Node
  }): Typed {
    const names = (e.name ?? []).map(stringOf)
    const op = names[names.length - 1] ?? ""
    switch (e.kind) {
      case "AEXPR_OP": {
        if (e.lexpr === undefined) return this.unary(op, this.operand(this.typeNode(e.rexpr!)))
        const compareOp = COMPARE_OPS[op]
        if (compareOp !== undefined) {
          const [left, right, domain] = this.resolve(e.lexpr, e.rexpr!, op)
          return { _tag: "Compare", op: compareOp, left, right, domain }
        }
        if (op === "~~" || op === "!~~" || op === "~~*" || op === "!~~*") return this.like(op, e.lexpr, e.rexpr!)
        throw new WhereError(`Unsupported operator: ${op}`)
      }
      case "AEXPR_LIKE":
      case "AEXPR_ILIKE":
        return this.like(op, e.lexpr!, e.rexpr!)
      case "AEXPR_DISTINCT":
      case "AEXPR_NOT_DISTINCT": {
        const [left, right, domain] = this.resolve(e.lexpr!, e.rexpr!, "=")
        return { _tag: "Distinct", negated: e.kind === "AEXPR_NOT_DISTINCT", left, right, domain }
      }
      case "AEXPR_IN":
        return this.inList(op === "<>", e.lexpr!, listItems(e.rexpr!).map((n) => this.operand(this.typeNode(n))))
      case "AEXPR_BETWEEN":
      case "AEXPR_NOT_BETWEEN":
      case "AEXPR_BETWEEN_SYM":
      case "AEXPR_NOT_BETWEEN_SYM":
        return this.between(e.kind, e.lexpr!, listItems(e.rexpr!))
      case "AEXPR_OP_ANY":
        if (op !== "=") throw new WhereError(`Unsupported expression: ${op} ANY`)
        return this.anyOf(e.lexpr!, e.rexpr!)
      case "AEXPR_OP_ALL":
        throw new WhereError(`Unsupported expression: ${op} ALL`)
      case "AEXPR_NULLIF":
        throw new WhereError("Unsupported function: nullif")
      case "AEXPR_SIMILAR":
        throw new WhereError("Unsupported expression: SIMILAR TO")
      default:
        throw new WhereError(`Unsupported expression: ${e.kind ?? "operator"}`)
    }
  }

  private unary(op: string, value: Value | Unknown): Typed {
    if (op !== "-" && op !== "+") throw new WhereError(`Unsupported operator: ${op}`)
    if (value._tag === "Unknown") throw new WhereError(`operator is not unique: ${op} unknown`)
    if (value._tag === "Column") throw new WhereError(`Unsupported expression: unary ${op} on column "${value.name}"`)
    if (!NUMBER_TYPES.has(value.type)) {
      throw new WhereError(`operator does not exist: ${op} ${displayType(value.type)}`)
    }
    if (op === "+" || value.text === null) return value
    return negate(value)
  }

  private resolve(l: Node, r: Node, op: string): readonly [Value, Value, Domain] {
    return resolvePair(this.operand(this.typeNode(l)), this.operand(this.typeNode(r)), op)
  }

  private like(op: string, lexpr: Node, rexpr: Node): Expr {
    const caseInsensitive = op.endsWith("*")
    const negated = op.startsWith("!")
    let patternNode = rexpr
    let escape = "\\"
    if ("FuncCall" in rexpr && (rexpr.FuncCall.funcname ?? []).map(stringOf).includes("like_escape")) {
      const args = rexpr.FuncCall.args ?? []
      patternNode = args[0]!
      const esc = this.textConstant(this.operand(this.typeNode(args[1]!)), "ESCAPE")
      if (esc === null) throw new WhereError("Unsupported expression: ESCAPE NULL")
      escape = esc
    }
    let arg = this.operand(this.typeNode(lexpr))
    if (arg._tag === "Unknown") arg = coerce(arg, "text")
    if (!TEXT_TYPES.has(arg.type)) {
      throw new WhereError(`operator does not exist: ${displayType(arg.type)} ${op} unknown`)
    }
    const pattern = this.textConstant(this.operand(this.typeNode(patternNode)), "LIKE")
    if (pattern !== null) {
      try {
        compileLike(pattern, escape, caseInsensitive)
      } catch (error) {
        if (error instanceof PatternError) throw new WhereError(error.message)
        throw error
      }
    }
    return { _tag: "Like", negated, caseInsensitive, arg, pattern, escape }
  }

  private textConstant(v: Value | Unknown, context: string): string | null {
    if (v._tag === "Unknown") return v.text
    if (v._tag === "Const" && TEXT_TYPES.has(v.type)) return v.text
    if (v._tag === "Column") throw new WhereError(`Unsupported expression: ${context} with a non-constant pattern`)
    throw new WhereError(`operator does not exist: text ~~ ${displayType(v.type)}`)
  }

  /**
   * `x = ANY(<array>)`, the array an `ARRAY[…]`, or a literal or `$n` in
   * Postgres's array syntax (`{1,2,NULL}`): the same test as `x IN (…)` over
   * its elements, an empty array being false.
   */
  private anyOf(lexpr: Node, rexpr: Node): Expr {
    if ("A_ArrayExpr" in rexpr) return this.anyOfArray(lexpr, rexpr.A_ArrayExpr.elements ?? [])
    // An untyped literal or parameter takes the array type of the left side, as Postgres infers it.
    const array = this.operand(this.typeNode(rexpr))
    if (array._tag !== "Unknown") throw new WhereError("Unsupported expression: = ANY over a value that is not an array")
    if (array.text === null) return { _tag: "Const", type: "bool", text: null }
    const items = arrayElements(array.text).map((text): Unknown => ({ _tag: "Unknown", text }))
    if (items.length === 0) {
      this.operand(this.typeNode(lexpr))
      return { _tag: "Const", type: "bool", text: "false" }
    }
    return this.inList(false, lexpr, items)
  }

  /**
   * `x = ANY(ARRAY[…])`: as in Postgres, the array's type comes from its
   * elements alone (untyped literals and NULL make it `text[]`), and `x` is
   * compared with each element of that type.
   */
  private anyOfArray(lexpr: Node, elements: ReadonlyArray<Node>): Expr {
    const arg = this.operand(this.typeNode(lexpr))
    if (elements.length === 0) throw new WhereError("cannot determine type of empty array")
    const typed = elements.map((n) => this.operand(this.typeNode(n)))
    const known = typed.flatMap((e) => (e._tag === "Unknown" ? [] : [e.type]))
    const type = known.length === 0 ? "text" : selectCommonType(known)
    if (type === undefined) throw new WhereError(`ARRAY types ${known.map(displayType).join(" and ")} cannot be matched`)
    const left = arg._tag === "Unknown" ? coerce(arg, type) : arg
    const items = typed.map((e) => {
      // A column element is compared as it is; constants take the array's type first.
      const element = e._tag === "Unknown" ? coerce(e, type) : e._tag === "Const" ? castConst(e, type) : e
      const [, value, domain] = resolvePair(left, element, "=")
      return { value, domain }
    })
    return { _tag: "In", negated: false, arg: left, items }
  }

  private inList(negated: boolean, lexpr: Node, typedItems: ReadonlyArray<Value | Unknown>): Expr {
    const arg = this.operand(this.typeNode(lexpr))
    // As Postgres does, constants (two or more) are coerced to the common type
    // of the list and the left side, columns are compared one by one.
    const constants = typedItems.filter((i) => i._tag !== "Column")
    let common: PgType | undefined
    if (constants.length > 1) {
      const known = [arg, ...constants].flatMap((v) => (v._tag === "Unknown" ? [] : [v.type]))
      common = known.length === 0 ? "text" : selectCommonType(known)
    }
    const resolvedArg = arg._tag === "Unknown" ? coerce(arg, common ?? firstType(typedItems) ?? "text") : arg
    const resolved = typedItems.map((item) => {
      if (common === undefined || item._tag === "Column") {
        const [, value, domain] = resolvePair(resolvedArg, item, "=")
        return { value, domain }
      }
      const value = item._tag === "Unknown" ? coerce(item, common) : castConst(item, common)
      const domain = domainOf(resolvedArg.type, value.type)
      if (domain === undefined) {
        throw new WhereError(`operator does not exist: ${displayType(resolvedArg.type)} = ${displayType(value.type)}`)
      }
      return { value, domain }
    })
    return { _tag: "In", negated, arg: resolvedArg, items: resolved }
  }

  private between(kind: string, lexpr: Node, bounds: ReadonlyArray<Node>): Expr {
    const arg = this.operand(this.typeNode(lexpr))
    const low = this.operand(this.typeNode(bounds[0]!))
    const high = this.operand(this.typeNode(bounds[1]!))
    const resolvedArg = arg._tag === "Unknown" ? coerce(arg, firstType([low, high]) ?? "text") : arg
    const [, lowValue, lowDomain] = resolvePair(resolvedArg, low, ">=")
    const [, highValue, highDomain] = resolvePair(resolvedArg, high, "<=")
    return {
      _tag: "Between",
      negated: kind.startsWith("AEXPR_NOT"),
      symmetric: kind.endsWith("_SYM"),
      arg: resolvedArg,
      low: lowValue,
      high: highValue,
      lowDomain,
      highDomain
    }
  }
}

const arrayElements = (text: string): Array<string | null> => {
  try {
    return parseArrayLiteral(text)
  } catch (error) {
    if (error instanceof InputError) throw new WhereError(error.message)
    throw error
  }
}

const stringOf = (n: Node): string => ("String" in n ? (n.String.sval ?? "") : "")

const listItems = (n: Node): ReadonlyArray<Node> => ("List" in n ? (n.List.items ?? []) : [n])

const firstType = (values: ReadonlyArray<Value | Unknown>): PgType | undefined => {
  for (const v of values) if (v._tag !== "Unknown") return v.type
  return undefined
}

const columnType = (info: ColumnInfo): PgType => {
  if (info.dims > 0) throw new WhereError(`Unsupported type: ${info.typeName}[]`)
  const name = info.typeKind === "d" ? info.baseTypeName : info.typeName
  if (!supportedTypes.has(name)) throw new WhereError(`Unsupported type: ${name}`)
  return name as PgType
}

const castTarget = (typeName: TypeName | undefined): PgType => {
  const names = (typeName?.names ?? []).map(stringOf)
  const name = names[names.length - 1] ?? ""
  const qualified = names.length === 1 || (names.length === 2 && names[0] === "pg_catalog")
  if (typeName?.arrayBounds !== undefined) throw new WhereError(`Unsupported type: ${name}[]`)
  if (!qualified || !supportedTypes.has(name)) {
    throw new WhereError(`Unsupported type: ${qualified ? name : names.join(".")}`)
  }
  if (typeName?.typmods !== undefined) throw new WhereError(`Unsupported type modifier on ${name}`)
  return name as PgType
}

const constant = (c: {
  readonly ival?: { readonly ival?: number }
  readonly fval?: { readonly fval?: string }
  readonly boolval?: { readonly boolval?: boolean }
  readonly sval?: { readonly sval?: string }
  readonly bsval?: unknown
  readonly isnull?: boolean
}): Const | Unknown => {
  if (c.isnull === true) return { _tag: "Unknown", text: null }
  if (c.ival !== undefined) return { _tag: "Const", type: "int4", text: String(c.ival.ival ?? 0) }
  if (c.boolval !== undefined) return { _tag: "Const", type: "bool", text: c.boolval.boolval === true ? "true" : "false" }
  if (c.sval !== undefined) return { _tag: "Unknown", text: c.sval.sval ?? "" }
  if (c.fval !== undefined) return numberLiteral((c.fval.fval ?? "0").replace(/_/g, ""))
  throw new WhereError("Unsupported type: bit")
}

const numberLiteral = (text: string): Const => {
  const negative = text.startsWith("-")
  const body = negative || text.startsWith("+") ? text.slice(1) : text
  if (/^(?:\d+|0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+)$/.test(body)) {
    const magnitude = BigInt(body.replace(/^0([xob])/i, (_, p: string) => "0" + p.toLowerCase()))
    const value = negative ? -magnitude : magnitude
    if (fitsInt(value, "int4")) return { _tag: "Const", type: "int4", text: value.toString() }
    if (fitsInt(value, "int8")) return { _tag: "Const", type: "int8", text: value.toString() }
    return { _tag: "Const", type: "numeric", text: value.toString() }
  }
  const normal = normalizeNumeric(text)
  if (normal === undefined) throw new WhereError(`invalid input syntax for type numeric: "${text}"`)
  return { _tag: "Const", type: "numeric", text: normal }
}

const coerce = (u: Unknown, type: PgType): Const => {
  if (u.text === null) return { _tag: "Const", type, text: null }
  try {
    return { _tag: "Const", type, text: inputValue(type, u.text) }
  } catch (error) {
    if (error instanceof InputError) throw new WhereError(error.message)
    throw error
  }
}

const resolvePair = (l: Value | Unknown, r: Value | Unknown, op: string): readonly [Value, Value, Domain] => {
  let left: Value
  let right: Value
  if (l._tag === "Unknown") {
    right = r._tag === "Unknown" ? coerce(r, "text") : r
    left = coerce(l, right.type)
  } else {
    left = l
    right = r._tag === "Unknown" ? coerce(r, left.type) : r
  }
  const domain = domainOf(left.type, right.type)
  if (domain === undefined) {
    throw new WhereError(`operator does not exist: ${displayType(left.type)} ${op} ${displayType(right.type)}`)
  }
  return [left, right, domain]
}

const negate = (c: Const): Const => {
  const text = c.text!
  switch (c.type) {
    case "int2":
    case "int4":
    case "int8": {
      const value = -BigInt(text)
      if (!fitsInt(value, c.type)) throw new WhereError(`${displayType(c.type)} out of range`)
      return { ...c, text: value.toString() }
    }
    case "numeric":
    case "float4":
    case "float8":
      if (text === "NaN" || text === "0") return c
      return { ...c, text: text.startsWith("-") ? text.slice(1) : "-" + text }
    default:
      return c
  }
}

const roundHalfEven = (x: number): number => {
  const r = Math.round(x)
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r
}

const roundNumericToInt = (text: string): bigint => {
  const negative = text.startsWith("-")
  const [int = "0", frac = ""] = (negative ? text.slice(1) : text).split(".")
  const magnitude = BigInt(int) + (frac.charCodeAt(0) >= 53 ? 1n : 0n)
  return negative ? -magnitude : magnitude
}

/** Casts a typed constant, following Postgres's casts between the supported types. */
const castConst = (c: Const, target: PgType): Const => {
  if (c.type === target) return c
  if (c.text === null) return { _tag: "Const", type: target, text: null }
  const text = c.text
  const fail = (): never => {
    throw new WhereError(`cannot cast type ${displayType(c.type)} to ${displayType(target)}`)
  }
  const intoInt = (value: bigint, type: "int2" | "int4" | "int8"): Const => {
    if (!fitsInt(value, type)) throw new WhereError(`${displayType(type)} out of range`)
    return { _tag: "Const", type, text: value.toString() }
  }
  if (TEXT_TYPES.has(c.type)) {
    if (TEXT_TYPES.has(target)) return { _tag: "Const", type: target, text: c.type === "bpchar" ? trimSpaces(text) : text }
    return coerce({ _tag: "Unknown", text }, target)
  }
  if (TEXT_TYPES.has(target)) {
    if (c.type === "float4" || c.type === "float8" || c.type === "numeric") fail()
    return { _tag: "Const", type: target, text }
  }
  if (NUMBER_TYPES.has(c.type) && NUMBER_TYPES.has(target)) {
    const isFloat = c.type === "float4" || c.type === "float8"
    switch (target) {
      case "int2":
      case "int4":
      case "int8": {
        if (text === "NaN" || text.endsWith("Infinity")) {
          throw new WhereError(`cannot convert ${text === "NaN" ? "NaN" : "infinity"} to ${displayType(target)}`)
        }
        if (isFloat) {
          const value = c.type === "float4" ? Math.fround(Number(text)) : Number(text)
          return intoInt(BigInt(roundHalfEven(value)), target)
        }
        if (c.type === "numeric") return intoInt(roundNumericToInt(text), target)
        return intoInt(BigInt(text), target)
      }
      case "numeric": {
        if (!isFloat || text === "NaN" || text.endsWith("Infinity")) return { _tag: "Const", type: target, text }
        const digits = c.type === "float4" ? 6 : 15
        const value = c.type === "float4" ? Math.fround(Number(text)) : Number(text)
        return { _tag: "Const", type: target, text: normalizeNumeric(value.toPrecision(digits))! }
      }
      case "float4":
      case "float8": {
        const double = c.type === "float4" ? Math.fround(Number(text)) : Number(text)
        const value = target === "float4" ? Math.fround(double) : double
        if (!Number.isFinite(value) && Number.isFinite(double)) {
          throw new WhereError(`value out of range: overflow`)
        }
        return { _tag: "Const", type: target, text: formatFloat(value, target) }
      }
    }
  }
  if (TIME_TYPES.has(c.type) && TIME_TYPES.has(target)) {
    const value = parseDateTime(text, c.type as TimeKind)
    if (value === undefined) return fail()
    return { _tag: "Const", type: target, text: formatDateTime(value, target as TimeKind) }
  }
  return fail()
}
