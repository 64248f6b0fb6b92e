import * as fs from "node:fs/promises"
import * as Reactivity from "@effect/experimental/Reactivity"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Effect } from "effect"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { registryFile } from "../../src/storage/ShapeDb.js"
import { follow } from "../support/follow.js"
import { dropReplication, type RunningSyncline, startSyncline, tempDir, testPool } from "../support/syncline.js"

// Subquery shapes over HTTP against the real server: refusals with the protocol's error body, dependency
// shapes shared and removed with their readers (and readers with their dependencies), and handles that
// survive a graceful restart.

const STREAM = "subq_requests"
let server: RunningSyncline
let storageDir: string
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  for (const t of ["sqr_issues", "sqr_comments", "sqr_projects", "sqr_orgs"]) await pool.query(`DROP TABLE IF EXISTS ${t}`)
  await pool.query(`DROP VIEW IF EXISTS sqr_view`)
  await pool.query(`CREATE TABLE sqr_orgs (id int PRIMARY KEY, paid bool NOT NULL)`)
  await pool.query(`CREATE TABLE sqr_projects (id int PRIMARY KEY, code text, org_id int, active bool NOT NULL)`)
  await pool.query(`CREATE TABLE sqr_issues (id int PRIMARY KEY, v text)`)
  await pool.query(`CREATE TABLE sqr_comments (id int PRIMARY KEY, v text)`)
  await pool.query(`CREATE VIEW sqr_view AS SELECT id, code FROM sqr_projects`)
  await pool.query(`INSERT INTO sqr_orgs SELECT i, i % 2 = 0 FROM generate_series(1, 4) i`)
  // Project 9 has no code: a NULL in every set it belongs to.
  await pool.query(
    `INSERT INTO sqr_projects SELECT i, CASE WHEN i = 9 THEN NULL ELSE 'p' || i END, 1 + i % 4, i % 3 <> 0
       FROM generate_series(1, 9) i`
  )
  await pool.query(`INSERT INTO sqr_issues SELECT i, 'p' || (i % 11) FROM generate_series(1, 40) i`)
  await pool.query(`INSERT INTO sqr_comments SELECT i, 'p' || (i % 7) FROM generate_series(1, 30) i`)
  storageDir = await tempDir(STREAM)
  server = await startSyncline({ streamId: STREAM, storageDir, settings: { longPollTimeoutMs: 1000 } })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
  if (storageDir !== undefined) await fs.rm(storageDir, { recursive: true, force: true })
})

interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
}

const shapeRequest = async (query: Record<string, string>, method = "GET"): Promise<Reply> => {
  const res = await fetch(`${server.baseUrl}/v1/shape?${new URLSearchParams(query)}`, { method })
  return { status: res.status, headers: res.headers, text: await res.text() }
}

const header = (reply: Reply, name: string): string => {
  const value = reply.headers.get(name)
  if (value === null) throw new Error(`missing header ${name} (status ${reply.status}: ${reply.text})`)
  return value
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const waitFor = async (what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

interface Message {
  readonly key?: string
  readonly value?: Record<string, string | null>
  readonly headers: Record<string, unknown>
}

/**
 * A shape followed with plain non-live requests by a client that refuses what it cannot apply (an insert
 * of a row it holds, an update or delete of one it does not) and any status but 200.
 */
class RawFollower {
  readonly rows = new Map<string, Record<string, string | null>>()
  handle: string | undefined
  offset = "-1"

  constructor(readonly table: string, readonly where: string) {}

  /** One request from where the follower stands; true when the batch ended up to date. */
  async poll(): Promise<boolean> {
    const reply = await shapeRequest({
      table: this.table,
      where: this.where,
      offset: this.offset,
      ...(this.handle === undefined ? {} : { handle: this.handle })
    })
    if (reply.status !== 200) throw new Error(`${this.table} at ${this.handle}/${this.offset}: ${reply.status} ${reply.text}`)
    const handle = header(reply, "electric-handle")
    if (this.handle !== undefined && handle !== this.handle) throw new Error(`handle changed from ${this.handle} to ${handle}`)
    this.handle = handle
    this.offset = header(reply, "electric-offset")
    const batch = JSON.parse(reply.text) as Array<Message>
    for (const m of batch) {
      const op = m.headers["operation"]
      if (m.key === undefined || typeof op !== "string") continue
      const held = this.rows.get(m.key)
      if (op === "insert") {
        if (held !== undefined) throw new Error(`duplicate insert of ${m.key}`)
        this.rows.set(m.key, { ...m.value })
      } else if (held === undefined) {
        throw new Error(`${op} of ${m.key}, which the client does not hold`)
      } else if (op === "update") {
        this.rows.set(m.key, { ...held, ...m.value })
      } else {
        this.rows.delete(m.key)
      }
    }
    return batch.at(-1)?.headers["control"] === "up-to-date"
  }

  async toEnd(): Promise<this> {
    for (let i = 0; i < 500; i++) if (await this.poll()) return this
    throw new Error("never reached up-to-date")
  }

  sorted(): Array<Record<string, string | null>> {
    return [...this.rows.values()].sort((a, b) => Number(a["id"]) - Number(b["id"]))
  }

  /** Postgres's rows for the clause, as text. */
  async expected(): Promise<Array<Record<string, string | null>>> {
    const { rows } = await pool.query({
      text: `SELECT id, v FROM ${this.table} WHERE ${this.where} ORDER BY id`,
      types: { getTypeParser: () => (value: string) => value }
    })
    return rows as Array<Record<string, string | null>>
  }

  /** Catches up (bounded) until the rows equal Postgres's. */
  async equalsPostgres(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      await this.toEnd()
      const expected = await this.expected()
      if (JSON.stringify(this.sorted()) === JSON.stringify(expected)) return
      if (Date.now() > deadline) expect(this.sorted()).toEqual(expected)
      await sleep(50)
    }
  }
}

interface Registry {
  readonly shapes: ReadonlyArray<string>
  /** Handle -> the handles its subqueries read, in position order. */
  readonly dependencies: ReadonlyMap<string, ReadonlyArray<string>>
}

/** The shapes and the dependency graph as the registry holds them on disk. */
const registry = (): Promise<Registry> =>
  Effect.runPromise(
    Effect.scoped(
      Effect.gen(function*() {
        const sql = yield* SqliteClient.make({ filename: registryFile(storageDir), readonly: true }).pipe(
          Effect.provide(Reactivity.layer)
        )
        const shapes = yield* sql<{ handle: string }>`SELECT handle FROM shapes WHERE removing = 0`
        const edges = yield* sql<{ handle: string; dependency: string }>`
          SELECT handle, dependency FROM shape_dependencies ORDER BY handle, position`
        const dependencies = new Map<string, Array<string>>()
        for (const e of edges) dependencies.set(e.handle, [...(dependencies.get(e.handle) ?? []), e.dependency])
        return { shapes: shapes.map((s) => s.handle), dependencies }
      })
    )
  )

const dependenciesOf = async (handle: string): Promise<ReadonlyArray<string>> => (await registry()).dependencies.get(handle) ?? []

const deleteShape = async (handle: string) => (await shapeRequest({ handle }, "DELETE")).status

describe("subquery requests refused", () => {
  const refused = async (query: Record<string, string>) => {
    const reply = await shapeRequest({ table: "sqr_issues", offset: "-1", ...query })
    expect(reply.status, reply.text).toBe(400)
    return JSON.parse(reply.text) as unknown
  }

  const nested = (depth: number) => {
    let where = "true"
    for (let i = 0; i < depth; i++) where = `id IN (SELECT id FROM sqr_projects WHERE ${where})`
    return where
  }

  it.each([
    ["EXISTS (SELECT id FROM sqr_projects)", "EXISTS"],
    ["v = ALL (SELECT code FROM sqr_projects)", "ALL (SELECT"],
    ["v > ANY (SELECT code FROM sqr_projects)", "> ANY (SELECT"],
    ["v = (SELECT code FROM sqr_projects)", "subquery used as a value"],
    ["v IN (SELECT p.code FROM sqr_projects p)", "alias"],
    ["v IN (SELECT sqr_projects.code FROM sqr_projects JOIN sqr_orgs ON true)", "exactly one table"],
    ["v IN (SELECT code FROM sqr_projects LIMIT 3)", "SELECT columns FROM one table"],
    ["v IN (SELECT * FROM sqr_projects)", "*"],
    ["v IN (SELECT code FROM sqr_projects WHERE id = sqr_issues.id)", `Unknown reference "sqr_issues.id"`],
    ["v IN (SELECT code FROM sqr_nowhere)", `Unknown table "sqr_nowhere"`],
    ["v IN (SELECT id FROM sqr_projects)", "operator does not exist: text = integer"],
    ["(id, v) IN (SELECT id, code FROM sqr_projects)", "nullable columns"],
    [nested(9), "nested more than 8 deep"]
  ])("where=%s is a 400 naming where", async (where, construct) => {
    expect(await refused({ where })).toEqual({ message: "Invalid request", errors: { where: [expect.stringContaining(construct)] } })
  })

  it("refuses a subquery reading a view, naming where", async () => {
    const body = await refused({ where: "v IN (SELECT code FROM sqr_view)" }) as { errors: Record<string, Array<string>> }
    expect(Object.keys(body.errors)).toEqual(["where"])
    expect(body.errors["where"]![0]).toMatch(/sqr_view/)
  })

  it("refuses log=changes_only with a subquery, naming log", async () => {
    expect(await refused({ where: "v IN (SELECT code FROM sqr_projects)", log: "changes_only" })).toEqual({
      message: "Invalid request",
      errors: { log: [expect.stringContaining("subquer")] }
    })
    // The same mode without a subquery is served.
    expect((await shapeRequest({ table: "sqr_issues", offset: "-1", where: "v = 'p1'", log: "changes_only" })).status).toBe(200)
  })
})

describe("dependency shapes", () => {
  it("are shared by outer shapes with the same subquery, and their removal moves every reader to a new handle", async () => {
    const where = "v IN (SELECT code FROM sqr_projects WHERE active)"
    const issues = follow(pool, server.baseUrl, "sqr_issues", { where })
    const comments = follow(pool, server.baseUrl, "sqr_comments", { where: "v in (select CODE from SQR_PROJECTS where (active))" })
    try {
      await issues.equalsPostgres()
      await comments.equalsPostgres()
      const issuesHandle = issues.handles.at(-1)!
      const commentsHandle = comments.handles.at(-1)!
      expect(issuesHandle).not.toBe(commentsHandle)
      const [dependency] = await dependenciesOf(issuesHandle)
      expect(dependency).toBeDefined()
      expect(await dependenciesOf(commentsHandle)).toEqual([dependency])
      // The dependency is an ordinary shape: its definition (selected columns plus the key, replica=full) names it.
      const direct = await shapeRequest({ table: "sqr_projects", where: "active", columns: "code,id", replica: "full", offset: "-1" })
      expect(direct.status).toBe(200)
      expect(header(direct, "electric-handle")).toBe(dependency)

      expect(await deleteShape(dependency!)).toBe(202)
      const after = await registry()
      expect(after.shapes).not.toContain(dependency)
      expect(after.shapes).not.toContain(issuesHandle)
      expect(after.shapes).not.toContain(commentsHandle)

      // Each client is told to refetch and comes back under a new handle, whose subquery reads a new dependency.
      await waitFor("both clients under new handles", async () => {
        const handles = [issues.handles.at(-1)!, comments.handles.at(-1)!]
        if (handles[0] === issuesHandle || handles[1] === commentsHandle) return false
        const now = await registry()
        return handles.every((h) => now.shapes.includes(h))
      })
      for (const follower of [issues, comments]) expect(follower.statuses).toContain(409)
      const now = await registry()
      const [renewed] = now.dependencies.get(issues.handles.at(-1)!) ?? []
      expect(renewed).not.toBe(dependency)
      expect(now.shapes).toContain(renewed)
      expect(now.dependencies.get(comments.handles.at(-1)!)).toEqual([renewed])

      // And follows its moves.
      await pool.query(`UPDATE sqr_projects SET active = NOT active WHERE id IN (2, 3)`)
      await issues.equalsPostgres(15_000)
      await comments.equalsPostgres(15_000)
    } finally {
      issues.stop()
      comments.stop()
    }
  })

  it("go with the last shape reading them, through every level of nesting", async () => {
    const where = "v IN (SELECT code FROM sqr_projects WHERE org_id IN (SELECT id FROM sqr_orgs WHERE paid))"
    const first = await new RawFollower("sqr_issues", where).toEnd()
    const second = await new RawFollower("sqr_comments", where).toEnd()
    expect(first.sorted()).toEqual(await first.expected())
    const [projects] = await dependenciesOf(first.handle!)
    const [orgs] = await dependenciesOf(projects!)
    expect(await dependenciesOf(second.handle!)).toEqual([projects])
    expect(orgs).toBeDefined()
    expect(await dependenciesOf(orgs!)).toEqual([])

    // One reader goes: what the other reads stays, under the same handles, and keeps following Postgres.
    expect(await deleteShape(first.handle!)).toBe(202)
    const left = await registry()
    expect(left.shapes).not.toContain(first.handle)
    expect(left.shapes).toEqual(expect.arrayContaining([second.handle, projects, orgs]))
    await pool.query(`UPDATE sqr_orgs SET paid = NOT paid WHERE id = 1`)
    await second.equalsPostgres()

    // The last reader goes: both levels of dependencies go with it.
    expect(await deleteShape(second.handle!)).toBe(202)
    const gone = await registry()
    for (const handle of [second.handle, projects, orgs]) expect(gone.shapes).not.toContain(handle)
    expect([...gone.dependencies.keys()]).not.toContain(projects)
    const stale = await shapeRequest({ table: "sqr_projects", handle: projects!, offset: "0_inf" })
    expect(stale.status).toBe(409)
  })

  it("stay when a client asked for them itself, after their last reader goes", async () => {
    const reader = await new RawFollower("sqr_issues", "v IN (SELECT code FROM sqr_projects WHERE org_id = 3)").toEnd()
    const [dependency] = await dependenciesOf(reader.handle!)
    const direct = { table: "sqr_projects", where: "org_id = 3", columns: "code,id", replica: "full", offset: "-1" }
    expect(header(await shapeRequest(direct), "electric-handle")).toBe(dependency)

    expect(await deleteShape(reader.handle!)).toBe(202)
    const after = await registry()
    expect(after.shapes).not.toContain(reader.handle)
    expect(after.shapes).toContain(dependency)
    expect(header(await shapeRequest(direct), "electric-handle")).toBe(dependency)
    expect(await deleteShape(dependency!)).toBe(202)
  })

  it("removes every reader above a removed dependency, however deep", async () => {
    const where = "v NOT IN (SELECT code FROM sqr_projects WHERE org_id IN (SELECT id FROM sqr_orgs WHERE NOT paid))"
    const reader = await new RawFollower("sqr_issues", where).toEnd()
    const [projects] = await dependenciesOf(reader.handle!)
    const [orgs] = await dependenciesOf(projects!)
    expect(await deleteShape(orgs!)).toBe(202)
    const after = await registry()
    for (const handle of [reader.handle, projects, orgs]) expect(after.shapes).not.toContain(handle)
    const stale = await shapeRequest({ table: "sqr_issues", where, handle: reader.handle!, offset: reader.offset })
    expect(stale.status).toBe(409)
    expect(header(stale, "electric-handle")).not.toBe(reader.handle)
  })

  it("never keep a reader whose creation met the removal of its dependency", async () => {
    const sub = "(SELECT code FROM sqr_projects WHERE id > 4)"
    const first = await shapeRequest({ table: "sqr_issues", where: `v IN ${sub}`, offset: "-1" })
    expect(first.status).toBe(200)
    const [dependency] = await dependenciesOf(header(first, "electric-handle"))
    expect(dependency).toBeDefined()
    // Readers are created while the dependency and the readers it has are removed: each either reads a dependency
    // that stays, or is refused or removed with it.
    const creations = Array.from({ length: 24 }, (_, i) =>
      shapeRequest({ table: i % 2 === 0 ? "sqr_issues" : "sqr_comments", where: `v IN ${sub} AND id > ${i}`, offset: "-1" })
    )
    const deletion = deleteShape(dependency!)
    await Promise.all(creations)
    expect(await deletion).toBe(202)
    const after = await registry()
    expect(after.shapes).not.toContain(dependency)
    for (const [reader, read] of after.dependencies) {
      if (!after.shapes.includes(reader)) continue
      for (const d of read) expect({ reader, reads: d, registered: after.shapes.includes(d) }).toEqual({ reader, reads: d, registered: true })
    }
  })
})

describe("subquery shapes across a graceful restart", () => {
  it("keep their handles and their dependencies' handles, and go on from the offset the client holds", async () => {
    const where = "v NOT IN (SELECT code FROM sqr_projects WHERE org_id IN (SELECT id FROM sqr_orgs WHERE paid)) OR id < 4"
    const reader = new RawFollower("sqr_issues", where)
    await reader.equalsPostgres()
    const handle = reader.handle!
    const graph = await registry()
    const [projects] = graph.dependencies.get(handle)!
    const [orgs] = graph.dependencies.get(projects!)!

    await server.stop()
    // Changes while the service is down: a move in the nested dependency, a NULL leaving the set, the outer rows.
    await pool.query(`UPDATE sqr_orgs SET paid = NOT paid WHERE id IN (1, 2)`)
    await pool.query(`UPDATE sqr_projects SET code = 'p9' WHERE id = 9`)
    await pool.query(`UPDATE sqr_issues SET v = 'p5' WHERE id % 6 = 0`)
    server = await startSyncline({ streamId: STREAM, storageDir, settings: { longPollTimeoutMs: 1000 } })

    // The client goes on with its handle and offset: no 409, no duplicate, nothing missing.
    await reader.equalsPostgres()
    expect(reader.handle).toBe(handle)
    const fresh = await shapeRequest({ table: "sqr_issues", where, offset: "-1" })
    expect(header(fresh, "electric-handle")).toBe(handle)
    const after = await registry()
    expect(after.dependencies.get(handle)).toEqual([projects])
    expect(after.dependencies.get(projects!)).toEqual([orgs])

    await pool.query(`UPDATE sqr_orgs SET paid = NOT paid WHERE id = 3`)
    await reader.equalsPostgres()
    expect(reader.handle).toBe(handle)
  })
})
