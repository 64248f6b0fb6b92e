import pg from "pg"
import { afterAll, beforeAll, describe, expect, inject, it, onTestFailed } from "vitest"
import { envInt, OracleClient, prng, sleep } from "./support/oracle.js"
import { freePort, serviceEnv, spawnSyncline, stopAllChildren } from "./support/process.js"
import { type Instance, restartService, waitStatus } from "./support/restarts.js"
import {
  difference,
  NO_DIFFERENCE,
  postgresRows,
  postgresTextRows,
  type ServerRef,
  sameRows,
  StrictFollower,
  type SubqueryShape,
  textByValue
} from "./support/subqueryOracle.js"
import { dropReplication, tempDir, testPool } from "./support/syncline.js"

/**
 * The subquery oracle: shapes whose `where` reads other tables through `IN (SELECT …)` — nested
 * four levels deep, `NOT IN` over a nullable column, OR and NOT around subqueries, a table
 * reading itself, a row of columns, a `$n` inside a subquery — followed by the official client
 * and by strict raw-HTTP clients while seeded random transactions move values at every level,
 * across graceful, kill -9, in-process and rolling restarts, and a kill -9 while a move-in
 * query waits on a lock. After every batch each shape must equal its query on Postgres, with
 * the handle it had from the start, and no client may ever see a 409, a non-503 5xx, an insert
 * of a key it holds or an update/delete of a key it does not.
 *
 * Sizes come from SUBQUERY_ORACLE_TRANSACTIONS, SUBQUERY_ORACLE_BATCH and
 * SUBQUERY_ORACLE_RESTARTS_PER_KIND; SUBQUERY_ORACLE_SEED picks another seed (the seed of a run is
 * printed, so a failing run can be replayed).
 */


const STREAM = "subquery_oracle"
const LONG_POLL_MS = 1_000
const SEED = envInt("SUBQUERY_ORACLE_SEED", 1443586329)
const TRANSACTIONS = envInt("SUBQUERY_ORACLE_TRANSACTIONS", 320)
const BATCH = envInt("SUBQUERY_ORACLE_BATCH", 20)
const RESTARTS_PER_KIND = envInt("SUBQUERY_ORACLE_RESTARTS_PER_KIND", 2)
const CONVERGE_MS = 30_000

const TABLES = {
  regions: { name: "sqo_regions", columns: ["id", "open"], booleans: ["open"] },
  orgs: { name: "sqo_orgs", columns: ["id", "region_id", "paid", "tier"], booleans: ["paid"] },
  projects: { name: "sqo_projects", columns: ["id", "org_id", "active", "archived", "code"], booleans: ["active", "archived"] },
  issues: { name: "sqo_issues", columns: ["id", "project_id", "a", "b", "n", "note"], booleans: [] },
  items: { name: "sqo_items", columns: ["id", "parent_id", "flagged", "n"], booleans: ["flagged"] },
  pairs: { name: "sqo_pairs", columns: ["id", "x", "y", "enabled"], booleans: ["enabled"] }
} as const
type TableName = keyof typeof TABLES
const TABLE_NAMES = Object.keys(TABLES) as Array<TableName>

const DDL = [
  `CREATE TABLE sqo_regions (id int PRIMARY KEY, open bool NOT NULL)`,
  `CREATE TABLE sqo_orgs (id int PRIMARY KEY, region_id int, paid bool NOT NULL, tier int NOT NULL)`,
  `CREATE TABLE sqo_projects (id int PRIMARY KEY, org_id int, active bool NOT NULL, archived bool NOT NULL, code int)`,
  `CREATE TABLE sqo_issues (id int PRIMARY KEY, project_id int, a int NOT NULL, b int NOT NULL, n int NOT NULL, note text)`,
  `CREATE TABLE sqo_items (id int PRIMARY KEY, parent_id int, flagged bool NOT NULL, n int NOT NULL)`,
  `CREATE TABLE sqo_pairs (id int PRIMARY KEY, x int NOT NULL, y int NOT NULL, enabled bool NOT NULL)`
]

const INITIAL: Record<TableName, number> = { regions: 3, orgs: 8, projects: 20, issues: 150, items: 60, pairs: 10 }

const shape = (label: string, table: TableName, where: string, params?: ReadonlyArray<string>): SubqueryShape => ({
  label,
  table: TABLES[table].name,
  where,
  columns: TABLES[table].columns,
  booleans: TABLES[table].booleans,
  ...(params === undefined ? {} : { params })
})

const SHAPES: ReadonlyArray<SubqueryShape> = [
  shape(
    "nested-3",
    "issues",
    "project_id IN (SELECT id FROM sqo_projects WHERE active AND org_id IN (SELECT id FROM sqo_orgs WHERE paid))"
  ),
  shape(
    "nested-4",
    "issues",
    "project_id IN (SELECT id FROM sqo_projects WHERE active AND org_id IN " +
      "(SELECT id FROM sqo_orgs WHERE paid AND region_id IN (SELECT id FROM sqo_regions WHERE open)))"
  ),
  // `code` is nullable: one NULL among archived projects' codes puts every issue out.
  shape("not-in-nullable", "issues", "project_id NOT IN (SELECT code FROM sqo_projects WHERE archived)"),
  shape("or-not", "issues", "note LIKE 'a%' OR NOT (project_id IN (SELECT id FROM sqo_projects WHERE active))"),
  shape(
    "or-and-not-in",
    "issues",
    "(a = 1 OR project_id IN (SELECT id FROM sqo_projects WHERE archived)) AND b NOT IN (SELECT y FROM sqo_pairs WHERE enabled)"
  ),
  shape(
    "param-nested",
    "issues",
    "project_id IN (SELECT id FROM sqo_projects WHERE org_id IN (SELECT id FROM sqo_orgs WHERE tier >= $1))",
    ["2"]
  ),
  shape("param-projects", "projects", "org_id IN (SELECT id FROM sqo_orgs WHERE tier = $1 AND paid) OR archived", ["1"]),
  shape("same-table", "items", "parent_id IN (SELECT id FROM sqo_items WHERE flagged)"),
  shape("row-in", "issues", "(a, b) IN (SELECT x, y FROM sqo_pairs WHERE enabled)")
]

type Kind = "graceful" | "kill9" | "admin" | "rolling"

let pool: pg.Pool
let writer: pg.Client
let storageDir: string
let current: Instance
let server: ServerRef = { url: "", generation: 0 }
const instances: Array<Instance> = []
const followers: Array<StrictFollower> = []
const raws: Array<OracleClient> = []
const rawFailures: Array<string> = []
const handles = new Map<string, string>()
const journal: Array<string> = []

/** What the writer knows of the tables: which ids exist, and the next fresh id of each. */
const ids = new Map<TableName, Set<number>>(TABLE_NAMES.map((t) => [t, new Set<number>()]))
const nextId = new Map<TableName, number>(TABLE_NAMES.map((t) => [t, 1]))

const clientFailures = (): Array<string> => [...rawFailures, ...followers.flatMap((f) => f.failures)]

const printDiagnostics = () => {
  console.error(`subquery oracle seed: ${SEED} (replay with SUBQUERY_ORACLE_SEED=${SEED})`)
  console.error(`last transactions:\n${journal.slice(-40).join("\n")}`)
  for (const i of instances.slice(-2)) console.error(`service ${i.baseUrl} output (tail):\n${i.child.output().slice(-8_000)}`)
}

// Values ---------------------------------------------------------------------------------------

type Rand = () => number

const int = (rand: Rand, n: number) => Math.floor(rand() * n)

const pick = (rand: Rand, table: TableName): number | undefined => {
  const all = [...ids.get(table)!].sort((a, b) => a - b)
  return all.length === 0 ? undefined : all[int(rand, all.length)]
}

/** A reference to a row of `table`: mostly one that exists, sometimes NULL, sometimes one that does not. */
const ref = (rand: Rand, table: TableName): number | null => {
  const dice = rand()
  if (dice < 0.12) return null
  if (dice < 0.17) return 900 + int(rand, 5)
  return pick(rand, table) ?? null
}

const note = (rand: Rand): string | null =>
  rand() < 0.2 ? null : Array.from({ length: 1 + int(rand, 3) }, () => "abc"[int(rand, 3)]).join("")

const code = (rand: Rand): number | null => (rand() < 0.1 ? null : 1 + int(rand, 30))

const randomRow = (rand: Rand, table: TableName, id: number): Record<string, unknown> => {
  switch (table) {
    case "regions": return { id, open: rand() < 0.6 }
    case "orgs": return { id, region_id: ref(rand, "regions"), paid: rand() < 0.5, tier: int(rand, 4) }
    case "projects":
      return { id, org_id: ref(rand, "orgs"), active: rand() < 0.5, archived: rand() < 0.2, code: code(rand) }
    case "issues":
      return { id, project_id: ref(rand, "projects"), a: int(rand, 4), b: int(rand, 4), n: 0, note: note(rand) }
    case "items": return { id, parent_id: ref(rand, "items"), flagged: rand() < 0.4, n: 0 }
    case "pairs": return { id, x: int(rand, 4), y: int(rand, 4), enabled: rand() < 0.6 }
  }
}

const insertRow = async (c: pg.ClientBase, table: TableName, row: Record<string, unknown>): Promise<void> => {
  const columns = TABLES[table].columns
  await c.query(
    `INSERT INTO ${TABLES[table].name} (${columns.join(", ")}) VALUES (${columns.map((_, i) => `$${i + 1}`).join(", ")})`,
    columns.map((col) => row[col])
  )
  ids.get(table)!.add(row["id"] as number)
}

// Transactions ---------------------------------------------------------------------------------

const FLAGS: ReadonlyArray<readonly [TableName, string]> = [
  ["regions", "open"],
  ["orgs", "paid"],
  ["projects", "active"],
  ["projects", "archived"],
  ["items", "flagged"],
  ["pairs", "enabled"]
]

/** One statement (or a few on one row) of a random transaction; returns what it did, for the journal. */
const randomStatement = async (c: pg.ClientBase, rand: Rand): Promise<string | undefined> => {
  const dice = rand()
  if (dice < 0.3) {
    const [table, column] = FLAGS[int(rand, FLAGS.length)]!
    const id = pick(rand, table)
    if (id === undefined) return undefined
    await c.query(`UPDATE ${TABLES[table].name} SET ${column} = NOT ${column} WHERE id = $1`, [id])
    return `toggle ${table}.${column} of ${id}`
  }
  if (dice < 0.55) {
    switch (int(rand, 7)) {
      case 0: {
        const id = pick(rand, "orgs")
        if (id === undefined) return undefined
        const region = ref(rand, "regions")
        await c.query(`UPDATE sqo_orgs SET region_id = $2 WHERE id = $1`, [id, region])
        return `org ${id} to region ${region}`
      }
      case 1: {
        const id = pick(rand, "projects")
        if (id === undefined) return undefined
        const org = ref(rand, "orgs")
        await c.query(`UPDATE sqo_projects SET org_id = $2 WHERE id = $1`, [id, org])
        return `project ${id} to org ${org}`
      }
      case 2: {
        const id = pick(rand, "issues")
        if (id === undefined) return undefined
        const project = ref(rand, "projects")
        await c.query(`UPDATE sqo_issues SET project_id = $2, n = n + 1 WHERE id = $1`, [id, project])
        return `issue ${id} to project ${project}`
      }
      case 3: {
        const id = pick(rand, "items")
        if (id === undefined) return undefined
        const parent = ref(rand, "items")
        await c.query(`UPDATE sqo_items SET parent_id = $2, n = n + 1 WHERE id = $1`, [id, parent])
        return `item ${id} to parent ${parent}`
      }
      case 4: {
        const id = pick(rand, "issues")
        if (id === undefined) return undefined
        const [a, b] = [int(rand, 4), int(rand, 4)]
        await c.query(`UPDATE sqo_issues SET a = $2, b = $3 WHERE id = $1`, [id, a, b])
        return `issue ${id} to (${a}, ${b})`
      }
      case 5: {
        const id = pick(rand, "pairs")
        if (id === undefined) return undefined
        const [x, y] = [int(rand, 4), int(rand, 4)]
        await c.query(`UPDATE sqo_pairs SET x = $2, y = $3 WHERE id = $1`, [id, x, y])
        return `pair ${id} to (${x}, ${y})`
      }
      default: {
        const id = pick(rand, rand() < 0.5 ? "projects" : "orgs")
        if (id === undefined) return undefined
        if (rand() < 0.5) {
          const value = code(rand)
          await c.query(`UPDATE sqo_projects SET code = $2 WHERE id = $1`, [id, value])
          return `project ${id} code ${value}`
        }
        const tier = int(rand, 4)
        await c.query(`UPDATE sqo_orgs SET tier = $2 WHERE id = $1`, [id, tier])
        return `org ${id} tier ${tier}`
      }
    }
  }
  if (dice < 0.68) {
    const table = TABLE_NAMES[int(rand, TABLE_NAMES.length)]!
    const id = nextId.get(table)!
    nextId.set(table, id + 1)
    const row = randomRow(rand, table, id)
    await insertRow(c, table, row)
    return `insert ${table} ${JSON.stringify(row)}`
  }
  if (dice < 0.79) {
    const table = TABLE_NAMES[int(rand, TABLE_NAMES.length)]!
    // Keep the small tables from running dry.
    if (ids.get(table)!.size <= INITIAL[table] / 2) return undefined
    const id = pick(rand, table)
    if (id === undefined) return undefined
    await c.query(`DELETE FROM ${TABLES[table].name} WHERE id = $1`, [id])
    ids.get(table)!.delete(id)
    return `delete ${table} ${id}`
  }
  if (dice < 0.85) {
    // A primary-key change: for items it also moves the value other items' parent_id point at.
    const table = rand() < 0.5 ? "issues" : "items"
    const id = pick(rand, table)
    if (id === undefined) return undefined
    const fresh = nextId.get(table)!
    nextId.set(table, fresh + 1)
    await c.query(`UPDATE ${TABLES[table].name} SET id = $2, n = n + 1 WHERE id = $1`, [id, fresh])
    ids.get(table)!.delete(id)
    ids.get(table)!.add(fresh)
    return `${table} ${id} renamed ${fresh}`
  }
  const id = pick(rand, "issues")
  if (id === undefined) return undefined
  const text = note(rand)
  await c.query(`UPDATE sqo_issues SET note = $2, n = n + 1 WHERE id = $1`, [id, text])
  return `issue ${id} note ${text}`
}

/** A project's flag and some of its issues in one transaction: the move and the rows it moves change together. */
const projectAndIssues = async (c: pg.ClientBase, rand: Rand): Promise<Array<string>> => {
  const { rows } = await c.query<{ id: number }>(
    `SELECT p.id FROM sqo_projects p WHERE EXISTS (SELECT 1 FROM sqo_issues i WHERE i.project_id = p.id) ORDER BY p.id`
  )
  if (rows.length === 0) return []
  const project = rows[int(rand, rows.length)]!.id
  const done: Array<string> = []
  const column = rand() < 0.7 ? "active" : "archived"
  const first = rand() < 0.5
  const toggle = async () => {
    await c.query(`UPDATE sqo_projects SET ${column} = NOT ${column} WHERE id = $1`, [project])
    done.push(`toggle projects.${column} of ${project}`)
  }
  if (first) await toggle()
  const { rows: issues } = await c.query<{ id: number }>(`SELECT id FROM sqo_issues WHERE project_id = $1 ORDER BY id`, [project])
  for (const { id } of issues.filter(() => rand() < 0.5).slice(0, 4)) {
    const dice = rand()
    if (dice < 0.4) {
      await c.query(`UPDATE sqo_issues SET n = n + 1, note = $2 WHERE id = $1`, [id, note(rand)])
      done.push(`issue ${id} touched`)
    } else if (dice < 0.7) {
      const other = ref(rand, "projects")
      await c.query(`UPDATE sqo_issues SET project_id = $2, n = n + 1 WHERE id = $1`, [id, other])
      done.push(`issue ${id} to project ${other}`)
    } else if (dice < 0.85) {
      await c.query(`DELETE FROM sqo_issues WHERE id = $1`, [id])
      ids.get("issues")!.delete(id)
      done.push(`delete issues ${id}`)
    } else {
      const fresh = nextId.get("issues")!
      nextId.set("issues", fresh + 1)
      await c.query(`UPDATE sqo_issues SET id = $2, n = n + 1 WHERE id = $1`, [id, fresh])
      ids.get("issues")!.delete(id)
      ids.get("issues")!.add(fresh)
      done.push(`issues ${id} renamed ${fresh}`)
    }
  }
  if (rand() < 0.5) {
    const id = nextId.get("issues")!
    nextId.set("issues", id + 1)
    const row = { ...randomRow(rand, "issues", id), project_id: project }
    await insertRow(c, "issues", row)
    done.push(`insert issues ${JSON.stringify(row)}`)
  }
  if (!first) await toggle()
  return done
}

/** Commits one random transaction: several moves at once, or a project with its issues, and writes it to the journal. */
const randomTransaction = async (rand: Rand, index: number): Promise<void> => {
  const done: Array<string> = []
  await writer.query("BEGIN")
  try {
    if (rand() < 0.15) done.push(...(await projectAndIssues(writer, rand)))
    const count = 1 + int(rand, 4)
    for (let i = 0; i < count; i++) {
      const step = await randomStatement(writer, rand)
      if (step !== undefined) done.push(step)
    }
    await writer.query("COMMIT")
  } catch (error) {
    await writer.query("ROLLBACK").catch(() => undefined)
    throw error
  }
  journal.push(`txn ${index}: ${done.join("; ")}`)
}

// Servers --------------------------------------------------------------------------------------

const spawnInstance = async (): Promise<Instance> => {
  const port = await freePort()
  const child = spawnSyncline({
    env: serviceEnv({
      databaseUrl: inject("databaseUrl"),
      port,
      storageDir,
      streamId: STREAM,
      extra: { ELECTRIC_LONG_POLL_TIMEOUT: String(LONG_POLL_MS), SYNCLINE_SHUTDOWN_TIMEOUT: "15000" }
    })
  })
  const instance = { child, baseUrl: `http://127.0.0.1:${port}` }
  instances.push(instance)
  return instance
}

const switchTo = (instance: Instance) => {
  server = { url: instance.baseUrl, generation: server.generation + 1 }
}

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    const failures = clientFailures()
    if (failures.length > 0) throw new Error(`client failures while waiting for ${what}:\n${failures.join("\n")}`)
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

const restart = async (kind: Kind): Promise<void> => {
  switch (kind) {
    case "graceful":
    case "admin":
    case "rolling":
      current = await restartService(kind, current, spawnInstance, switchTo)
      return
    case "kill9": {
      current.child.kill("SIGKILL")
      await current.child.exited
      current = await spawnInstance()
      switchTo(current)
      await waitStatus(current, "active")
      return
    }
  }
}

// Checks ---------------------------------------------------------------------------------------

/** What the raw client of shape `i` holds, in the text form `postgresTextRows` gives. */
const rawRows = (i: number) => raws[i]!.sortedRows().map((r) => textByValue(SHAPES[i]!, r))

/**
 * With the writer idle: waits (bounded) until every follower holds what its query returns on
 * Postgres, then asserts it, with the handle each shape had from the start.
 */
const expectConverged = async (when: string): Promise<void> => {
  const expected = await Promise.all(SHAPES.map((s) => postgresRows(pool, s)))
  const expectedText = await Promise.all(SHAPES.map((s) => postgresTextRows(pool, s)))
  const converged = () =>
    followers.every((f, i) => sameRows(f.rows(), expected[i]!)) &&
    raws.every((_, i) => sameRows(rawRows(i), expectedText[i]!))
  await waitFor(`every shape to equal Postgres ${when}`, converged, CONVERGE_MS).catch(() => undefined)
  expect(clientFailures(), when).toEqual([])
  for (const [i, s] of SHAPES.entries()) {
    expect({ when, shape: s.label, ...difference(followers[i]!.rows(), expected[i]!) }).toEqual({ when, shape: s.label, ...NO_DIFFERENCE })
    expect({ when, shape: s.label, rows: followers[i]!.rows() }).toEqual({ when, shape: s.label, rows: expected[i] })
    expect({ when, shape: s.label, rows: rawRows(i) }).toEqual({ when, shape: s.label, rows: expectedText[i] })
    expect({ shape: s.label, handle: followers[i]!.handle }).toEqual({ shape: s.label, handle: handles.get(s.label) })
    expect({ shape: s.label, handle: raws[i]!.handle }).toEqual({ shape: s.label, handle: handles.get(s.label) })
  }
}

/** A client that starts from scratch now gets each shape's first handle and exactly the rows Postgres has. */
const expectFreshClientsAgree = async (when: string): Promise<void> => {
  const fresh = SHAPES.map((s) => new StrictFollower(s, () => server))
  try {
    const expected = await Promise.all(SHAPES.map((s) => postgresRows(pool, s)))
    const settled = () =>
      fresh.every((f, i) => f.failures.length > 0 || (f.upToDate && sameRows(f.rows(), expected[i]!)))
    await waitFor(`fresh clients to sync ${when}`, settled, CONVERGE_MS).catch(() => undefined)
    for (const [i, s] of SHAPES.entries()) {
      const f = fresh[i]!
      expect({ when, fresh: s.label, failures: f.failures, handle: f.handle, rows: f.rows() }).toEqual({
        when,
        fresh: s.label,
        failures: [],
        handle: handles.get(s.label),
        rows: expected[i]
      })
    }
  } finally {
    for (const f of fresh) f.stop()
  }
}

// The test -------------------------------------------------------------------------------------

beforeAll(async () => {
  pool = testPool()
  await pool.query(`DROP TABLE IF EXISTS ${TABLE_NAMES.map((t) => TABLES[t].name).join(", ")}`)
  for (const ddl of DDL) await pool.query(ddl)
  const rand = prng(SEED)
  writer = new pg.Client({ connectionString: inject("databaseUrl") })
  await writer.connect()
  await writer.query("BEGIN")
  for (const table of TABLE_NAMES) {
    for (let i = 0; i < INITIAL[table]; i++) {
      const id = nextId.get(table)!
      nextId.set(table, id + 1)
      await insertRow(writer, table, randomRow(rand, table, id))
    }
  }
  await writer.query("COMMIT")
  storageDir = await tempDir(STREAM)
  current = await spawnInstance()
  switchTo(current)
  await waitStatus(current, "active")
  for (const s of SHAPES) {
    followers.push(new StrictFollower(s, () => server))
    raws.push(new OracleClient({ label: s.label, ...(s.where === undefined ? {} : { where: s.where }), ...(s.params === undefined ? {} : { params: s.params }) }, s.table, LONG_POLL_MS, rawFailures))
  }
  for (const c of raws) void c.run(() => server)
  await waitFor("the initial sync of every shape", () => followers.every((f) => f.upToDate) && raws.every((c) => c.live), 60_000)
  for (const [i, s] of SHAPES.entries()) handles.set(s.label, followers[i]!.handle!)
}, 120_000)

afterAll(async () => {
  for (const f of followers) f.stop()
  for (const c of raws) c.stop()
  await writer?.end()
  await stopAllChildren()
  if (pool !== undefined) {
    await dropReplication(pool, STREAM)
    await pool.end()
  }
})

describe("subquery oracle", () => {
  it(`random transactions at every level stay exact across restarts of every kind (seed ${SEED})`, { timeout: 150_000 }, async () => {
    onTestFailed(printDiagnostics)
    console.log(`subquery oracle seed: ${SEED}`)
    await expectConverged("after the initial sync")
    const rand = prng(SEED + 1)
    const kinds: Array<Kind> = (["graceful", "kill9", "admin", "rolling"] as const).flatMap((k) => Array<Kind>(RESTARTS_PER_KIND).fill(k))
    for (let i = kinds.length - 1; i > 0; i--) {
      const j = int(rand, i + 1)
      ;[kinds[i], kinds[j]] = [kinds[j]!, kinds[i]!]
    }
    // Batch 0 runs without a restart; the restarts are spread over the rest, each in the middle of its batch.
    const batches = Math.max(Math.ceil(TRANSACTIONS / BATCH), kinds.length + 1)
    const plan = new Map<number, Kind>(kinds.map((k, i) => [1 + Math.floor((i * (batches - 1)) / kinds.length), k]))
    let committed = 0
    for (let batch = 0; batch < batches; batch++) {
      const kind = plan.get(batch)
      const restartAt = kind === undefined ? -1 : int(rand, BATCH)
      // Settled with its error, if any, so a failed restart is reported after the batch rather than as unhandled.
      let restarting: Promise<unknown> | undefined
      const started = Date.now()
      for (let t = 0; t < BATCH; t++) {
        if (t === restartAt) restarting = restart(kind!).then(() => undefined, (error: unknown) => error ?? new Error("restart failed"))
        await randomTransaction(rand, committed++)
        await sleep(rand() * 8)
      }
      const restartError = await restarting
      if (restartError !== undefined) throw restartError
      const when = `after batch ${batch}${kind === undefined ? "" : ` (${kind} restart)`}`
      await expectConverged(when)
      if (kind !== undefined) await expectFreshClientsAgree(when)
      journal.push(`${when}: converged, ${Date.now() - started} ms`)
    }
    expect(committed).toBeGreaterThanOrEqual(TRANSACTIONS)
    console.log(journal.filter((l) => l.startsWith("after")).join("\n"))
  })

  it("kill -9 while a move-in query waits on a lock loses nothing", { timeout: 90_000 }, async () => {
    onTestFailed(printDiagnostics)
    // An inactive project of a paid org in an open region, with issues: activating it moves them into the nested shapes.
    await writer.query("BEGIN")
    await writer.query(`INSERT INTO sqo_regions VALUES (5001, true) ON CONFLICT (id) DO UPDATE SET open = true`)
    await writer.query(`INSERT INTO sqo_orgs VALUES (5001, 5001, true, 3) ON CONFLICT (id) DO UPDATE SET paid = true, region_id = 5001`)
    await writer.query(
      `INSERT INTO sqo_projects VALUES (5001, 5001, false, false, 7) ON CONFLICT (id) DO UPDATE SET active = false, org_id = 5001`
    )
    for (let id = 5001; id <= 5006; id++) {
      await writer.query(`INSERT INTO sqo_issues VALUES ($1, 5001, $2, $3, 0, 'moved') ON CONFLICT (id) DO NOTHING`, [id, id % 4, (id + 1) % 4])
      ids.get("issues")!.add(id)
    }
    await writer.query("COMMIT")
    for (const t of ["regions", "orgs", "projects"] as const) ids.get(t)!.add(5001)
    await expectConverged("before the locked move-in")

    const lock = new pg.Client({ connectionString: inject("databaseUrl") })
    await lock.connect()
    let locked = false
    try {
      await lock.query("BEGIN")
      await lock.query(`LOCK TABLE sqo_issues IN ACCESS EXCLUSIVE MODE`)
      locked = true
      await writer.query(`UPDATE sqo_projects SET active = true WHERE id = 5001`)
      // More moves behind it, on the locked table's shapes and on one that reads another table.
      await writer.query(`UPDATE sqo_pairs SET enabled = NOT enabled WHERE id = (SELECT min(id) FROM sqo_pairs)`)
      await writer.query(`UPDATE sqo_items SET flagged = NOT flagged WHERE id = (SELECT min(id) FROM sqo_items)`)
      journal.push("locked sqo_issues; activated project 5001; toggled a pair and an item")
      await waitFor("the server's move-in query to wait on the lock", async () => {
        const { rows } = await pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE NOT l.granted AND l.relation = 'sqo_issues'::regclass AND a.application_name = 'syncline'`
        )
        return rows[0]!.n > 0
      }, 20_000)
      current.child.kill("SIGKILL")
      await current.child.exited
    } finally {
      if (locked) await lock.query("ROLLBACK")
      await lock.end()
    }
    current = await spawnInstance()
    switchTo(current)
    await waitStatus(current, "active")
    await expectConverged("after kill -9 during a locked move-in")
    await expectFreshClientsAgree("after kill -9 during a locked move-in")

    // And it goes on: a batch more, then a graceful stop.
    const rand = prng(SEED + 2)
    for (let t = 0; t < BATCH; t++) await randomTransaction(rand, 100_000 + t)
    await expectConverged("after a batch past the locked move-in")
    for (const f of followers) f.stop()
    for (const c of raws) c.stop()
    current.child.kill("SIGTERM")
    expect(await current.child.exited).toEqual({ code: 0, signal: null })
  })
})
