import { FastCheck as fc } from "effect"

/**
 * The generator of the restart oracle (test/RestartOracle.test.ts): from one seed, through
 * fast-check, a schema of related tables, shapes over it (`where` clauses over everything the
 * evaluator supports, subqueries up to three levels, random columns, both replica modes,
 * `log=changes_only`), and the transactions that write to it. Everything here is plain data;
 * the test interprets it against Postgres and the service. Clauses call no functions: the
 * evaluator refuses every one, with a 400.
 */

// Schema ---------------------------------------------------------------------------------------

export type ValueType = "int2" | "int4" | "int8" | "numeric" | "float8" | "text" | "varchar" | "bool" | "date" | "timestamptz" | "uuid"

export interface ColumnSpec {
  readonly name: string
  readonly type: ValueType
  readonly nullable: boolean
}

export interface TableSpec {
  readonly name: string
  /** The table whose `id` this table's `parent_id` refers to (itself for a tree); no constraint, so it may dangle. */
  readonly parent: string | undefined
  /** In DDL order: `id` first, `v` (bumped by every update) last. */
  readonly columns: ReadonlyArray<ColumnSpec>
}

export interface Schema {
  readonly tables: ReadonlyArray<TableSpec>
}

/** Columns a mutation may set: everything but the key, the parent reference and the version. */
export const valueColumns = (table: TableSpec): ReadonlyArray<ColumnSpec> =>
  table.columns.filter((c) => c.name !== "id" && c.name !== "parent_id" && c.name !== "v")

export const ddl = (table: TableSpec): string =>
  `CREATE TABLE ${table.name} (${
    table.columns.map((c) => `${c.name} ${c.type}${c.name === "id" ? " PRIMARY KEY" : c.nullable ? "" : " NOT NULL"}`).join(", ")
  })`

const tableArb = (name: string, parent: string | undefined, parentIdType: "int4" | "int8" | undefined): fc.Arbitrary<TableSpec> =>
  fc.record({
    idType: fc.constantFrom<"int4" | "int8">("int4", "int8"),
    hidden: fc.boolean(),
    label: fc.constantFrom<ValueType>("text", "varchar"),
    amount: fc.constantFrom<ValueType>("int2", "int4", "numeric", "float8"),
    amountNullable: fc.boolean(),
    day: fc.constantFrom<ValueType>("date", "timestamptz"),
    ref: fc.boolean()
  }).map((t) => ({
    name,
    parent,
    columns: [
      { name: "id", type: t.idType, nullable: false },
      // A tree's parent_id refers to its own id.
      ...(parent === undefined ? [] : [{ name: "parent_id", type: parentIdType ?? t.idType, nullable: true }]),
      { name: "flag", type: "bool", nullable: false },
      ...(t.hidden ? [{ name: "hidden", type: "bool" as const, nullable: true }] : []),
      { name: "label", type: t.label, nullable: true },
      { name: "amount", type: t.amount, nullable: t.amountNullable },
      { name: "day", type: t.day, nullable: true },
      ...(t.ref ? [{ name: "ref", type: "uuid" as const, nullable: true }] : []),
      { name: "v", type: "int4", nullable: false }
    ]
  }))

const idTypeOf = (table: TableSpec): "int4" | "int8" => table.columns[0]!.type as "int4" | "int8"

/**
 * Three or four tables in a chain `t0 ← t1 ← t2`, and maybe a fourth under `t1` (a sibling of
 * `t2`), under `t2` (a longer chain) or under itself (a tree).
 */
export const schemaArb = (prefix: string): fc.Arbitrary<Schema> =>
  fc.record({ fourth: fc.constantFrom<"none" | "t1" | "t2" | "self">("none", "t1", "t2", "self") }).chain(({ fourth }) =>
    tableArb(`${prefix}_t0`, undefined, undefined).chain((t0) =>
      tableArb(`${prefix}_t1`, t0.name, idTypeOf(t0)).chain((t1) =>
        tableArb(`${prefix}_t2`, t1.name, idTypeOf(t1)).chain((t2) => {
          if (fourth === "none") return fc.constant({ tables: [t0, t1, t2] })
          const name = `${prefix}_t3`
          const parent = fourth === "self" ? undefined : fourth === "t1" ? t1 : t2
          return tableArb(name, fourth === "self" ? name : parent!.name, parent === undefined ? undefined : idTypeOf(parent))
            .map((t3) => ({ tables: [t0, t1, t2, t3] }))
        })
      )
    )
  )

// Values ---------------------------------------------------------------------------------------

/** A value as it is sent to Postgres as a parameter. */
export type Value = string | number | boolean | null

const UUIDS = [
  "00000000-0000-4000-8000-000000000001",
  "0f1e2d3c-4b5a-4697-8877-665544332211",
  "a0a0a0a0-b1b1-4c2c-9d3d-e4e4e4e4e4e4",
  "ffffffff-ffff-4fff-bfff-ffffffffffff"
] as const

/** Small domains, so that predicates and data meet often. */
export const nonNullValueArb = (type: ValueType): fc.Arbitrary<string | number | boolean> => {
  switch (type) {
    case "int2":
    case "int4":
    case "int8":
      return fc.integer({ min: 0, max: 9 })
    case "numeric":
      return fc.integer({ min: 0, max: 20 }).map((k) => (k % 2 === 0 ? String(k / 2) : (k / 2).toFixed(1)))
    case "float8":
      return fc.integer({ min: 0, max: 20 }).map((k) => k / 4)
    case "text":
    case "varchar":
      return fc.array(fc.constantFrom("a", "b", "A", "B", "_"), { minLength: 1, maxLength: 3 }).map((cs) => cs.join(""))
    case "bool":
      return fc.boolean()
    case "date":
      return fc.integer({ min: 1, max: 9 }).map((d) => `2024-01-0${d}`)
    case "timestamptz":
      return fc.integer({ min: 0, max: 9 }).map((h) => `2024-01-01 0${h}:30:00+00`)
    case "uuid":
      return fc.constantFrom(...UUIDS)
  }
}

export const valueArb = (column: ColumnSpec): fc.Arbitrary<Value> =>
  column.nullable
    ? fc.oneof({ weight: 1, arbitrary: fc.constant(null) }, { weight: 6, arbitrary: nonNullValueArb(column.type) })
    : nonNullValueArb(column.type)

// Where clauses --------------------------------------------------------------------------------

/** A constant of a clause: written inline (quoted as its type needs, maybe with a cast) or sent as `$n`. */
export interface Literal {
  readonly type: ValueType
  readonly value: string | number | boolean
  readonly param: boolean
  readonly cast: boolean
}

export type BoolForm = "bare" | "not" | "isTrue" | "isNotFalse" | "isUnknown" | "eqFalse"

export type CompareOp = "=" | "<>" | "<" | "<=" | ">" | ">="

export type Cond =
  | { readonly _tag: "Compare"; readonly column: string; readonly op: CompareOp; readonly literal: Literal }
  | { readonly _tag: "Between"; readonly column: string; readonly negated: boolean; readonly low: Literal; readonly high: Literal }
  | { readonly _tag: "In"; readonly column: string; readonly negated: boolean; readonly literals: ReadonlyArray<Literal> }
  | { readonly _tag: "IsNull"; readonly column: string; readonly negated: boolean }
  | { readonly _tag: "Distinct"; readonly column: string; readonly negated: boolean; readonly literal: Literal }
  | { readonly _tag: "Like"; readonly column: string; readonly negated: boolean; readonly caseInsensitive: boolean; readonly pattern: string }
  | { readonly _tag: "Bool"; readonly column: string; readonly form: BoolForm }
  | {
    readonly _tag: "Subquery"
    readonly negated: boolean
    readonly outer: ReadonlyArray<string>
    readonly table: string
    readonly inner: ReadonlyArray<string>
    readonly where: Cond | undefined
  }
  | { readonly _tag: "And" | "Or"; readonly args: ReadonlyArray<Cond> }
  | { readonly _tag: "Not"; readonly arg: Cond }

const ORDERED: ReadonlySet<ValueType> = new Set(["int2", "int4", "int8", "numeric", "float8", "text", "varchar", "date", "timestamptz"])

/** A constant of `type`: a quarter of them parameters, a quarter (of the inline ones) cast. */
const literalArb = (type: ValueType): fc.Arbitrary<Literal> =>
  fc.tuple(nonNullValueArb(type), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 3 }))
    .map(([value, p, c]) => ({ type, value, param: p === 0, cast: c === 0 }))

const likePatternArb: fc.Arbitrary<string> = fc
  .tuple(fc.constantFrom("", "%", "_"), fc.constantFrom("a", "b", "A", "ab", "\\_"), fc.constantFrom("", "%", "_%"))
  .map(([a, b, c]) => `${a}${b}${c}`)

const COMPARE_OPS: ReadonlyArray<CompareOp> = ["=", "<>", "<", "<=", ">", ">="]

const atomArb = (table: TableSpec): fc.Arbitrary<Cond> => {
  const options: Array<fc.Arbitrary<Cond>> = []
  for (const column of table.columns) {
    const { name, type } = column
    if (type === "bool") {
      options.push(
        fc.constantFrom<BoolForm>("bare", "not", "isTrue", "isNotFalse", "isUnknown", "eqFalse").map((form): Cond => ({ _tag: "Bool", column: name, form }))
      )
      continue
    }
    if (ORDERED.has(type)) {
      options.push(fc.tuple(fc.constantFrom(...COMPARE_OPS), literalArb(type)).map(([op, literal]): Cond => ({ _tag: "Compare", column: name, op, literal })))
      options.push(
        fc.tuple(fc.boolean(), literalArb(type), literalArb(type)).map(([negated, low, high]): Cond => ({
          _tag: "Between",
          column: name,
          negated,
          low,
          high
        }))
      )
    } else {
      options.push(fc.tuple(fc.constantFrom<CompareOp>("=", "<>"), literalArb(type)).map(([op, literal]): Cond => ({ _tag: "Compare", column: name, op, literal })))
    }
    options.push(
      fc.tuple(fc.boolean(), fc.array(literalArb(type), { minLength: 1, maxLength: 4 })).map(([negated, literals]): Cond => ({
        _tag: "In",
        column: name,
        negated,
        literals
      }))
    )
    options.push(fc.tuple(fc.boolean(), literalArb(type)).map(([negated, literal]): Cond => ({ _tag: "Distinct", column: name, negated, literal })))
    if (column.nullable) options.push(fc.boolean().map((negated): Cond => ({ _tag: "IsNull", column: name, negated })))
    if (type === "text" || type === "varchar") {
      options.push(
        fc.tuple(fc.boolean(), fc.boolean(), likePatternArb).map(([negated, caseInsensitive, pattern]): Cond => ({
          _tag: "Like",
          column: name,
          negated,
          caseInsensitive,
          pattern
        }))
      )
    }
  }
  return fc.oneof(...options)
}

/**
 * `IN (SELECT …)` and `NOT IN` along the schema's references: up to the parent (`parent_id IN
 * (SELECT id FROM parent …)`), down to the children (`id IN (SELECT parent_id FROM child …)`, a
 * nullable column, so `NOT IN` meets NULLs), or a pair of NOT NULL columns at once.
 */
const subqueryArb = (schema: Schema, table: TableSpec, levels: number): fc.Arbitrary<Cond> | undefined => {
  const links: Array<{ outer: Array<string>; target: TableSpec; inner: Array<string> }> = []
  const parent = schema.tables.find((t) => t.name === table.parent)
  if (parent !== undefined) {
    links.push({ outer: ["parent_id"], target: parent, inner: ["id"] })
    // A row of columns compares only columns that cannot be NULL (the service refuses others).
    links.push({ outer: ["id", "flag"], target: parent, inner: ["id", "flag"] })
  }
  for (const child of schema.tables.filter((t) => t.parent === table.name)) {
    links.push({ outer: ["id"], target: child, inner: ["parent_id"] })
  }
  if (links.length === 0) return undefined
  return fc.tuple(fc.constantFrom(...links), fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 4 })).chain(([link, negate, bare]) =>
    (bare === 0 ? fc.constant(undefined) : condArb(schema, link.target, levels - 1, 1)).map((where): Cond => ({
      _tag: "Subquery",
      negated: negate === 0,
      outer: link.outer,
      table: link.target.name,
      inner: link.inner,
      where
    }))
  )
}

/** A clause over `table`: atoms under AND/OR/NOT up to `depth`, subqueries nested up to `levels`. */
export const condArb = (schema: Schema, table: TableSpec, levels: number, depth: number): fc.Arbitrary<Cond> =>
  fc.constant(undefined).chain(() => {
    const sub = levels > 0 ? subqueryArb(schema, table, levels) : undefined
    const atom = sub === undefined
      ? atomArb(table)
      : fc.oneof({ weight: 3, arbitrary: atomArb(table) }, { weight: 2, arbitrary: sub })
    if (depth <= 0) return atom
    const inner = condArb(schema, table, levels, depth - 1)
    return fc.oneof(
      { weight: 3, arbitrary: atom },
      { weight: 2, arbitrary: fc.array(inner, { minLength: 2, maxLength: 3 }).map((args): Cond => ({ _tag: "And", args })) },
      { weight: 2, arbitrary: fc.array(inner, { minLength: 2, maxLength: 3 }).map((args): Cond => ({ _tag: "Or", args })) },
      { weight: 1, arbitrary: inner.map((arg): Cond => ({ _tag: "Not", arg })) }
    )
  })

/** How deep subqueries nest in `cond` (0 without any). */
export const subqueryDepth = (cond: Cond | undefined): number => {
  if (cond === undefined) return 0
  switch (cond._tag) {
    case "Subquery":
      return 1 + subqueryDepth(cond.where)
    case "And":
    case "Or":
      return Math.max(...cond.args.map(subqueryDepth))
    case "Not":
      return subqueryDepth(cond.arg)
    default:
      return 0
  }
}

const quote = (text: string): string => `'${text.replace(/'/g, "''")}'`

/** Renders a clause as SQL with its `$n` values, numbered in order of appearance. */
export const renderWhere = (cond: Cond): { readonly sql: string; readonly params: ReadonlyArray<string> } => {
  const params: Array<string> = []
  const literal = (l: Literal): string => {
    if (l.param) {
      params.push(String(l.value))
      return `$${params.length}`
    }
    const text = typeof l.value === "string" ? quote(l.value) : String(l.value)
    return l.cast ? `${typeof l.value === "string" ? text : quote(text)}::${l.type}` : text
  }
  const render = (c: Cond): string => {
    switch (c._tag) {
      case "Compare":
        return `${c.column} ${c.op} ${literal(c.literal)}`
      case "Between":
        return `${c.column} ${c.negated ? "NOT " : ""}BETWEEN ${literal(c.low)} AND ${literal(c.high)}`
      case "In":
        return `${c.column} ${c.negated ? "NOT " : ""}IN (${c.literals.map(literal).join(", ")})`
      case "IsNull":
        return `${c.column} IS ${c.negated ? "NOT " : ""}NULL`
      case "Distinct":
        return `${c.column} IS ${c.negated ? "NOT " : ""}DISTINCT FROM ${literal(c.literal)}`
      case "Like":
        return `${c.column} ${c.negated ? "NOT " : ""}${c.caseInsensitive ? "ILIKE" : "LIKE"} ${quote(c.pattern)}`
      case "Bool":
        switch (c.form) {
          case "bare":
            return c.column
          case "not":
            return `NOT ${c.column}`
          case "isTrue":
            return `${c.column} IS TRUE`
          case "isNotFalse":
            return `${c.column} IS NOT FALSE`
          case "isUnknown":
            return `${c.column} IS UNKNOWN`
          case "eqFalse":
            return `${c.column} = false`
        }
        break
      case "Subquery": {
        const outer = c.outer.length === 1 ? c.outer[0]! : `(${c.outer.join(", ")})`
        const where = c.where === undefined ? "" : ` WHERE ${render(c.where)}`
        return `${outer} ${c.negated ? "NOT IN" : "IN"} (SELECT ${c.inner.join(", ")} FROM ${c.table}${where})`
      }
      case "And":
      case "Or":
        return `(${c.args.map(render).join(c._tag === "And" ? " AND " : " OR ")})`
      case "Not":
        return `NOT (${render(c.arg)})`
    }
  }
  const sql = render(cond)
  return { sql, params }
}

// Shapes ---------------------------------------------------------------------------------------

export type CreationMoment = "start" | "during" | "beforeRestart"

export interface GeneratedShape {
  readonly label: string
  readonly table: string
  readonly where: string | undefined
  readonly params: ReadonlyArray<string>
  /** The selected columns; undefined selects all. */
  readonly columns: ReadonlyArray<string> | undefined
  readonly replica: "default" | "full"
  readonly log: "full" | "changes_only"
  /** Who follows it: the official client or the strict raw-HTTP checker. */
  readonly checker: "official" | "raw"
  /** How deep its subqueries nest (0 without any). */
  readonly subqueries: number
  /** The batch in which it is created, and when in that batch. */
  readonly batch: number
  readonly moment: CreationMoment
  /** For `during`: the position among the first writer's transactions of the batch. */
  readonly position: number
}

export const shapeArb = (schema: Schema, index: number, batches: number, txnsPerBatch: number): fc.Arbitrary<GeneratedShape> =>
  fc.constantFrom(...schema.tables).chain((table) =>
    fc.record({
      where: fc.oneof(
        { weight: 1, arbitrary: fc.constant(undefined) },
        { weight: 5, arbitrary: condArb(schema, table, 0, 2) },
        { weight: 5, arbitrary: condArb(schema, table, 3, 2) }
      ),
      // Some of the columns, always with `v`, whose steps let a follower see a change lost or applied twice.
      columns: fc.oneof(
        { weight: 2, arbitrary: fc.constant(undefined) },
        {
          weight: 1,
          arbitrary: fc.subarray(table.columns.map((c) => c.name).filter((c) => c !== "id" && c !== "v")).map((cs) => ["id", ...cs, "v"])
        }
      ),
      replica: fc.constantFrom<"default" | "full">("default", "default", "full"),
      changesOnly: fc.integer({ min: 0, max: 3 }).map((k) => k === 0),
      official: fc.boolean(),
      early: fc.integer({ min: 0, max: 2 }).map((k) => k === 0),
      batch: fc.integer({ min: 0, max: Math.max(0, batches - 1) }),
      moment: fc.constantFrom<CreationMoment>("start", "during", "during", "beforeRestart"),
      position: fc.integer({ min: 0, max: Math.max(0, txnsPerBatch - 1) })
    }).map((s): GeneratedShape => {
      const rendered = s.where === undefined ? undefined : renderWhere(s.where)
      const subqueries = subqueryDepth(s.where)
      // The service refuses changes_only for a shape with subqueries; such shapes keep their full log.
      const log = s.changesOnly && subqueries === 0 ? "changes_only" : "full"
      const early = s.early || index < 4
      return {
        label: `s${index}`,
        table: table.name,
        where: rendered?.sql,
        params: rendered?.params ?? [],
        columns: s.columns,
        replica: s.replica,
        log,
        // The official client follows a whole log; changes_only followers are checked key by key.
        checker: log === "full" && s.official ? "official" : "raw",
        subqueries,
        batch: early ? 0 : s.batch,
        moment: early ? "start" : s.moment,
        position: s.position
      }
    })
  )

// Transactions ---------------------------------------------------------------------------------

/** Where a row's `parent_id` points: a row of the parent table the writer owns, NULL, or a row that never exists. */
export type ParentPick =
  | { readonly _tag: "Existing"; readonly pick: number }
  | { readonly _tag: "Null" }
  | { readonly _tag: "Dangling" }

/**
 * One mutation, in abstract terms: `table` indexes the schema's tables, `target` in [0, 1) picks
 * one of the rows the writer owns there. The test resolves them against its model.
 */
export type Mutation =
  | { readonly _tag: "Insert"; readonly table: number; readonly values: Readonly<Record<string, Value>>; readonly parent: ParentPick }
  | { readonly _tag: "Update"; readonly table: number; readonly target: number; readonly values: Readonly<Record<string, Value>> }
  | { readonly _tag: "Toggle"; readonly table: number; readonly target: number; readonly column: string }
  | { readonly _tag: "Reparent"; readonly table: number; readonly target: number; readonly parent: ParentPick }
  | { readonly _tag: "Rekey"; readonly table: number; readonly target: number }
  | { readonly _tag: "Delete"; readonly table: number; readonly target: number }

export const parentPickArb: fc.Arbitrary<ParentPick> = fc.oneof(
  { weight: 8, arbitrary: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }).map((pick): ParentPick => ({ _tag: "Existing", pick })) },
  { weight: 1, arbitrary: fc.constant<ParentPick>({ _tag: "Null" }) },
  { weight: 1, arbitrary: fc.constant<ParentPick>({ _tag: "Dangling" }) }
)

export const rowValuesArb = (table: TableSpec): fc.Arbitrary<Record<string, Value>> =>
  fc.record(Object.fromEntries(valueColumns(table).map((c) => [c.name, valueArb(c)])) as Record<string, fc.Arbitrary<Value>>)

const targetArb = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true })

const mutationArb = (schema: Schema): fc.Arbitrary<Mutation> =>
  fc.integer({ min: 0, max: schema.tables.length - 1 }).chain((index) => {
    const table = schema.tables[index]!
    const flags = table.columns.filter((c) => c.type === "bool").map((c) => c.name)
    const options: Array<fc.WeightedArbitrary<Mutation>> = [
      {
        weight: 3,
        arbitrary: fc.tuple(rowValuesArb(table), parentPickArb).map(([values, parent]): Mutation => ({ _tag: "Insert", table: index, values, parent }))
      },
      {
        weight: 6,
        arbitrary: fc.tuple(targetArb, rowValuesArb(table), fc.subarray(valueColumns(table).map((c) => c.name), { minLength: 1 }))
          .map(([target, values, names]): Mutation => ({
            _tag: "Update",
            table: index,
            target,
            values: Object.fromEntries(names.map((n) => [n, values[n]!]))
          }))
      },
      {
        weight: 4,
        arbitrary: fc.tuple(targetArb, fc.constantFrom(...flags)).map(([target, column]): Mutation => ({ _tag: "Toggle", table: index, target, column }))
      },
      { weight: 2, arbitrary: targetArb.map((target): Mutation => ({ _tag: "Delete", table: index, target })) },
      { weight: 1, arbitrary: targetArb.map((target): Mutation => ({ _tag: "Rekey", table: index, target })) }
    ]
    if (table.parent !== undefined) {
      options.push({
        weight: 4,
        arbitrary: fc.tuple(targetArb, parentPickArb).map(([target, parent]): Mutation => ({ _tag: "Reparent", table: index, target, parent }))
      })
    }
    return fc.oneof(...options)
  })

/** A burst of `count` transactions of one or two mutations each, committed back to back. */
export const burstArb = (schema: Schema, count: number): fc.Arbitrary<ReadonlyArray<ReadonlyArray<Mutation>>> =>
  fc.array(fc.array(mutationArb(schema), { minLength: 1, maxLength: 2 }), { minLength: count, maxLength: count })

/** A transaction of 1–20 mutations (the whole range: fast-check's default size would stop near 10). */
export const transactionArb = (schema: Schema): fc.Arbitrary<ReadonlyArray<Mutation>> =>
  fc.array(mutationArb(schema), { minLength: 1, maxLength: 20, size: "max" })

// Plan -----------------------------------------------------------------------------------------

export type RestartKind = "graceful" | "kill9" | "admin" | "rolling"

export interface Plan {
  readonly schema: Schema
  readonly shapes: ReadonlyArray<GeneratedShape>
  /** Bytes per log chunk; undefined keeps the service's default (10 MB). */
  readonly chunkBytes: number | undefined
  /** The kind of each restart, in order: every run of four holds each kind once. */
  readonly restarts: ReadonlyArray<RestartKind>
}

export interface PlanSizes {
  readonly shapes: number
  readonly batches: number
  readonly txnsPerBatch: number
  readonly restartCount: number
}

const KINDS: ReadonlyArray<RestartKind> = ["graceful", "kill9", "admin", "rolling"]

/**
 * The seed of one draw of a run: the run's seed, what it is for and where, hashed (FNV-1a), so that no two
 * draws of one run, nor of two nearby runs, share a seed.
 */
export const seedFor = (seed: number, purpose: string, ...at: ReadonlyArray<number>): number => {
  let hash = 0x811c9dc5
  for (const ch of `${seed}/${purpose}/${at.join("/")}`) hash = Math.imul(hash ^ ch.charCodeAt(0), 0x01000193)
  return hash >>> 0
}

/** One value of `arb` for `seed`: what `FastCheck.sample` draws first. */
export const draw = <A>(arb: fc.Arbitrary<A>, seed: number): A => fc.sample(arb, { seed, numRuns: 1 })[0]!

export const planOf = (seed: number, sizes: PlanSizes, prefix: string): Plan => {
  const schema = draw(schemaArb(prefix), seedFor(seed, "schema"))
  const shapes = Array.from(
    { length: sizes.shapes },
    (_, i) => draw(shapeArb(schema, i, sizes.batches, sizes.txnsPerBatch), seedFor(seed, "shape", i))
  )
  // Two seeds in three run with logs split into chunks of at most 1 kB.
  const chunkBytes = draw(fc.constantFrom<number | undefined>(undefined, 512, 1024), seedFor(seed, "chunks"))
  const blocks = Math.ceil(sizes.restartCount / KINDS.length)
  const restarts = Array.from(
    { length: blocks },
    (_, b) => draw(fc.shuffledSubarray([...KINDS], { minLength: 4, maxLength: 4 }), seedFor(seed, "restarts", b))
  )
    .flat()
    .slice(0, sizes.restartCount)
  return { schema, shapes, chunkBytes, restarts }
}
