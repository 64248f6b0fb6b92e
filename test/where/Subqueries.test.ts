import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import type pg from "pg"
import type { Row } from "../../src/domain/Change.js"
import { InvalidWhere } from "../../src/domain/errors.js"
import type { TableInfo } from "../../src/domain/Table.js"
import { Materializer } from "../../src/shapes/Materializer.js"
import { buildShape } from "../../src/shapes/ShapeResolver.js"
import type { InSubquery } from "../../src/where/Ast.js"
import { compile, type SubqueryViews } from "../../src/where/Evaluator.js"
import { tableInfo } from "./table.js"
import { parseWhereAst, type TableName } from "../../src/where/Parser.js"
import { parseWhere, type WhereClause } from "../../src/where/WhereClause.js"
import { testPool } from "../support/syncline.js"

// `IN (SELECT …)` clauses: what the parser accepts and how it renders it, what it refuses and why, and
// whether the evaluator, answering subqueries from materialized dependency rows, agrees with Postgres
// on every three-valued corner (NULLs in the set, NULL on the left, an empty set, types compared across).

const issues = tableInfo("issues", [
  ["id", "int4"],
  ["project_id", "int4"],
  ["parent_id", "int4"],
  ["title", "text"],
  ["n", "numeric"],
  ["a", "int4", true],
  ["b", "text", true]
])
const projects = tableInfo("projects", [
  ["id", "int4"],
  ["org_id", "int4"],
  ["active", "bool"],
  ["name", "text"],
  ["x", "int4", true],
  ["y", "varchar", true]
])
const orgs = tableInfo("orgs", [["id", "int4"], ["region_id", "int4"], ["paid", "bool"]])
const regions = tableInfo("regions", [["id", "int4"], ["open", "bool"]])
const elsewhere = tableInfo("projects", [["id", "int4"]], "other")

const catalog = [issues, projects, orgs, regions, elsewhere]
const lookup = (name: TableName): TableInfo | undefined =>
  catalog.find((t) => t.name === name.name && t.schema === (name.schema ?? "public"))

const parse = (where: string, params: Record<string, string> = {}): WhereClause =>
  Either.getOrThrowWith(parseWhere(where, params, issues, lookup), (e) => new Error(`${where}: ${e.message}`))

const refusal = (where: string, params: Record<string, string> = {}): string => {
  const result = parseWhere(where, params, issues, lookup)
  if (Either.isRight(result)) throw new Error(`expected a refusal of ${where}, got ${result.right.sql}`)
  expect(result.left).toBeInstanceOf(InvalidWhere)
  return result.left.message
}

describe("subquery clauses: accepted forms", () => {
  it("renders IN (SELECT …) with the subquery's canonical SQL and makes the subquery a dependency", () => {
    const clause = parse("project_id IN (SELECT id FROM projects)")
    expect(clause.sql).toBe(`("project_id" IN (SELECT "id" FROM "public"."projects"))`)
    expect(clause.columns).toEqual(["project_id"])
    expect(clause.dependencies).toHaveLength(1)
    const [dependency] = clause.dependencies
    expect(dependency!.table).toBe(projects)
    expect(dependency!.select.map((c) => [c.name, c.type])).toEqual([["id", "int4"]])
    expect(dependency!.where).toBeUndefined()
    expect(dependency!.sql).toBe(`SELECT "id" FROM "public"."projects"`)
  })

  it("renders NOT IN as NOT of IN, with the subquery's own clause in canonical form", () => {
    const clause = parse("project_id not in (select id from projects where active and org_id > 2)")
    expect(clause.sql).toBe(
      `(NOT ("project_id" IN (SELECT "id" FROM "public"."projects" WHERE "active" AND ("org_id" > 2))))`
    )
    expect(clause.dependencies[0]!.where!.sql).toBe(`"active" AND ("org_id" > 2)`)
    expect(clause.dependencies[0]!.where!.dependencies).toEqual([])
  })

  it("nests three levels, each subquery a dependency of the one around it", () => {
    const clause = parse(
      "project_id IN (SELECT id FROM projects WHERE org_id IN " +
        "(SELECT id FROM orgs WHERE paid AND region_id IN (SELECT id FROM regions WHERE open)))"
    )
    const regionsSql = `SELECT "id" FROM "public"."regions" WHERE "open"`
    const orgsSql = `SELECT "id" FROM "public"."orgs" WHERE "paid" AND ("region_id" IN (${regionsSql}))`
    const projectsSql = `SELECT "id" FROM "public"."projects" WHERE ("org_id" IN (${orgsSql}))`
    expect(clause.sql).toBe(`("project_id" IN (${projectsSql}))`)
    const level1 = clause.dependencies
    expect(level1.map((d) => d.sql)).toEqual([projectsSql])
    const level2 = level1[0]!.where!.dependencies
    expect(level2.map((d) => [d.table.name, d.sql])).toEqual([["orgs", orgsSql]])
    const level3 = level2[0]!.where!.dependencies
    expect(level3.map((d) => [d.table.name, d.sql])).toEqual([["regions", regionsSql]])
    expect(level3[0]!.where!.dependencies).toEqual([])
  })

  it("makes one dependency of a subquery written twice, with one position per use", () => {
    const clause = parse(
      "project_id IN (SELECT id FROM projects WHERE active) OR parent_id IN (SELECT org_id FROM projects) " +
        "OR id NOT IN (SELECT id FROM projects WHERE active) OR n IN (select ID from PROJECTS where (ACTIVE))"
    )
    expect(clause.dependencies.map((d) => d.sql)).toEqual([
      `SELECT "id" FROM "public"."projects" WHERE "active"`,
      `SELECT "org_id" FROM "public"."projects"`
    ])
    expect(clause.positions.map((p) => p.node.dependency)).toEqual([0, 1, 0, 0])
    // The same dependency compared with an int4 and with a numeric column: one value set, two ways to key it.
    expect(clause.positions.map((p) => p.node.domains)).toEqual([["int4"], ["int4"], ["int4"], ["numeric"]])
    expect(clause.columns).toEqual(["project_id", "parent_id", "id", "n"])
  })

  it("substitutes $n parameters inside subqueries as typed literals", () => {
    const clause = parse(
      "project_id IN (SELECT id FROM projects WHERE org_id = $1 AND name = $2) AND title <> $2",
      { "1": "7", "2": "it's" }
    )
    expect(clause.sql).toBe(
      `("project_id" IN (SELECT "id" FROM "public"."projects" WHERE ("org_id" = 7) AND ("name" = 'it''s'))) ` +
        `AND ("title" <> 'it''s')`
    )
    // A parameter makes the same dependency as the literal it stands for.
    expect(parse("project_id IN (SELECT id FROM projects WHERE org_id = 7 AND name = 'it''s') AND title <> 'it''s'").sql)
      .toBe(clause.sql)
    expect(refusal("project_id IN (SELECT id FROM projects WHERE org_id = $1)", { "1": "seven" })).toBe(
      `invalid input syntax for type integer: "seven"`
    )
    expect(refusal("project_id IN (SELECT id FROM projects WHERE org_id = $4)", { "1": "7" })).toBe(
      "Parameter $4 has no value: params[4] is missing"
    )
  })

  it("accepts a subquery on the shape's own table", () => {
    const clause = parse("parent_id IN (SELECT id FROM issues WHERE title = 'root')")
    expect(clause.sql).toBe(`("parent_id" IN (SELECT "id" FROM "public"."issues" WHERE ("title" = 'root')))`)
    expect(clause.dependencies[0]!.table).toBe(issues)
  })

  it("accepts a row of NOT NULL columns against a subquery selecting NOT NULL columns", () => {
    const clause = parse("(a, b) IN (SELECT x, y FROM projects)")
    expect(clause.sql).toBe(`(("a", "b") IN (SELECT "x", "y" FROM "public"."projects"))`)
    expect(clause.dependencies[0]!.select.map((c) => c.name)).toEqual(["x", "y"])
    expect(clause.positions[0]!.node.args.map((c) => c.name)).toEqual(["a", "b"])
    // text against varchar compares as text.
    expect(clause.positions[0]!.node.domains).toEqual(["int4", "text"])
  })

  it("gives every spelling of one clause the same SQL", () => {
    const variants = [
      "project_id IN (SELECT id FROM projects WHERE active AND org_id = 3)",
      "PROJECT_ID in (select ID from PROJECTS where ACTIVE and ORG_ID=3)",
      "  project_id   IN(SELECT id FROM public.projects WHERE (active) AND (org_id = 3))",
      `((project_id) IN ((SELECT "id" FROM "projects" WHERE active AND (org_id = '3'))))`,
      "issues.project_id = ANY (SELECT projects.id FROM projects WHERE public.projects.active AND projects.org_id = 3)",
      "project_id IN (SELECT (id) AS project FROM projects WHERE active AND org_id = $1)"
    ]
    const sqls = new Set(variants.map((v) => parse(v, { "1": "3" }).sql))
    expect([...sqls]).toEqual([`("project_id" IN (SELECT "id" FROM "public"."projects" WHERE "active" AND ("org_id" = 3)))`])
    const negated = new Set([
      "project_id NOT IN (SELECT id FROM projects)",
      "NOT project_id IN (SELECT id FROM projects)",
      "not (project_id = any (select id from projects))"
    ].map((v) => parse(v).sql))
    expect([...negated]).toEqual([`(NOT ("project_id" IN (SELECT "id" FROM "public"."projects")))`])
  })

  it("parses its own SQL back to itself", () => {
    for (const where of [
      "project_id NOT IN (SELECT id FROM projects WHERE org_id IN (SELECT id FROM orgs WHERE paid)) OR title = 'x'",
      "(a, b) IN (SELECT x, y FROM projects WHERE name LIKE 'a%')"
    ]) {
      const sql = parse(where).sql
      expect(parse(sql).sql).toBe(sql)
    }
  })

  it("accepts subqueries nested 8 deep", () => {
    let where = "true"
    for (let i = 0; i < 8; i++) where = `id IN (SELECT id FROM issues WHERE ${where})`
    let clause: WhereClause | undefined = parse(where)
    let depth = 0
    while (clause !== undefined && clause.dependencies.length > 0) {
      depth++
      clause = clause.dependencies[0]!.where
    }
    expect(depth).toBe(8)
  })
})

describe("subquery clauses: shape identity", () => {
  const definition = (where: string) => ({
    table: { schema: "public", name: "issues" },
    where,
    columns: undefined,
    replica: "default" as const,
    log: "full" as const
  })
  const build = (where: string, params: Record<string, string> = {}) =>
    Either.getOrThrowWith(buildShape(issues, definition(where), params, lookup), (e) => new Error(e.message))

  it("holds the dependencies' definitions in the outer shape's definition", () => {
    const spec = build("project_id IN (SELECT org_id FROM projects WHERE active AND name = $1)", { "1": "p" })
    const dependencySql = `SELECT "org_id" FROM "public"."projects" WHERE "active" AND ("name" = 'p')`
    expect(spec.definition.where).toBe(`("project_id" IN (${dependencySql}))`)
    expect(spec.dependencies).toHaveLength(1)
    // The dependency is an ordinary shape: its table, its clause, the selected columns plus the primary key.
    expect(spec.dependencies[0]!.definition).toEqual({
      table: { schema: "public", name: "projects" },
      where: `"active" AND ("name" = 'p')`,
      columns: ["id", "org_id"],
      replica: "full",
      log: "full"
    })
    expect(spec.dependencies[0]!.dependencies).toEqual([])
  })

  it("differs when only a dependency's clause differs", () => {
    const a = build("project_id IN (SELECT id FROM projects WHERE org_id = 1)")
    const b = build("project_id IN (SELECT id FROM projects WHERE org_id = 2)")
    expect(a.definition.where).not.toBe(b.definition.where)
    expect(a.dependencies[0]!.definition.where).not.toBe(b.dependencies[0]!.definition.where)
  })

  it("builds nested dependencies as dependencies of dependencies", () => {
    const spec = build("project_id IN (SELECT id FROM projects WHERE org_id IN (SELECT id FROM orgs WHERE paid))")
    expect(spec.dependencies.map((d) => d.definition.table.name)).toEqual(["projects"])
    expect(spec.dependencies[0]!.dependencies.map((d) => d.definition)).toEqual([
      { table: { schema: "public", name: "orgs" }, where: `"paid"`, columns: ["id"], replica: "full", log: "full" }
    ])
  })
})

describe("subquery clauses: positions and routing", () => {
  it("marks a position null-sensitive under NOT and IS tests, not under AND or OR", () => {
    const sensitivity = (where: string) => parse(where).positions.map((p) => p.nullSensitive)
    expect(sensitivity("project_id IN (SELECT id FROM projects) AND title = 'x'")).toEqual([false])
    expect(sensitivity("project_id IN (SELECT id FROM projects) OR id IN (SELECT org_id FROM projects)")).toEqual([false, false])
    expect(sensitivity("project_id NOT IN (SELECT id FROM projects)")).toEqual([true])
    expect(sensitivity("(project_id IN (SELECT id FROM projects)) IS NOT TRUE")).toEqual([true])
    expect(sensitivity("(project_id IN (SELECT id FROM projects)) IS NULL")).toEqual([true])
    expect(sensitivity("title = 'x' OR NOT (id = 1 AND project_id IN (SELECT id FROM projects))")).toEqual([true])
  })

  it("lets routing send every row to a clause with subqueries and keeps its equalities", () => {
    const clause = parse("id = 3 AND project_id IN (SELECT id FROM projects)")
    expect(clause.matches({ id: "4", project_id: "1" })).toBe(true)
    expect(clause.equalities).toEqual([{ column: "id", value: "3" }])
  })

  it("finds no table for a subquery when no table lookup is given", () => {
    const result = parseWhere("project_id IN (SELECT id FROM projects)", {}, issues)
    expect(Either.isLeft(result) && result.left.message).toBe(`Unknown table "projects" in subquery`)
  })
})

describe("subquery clauses: refused forms name the construct", () => {
  it.each([
    ["EXISTS (SELECT id FROM projects)", "EXISTS (SELECT …)"],
    ["project_id = ALL (SELECT id FROM projects)", "ALL (SELECT …)"],
    ["project_id > ANY (SELECT id FROM projects)", "> ANY (SELECT …)"],
    ["project_id <> ANY (SELECT id FROM projects)", "<> ANY (SELECT …)"],
    ["project_id = (SELECT id FROM projects)", "a subquery used as a value"],
    ["project_id IN (SELECT projects.id FROM projects, orgs)", "exactly one table"],
    ["project_id IN (SELECT projects.id FROM projects JOIN orgs ON true)", "exactly one table"],
    ["project_id IN (SELECT id FROM (SELECT id FROM projects) s)", "exactly one table"],
    ["project_id IN (SELECT 1)", "exactly one table"],
    ["project_id IN (SELECT p.id FROM projects p)", "table alias"],
    ["project_id IN (SELECT p.id FROM projects AS p)", "table alias"],
    ["project_id IN (SELECT id FROM projects UNION SELECT id FROM orgs)", "SELECT columns FROM one table"],
    ["project_id IN (WITH w AS (SELECT 1) SELECT id FROM projects)", "SELECT columns FROM one table"],
    ["project_id IN (SELECT * FROM projects)", "*"],
    ["project_id IN (SELECT id + 1 FROM projects)", "plain columns"],
    ["project_id IN (SELECT id::int4 FROM projects)", "plain columns"],
    ["project_id IN (SELECT id, org_id FROM projects)", "too many columns"],
    ["(a, project_id) IN (SELECT id FROM projects)", "too few columns"],
    ["project_id + 1 IN (SELECT id FROM projects)", "left side of IN (SELECT …)"],
    ["project_id IN (SELECT id FROM nope)", `Unknown table "nope"`],
    ["project_id IN (SELECT id FROM other.nope)", `Unknown table "other.nope"`],
    ["project_id IN (SELECT name FROM projects)", "operator does not exist: integer = text"],
    ["project_id IN (SELECT active FROM projects)", "operator does not exist: integer = boolean"],
    [
      "(a, project_id) IN (SELECT x, org_id FROM projects)",
      `over nullable columns ("project_id", "projects"."org_id")`
    ],
    ["(a, b) IN (SELECT x, name FROM projects)", `over nullable columns ("projects"."name")`]
  ])("%s", (where, construct) => {
    expect(refusal(where)).toContain(construct)
  })

  it.each([
    ["GROUP BY", "project_id IN (SELECT id FROM projects GROUP BY id)", /group/i],
    ["HAVING", "project_id IN (SELECT id FROM projects HAVING true)", /having/i],
    ["LIMIT", "project_id IN (SELECT id FROM projects LIMIT 1)", /limit/i],
    ["OFFSET", "project_id IN (SELECT id FROM projects OFFSET 1)", /offset/i],
    ["DISTINCT", "project_id IN (SELECT DISTINCT id FROM projects)", /distinct/i],
    ["ORDER BY", "project_id IN (SELECT id FROM projects ORDER BY id)", /order|sort/i],
    ["FOR UPDATE", "project_id IN (SELECT id FROM projects FOR UPDATE)", /lock|for update/i]
  ])("%s in a subquery", (_, where, construct) => {
    const message = refusal(where)
    expect(message).toContain("SELECT columns FROM one table")
    expect(message).toMatch(construct)
  })

  it("refuses ONLY, which would change which rows the subquery reads", () => {
    expect(refusal("project_id IN (SELECT id FROM ONLY projects)")).toContain("ONLY")
  })

  it("refuses a correlated reference to the outer table, naming it", () => {
    expect(refusal("project_id IN (SELECT id FROM projects WHERE org_id = issues.parent_id)")).toBe(
      `Unknown reference "issues.parent_id"`
    )
    // Postgres would read an unqualified outer column as a correlated reference; it is refused as unknown.
    expect(refusal("project_id IN (SELECT id FROM projects WHERE title = 'x')")).toBe(`Unknown reference "title"`)
  })

  it("refuses subqueries nested deeper than 8", () => {
    let where = "true"
    for (let i = 0; i < 9; i++) where = `id IN (SELECT id FROM issues WHERE ${where})`
    expect(refusal(where)).toBe("Unsupported expression: subqueries nested more than 8 deep")
  })
})

// ---------------------------------------------------------------------------------------------------
// Three-valued semantics against Postgres.

const SQO: ReadonlyArray<readonly [string, string, string]> = [
  ["id", "int4", "int4 PRIMARY KEY"],
  ["i2", "int2", "int2"],
  ["i", "int4", "int4"],
  ["i8", "int8", "int8"],
  ["n", "numeric", "numeric"],
  ["f4", "float4", "float4"],
  ["f8", "float8", "float8"],
  ["t", "text", `text COLLATE "C"`],
  ["vc", "varchar", `varchar(10) COLLATE "C"`],
  ["c", "bpchar", `char(4) COLLATE "C"`],
  ["u", "uuid", "uuid"]
]
const SQI = [SQO[0]!, ["g", "int4", "int4"] as const, ...SQO.slice(1)]

const U1 = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
const U2 = "123e4567-e89b-12d3-a456-426614174000"
const U3 = "00000000-0000-0000-0000-000000000001"
const U4 = "ffffffff-ffff-ffff-ffff-ffffffffffff"

// Columns after `id`: i2, i, i8, n, f4, f8, t, vc, c, u.
const OUTER_ROWS: ReadonlyArray<ReadonlyArray<string | null>> = [
  ["1", "1", "1", "1", "1.00", "1", "1", "a", "a", "a", U1.toUpperCase()],
  ["2", "2", "2", "2", "2.5", "2.5", "2.5", "b", "b ", "b", U2],
  ["3", "3", "3", "3", "3", "0.1", "0.1", "b ", "b  ", "b ", U3],
  ["4", "9", "9", "9", "9.9", "9", "9", "z", "z", "z", U4],
  ["5", null, null, null, null, null, null, null, null, null, null],
  ["6", "1", "1", "1", "1.000000", "0.1", "0.1", "a ", "a ", "a  ", `{${U1}}`]
]
// Columns after `id`: g, then as the outer table. Group 0 has no rows; 1 no NULL; 2 a NULL;
// 3 only NULLs; 4 one value, held by two rows.
const INNER_ROWS: ReadonlyArray<ReadonlyArray<string | null>> = [
  ["1", "1", "1", "1", "1", "1.0", "0.1", "1", "a", "a", "a", U1],
  ["2", "1", "2", "2", "2", "2.50", "2.5", "0.1", "b ", "b ", "b ", U2.toUpperCase()],
  ["3", "2", "1", "1", "1", "1", "1", "1", "a", "a ", "a  ", U1],
  ["4", "2", null, null, null, null, null, null, null, null, null, null],
  ["5", "3", null, null, null, null, null, null, null, null, null, null],
  ["6", "3", null, null, null, null, null, null, null, null, null, null],
  ["7", "4", "3", "3", "3", "3.000", "3", "3", "c", "c", "c", U3],
  ["8", "4", "3", "3", "3", "3", "3", "3", "c", "c ", "c ", U3]
]
const GROUPS = [0, 1, 2, 3, 4]

/** Outer column against inner column: every way the two sides' types meet. */
const PAIRS: ReadonlyArray<readonly [string, string]> = [
  ["i", "i"],
  ["i2", "i"],
  ["i", "i8"],
  ["i8", "n"],
  ["n", "i"],
  ["n", "n"],
  ["f8", "n"],
  ["f4", "f8"],
  ["f8", "f4"],
  ["n", "f4"],
  ["t", "t"],
  ["t", "vc"],
  ["vc", "t"],
  ["vc", "vc"],
  ["c", "c"],
  ["c", "t"],
  ["t", "c"],
  ["c", "vc"],
  ["vc", "c"],
  ["u", "u"]
]

const TEMPLATES: ReadonlyArray<(x: string, s: string, other: string) => string> = [
  (x, s) => `${x} IN ${s}`,
  (x, s) => `${x} NOT IN ${s}`,
  (x, s) => `NOT (${x} IN ${s})`,
  (x, s) => `(${x} IN ${s}) IS NOT TRUE`,
  (x, s) => `(${x} IN ${s}) IS FALSE`,
  (x, s) => `(${x} NOT IN ${s}) IS UNKNOWN`,
  (x, s) => `(${x} IN ${s}) IS NULL`,
  (x, s) => `${x} IN ${s} OR id = 5`,
  (x, s) => `${x} NOT IN ${s} OR id > 3`,
  (x, s) => `${x} NOT IN ${s} AND id <> 2`,
  (x, s, other) => `${x} IN ${s} OR ${x} NOT IN ${other}`,
  (x, s, other) => `NOT (${x} IN ${s} AND ${x} NOT IN ${other})`
]

const SQO_TABLE = tableInfo("sqo", SQO.map(([name, type]) => [name, type] as const), "pg_temp")
const SQI_TABLE = tableInfo("sqi", SQI.map(([name, type]) => [name, type] as const), "pg_temp")
const SQM_OUTER = tableInfo("sqmo", [["id", "int4"], ["a", "numeric", true], ["b", "varchar", true]], "pg_temp")
const SQM_INNER = tableInfo("sqmi", [["id", "int4"], ["g", "int4", true], ["a", "int4", true], ["b", "text", true]], "pg_temp")
const tempTables = [SQO_TABLE, SQI_TABLE, SQM_OUTER, SQM_INNER]
const tempLookup = (name: TableName): TableInfo | undefined =>
  name.schema === undefined || name.schema === "pg_temp" ? tempTables.find((t) => t.name === name.name) : undefined

/**
 * Evaluates a clause with `compile`, its subqueries answered by one materializer per dependency holding the
 * inner rows its own clause selects; checks `bind` agrees with it.
 */
const evaluate = (
  where: string,
  params: Record<string, string>,
  table: TableInfo,
  outer: ReadonlyArray<Row>,
  inner: ReadonlyArray<Row>
): Array<boolean | null> => {
  const parsed = parseWhereAst(where, { table, params, tables: tempLookup })
  const materializers = parsed.dependencies.map((dependency, d) => {
    const selects = dependency.where === undefined ? () => true : compile(dependency.where.expr)
    const m = new Materializer(`dependency-${d}`)
    const operations = inner
      .filter((r) => selects(r) === true)
      .map((r) => ({ operation: "insert" as const, key: r["id"]!, value: r as Record<string, string | null>, op: 0 }))
    m.load(operations.length === 0 ? [] : [{ lsn: 0n, operations }], 0n)
    return m
  })
  const indexOf = (node: InSubquery) => {
    const dependency = parsed.dependencies[node.dependency]!
    return materializers[node.dependency]!.index({
      columns: dependency.select.map((c) => c.name),
      types: dependency.select.map((c) => c.type),
      domains: node.domains
    })
  }
  const views: SubqueryViews = {
    has: (node, key) => indexOf(node).has(key, 0n),
    hasNull: (node) => indexOf(node).hasNull(0n),
    isEmpty: (node) => indexOf(node).isEmpty(0n)
  }
  const predicate = compile(parsed.expr, views)
  const results = outer.map((row) => predicate(row))
  const clause = Either.getOrThrow(parseWhere(where, params, table, tempLookup))
  const matches = clause.bind(views)
  expect(outer.map((row) => matches(row)), `bind of ${where}`).toEqual(results.map((r) => r === true))
  return results
}

describe("subquery clauses: three-valued semantics against Postgres", () => {
  let pool: pg.Pool
  let client: pg.PoolClient
  let outerRows: ReadonlyArray<Row>
  let innerRows: ReadonlyArray<Row>

  /** Rows as pgoutput carries them: every value in its type's output text. */
  const textRows = async (sql: string): Promise<Array<Row>> =>
    (await client.query({ text: sql, types: { getTypeParser: () => (value: string) => value } })).rows as Array<Row>

  /** Each clause's value per row of `table`, ordered by id, as Postgres computes it. */
  const postgresResults = async (table: string, clauses: ReadonlyArray<string>): Promise<Array<Array<boolean | null>>> => {
    const columns = clauses.map((c, i) => `(${c}) AS r${i}`).join(", ")
    const { rows } = await client.query(`SELECT ${columns} FROM ${table} ORDER BY id`)
    return clauses.map((_, i) => rows.map((r) => r[`r${i}`] as boolean | null))
  }

  beforeAll(async () => {
    pool = testPool()
    client = await pool.connect()
    const literal = (v: string | null) => (v === null ? "NULL" : `'${v.replace(/'/g, "''")}'`)
    await client.query(`CREATE TEMP TABLE sqo (${SQO.map(([n, , ddl]) => `${n} ${ddl}`).join(", ")})`)
    await client.query(`CREATE TEMP TABLE sqi (${SQI.map(([n, , ddl]) => `${n} ${ddl}`).join(", ")})`)
    await client.query(`INSERT INTO sqo VALUES ${OUTER_ROWS.map((r) => `(${r.map(literal).join(", ")})`).join(", ")}`)
    await client.query(`INSERT INTO sqi VALUES ${INNER_ROWS.map((r) => `(${r.map(literal).join(", ")})`).join(", ")}`)
    await client.query(`CREATE TEMP TABLE sqmo (id int4 PRIMARY KEY, a numeric NOT NULL, b varchar(5) NOT NULL)`)
    await client.query(`CREATE TEMP TABLE sqmi (id int4 PRIMARY KEY, g int4 NOT NULL, a int4 NOT NULL, b text NOT NULL)`)
    await client.query(`INSERT INTO sqmo VALUES (1, 1.0, 'a'), (2, 1, 'b'), (3, 2.5, 'a'), (4, 2, 'a ')`)
    await client.query(`INSERT INTO sqmi VALUES (1, 1, 1, 'a'), (2, 1, 2, 'a'), (3, 2, 1, 'b'), (4, 2, 2, 'a ')`)
    outerRows = await textRows("SELECT * FROM sqo ORDER BY id")
    innerRows = await textRows("SELECT * FROM sqi ORDER BY id")
  })

  afterAll(async () => {
    client?.release()
    await pool?.end()
  })

  it("reads the rows as text as pgoutput does (uuid in lower case, character(n) padded)", () => {
    expect(outerRows[0]!["u"]).toBe(U1)
    expect(outerRows[5]!["u"]).toBe(U1)
    expect(innerRows[1]!["u"]).toBe(U2)
    expect(outerRows[0]!["c"]).toBe("a   ")
    expect(outerRows[0]!["n"]).toBe("1.00")
  })

  it.each(PAIRS)("%s IN (SELECT %s …) agrees with Postgres for every set, NULL and combination", async (x, y) => {
    const subquery = (g: number) => `(SELECT ${y} FROM sqi WHERE g = ${g})`
    const clauses = GROUPS.flatMap((g) =>
      TEMPLATES.map((template) => template(x, subquery(g), subquery((g + 2) % GROUPS.length)))
    )
    const canonical = clauses.map((c) => Either.getOrThrow(parseWhere(c, {}, SQO_TABLE, tempLookup)).sql)
    const expected = await postgresResults("sqo", clauses)
    // The data gives every clause form each of the three answers somewhere.
    for (const want of [true, false, null]) expect(expected.flat()).toContain(want)
    // The canonical SQL means to Postgres what the clause means.
    expect(await postgresResults("sqo", canonical)).toEqual(expected)
    clauses.forEach((clause, i) => {
      expect(evaluate(clause, {}, SQO_TABLE, outerRows, innerRows), clause).toEqual(expected[i])
    })
  })

  it("agrees on uuid constants and parameters in any case inside the subquery", async () => {
    const clauses = [
      `u IN (SELECT u FROM sqi WHERE u <> '${U1.toUpperCase()}')`,
      `u NOT IN (SELECT u FROM sqi WHERE u = '{${U2.toUpperCase()}}' OR u IS NULL)`,
      `u IN (SELECT u FROM sqi WHERE u = $1)`
    ]
    const params = { "1": U3.toUpperCase() }
    const expected = [
      ...(await postgresResults("sqo", clauses.slice(0, 2))),
      ...(await postgresResults("sqo", [clauses[2]!.replace("$1", `'${params["1"]}'`)]))
    ]
    clauses.forEach((clause, i) => {
      expect(evaluate(clause, params, SQO_TABLE, outerRows, innerRows), clause).toEqual(expected[i])
    })
    expect(Either.getOrThrow(parseWhere(clauses[2]!, params, SQO_TABLE, tempLookup)).sql).toContain(`'${U3}'::uuid`)
  })

  it("agrees on rows of values compared across types (numeric with int, varchar with text)", async () => {
    const outer = await textRows("SELECT * FROM sqmo ORDER BY id")
    const inner = await textRows("SELECT * FROM sqmi ORDER BY id")
    const clauses = [0, 1, 2, 3].flatMap((g) => [
      `(a, b) IN (SELECT a, b FROM sqmi WHERE g = ${g})`,
      `(a, b) NOT IN (SELECT a, b FROM sqmi WHERE g = ${g})`,
      `(b, a) IN (SELECT b, a FROM sqmi WHERE g = ${g}) OR id = 4`,
      `NOT ((a, b) IN (SELECT a, b FROM sqmi WHERE g = ${g}) AND (a, b) NOT IN (SELECT a, b FROM sqmi WHERE g = ${(g + 1) % 4}))`
    ])
    const expected = await postgresResults("sqmo", clauses)
    expect(expected.flat().some((r) => r === true)).toBe(true)
    expect(expected.flat().some((r) => r === false)).toBe(true)
    clauses.forEach((clause, i) => {
      expect(evaluate(clause, {}, SQM_OUTER, outer, inner), clause).toEqual(expected[i])
    })
  })
})
