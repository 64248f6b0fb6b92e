import { Option, Redacted } from "effect"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, itemsTable, type RawReply, send as sendTo, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

/**
 * `ELECTRIC_SECRET` on every endpoint that acts, under every spelling of its path that the
 * router accepts (it matches case-insensitively, ignores repeated and trailing slashes and
 * decodes percent-escapes, as the protocol requires for `/v1/shape`). Only health, `GET /` and
 * preflights stay open. The server has integration testing on, so DELETE and restart act.
 */

const STREAM = "auth_secret"
const TABLE = "auth_items"
const SECRET = "s3cret-with-some-length"

let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await itemsTable(pool, TABLE, `VALUES (1, 'one')`)
  server = await startSyncline({
    streamId: STREAM,
    settings: { secret: Option.some(Redacted.make(SECRET)), enableIntegrationTesting: true }
  })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const send = (method: string, path: string, query = ""): Promise<RawReply> => sendTo(server.baseUrl, method, path, query)

const UNAUTHORIZED = JSON.stringify({ message: "Unauthorized - Invalid API secret" })

/** Every way of presenting no secret or a wrong one. */
const BAD_SECRETS = [
  "",
  "secret=",
  "secret=wrong",
  `secret=${SECRET.slice(0, -1)}`,
  `secret=${SECRET}x`,
  `secret=${SECRET.toUpperCase()}`,
  "api_secret=wrong",
  `secret=wrong&api_secret=${SECRET}`
]

const RESTART_PATHS = [
  "/v1/admin/restart",
  "/V1/ADMIN/RESTART",
  "/v1/admin//restart",
  "/v1/admin/%72estart",
  "/v1/admin/restart/",
  "//v1/admin/restart"
]
const SHAPE_PATHS = ["/v1/shape", "/V1/SHAPE", "/v1//shape", "/v1/%73hape", "/v1/shape/"]

const waitActive = async () => {
  const deadline = Date.now() + 30_000
  for (;;) {
    const reply = await send("GET", "/v1/health")
    if (reply.status === 200) return
    if (Date.now() > deadline) throw new Error(`the stack did not become active again: ${reply.status} ${reply.text}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

describe("the API secret", () => {
  it("guards POST /v1/admin/restart under every spelling of its path", async () => {
    for (const path of RESTART_PATHS) {
      for (const query of BAD_SECRETS) {
        const reply = await send("POST", path, query)
        expect({ path, query, status: reply.status, body: reply.text }).toEqual({
          path,
          query,
          status: 401,
          body: UNAUTHORIZED
        })
      }
    }
    // Nothing was restarted: the stack stayed active throughout.
    expect((await send("GET", "/v1/health")).status).toBe(200)
  })

  it("lets POST /v1/admin/restart through with the secret, under every spelling of its path", async () => {
    for (const [i, path] of RESTART_PATHS.entries()) {
      const query = i % 2 === 0 ? `secret=${SECRET}` : `api_secret=${SECRET}`
      const reply = await send("POST", path, query)
      expect({ path, status: reply.status }).toEqual({ path, status: 202 })
      await waitActive()
    }
  })

  it("guards DELETE, GET and HEAD /v1/shape under every spelling of its path", async () => {
    const created = await send("GET", "/v1/shape", `table=${TABLE}&offset=-1&secret=${SECRET}`)
    expect(created.status).toBe(200)
    const handle = created.headers.get("electric-handle")!
    for (const path of SHAPE_PATHS) {
      for (const bad of BAD_SECRETS) {
        for (const [method, query] of [
          ["DELETE", `table=${TABLE}`],
          ["DELETE", `handle=${handle}`],
          ["GET", `table=${TABLE}&offset=-1`],
          ["HEAD", `table=${TABLE}&offset=-1`]
        ] as const) {
          const full = bad === "" ? query : `${query}&${bad}`
          const reply = await send(method, path, full)
          expect({ method, path, full, status: reply.status }).toEqual({ method, path, full, status: 401 })
          if (method !== "HEAD") expect(reply.text).toBe(UNAUTHORIZED)
        }
      }
    }
    // No DELETE went through: the shape still has its handle.
    const again = await send("GET", "/v1/shape", `table=${TABLE}&offset=-1&secret=${SECRET}`)
    expect(again.headers.get("electric-handle")).toBe(handle)
  })

  it("lets DELETE /v1/shape through with the secret, under every spelling of its path", async () => {
    for (const path of SHAPE_PATHS) {
      const created = await send("GET", path, `table=${TABLE}&offset=-1&api_secret=${SECRET}`)
      expect({ path, status: created.status }).toEqual({ path, status: 200 })
      const deleted = await send("DELETE", path, `table=${TABLE}&secret=${SECRET}`)
      expect({ path, status: deleted.status }).toEqual({ path, status: 202 })
    }
  })

  it("leaves health, GET / and preflights open, and unknown paths 404", async () => {
    const health = await send("GET", "/v1/health")
    expect(health.status).toBe(200)
    expect(JSON.parse(health.text)).toEqual({ status: "active" })
    expect((await send("GET", "/")).status).toBe(200)
    expect((await send("OPTIONS", "/v1/shape")).status).toBe(204)
    for (const [method, path] of [["GET", "/v1/nothing"], ["POST", "/v1/admin/other"], ["GET", "/v1/admin/restart"]]) {
      const reply = await send(method!, path!)
      expect({ method, path, status: reply.status, body: reply.text }).toEqual({ method, path, status: 404, body: "Not found" })
    }
  })
})

describe("HEAD /v1/health", () => {
  it("answers like GET: the same status and headers, no body", async () => {
    const get = await send("GET", "/v1/health")
    const head = await send("HEAD", "/v1/health")
    expect(head.status).toBe(get.status)
    expect(head.text).toBe("")
    // The date moves on, and the connection headers follow the client's choice (fetch closes after a HEAD).
    const PER_EXCHANGE = new Set(["date", "connection", "keep-alive"])
    const endToEnd = (headers: Headers) => [...headers.entries()].filter(([name]) => !PER_EXCHANGE.has(name))
    expect(endToEnd(head.headers)).toEqual(endToEnd(get.headers))
    expect(endToEnd(head.headers).map(([name]) => name)).toEqual(
      expect.arrayContaining(["cache-control", "content-length", "content-type", "electric-server"])
    )
  })
})
