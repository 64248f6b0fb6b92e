import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

const STREAM = "generated_columns"
const TABLE = "generated_items"
let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await pool.query(`DROP TABLE IF EXISTS ${TABLE}`)
  await pool.query(
    `CREATE TABLE ${TABLE} (id int PRIMARY KEY, n int NOT NULL, twice int GENERATED ALWAYS AS (n * 2) STORED)`
  )
  await pool.query(`INSERT INTO ${TABLE} SELECT i, i FROM generate_series(1, 3) i`)
  server = await startSyncline({ streamId: STREAM, settings: { longPollTimeoutMs: 2000 } })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const waitActive = async () => {
  const deadline = Date.now() + 30_000
  for (;;) {
    const res = await fetch(`${server.baseUrl}/v1/health`)
    await res.body?.cancel()
    if (res.status === 200) return
    if (Date.now() > deadline) throw new Error("the stack did not become active again")
    await new Promise((r) => setTimeout(r, 50))
  }
}

interface Page {
  readonly status: number
  readonly handle: string
  readonly offset: string
  readonly schema: string | null
  readonly messages: Array<{ headers: Record<string, unknown>; value?: Record<string, unknown> }>
}

const get = async (params: Record<string, string>): Promise<Page> => {
  const res = await fetch(`${server.baseUrl}/v1/shape?${new URLSearchParams({ table: TABLE, ...params })}`)
  const body = await res.text()
  return {
    status: res.status,
    handle: res.headers.get("electric-handle") ?? "",
    offset: res.headers.get("electric-offset") ?? "",
    schema: res.headers.get("electric-schema"),
    messages: body === "" ? [] : JSON.parse(body)
  }
}

/** Follows the shape until a message satisfies `found`; any non-2xx answer fails the test. */
const follow = async (from: Page, found: (m: Page["messages"][number]) => boolean): Promise<Array<Page>> => {
  const pages: Array<Page> = []
  let at = from
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    const page = await get({ handle: at.handle, offset: at.offset, live: "true" })
    expect(page.status).toBeLessThan(300)
    pages.push(page)
    if (page.messages.some(found)) return pages
    at = page
  }
  throw new Error("the change never arrived")
}

describe("a table with a stored generated column", () => {
  it("syncs through a stack restart without invalidation and without the generated column", async () => {
    const snapshot = await get({ offset: "-1" })
    expect(snapshot.status).toBe(200)
    expect(snapshot.schema).not.toBeNull()
    expect(Object.keys(JSON.parse(snapshot.schema!)).sort()).toEqual(["id", "n"])
    const rows = snapshot.messages.filter((m) => m.value !== undefined)
    expect(rows.map((m) => m.value)).toEqual([{ id: "1", n: "1" }, { id: "2", n: "2" }, { id: "3", n: "3" }])

    let at = snapshot
    while (!at.messages.some((m) => m.headers["control"] === "up-to-date")) {
      at = await get({ handle: at.handle, offset: at.offset })
      expect(at.status).toBe(200)
    }

    await pool.query(`INSERT INTO ${TABLE} VALUES (4, 4)`)
    const before = await follow(at, (m) => m.value?.["id"] === "4")
    const last = before[before.length - 1]!

    const restart = await fetch(`${server.baseUrl}/v1/admin/restart`, { method: "POST" })
    expect(restart.status).toBe(202)
    await restart.body?.cancel()
    await waitActive()

    await pool.query(`INSERT INTO ${TABLE} VALUES (5, 5)`)
    await pool.query(`UPDATE ${TABLE} SET n = 10 WHERE id = 1`)
    const after = await follow(last, (m) => m.value?.["id"] === "1")
    expect(after.every((p) => p.handle === snapshot.handle)).toBe(true)

    const changes = [...before, ...after].flatMap((p) => p.messages).filter((m) => m.value !== undefined)
    expect(changes.map((m) => m.value)).toEqual([{ id: "4", n: "4" }, { id: "5", n: "5" }, { id: "1", n: "10" }])
    expect(changes.every((m) => m.value !== undefined && !("twice" in m.value))).toBe(true)
    const control = [...before, ...after].flatMap((p) => p.messages).map((m) => m.headers["control"])
    expect(control).not.toContain("must-refetch")
  })
})
