import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, itemsTable, type RawReply, send as sendTo, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

/**
 * A NUL byte in a query parameter, against the real server. libpg-query reads the where clause
 * as a C string, so a NUL used to end the clause where it stood: a proxy appending a tenant
 * filter after a client's where could be bypassed, and a definition with a NUL shared the
 * handle of the one cut short. Postgres refuses NUL in any text, so one in a value it receives
 * became a 503 the client retried for ever. Every NUL is now a 400 naming its parameter.
 */

const STREAM = "nul_bytes"
const TABLE = "nul_items"

let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await itemsTable(pool, TABLE, `SELECT i, 'row ' || i FROM generate_series(1, 6) i`)
  server = await startSyncline({ streamId: STREAM })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

/** `query` is sent as written, so `%00` reaches the server as a percent-encoded NUL. */
const send = (path: string, query: string, method = "GET"): Promise<RawReply> => sendTo(server.baseUrl, method, path, query)

const shape = (query: string, method = "GET") => send("/v1/shape", query, method)

const rowIds = (reply: RawReply): Array<unknown> =>
  (JSON.parse(reply.text) as Array<{ key?: string; value?: { id: unknown } }>)
    .filter((m) => m.key !== undefined)
    .map((m) => m.value?.id)

const expectRefused = (reply: RawReply, errors: Record<string, Array<string>>) => {
  expect({ status: reply.status, body: reply.text }).toEqual({
    status: 400,
    body: JSON.stringify({ message: "Invalid request", errors })
  })
}

const VALUE = "must not contain a NUL byte"
const base = `table=${TABLE}&offset=-1`
const where = (text: string) => `${base}&where=${encodeURIComponent(text)}`

describe("a NUL byte in a query parameter", () => {
  it("does not end the where clause early: the filter after it is not dropped", async () => {
    const filtered = await shape(where("(true) AND id = 5"))
    expect(filtered.status).toBe(200)
    expect(rowIds(filtered)).toEqual(["5"])

    expectRefused(await shape(where("(true)\u0000) AND id = 5")), { where: [VALUE] })
  })

  it("does not give a where clause the handle of its prefix", async () => {
    const one = await shape(where("id=1"))
    expect(one.status).toBe(200)
    expect(rowIds(one)).toEqual(["1"])

    expectRefused(await shape(where("id=1\u0000 OR 1=1")), { where: [VALUE] })
  })

  it("in a parameter value is a 400 on params, not a 503", async () => {
    const ok = await shape(`${where("v = $1")}&params%5B1%5D=row%202`)
    expect(ok.status).toBe(200)
    expect(rowIds(ok)).toEqual(["2"])

    expectRefused(await shape(`${where("v = $1")}&params%5B1%5D=a%00b`), {
      params: ["parameter values must not contain a NUL byte, got one for 1"]
    })
    expectRefused(await shape(`${where("v = $1")}&params=${encodeURIComponent(`{"1":"a\\u0000b"}`)}`), {
      params: ["parameter values must not contain a NUL byte, got one for 1"]
    })
  })

  it("in any parameter, known or not, name or value, is a 400 naming it", async () => {
    expectRefused(await shape(`${base}&customParam=x%00`), { customParam: [VALUE] })
    expectRefused(await shape(`${base}&cus%00tom=1`), { "cus\u0000tom": ["parameter names must not contain a NUL byte"] })
    expectRefused(await shape(`table=${TABLE}%00&offset=-1`), { table: [VALUE] })
    expectRefused(await shape(`${base}&columns=id%00`), { columns: [VALUE] })
    expectRefused(await shape(`${base}&secret=%00`), { secret: [VALUE] })
    const head = await shape(`${base}&where=%00`, "HEAD")
    expect(head.status).toBe(400)
  })

  it("makes DELETE refuse instead of deleting the shape of the clause cut short", async () => {
    const one = await shape(where("id=3"))
    expect(one.status).toBe(200)
    const handle = one.headers.get("electric-handle")

    expectRefused(await shape(`table=${TABLE}&where=id%3D3%00%20OR%201%3D1`, "DELETE"), { where: [VALUE] })
    expectRefused(await shape(`handle=${handle}%00`, "DELETE"), { handle: [VALUE] })

    const again = await shape(where("id=3"))
    expect(again.status).toBe(200)
    expect(again.headers.get("electric-handle")).toBe(handle)
  })

  it("makes the admin restart refuse", async () => {
    const reply = await send("/v1/admin/restart", "note=%00", "POST")
    expectRefused(reply, { note: [VALUE] })
  })
})
