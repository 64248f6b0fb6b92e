import { Shape, ShapeStream } from "@electric-sql/client"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

/**
 * Subquery shapes followed with the official client while projects, orgs and issues change (each step must give
 * exactly what Postgres holds), and one followed across a graceful restart with changes made while it was down.
 */

const STREAM = "subq_shapes"
let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await pool.query(`CREATE TABLE sq_orgs (id int PRIMARY KEY, paid bool NOT NULL)`)
  await pool.query(`CREATE TABLE sq_projects (id int PRIMARY KEY, org_id int, active bool NOT NULL, archived bool NOT NULL DEFAULT false)`)
  await pool.query(`CREATE TABLE sq_issues (id int PRIMARY KEY, project_id int, v text)`)
  await pool.query(`INSERT INTO sq_orgs SELECT i, i % 2 = 0 FROM generate_series(1, 4) i`)
  await pool.query(`INSERT INTO sq_projects SELECT i, 1 + i % 4, i % 3 = 0, i % 5 = 0 FROM generate_series(1, 10) i`)
  await pool.query(`INSERT INTO sq_issues SELECT i, 1 + i % 10, 'v' || i FROM generate_series(1, 100) i`)
  server = await startSyncline({ streamId: STREAM })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const waitFor = async (check: () => boolean | Promise<boolean>, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out")
    await new Promise((r) => setTimeout(r, 50))
  }
}

const key = (rows: ReadonlyArray<Record<string, unknown>>) => JSON.stringify([...rows].map((r) => ({ ...r })).sort((a, b) => (a.id as number) - (b.id as number)))

describe("subquery shapes", () => {
  it.each([
    "project_id IN (SELECT id FROM sq_projects WHERE active)",
    "project_id IN (SELECT id FROM sq_projects WHERE active AND org_id IN (SELECT id FROM sq_orgs WHERE paid))",
    "project_id NOT IN (SELECT id FROM sq_projects WHERE archived)",
    "v LIKE 'v1%' OR project_id IN (SELECT id FROM sq_projects WHERE active)"
  ])("follows %s", async (where) => {
    const stream = new ShapeStream({ url: `${server.baseUrl}/v1/shape`, params: { table: "sq_issues", where } })
    const shape = new Shape(stream as never)
    const expected = async () => key((await pool.query(`SELECT * FROM sq_issues WHERE ${where}`)).rows)
    expect(key(await shape.rows)).toBe(await expected())
    for (let i = 0; i < 30; i++) {
      const r = (i * 7919) % 10 + 1
      switch (i % 5) {
        case 0: await pool.query(`UPDATE sq_projects SET active = NOT active WHERE id = $1`, [r]); break
        case 1: await pool.query(`UPDATE sq_issues SET project_id = $1 WHERE id = $2`, [r, (i * 31) % 100 + 1]); break
        case 2: await pool.query(`UPDATE sq_orgs SET paid = NOT paid WHERE id = $1`, [1 + (r % 4)]); break
        case 3: await pool.query(`UPDATE sq_projects SET archived = NOT archived WHERE id = $1`, [r]); break
        case 4: {
          const c = await pool.connect()
          await c.query("BEGIN")
          await c.query(`UPDATE sq_projects SET active = NOT active WHERE id = $1`, [r])
          await c.query(`UPDATE sq_issues SET v = v || '!' WHERE project_id = $1`, [r])
          await c.query("COMMIT")
          c.release()
        }
      }
      const want = await expected()
      await waitFor(() => key(shape.currentRows) === want, 10_000).catch(() => undefined)
      expect(key(shape.currentRows), `after step ${i}`).toBe(want)
    }
    stream.unsubscribeAll()
  })
})

describe("subquery shapes across a graceful restart", () => {
  it("keep their handle and follow changes made while stopped", async () => {
    const where = "project_id IN (SELECT id FROM sq_projects WHERE active AND org_id IN (SELECT id FROM sq_orgs WHERE paid))"
    const url = (base: string, q: Record<string, string>) => `${base}/v1/shape?${new URLSearchParams({ table: "sq_issues", where, ...q })}`
    const rows = new Map<string, unknown>()
    let handle = ""
    let offset = "-1"
    const pull = async (base: string) => {
      for (;;) {
        const res = await fetch(url(base, handle === "" ? { offset } : { offset, handle }))
        expect(res.status).toBe(200)
        handle = res.headers.get("electric-handle")!
        offset = res.headers.get("electric-offset")!
        const body = (await res.json()) as Array<{ key?: string; value?: unknown; headers: Record<string, string> }>
        for (const m of body) {
          if (m.key === undefined) continue
          if (m.headers.operation === "insert") {
            expect(rows.has(m.key), `duplicate insert of ${m.key}`).toBe(false)
            rows.set(m.key, m.value)
          } else {
            expect(rows.has(m.key), `${m.headers.operation} of unknown ${m.key}`).toBe(true)
            if (m.headers.operation === "delete") rows.delete(m.key)
          }
        }
        if (body.some((m) => m.headers.control === "up-to-date")) return
      }
    }
    const expected = async () => (await pool.query(`SELECT id FROM sq_issues WHERE ${where} ORDER BY id`)).rows.map((r) => `"public"."sq_issues"/"${r.id}"`)
    await pull(server.baseUrl)
    expect([...rows.keys()].sort()).toEqual((await expected()).sort())
    const first = handle
    const dir = server.settings.storageDir
    await server.stop()
    await pool.query(`UPDATE sq_orgs SET paid = NOT paid WHERE id = 2`)
    await pool.query(`UPDATE sq_projects SET active = NOT active WHERE id IN (3, 4, 6)`)
    server = await startSyncline({ streamId: STREAM, storageDir: dir })
    await pool.query(`UPDATE sq_issues SET project_id = 6 WHERE id < 20`)
    await pool.query(`UPDATE sq_orgs SET paid = NOT paid WHERE id = 3`)
    const want = (await expected()).sort()
    const deadline = Date.now() + 15_000
    while (Date.now() < deadline) {
      await pull(server.baseUrl)
      if (JSON.stringify([...rows.keys()].sort()) === JSON.stringify(want)) break
      await new Promise((r) => setTimeout(r, 100))
    }
    expect(handle).toBe(first)
    expect([...rows.keys()].sort()).toEqual(want)
  })
})
