/**
 * The typed syntax tree of a `where` clause: what the parser produces after
 * name resolution and Postgres's type resolution, and what the evaluator
 * compiles and the renderer prints. Every constant already carries its final
 * type and its canonical text form in that type.
 */

/** The column types a `where` clause can read (domains count as their base type). */
export type PgType =
  | "int2"
  | "int4"
  | "int8"
  | "float4"
  | "float8"
  | "numeric"
  | "text"
  | "varchar"
  | "bpchar"
  | "name"
  | "bool"
  | "uuid"
  | "date"
  | "timestamp"
  | "timestamptz"

/** The type names accepted in column types and casts, by `pg_type.typname`. */
export const supportedTypes: ReadonlySet<string> = new Set<PgType>([
  "int2",
  "int4",
  "int8",
  "float4",
  "float8",
  "numeric",
  "text",
  "varchar",
  "bpchar",
  "name",
  "bool",
  "uuid",
  "date",
  "timestamp",
  "timestamptz"
])

/**
 * How two operands are compared once Postgres's operator resolution has picked
 * an operator: the common representation both sides are converted to. `text`
 * compares a `character(n)` operand without its trailing spaces (the cast to
 * text drops them) and others as they are; `bpchar` ignores trailing spaces on
 * both sides.
 */
export type Domain = "int4" | "int8" | "float" | "numeric" | "text" | "bpchar" | "bool" | "uuid" | "time"

/** The comparison operators, with `!=` already folded into `<>`. */
export type CompareOp = "=" | "<>" | "<" | "<=" | ">" | ">="

/** A column of the shape's table. */
export interface Column {
  readonly _tag: "Column"
  readonly name: string
  readonly type: PgType
}

/**
 * A constant: a literal, a cast literal or a substituted `$n` parameter.
 * `text` is the canonical text form of the value in `type`, `null` for SQL NULL.
 */
export interface Const {
  readonly _tag: "Const"
  readonly type: PgType
  readonly text: string | null
}

/** An operand of a comparison. */
export type Value = Column | Const

/** `left op right`, compared in `domain`. */
export interface Compare {
  readonly _tag: "Compare"
  readonly op: CompareOp
  readonly left: Value
  readonly right: Value
  readonly domain: Domain
}

/** `left IS [NOT] DISTINCT FROM right`: null-safe (in)equality. */
export interface Distinct {
  readonly _tag: "Distinct"
  readonly negated: boolean
  readonly left: Value
  readonly right: Value
  readonly domain: Domain
}

/** N-ary conjunction (nested ANDs are flattened). */
export interface And {
  readonly _tag: "And"
  readonly args: ReadonlyArray<Expr>
}

/** N-ary disjunction (nested ORs are flattened). */
export interface Or {
  readonly _tag: "Or"
  readonly args: ReadonlyArray<Expr>
}

/** Boolean negation. */
export interface Not {
  readonly _tag: "Not"
  readonly arg: Expr
}

/** `arg IS [NOT] NULL`. */
export interface IsNull {
  readonly _tag: "IsNull"
  readonly negated: boolean
  readonly arg: Expr | Value
}

/** `arg IS [NOT] TRUE | FALSE | UNKNOWN`. */
export interface BoolTest {
  readonly _tag: "BoolTest"
  readonly test: "true" | "false" | "unknown"
  readonly negated: boolean
  readonly arg: Expr
}

/** `arg [NOT] IN (items)`; each item is compared in its own domain, as Postgres resolves `= ANY`. */
export interface In {
  readonly _tag: "In"
  readonly negated: boolean
  readonly arg: Value
  readonly items: ReadonlyArray<{ readonly value: Value; readonly domain: Domain }>
}

/** `arg [NOT] LIKE | ILIKE pattern [ESCAPE e]` with a constant pattern; `escape` `""` means none. */
export interface Like {
  readonly _tag: "Like"
  readonly negated: boolean
  readonly caseInsensitive: boolean
  readonly arg: Value
  readonly pattern: string | null
  readonly escape: string
}

/** `arg [NOT] BETWEEN [SYMMETRIC] low AND high`. */
export interface Between {
  readonly _tag: "Between"
  readonly negated: boolean
  readonly symmetric: boolean
  readonly arg: Value
  readonly low: Value
  readonly high: Value
  readonly lowDomain: Domain
  readonly highDomain: Domain
}

/**
 * `(args) IN (SELECT …)`: whether the row's values are among the rows of a
 * dependency shape (`x NOT IN (SELECT …)` is `Not` of this). Each outer column
 * is compared with the subquery's column at the same place, in `domains[i]`.
 */
export interface InSubquery {
  readonly _tag: "InSubquery"
  readonly args: ReadonlyArray<Column>
  readonly domains: ReadonlyArray<Domain>
  /** The index of the subquery among the clause's dependencies. */
  readonly dependency: number
  /** The canonical SQL of the subquery, `SELECT "c" FROM "s"."t" WHERE …`: what Postgres evaluates. */
  readonly subquerySql: string
}

/**
 * A boolean expression. A bare boolean column or constant is a `Value` of
 * type `bool` used as a predicate.
 */
export type Expr = Compare | Distinct | And | Or | Not | IsNull | BoolTest | In | Like | Between | InSubquery | Value
