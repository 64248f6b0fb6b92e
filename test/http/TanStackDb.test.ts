import { electricCollectionOptions } from "@tanstack/electric-db-collection"
import { and, BasicIndex, type Collection, createCollection, createLiveQueryCollection, eq, gt, lt } from "@tanstack/db"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, tempDir, testPool } from "../support/syncline.js"

const STREAM = "tanstack_db"
let server: RunningSyncline
let storageDir: string
let pool: pg.Pool

type Todo = { id: number; title: string; done: boolean; priority: number | null }

const COLUMNS = "id, title, done, priority"
// The live queries' filter, as TanStack DB evaluates it and as Postgres does.
const OPEN_AND_URGENT = "done = false AND priority > 2"

beforeAll(async () => {
  pool = testPool()
  storageDir = await tempDir(STREAM)
  server = await startSyncline({ streamId: STREAM, storageDir, settings: { longPollTimeoutMs: 2000 } })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const todosTable = async (name: string): Promise<void> => {
  await pool.query(`DROP TABLE IF EXISTS ${name}`)
  await pool.query(`CREATE TABLE ${name} (id int PRIMARY KEY, title text NOT NULL, done boolean NOT NULL, priority int)`)
  await pool.query(
    `INSERT INTO ${name} SELECT i, 'todo ' || i, i % 3 = 0, CASE WHEN i % 10 = 0 THEN NULL ELSE i % 6 END
     FROM generate_series(1, 40) i`
  )
}

/** Runs `statements` in one Postgres transaction, so they reach the client as one transaction. */
const transaction = async (...statements: ReadonlyArray<string>): Promise<void> => {
  const client = await pool.connect()
  try {
    await client.query("BEGIN")
    for (const sql of statements) await client.query(sql)
    await client.query("COMMIT")
  } finally {
    client.release()
  }
}

const select = async (sql: string): Promise<Array<Todo>> => (await pool.query(sql)).rows.map((r) => ({ ...r }))

/** The table's columns only: query results also carry TanStack DB's virtual `$` properties. */
const asTodos = (rows: ReadonlyArray<Todo>): Array<Todo> =>
  rows.map(({ id, title, done, priority }) => ({ id, title, done, priority }))

const byId = (rows: ReadonlyArray<Todo>): Array<Todo> => [...rows].sort((a, b) => a.id - b.id)

/** Every response the service answered with an error status, to name the request when a test fails. */
const failedResponses: Array<string> = []
const errorResponses = () => `error responses: ${JSON.stringify(failedResponses, null, 2)}`

/**
 * The collections' URL names no port: this fetch sends each request to whichever server is current, so a
 * client keeps its handle and offset across a restart that moves the service to a new port.
 */
const currentServerFetch: typeof fetch = async (input, init) => {
  const requested = new URL(input instanceof Request ? input.url : String(input))
  const res = await fetch(new URL(`${requested.pathname}${requested.search}`, server.baseUrl), init)
  if (res.status >= 400) {
    const request = `${init?.method ?? "GET"} ${requested.pathname}${requested.search}`
    failedResponses.push(`${request} -> ${res.status} ${await res.clone().text()}`)
  }
  return res
}

const todoCollection = (table: string, syncMode: "eager" | "on-demand", replica: "default" | "full") => {
  const streamErrors: Array<unknown> = []
  const collection = createCollection(
    electricCollectionOptions<Todo>({
      id: `${table}-${syncMode}`,
      syncMode,
      // An index on the first orderBy column lets an ordered, limited query load page by page
      // (subset__order_by, subset__limit) instead of loading the whole table.
      ...(syncMode === "on-demand" ? { autoIndex: "eager" as const, defaultIndexType: BasicIndex } : {}),
      getKey: (todo) => todo.id,
      shapeOptions: {
        url: "http://syncline.invalid/v1/shape",
        params: { table, replica },
        fetchClient: currentServerFetch,
        onError: (error) => {
          streamErrors.push(error)
        }
      }
    })
  )
  return { collection, streamErrors }
}

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}; ${errorResponses()}`)
    }
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Waits until `actual()` equals `expected()` (a fresh SELECT each time), then asserts it for the diff. */
const converges = async (
  what: string,
  actual: () => Array<Todo>,
  expected: () => Promise<Array<Todo>>,
  collections: ReadonlyArray<Collection<any, any, any>>
): Promise<void> => {
  await waitFor(what, async () => {
    for (const c of collections) {
      if (c.status === "error") throw new Error(`${c.id} failed while waiting for ${what}; ${errorResponses()}`)
    }
    return JSON.stringify(actual()) === JSON.stringify(await expected())
  })
  expect(actual()).toEqual(await expected())
}

/** Stops the server and starts a new one on the same storage and slot: a new port, the same shapes. */
const restartOnNewPort = async (whileDown: () => Promise<void>): Promise<void> => {
  await server.stop()
  await whileDown()
  server = await startSyncline({ streamId: STREAM, storageDir, settings: { longPollTimeoutMs: 2000 } })
}

/** Rebuilds the stack inside the running server (`POST /v1/admin/restart`) and waits until it is active. */
const restartInProcess = async (): Promise<void> => {
  const res = await fetch(`${server.baseUrl}/v1/admin/restart`, { method: "POST" })
  expect(res.status).toBe(202)
  await waitFor("the restarted stack to be active", async () => {
    const health = await fetch(`${server.baseUrl}/v1/health`).catch(() => undefined)
    return health?.status === 200
  })
}

/**
 * No request was refused. 409 (a handle to drop) and 5xx (retried with backoff) are answers the client
 * recovers from; any other error status means the service refused what TanStack DB asked for.
 */
const expectNoRefusedRequests = (streamErrors: ReadonlyArray<unknown>) => {
  expect(failedResponses.filter((line) => !/ -> (409|5\d\d) /.test(line))).toEqual([])
  expect(streamErrors).toEqual([])
}

/** The changes both tests make while the first server runs: rows moving in and out of the live queries. */
const liveChanges = async (table: string): Promise<void> => {
  await pool.query(`UPDATE ${table} SET priority = 5 WHERE id = 1`) // moves in
  await pool.query(`UPDATE ${table} SET done = true WHERE id = 4`) // moves out
  await pool.query(`UPDATE ${table} SET title = 'renamed' WHERE id = 5`) // stays in, changes
  await pool.query(`DELETE FROM ${table} WHERE id IN (11, 2)`)
  await transaction(
    `UPDATE ${table} SET priority = 1 WHERE id = 17`,
    `UPDATE ${table} SET done = false, priority = 4 WHERE id = 3`,
    `INSERT INTO ${table} VALUES (43, 'in a transaction', false, 3)`,
    `DELETE FROM ${table} WHERE id = 23`,
    `UPDATE ${table} SET priority = NULL WHERE id = 29`
  )
}

/** Written while no server runs: the next one reads them from the slot. */
const changesWhileDown = (table: string, priority: number): Promise<void> =>
  transaction(
    `UPDATE ${table} SET priority = 3 WHERE id = 7`,
    `UPDATE ${table} SET done = true WHERE id = 41`,
    `INSERT INTO ${table} VALUES (44, 'while down', false, ${priority})`
  )

const changesAfterRestart = async (table: string): Promise<void> => {
  await pool.query(`UPDATE ${table} SET done = false WHERE id = 42`)
  await pool.query(`DELETE FROM ${table} WHERE id = 5`)
}

const changesAfterInProcessRestart = async (table: string): Promise<void> => {
  await transaction(
    `UPDATE ${table} SET priority = priority + 2 WHERE id BETWEEN 30 AND 40`,
    `DELETE FROM ${table} WHERE id = 1`
  )
  await pool.query(`INSERT INTO ${table} VALUES (45, 'after the stack restart', false, 9)`)
}

describe("TanStack DB electric collections", () => {
  it("eager: a live query with a where equals the same SELECT through live changes and restarts", async () => {
    const TABLE = "tsdb_eager_todos"
    await todosTable(TABLE)
    failedResponses.length = 0
    const { collection: todos, streamErrors } = todoCollection(TABLE, "eager", "default")
    const open = createLiveQueryCollection((q) =>
      q.from({ todo: todos }).where(({ todo }) => and(eq(todo.done, false), gt(todo.priority, 2)))
    )
    const all = () => select(`SELECT ${COLUMNS} FROM ${TABLE} ORDER BY id`)
    const openInPg = () => select(`SELECT ${COLUMNS} FROM ${TABLE} WHERE ${OPEN_AND_URGENT} ORDER BY id`)
    const bothMatch = (what: string) =>
      Promise.all([
        converges(`${what} (collection)`, () => byId(asTodos(todos.toArray)), all, [todos]),
        converges(`${what} (live query)`, () => byId(asTodos(open.toArray)), openInPg, [todos, open])
      ])

    try {
      await open.preload()
      expect(todos.status).toBe("ready")
      // Loaded before any change: the live query's first result is the snapshot's.
      expect(byId(asTodos(open.toArray))).toEqual(await openInPg())
      expect(byId(asTodos(todos.toArray))).toEqual(await all())
      expect(open.size).toBeGreaterThan(0)

      await pool.query(`INSERT INTO ${TABLE} VALUES (41, 'new urgent', false, 5), (42, 'new done', true, 5)`)
      await liveChanges(TABLE)
      await bothMatch("live changes")

      await restartOnNewPort(() => changesWhileDown(TABLE, 4))
      await bothMatch("changes made while the server was down")
      await changesAfterRestart(TABLE)
      await bothMatch("changes after the restart on a new port")

      await restartInProcess()
      await changesAfterInProcessRestart(TABLE)
      await bothMatch("changes after the in-process restart")
      expectNoRefusedRequests(streamErrors)
    } finally {
      await open.cleanup()
      await todos.cleanup()
    }
  })

  it("on-demand: a live query with a where loads its subset and equals the same SELECT through live changes and restarts", async () => {
    const TABLE = "tsdb_on_demand_todos"
    await todosTable(TABLE)
    failedResponses.length = 0
    // `replica: full`: an on-demand collection holds only the rows it loaded, so a row that an update moves into
    // a query can only be added with its whole value; with partial updates TanStack DB drops updates to unseen keys.
    const { collection: todos, streamErrors } = todoCollection(TABLE, "on-demand", "full")
    const open = createLiveQueryCollection((q) =>
      q.from({ todo: todos }).where(({ todo }) => and(eq(todo.done, false), gt(todo.priority, 2)))
    )
    // Ties on priority are broken by id, so the top three are one set in both places.
    const topThree = createLiveQueryCollection((q) =>
      q
        .from({ todo: todos })
        .where(({ todo }) => eq(todo.done, false))
        .orderBy(({ todo }) => todo.priority, { direction: "desc", nulls: "last" })
        .orderBy(({ todo }) => todo.id, "asc")
        .limit(3)
    )
    // Started only after a restart, each loads a subset from the restarted service.
    const finished = createLiveQueryCollection({
      query: (q) => q.from({ todo: todos }).where(({ todo }) => eq(todo.done, true)),
      startSync: false
    })
    const firstRows = createLiveQueryCollection({
      query: (q) => q.from({ todo: todos }).where(({ todo }) => lt(todo.id, 12)),
      startSync: false
    })
    const openInPg = () => select(`SELECT ${COLUMNS} FROM ${TABLE} WHERE ${OPEN_AND_URGENT} ORDER BY id`)
    const finishedInPg = () => select(`SELECT ${COLUMNS} FROM ${TABLE} WHERE done = true ORDER BY id`)
    const firstRowsInPg = () => select(`SELECT ${COLUMNS} FROM ${TABLE} WHERE id < 12 ORDER BY id`)
    const topThreeInPg = () =>
      select(
        `SELECT ${COLUMNS} FROM ${TABLE} WHERE done = false ORDER BY priority DESC NULLS LAST, id ASC LIMIT 3`
      )
    const bothMatch = (what: string) =>
      Promise.all([
        converges(`${what} (where)`, () => byId(asTodos(open.toArray)), openInPg, [todos, open]),
        converges(`${what} (order by, limit)`, () => asTodos(topThree.toArray), topThreeInPg, [todos, topThree])
      ])

    try {
      await open.preload()
      await converges("the where's subset", () => byId(asTodos(open.toArray)), openInPg, [todos, open])
      // Only the subset was loaded, not the table (40 rows).
      expect(todos.size).toBe((await openInPg()).length)
      await topThree.preload()
      await converges("the top three", () => asTodos(topThree.toArray), topThreeInPg, [todos, topThree])
      expect(todos.size).toBeLessThan(40)

      await pool.query(`INSERT INTO ${TABLE} VALUES (41, 'new urgent', false, 5), (42, 'new done', true, 5)`)
      await pool.query(`INSERT INTO ${TABLE} VALUES (46, 'outside', false, 1)`)
      await pool.query(`UPDATE ${TABLE} SET title = 'renamed outside' WHERE id = 13`) // outside, stays outside
      // Row 1 moves in without ever having been loaded.
      await liveChanges(TABLE)
      await bothMatch("live changes")
      // The top three lose their first rows: the query loads the next ones from the server.
      await pool.query(
        `UPDATE ${TABLE} SET done = true
         WHERE id IN (SELECT id FROM ${TABLE} WHERE done = false ORDER BY priority DESC NULLS LAST, id LIMIT 2)`
      )
      await bothMatch("the top three refilled")

      await restartOnNewPort(() => changesWhileDown(TABLE, 8))
      await bothMatch("changes made while the server was down")
      await changesAfterRestart(TABLE)
      await bothMatch("changes after the restart on a new port")
      // A query started now loads rows never loaded before, from the new server.
      await finished.preload()
      const finishedRows = () => byId(asTodos(finished.toArray))
      await converges("a subset loaded after the restart", finishedRows, finishedInPg, [todos, finished])

      await restartInProcess()
      await changesAfterInProcessRestart(TABLE)
      await bothMatch("changes after the in-process restart")
      await converges("that subset after the in-process restart", finishedRows, finishedInPg, [todos, finished])
      await firstRows.preload()
      const firstRowsNow = () => byId(asTodos(firstRows.toArray))
      await converges("a subset loaded after the in-process restart", firstRowsNow, firstRowsInPg, [todos, firstRows])
      expectNoRefusedRequests(streamErrors)
    } finally {
      await firstRows.cleanup()
      await finished.cleanup()
      await topThree.cleanup()
      await open.cleanup()
      await todos.cleanup()
    }
  })
})
