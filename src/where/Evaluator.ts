import type { Row } from "../domain/Change.js"
import type { Column, CompareOp, Const, Domain, Expr, In, InSubquery, PgType, Value } from "./Ast.js"
import { compileLike } from "./Like.js"
import { comparator, converter, type DomainValue, identityEquality } from "./Values.js"

// The typed tree is compiled once per shape into closures, so evaluating a row
// does no dispatch on node kinds or types. A column missing from the row or
// holding an unchanged TOASTed value (`undefined`) is unknown to comparisons,
// but is not NULL for `IS NULL` (Postgres never TOASTs a NULL).

/** A compiled `where` clause: SQL's three-valued result for a row, `null` meaning unknown. */
export type Predicate = (row: Row) => boolean | null

type Getter = (row: Row) => DomainValue | null
type Test = (a: DomainValue, b: DomainValue) => boolean

/**
 * What a clause with subqueries reads of its dependencies: the value sets of
 * the dependency shapes, as of the transaction being evaluated. `key` is
 * `subqueryKey` of the row's values.
 */
export interface SubqueryViews {
  readonly has: (node: InSubquery, key: string) => boolean
  readonly hasNull: (node: InSubquery) => boolean
  readonly isEmpty: (node: InSubquery) => boolean
}

/**
 * The key under which a value is found in a dependency's set: its value in
 * the comparison domain, so that values Postgres finds equal (`1.0` and `1`,
 * `'a '` and `'a'` as `character(n)`) share a key. Parts of a row of values
 * are joined by NUL, which no Postgres text holds.
 */
export const valueKey = (domain: Domain, type: PgType, text: string): string => {
  const v = converter(domain, type)(text)
  return v === null ? text : String(v)
}

/** `valueKey` of each of a row's values, joined by NUL: the key of a row of values in a dependency's set. */
export const valuesKey = (
  domains: ReadonlyArray<Domain>,
  types: ReadonlyArray<PgType>,
  texts: ReadonlyArray<string>
): string => {
  let key = valueKey(domains[0]!, types[0]!, texts[0]!)
  for (let i = 1; i < texts.length; i++) key += "\u0000" + valueKey(domains[i]!, types[i]!, texts[i]!)
  return key
}

/** Compiles a boolean expression into a three-valued predicate over rows; `views` answers its subqueries. */
export const compile = (expr: Expr, views?: SubqueryViews): Predicate => compileExpr(expr, views)

const compileExpr = (expr: Expr, views: SubqueryViews | undefined): Predicate => {
  const compile = (e: Expr) => compileExpr(e, views)
  switch (expr._tag) {
    case "Column": {
      const name = expr.name
      const toBool = converter("bool", "bool") as (text: string) => boolean | null
      return (row) => {
        const text = row[name]
        return text == null ? null : toBool(text)
      }
    }
    case "Const": {
      const value = expr.text === null ? null : expr.text === "true"
      return () => value
    }
    case "Compare":
      return compileCompare(expr.op, expr.left, expr.right, expr.domain)
    case "Distinct":
      return compileDistinct(expr.negated, expr.left, expr.right, expr.domain)
    case "And":
      return compileAnd(expr.args.map(compile))
    case "Or":
      return compileOr(expr.args.map(compile))
    case "Not": {
      const p = compile(expr.arg)
      return (row) => {
        const r = p(row)
        return r === null ? null : !r
      }
    }
    case "IsNull":
      return compileIsNull(expr.arg, expr.negated, views)
    case "InSubquery":
      return compileInSubquery(expr, views)
    case "BoolTest": {
      const p = compile(expr.arg)
      const want = expr.test === "true" ? true : expr.test === "false" ? false : null
      return expr.negated ? (row) => p(row) !== want : (row) => p(row) === want
    }
    case "In":
      return compileIn(expr)
    case "Like": {
      const pattern = expr.pattern
      if (pattern === null) return () => null
      const test = compileLike(pattern, expr.escape, expr.caseInsensitive)
      const negated = expr.negated
      if (expr.arg._tag === "Const") {
        const value = expr.arg.text === null ? null : test(expr.arg.text) !== negated
        return () => value
      }
      const name = expr.arg.name
      return (row) => {
        const text = row[name]
        return text == null ? null : test(text) !== negated
      }
    }
    case "Between": {
      const { arg, low, high, lowDomain, highDomain } = expr
      const range = (lo: Value, loDomain: Domain, hi: Value, hiDomain: Domain): Predicate =>
        expr.negated
          ? compileOr([compileCompare("<", arg, lo, loDomain), compileCompare(">", arg, hi, hiDomain)])
          : compileAnd([compileCompare(">=", arg, lo, loDomain), compileCompare("<=", arg, hi, hiDomain)])
      const forward = range(low, lowDomain, high, highDomain)
      if (!expr.symmetric) return forward
      const backward = range(high, highDomain, low, lowDomain)
      return expr.negated ? compileAnd([forward, backward]) : compileOr([forward, backward])
    }
  }
}

/** A value that is either known at compile time or read from the row. */
type Operand = { readonly constant: true; readonly value: DomainValue | null } | { readonly constant: false; readonly get: Getter }

const operand = (v: Value, domain: Domain): Operand =>
  v._tag === "Const"
    ? { constant: true, value: v.text === null ? null : converter(domain, v.type)(v.text) }
    : { constant: false, get: columnGetter(v, domain) }

const columnGetter = (column: Column, domain: Domain): Getter => {
  const convert = converter(domain, column.type)
  const name = column.name
  return (row) => {
    const text = row[name]
    return text == null ? null : convert(text)
  }
}

const opTest = (op: CompareOp, domain: Domain): Test => {
  const cmp = comparator(domain) as (a: DomainValue, b: DomainValue) => number
  const ordered = domain === "int4" || domain === "int8" || domain === "time"
  switch (op) {
    case "=":
      return identityEquality(domain) ? (a, b) => a === b : (a, b) => cmp(a, b) === 0
    case "<>":
      return identityEquality(domain) ? (a, b) => a !== b : (a, b) => cmp(a, b) !== 0
    case "<":
      return ordered ? (a, b) => a < b : (a, b) => cmp(a, b) < 0
    case "<=":
      return ordered ? (a, b) => a <= b : (a, b) => cmp(a, b) <= 0
    case ">":
      return ordered ? (a, b) => a > b : (a, b) => cmp(a, b) > 0
    case ">=":
      return ordered ? (a, b) => a >= b : (a, b) => cmp(a, b) >= 0
  }
}

/** Whether a column's text equals a constant's canonical text exactly when the values are equal. */
const textIsCanonical = (v: Value, domain: Domain): boolean =>
  ((domain === "int4" || domain === "int8") && (v.type === "int2" || v.type === "int4" || v.type === "int8")) ||
  (domain === "text" && v.type !== "bpchar")

const compileCompare = (op: CompareOp, left: Value, right: Value, domain: Domain): Predicate => {
  if ((op === "=" || op === "<>") && left._tag === "Column" && right._tag === "Const") {
    return compileEquality(op === "=", left, right, domain)
  }
  if ((op === "=" || op === "<>") && right._tag === "Column" && left._tag === "Const") {
    return compileEquality(op === "=", right, left, domain)
  }
  const test = opTest(op, domain)
  const l = operand(left, domain)
  const r = operand(right, domain)
  if (l.constant) {
    const a = l.value
    if (r.constant) {
      const value = a === null || r.value === null ? null : test(a, r.value)
      return () => value
    }
    if (a === null) return () => null
    const get = r.get
    return (row) => {
      const b = get(row)
      return b === null ? null : test(a, b)
    }
  }
  const getL = l.get
  if (r.constant) {
    const b = r.value
    if (b === null) return () => null
    return (row) => {
      const a = getL(row)
      return a === null ? null : test(a, b)
    }
  }
  const getR = r.get
  return (row) => {
    const a = getL(row)
    if (a === null) return null
    const b = getR(row)
    return b === null ? null : test(a, b)
  }
}

const compileEquality = (equal: boolean, column: Column, c: Const, domain: Domain): Predicate => {
  const b = c.text === null ? null : converter(domain, c.type)(c.text)
  if (b === null) return () => null
  const name = column.name
  if (textIsCanonical(column, domain)) {
    const expected = domain === "text" ? (b as string) : c.text
    return (row) => {
      const text = row[name]
      return text == null ? null : (text === expected) === equal
    }
  }
  const test = opTest(equal ? "=" : "<>", domain)
  const get = columnGetter(column, domain)
  return (row) => {
    const a = get(row)
    return a === null ? null : test(a, b)
  }
}

const compileDistinct = (negated: boolean, left: Value, right: Value, domain: Domain): Predicate => {
  const eq = opTest("=", domain)
  const l = operand(left, domain)
  const r = operand(right, domain)
  const getL: Getter = l.constant ? () => l.value : l.get
  const getR: Getter = r.constant ? () => r.value : r.get
  return (row) => {
    const a = getL(row)
    const b = getR(row)
    const same = a === null || b === null ? a === b : eq(a, b)
    return same === negated
  }
}

const compileAnd = (preds: ReadonlyArray<Predicate>): Predicate => {
  if (preds.length === 1) return preds[0]!
  if (preds.length === 2) {
    const [p, q] = preds as readonly [Predicate, Predicate]
    return (row) => {
      const a = p(row)
      if (a === false) return false
      const b = q(row)
      if (b === false) return false
      return a === null || b === null ? null : true
    }
  }
  return (row) => {
    let unknown = false
    for (let i = 0; i < preds.length; i++) {
      const r = preds[i]!(row)
      if (r === false) return false
      if (r === null) unknown = true
    }
    return unknown ? null : true
  }
}

const compileOr = (preds: ReadonlyArray<Predicate>): Predicate => {
  if (preds.length === 1) return preds[0]!
  if (preds.length === 2) {
    const [p, q] = preds as readonly [Predicate, Predicate]
    return (row) => {
      const a = p(row)
      if (a === true) return true
      const b = q(row)
      if (b === true) return true
      return a === null || b === null ? null : false
    }
  }
  return (row) => {
    let unknown = false
    for (let i = 0; i < preds.length; i++) {
      const r = preds[i]!(row)
      if (r === true) return true
      if (r === null) unknown = true
    }
    return unknown ? null : false
  }
}

const compileIsNull = (arg: Expr | Value, negated: boolean, views: SubqueryViews | undefined): Predicate => {
  if (arg._tag === "Column") {
    const name = arg.name
    return (row) => (row[name] === null) !== negated
  }
  if (arg._tag === "Const") {
    const value = (arg.text === null) !== negated
    return () => value
  }
  const p = compileExpr(arg, views)
  return (row) => (p(row) === null) !== negated
}

/**
 * `(args) IN (SELECT …)` as Postgres evaluates it: TRUE when the values are in
 * the set; else NULL when a value is NULL (FALSE if the set is empty) or the
 * set holds a NULL; else FALSE. Rows of several values never meet a NULL (the
 * parser refuses nullable columns there).
 */
const compileInSubquery = (node: InSubquery, views: SubqueryViews | undefined): Predicate => {
  if (views === undefined) throw new Error("a clause with subqueries is evaluated against its dependencies' views")
  const names = node.args.map((a) => a.name)
  const keyers = node.args.map((a, i) => converter(node.domains[i]!, a.type))
  const single = names.length === 1
  const keyOf = (text: string, i: number): string => {
    const v = keyers[i]!(text)
    return v === null ? text : String(v)
  }
  return (row) => {
    let key = ""
    for (let i = 0; i < names.length; i++) {
      const text = row[names[i]!]
      if (text == null) return views.isEmpty(node) ? false : null
      key = single ? keyOf(text, 0) : i === 0 ? keyOf(text, 0) : key + "\u0000" + keyOf(text, i)
    }
    if (views.has(node, key)) return true
    return views.hasNull(node) ? null : false
  }
}

const compileIn = (expr: In): Predicate => {
  const { arg, items, negated } = expr
  const domain = items[0]?.domain
  const uniform =
    arg._tag === "Column" &&
    domain !== undefined &&
    identityEquality(domain) &&
    items.every((i) => i.domain === domain && i.value._tag === "Const")
  if (uniform) {
    const set = new Set<DomainValue>()
    let hasNull = false
    for (const item of items) {
      const v = item.value as Const
      const converted = v.text === null ? null : converter(domain, v.type)(v.text)
      if (converted === null) hasNull = true
      else set.add(converted)
    }
    const get = columnGetter(arg, domain)
    const miss = hasNull ? null : negated
    return (row) => {
      const a = get(row)
      if (a === null) return null
      return set.has(a) ? !negated : miss
    }
  }
  const any = compileOr(items.map((i) => compileCompare("=", arg, i.value, i.domain)))
  if (!negated) return any
  return (row) => {
    const r = any(row)
    return r === null ? null : !r
  }
}
