import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { follow } from "../support/follow.js"
import { type CachingProxy, type ProxyLogEntry, startCachingProxy } from "../support/nginx.js"
import { dropReplication, itemsTable, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

const STREAM = "caching_proxy"
const TABLES = ["cproxy_catchup", "cproxy_etag", "cproxy_live", "cproxy_refetch", "cproxy_sse"] as const
let server: RunningSyncline
let proxy: CachingProxy
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  for (const table of TABLES) await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 20) i`)
  // Catch-up responses stay fresh for the whole file, so a second request is a HIT however slow the machine.
  // A short SSE keep-alive: nginx notices a client gone from an SSE stream at its next write.
  server = await startSyncline({ streamId: STREAM, settings: { cacheMaxAge: 60, sseKeepAliveMs: 500 } })
  proxy = await startCachingProxy(server.baseUrl)
}, 600_000) // the first run on a machine may install nginx

afterAll(async () => {
  await proxy?.stop()
  await server?.stop()
  await dropReplication(pool, STREAM)
  for (const table of TABLES) await pool.query(`DROP TABLE IF EXISTS ${table}`)
  await pool.end()
})

interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
}

/** `/v1/shape` with `query` in the order the official client sends it (sorted). */
const shapePath = (query: Record<string, string>): string => {
  const params = new URLSearchParams(query)
  params.sort()
  return `/v1/shape?${params}`
}

const get = async (baseUrl: string, path: string, headers: Record<string, string> = {}): Promise<Reply> => {
  const res = await fetch(`${baseUrl}${path}`, { headers })
  return { status: res.status, headers: res.headers, text: await res.text() }
}

const viaProxy = (path: string, headers: Record<string, string> = {}) => get(proxy.baseUrl, path, headers)

const waitFor = async <A>(what: string, attempt: () => Promise<A | undefined>, timeoutMs = 20_000): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const result = await attempt()
    if (result !== undefined) return result
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/**
 * nginx's log lines for `path` once there are `count` of them: a line is written only after its
 * response has gone out, so the last may lag a moment behind the client.
 */
const logged = (path: string, count: number): Promise<ReadonlyArray<ProxyLogEntry>> =>
  waitFor(`${count} log lines for ${path}`, async () => {
    const lines = (await proxy.log()).filter((e) => e.uri === path)
    return lines.length >= count ? lines : undefined
  })

/** Checks how many of the `count` requests for `path` nginx sent on to the service. */
const expectServiceRequests = async (path: string, count: number, reachedService: number) => {
  const lines = await logged(path, count)
  expect(lines.filter((e) => e.reachedService).length, JSON.stringify(lines)).toBe(reachedService)
}

const keysOf = (body: string): ReadonlyArray<string> =>
  (JSON.parse(body) as ReadonlyArray<{ key?: string }>).flatMap((m) => (m.key === undefined ? [] : [m.key]))

const rowKey = (table: string, id: number) => `"public"."${table}"/"${id}"`

describe("nginx configured as README.md shows, in front of the service", () => {
  it("serves the second identical catch-up request from its cache, with the same body, and asks the service once", async () => {
    const table = "cproxy_catchup"
    /** Two identical requests through the proxy: the first reaches the service, the second is the cached copy. */
    const cachedOnce = async (
      path: string,
      origins: readonly [string, string] = ["https://app.example", "https://app.example"]
    ) => {
      const first = await viaProxy(path, { origin: origins[0] })
      expect(first.status).toBe(200)
      expect(first.headers.get("x-cache")).toBe("MISS")
      const second = await viaProxy(path, { origin: origins[1] })
      expect(second.status).toBe(200)
      expect(second.headers.get("x-cache")).toBe("HIT")
      expect(second.text).toBe(first.text)
      for (const header of ["electric-handle", "electric-offset", "electric-schema", "etag"]) {
        expect(second.headers.get(header), header).toBe(first.headers.get(header))
      }
      expect(first.headers.get("access-control-allow-origin")).toBe(origins[0])
      expect(second.headers.get("access-control-allow-origin")).toBe(origins[1])
      await expectServiceRequests(path, 2, 1)
      return first
    }
    /** The catch-up after `previous`, once the service holds row `id` there (asked directly: the proxy sees it once). */
    const catchUpWith = async (previous: Reply, id: number) => {
      await pool.query(`INSERT INTO ${table} VALUES (${id}, 'after the snapshot')`)
      const path = shapePath({
        handle: previous.headers.get("electric-handle")!,
        log: "full",
        offset: previous.headers.get("electric-offset")!,
        table
      })
      await waitFor(`row ${id} at the service`, async () =>
        keysOf((await get(server.baseUrl, path)).text).includes(rowKey(table, id)) ? true : undefined)
      return path
    }

    // Another site gets the same cached body, with its own origin allowed.
    const initial = await cachedOnce(shapePath({ log: "full", offset: "-1", table }), [
      "https://one.example",
      "https://two.example"
    ])
    expect(keysOf(initial.text)).toHaveLength(20)
    // From the first chunk's end, then from a commit's offset.
    const afterSnapshot = await cachedOnce(await catchUpWith(initial, 21))
    expect(keysOf(afterSnapshot.text)).toEqual([rowKey(table, 21)])
    expect(afterSnapshot.headers.has("electric-up-to-date")).toBe(true)
    expect(afterSnapshot.headers.get("electric-offset")).toMatch(/^[1-9][0-9]*_[0-9]+$/)
    const afterCommit = await cachedOnce(await catchUpWith(afterSnapshot, 22))
    expect(keysOf(afterCommit.text)).toEqual([rowKey(table, 22)])
  })

  it("keeps no error: each bad request reaches the service", async () => {
    const path = shapePath({ offset: "not-an-offset", table: "cproxy_catchup" })
    for (let i = 0; i < 2; i++) {
      const reply = await viaProxy(path)
      expect(reply.status).toBe(400)
      expect(reply.headers.get("x-cache")).toBe("MISS")
    }
    await expectServiceRequests(path, 2, 2)
  })

  it("answers If-None-Match with the response's etag with a 304, and never keeps a 304 as a response", async () => {
    const table = "cproxy_etag"
    const initialPath = shapePath({ log: "full", offset: "-1", table })
    const initial = await viaProxy(initialPath)
    const catchUpPath = shapePath({
      handle: initial.headers.get("electric-handle")!,
      log: "full",
      offset: initial.headers.get("electric-offset")!,
      table
    })
    const full = await viaProxy(catchUpPath)
    expect(full.status).toBe(200)
    const etag = full.headers.get("etag")
    expect(etag).toMatch(/^".+"$/)

    const notModified = await viaProxy(catchUpPath, { "if-none-match": etag! })
    expect(notModified.status).toBe(304)
    expect(notModified.text).toBe("")
    expect(notModified.headers.get("etag")).toBe(etag)
    expect(notModified.headers.get("x-cache")).toBe("HIT")
    const otherEtag = await viaProxy(catchUpPath, { "if-none-match": `"${initial.headers.get("electric-handle")}:0_0:0_0"` })
    expect(otherEtag.status).toBe(200)
    expect(otherEtag.text).toBe(full.text)

    // A client that kept the etag of a response the proxy never held: the service's full answer
    // is what gets cached, and only this client gets the 304.
    const refetchedPath = shapePath({ log: "full", offset: "-1", table, where: "id > 0" })
    const direct = await get(server.baseUrl, refetchedPath)
    const conditional = await viaProxy(refetchedPath, { "if-none-match": direct.headers.get("etag")! })
    expect(conditional.status).toBe(304)
    expect(conditional.headers.get("x-cache")).toBe("MISS")
    const unconditional = await viaProxy(refetchedPath)
    expect(unconditional.status).toBe(200)
    expect(unconditional.headers.get("x-cache")).toBe("HIT")
    expect(unconditional.text).toBe(direct.text)
  })

  it("collapses identical live long-polls into one request to the service", async () => {
    const table = "cproxy_live"
    const initial = await viaProxy(shapePath({ log: "full", offset: "-1", table }))
    const handle = initial.headers.get("electric-handle")!
    const caughtUp = await viaProxy(shapePath({ handle, log: "full", offset: initial.headers.get("electric-offset")!, table }))
    expect(caughtUp.headers.has("electric-up-to-date")).toBe(true)
    // The first live request (empty cursor, as the official client sends it) names the cursor
    // every client of this long-poll window sends next.
    await pool.query(`INSERT INTO ${table} VALUES (21, 'first live change')`)
    const firstLive = await viaProxy(
      shapePath({ cursor: "", handle, live: "true", log: "full", offset: caughtUp.headers.get("electric-offset")!, table })
    )
    expect(keysOf(firstLive.text)).toEqual([rowKey(table, 21)])
    const livePath = shapePath({
      cursor: firstLive.headers.get("electric-cursor")!,
      handle,
      live: "true",
      log: "full",
      offset: firstLive.headers.get("electric-offset")!,
      table
    })

    const clients = 10
    const polls = Array.from({ length: clients }, () => viaProxy(livePath))
    // Let the long-polls reach nginx before the change they wait for.
    await new Promise((r) => setTimeout(r, 500))
    await pool.query(`INSERT INTO ${table} VALUES (22, 'seen by every client')`)
    const replies = await Promise.all(polls)

    for (const reply of replies) {
      expect(reply.status).toBe(200)
      expect(keysOf(reply.text)).toEqual([rowKey(table, 22)])
      expect(reply.text).toBe(replies[0]!.text)
    }
    const cacheStatuses = replies.map((r) => r.headers.get("x-cache")).sort()
    expect(cacheStatuses).toEqual([...Array<string>(clients - 1).fill("HIT"), "MISS"])
    await expectServiceRequests(livePath, clients, 1)
  })

  it("passes an SSE stream through unbuffered and uncached: each change arrives while the stream is open", async () => {
    const table = "cproxy_sse"
    const initial = await viaProxy(shapePath({ log: "full", offset: "-1", table }))
    const handle = initial.headers.get("electric-handle")!
    const caughtUp = await viaProxy(shapePath({ handle, log: "full", offset: initial.headers.get("electric-offset")!, table }))
    const ssePath = shapePath({
      cursor: "",
      experimental_live_sse: "true",
      handle,
      live: "true",
      live_sse: "true",
      log: "full",
      offset: caughtUp.headers.get("electric-offset")!,
      table
    })
    const readers = [0, 1].map(async () => {
      const controller = new AbortController()
      const res = await fetch(`${proxy.baseUrl}${ssePath}`, { headers: { accept: "text/event-stream" }, signal: controller.signal })
      return { res, controller, reader: res.body!.getReader(), text: "" }
    })
    const streams = await Promise.all(readers)
    try {
      for (const { res } of streams) {
        expect(res.status).toBe(200)
        expect(res.headers.get("content-type")).toContain("text/event-stream")
        expect(res.headers.get("x-cache")).toBeNull()
      }
      const decoder = new TextDecoder()
      for (const id of [21, 22]) {
        await pool.query(`INSERT INTO ${table} VALUES (${id}, 'streamed')`)
        // Both streams (the second would wait behind a cache lock) get the event before the server ends them.
        for (const stream of streams) {
          while (!stream.text.includes(`"${rowKey(table, id).replace(/"/g, '\\"')}"`)) {
            const chunk = await stream.reader.read()
            expect(chunk.done, `the stream ended before row ${id} arrived: ${stream.text}`).toBe(false)
            stream.text += decoder.decode(chunk.value, { stream: true })
          }
        }
      }
      for (const stream of streams) expect(stream.text).toMatch(/"control":"up-to-date"/)
      // Both streams are still open (nginx logs a request once its response has ended): the events were not
      // held back until the end.
      expect((await proxy.log()).filter((e) => e.uri === ssePath)).toHaveLength(0)
    } finally {
      for (const stream of streams) stream.controller.abort()
    }
    // Not stored: both reached the service.
    await expectServiceRequests(ssePath, 2, 2)
  })

  it("a client behind the cache reaches the new handle after the shape is deleted and ends equal to Postgres", async () => {
    const table = "cproxy_refetch"
    const client = follow(pool, proxy.baseUrl, table)
    try {
      await client.equalsPostgres()
      const oldHandle = client.handles.at(-1)!
      const deleted = await fetch(`${server.baseUrl}/v1/shape?table=${table}`, { method: "DELETE" })
      expect(deleted.status).toBe(202)
      await pool.query(`INSERT INTO ${table} SELECT i, 'late ' || i FROM generate_series(21, 25) i`)
      await pool.query(`UPDATE ${table} SET v = 'renamed' WHERE id % 3 = 0`)
      await pool.query(`DELETE FROM ${table} WHERE id % 4 = 0`)
      await client.equalsPostgres()
      const newHandle = client.handles.at(-1)!
      expect(newHandle).not.toBe(oldHandle)
      expect(client.statuses).toContain(409)
      expect(client.failures.every((f) => f.startsWith("409 "))).toBe(true)

      // A client that never saw the old handle (another browser) starts from the first chunk the
      // proxy still holds, then follows the protocol until the service's 409 names the new handle.
      const firstPath = (await proxy.log()).find((e) => e.uri.includes(`table=${table}`) && e.uri.includes("offset=-1"))!.uri
      const stale = await viaProxy(firstPath)
      expect(stale.headers.get("x-cache")).toBe("HIT")
      expect(stale.headers.get("electric-handle")).toBe(oldHandle)
      let reply = stale
      let query: Record<string, string> = {}
      for (let i = 0; reply.status !== 409; i++) {
        expect(reply.status, `request ${i}: ${query["offset"]}`).toBe(200)
        expect(i).toBeLessThan(20)
        const live = query["live"] !== undefined || reply.headers.has("electric-up-to-date")
        query = {
          ...(live ? { cursor: reply.headers.get("electric-cursor") ?? "", live: "true" } : {}),
          handle: reply.headers.get("electric-handle")!,
          log: "full",
          offset: reply.headers.get("electric-offset")!,
          table
        }
        reply = await viaProxy(shapePath(query))
      }
      expect(reply.headers.get("electric-handle")).toBe(newHandle)
      const fresh = await viaProxy(shapePath({ handle: newHandle, log: "full", offset: "-1", table }))
      expect(fresh.status).toBe(200)
      expect(fresh.headers.get("electric-handle")).toBe(newHandle)

      await pool.query(`UPDATE ${table} SET v = 'after the refetch' WHERE id = 1`)
      await client.equalsPostgres()
    } finally {
      client.stop()
    }
  })
})
