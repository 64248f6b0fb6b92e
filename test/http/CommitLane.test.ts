import { Shape, ShapeStream } from "@electric-sql/client"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, itemsTable, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

/**
 * Long-polls held on a shape are answered at the commit that ends their wait, straight from the log's commit
 * callback (`CommitLane`): the same bytes and headers the request's own fiber gives (a request with
 * `if-none-match` is still answered by its fiber), and exactly one answer per request when the long-poll
 * timeout and commits land together.
 */

const STREAM = "commit_lane"
const TABLE = "commit_lane_rows"
const STREAM_RACE = "commit_lane_race"
const TABLE_RACE = "commit_lane_race_rows"

let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await itemsTable(pool, TABLE, `SELECT i, 'row ' || i FROM generate_series(1, 10) i`)
  await itemsTable(pool, TABLE_RACE, `SELECT i, 'row ' || i FROM generate_series(1, 50) i`)
})

afterAll(async () => {
  await pool.query(`DROP TABLE IF EXISTS ${TABLE}`)
  await pool.query(`DROP TABLE IF EXISTS ${TABLE_RACE}`)
  await pool.end()
})

interface Reply {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: string
}

const get = async (url: string, headers: Record<string, string> = {}): Promise<Reply> => {
  const res = await fetch(url, { headers })
  return { status: res.status, headers: Object.fromEntries(res.headers.entries()), body: await res.text() }
}

/** The headers every answer to the same request shares: all but the date, the origin echoed and the cursor. */
const shared = ({ headers }: Reply): Record<string, string> => {
  const { date: _date, "access-control-allow-origin": _origin, "electric-cursor": _cursor, ...rest } = headers
  return rest
}

describe("long-polls answered at the commit", () => {
  let server: RunningSyncline

  beforeAll(async () => {
    server = await startSyncline({ streamId: STREAM })
  })

  afterAll(async () => {
    await server?.stop()
    await dropReplication(pool, STREAM)
  })

  /** Held long-polls at the shape's end, and one its fiber answers, all answered by the commit `write` makes. */
  const heldAcross = async (write: () => Promise<unknown>) => {
    const shapeUrl = `${server.baseUrl}/v1/shape?table=${TABLE}`
    const initial = await get(`${shapeUrl}&offset=-1`)
    expect(initial.status).toBe(200)
    const handle = initial.headers["electric-handle"]!
    let offset = initial.headers["electric-offset"]!
    let upToDate = "electric-up-to-date" in initial.headers
    while (!upToDate) {
      const next = await get(`${shapeUrl}&offset=${offset}&handle=${handle}`)
      offset = next.headers["electric-offset"]!
      upToDate = "electric-up-to-date" in next.headers
    }
    const live = `${shapeUrl}&offset=${offset}&handle=${handle}&live=true&cursor=1`
    const origins = Array.from({ length: 20 }, (_, i) => `https://client${i}.example`)
    const held = origins.map((origin) => get(live, { origin }))
    // An etag matching nothing leaves the request to its fiber, which would answer a matching one 304.
    const byFiber = get(live, { origin: "https://fiber.example", "if-none-match": `"none"` })
    // Whether a request is held when the commit lands or arrives after it, its answer is the same.
    await new Promise((r) => setTimeout(r, 300))
    await write()

    const fiber = await byFiber
    expect(fiber.status).toBe(200)
    expect(fiber.headers["electric-up-to-date"]).toBe("")
    for (const [i, reply] of (await Promise.all(held)).entries()) {
      expect(reply.status).toBe(200)
      expect(reply.body).toBe(fiber.body)
      expect(shared(reply)).toEqual(shared(fiber))
      expect(reply.headers["access-control-allow-origin"]).toBe(origins[i])
      expect(reply.headers["electric-cursor"]).toMatch(/^\d+$/)
      expect(reply.headers["electric-cursor"]).not.toBe("1")
    }
    return JSON.parse(fiber.body) as Array<{ value?: { v?: string }; headers: Record<string, unknown> }>
  }

  it("get the bytes and headers their own fiber gives, each with its own CORS headers and a new cursor", async () => {
    const messages = await heldAcross(() => pool.query(`UPDATE ${TABLE} SET v = 'changed' WHERE id = 3`))
    expect(messages[0]!.value?.v).toBe("changed")
    expect(messages.at(-1)!.headers["control"]).toBe("up-to-date")
  })

  it("get a commit larger than a read held whole (written from the bytes they share) as their fiber gives it", async () => {
    // 10 rows of 40 kB: past the 256 kB up to which a read of the files is held whole.
    const messages = await heldAcross(() => pool.query(`UPDATE ${TABLE} SET v = repeat('large ', 6700) || id`))
    // Sorted: Postgres updates them in the table's physical order, which the test before changed.
    expect(messages.filter((m) => m.headers["operation"] === "update").map((m) => m.value?.v).sort())
      .toEqual(Array.from({ length: 10 }, (_, i) => `${"large ".repeat(6700)}${i + 1}`).sort())
    expect(messages.at(-1)!.headers["control"]).toBe("up-to-date")
  })
})

describe("long-polls whose timeout and commits land together", () => {
  let server: RunningSyncline

  beforeAll(async () => {
    server = await startSyncline({ streamId: STREAM_RACE, settings: { longPollTimeoutMs: 40 } })
  })

  afterAll(async () => {
    await server?.stop()
    await dropReplication(pool, STREAM_RACE)
  })

  it("are answered once each, and the official client follows every change", async () => {
    const rows = async () =>
      (await pool.query(`SELECT id, v FROM ${TABLE_RACE} ORDER BY id`)).rows.map((r) => ({ ...r }))
    const clients = Array.from({ length: 8 }, () => {
      const stream = new ShapeStream({ url: `${server.baseUrl}/v1/shape`, params: { table: TABLE_RACE } })
      return { stream, shape: new Shape(stream as never) }
    })
    const errors: Array<unknown> = []
    for (const { stream } of clients) stream.subscribe(() => undefined, (error) => errors.push(error))
    try {
      await Promise.all(clients.map(({ shape }) => shape.rows))
      // Commits every few milliseconds for two seconds, against long-polls that time out every 40.
      for (let i = 0; i < 120; i++) {
        await pool.query(`UPDATE ${TABLE_RACE} SET v = $2 WHERE id = $1`, [1 + (i * 7) % 50, `v${i}`])
        await new Promise((r) => setTimeout(r, 5 + (i % 4) * 7))
      }
      const expected = await rows()
      const sorted = (rs: ReadonlyArray<Record<string, unknown>>) => [...rs].sort((a, b) => (a.id as number) - (b.id as number))
      for (const deadline = Date.now() + 30_000;;) {
        if (clients.every(({ shape }) => JSON.stringify(sorted(shape.currentRows)) === JSON.stringify(expected))) break
        if (Date.now() > deadline) break
        await new Promise((r) => setTimeout(r, 50))
      }
      for (const { shape } of clients) expect(sorted(shape.currentRows)).toEqual(expected)
      expect(errors).toEqual([])
    } finally {
      for (const { stream } of clients) stream.unsubscribeAll()
    }
  })
})
