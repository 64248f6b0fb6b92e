import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Running, startHosted } from "../support/hosted.js"
import { dropReplication, itemsTable, startSyncline, testPool } from "../support/syncline.js"

/**
 * Catch-up responses whose bytes never change are served again from memory to
 * the next request for the same URL: the same bytes and headers as the first
 * answer, the CORS headers of each request, 304s, and never once the shape is gone.
 * The service's own server answers them before the Effect handler; a host app
 * that mounts the shape API in its own server gets them from the API.
 */

const TABLE = "settled_rows"

let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await itemsTable(pool, TABLE, `SELECT i, repeat('x', 200) FROM generate_series(1, 60) i`)
})

afterAll(async () => {
  await pool.query(`DROP TABLE IF EXISTS ${TABLE}`)
  await pool.end()
})

/** The headers of a response, but the date. */
const headersOf = (headers: Headers): Record<string, string> =>
  Object.fromEntries([...headers.entries()].filter(([name]) => name !== "date"))

describe.each([
  {
    server: "the service's own server",
    stream: "settled_responses",
    start: (stream: string) => startSyncline({ streamId: stream, settings: { chunkBytesThreshold: 4000 } })
  },
  { server: "a host app's server", stream: "settled_hosted", start: (stream: string) => startHosted(stream, { chunkBytesThreshold: 4000 }) }
])("settled catch-up responses, on $server", ({ start, stream }) => {
  let server: Running

  beforeAll(async () => {
    server = await start(stream)
  })

  afterAll(async () => {
    await server?.stop()
    await dropReplication(pool, stream)
  })

  const get = async (query: string, headers: Record<string, string> = {}) => {
    const res = await fetch(`${server.baseUrl}/v1/shape?${query}`, { headers })
    return { status: res.status, headers: res.headers, body: await res.text() }
  }

  it("are answered again alike, with each request's CORS headers, 304s, and a 409 once the shape is gone", async () => {
    const first = await get(`table=${TABLE}&offset=-1`)
    expect(first.status).toBe(200)
    const handle = first.headers.get("electric-handle")!
    expect(first.headers.get("electric-offset")).toBe("0_0")
    // Snapshot chunk 1 of several: settled bytes.
    const url = `table=${TABLE}&offset=0_0&handle=${handle}`
    const a = await get(url, { origin: "https://one.example" })
    const b = await get(url, { origin: "https://two.example" })
    expect(a.status).toBe(200)
    expect(b.body).toBe(a.body)
    expect(JSON.parse(a.body).length).toBeGreaterThan(5)
    expect(a.headers.get("access-control-allow-origin")).toBe("https://one.example")
    expect(b.headers.get("access-control-allow-origin")).toBe("https://two.example")
    const { "access-control-allow-origin": _a, ...restA } = headersOf(a.headers)
    const { "access-control-allow-origin": _b, ...restB } = headersOf(b.headers)
    expect(restB).toEqual(restA)
    expect(restA["electric-offset"]).toBe("0_1")
    expect(restA["electric-schema"]).toBeDefined()
    expect(restA["electric-up-to-date"]).toBeUndefined()

    const notModified = await get(url, { "if-none-match": a.headers.get("etag")! })
    expect(notModified.status).toBe(304)
    expect(notModified.headers.get("etag")).toBe(a.headers.get("etag"))
    expect(notModified.headers.get("electric-schema")).toBeNull()

    const removed = await fetch(`${server.baseUrl}/v1/shape?table=${TABLE}&handle=${handle}`, { method: "DELETE" })
    expect(removed.status).toBe(202)
    const after = await get(url)
    expect(after.status).toBe(409)
    const current = after.headers.get("electric-handle")
    expect(current).not.toBeNull()
    expect(current).not.toBe(handle)
  })

  it("are told apart by their definition: the same handle with another definition is a 409", async () => {
    const first = await get(`table=${TABLE}&offset=-1&where=${encodeURIComponent("id > 0")}`)
    const handle = first.headers.get("electric-handle")!
    const url = (where: string) => `table=${TABLE}&offset=0_0&handle=${handle}&where=${encodeURIComponent(where)}`
    expect((await get(url("id > 0"))).status).toBe(200)
    expect((await get(url("id > 0"))).status).toBe(200)
    const other = await get(url("id > 1"))
    expect(other.status).toBe(409)
  })
})
