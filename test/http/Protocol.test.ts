import { Option, Redacted } from "effect"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

/**
 * The MUST items of protocol.md §14 (plus error bodies, auth, etag and
 * cache-control), checked over raw HTTP against the real server.
 */

const STREAM = "proto_main"
/** Integration testing off, a secret, and an upstream-length long-poll. */
const STREAM_LOCKED = "proto_locked"
const SECRET = "s3cret"

let server: RunningSyncline
let locked: RunningSyncline
let pool: pg.Pool

const TABLES = [
  "proto_params",
  "proto_handle",
  "proto_headers",
  "proto_chunks",
  "proto_empty",
  "proto_lp",
  "proto_wake",
  "proto_values",
  "proto_schema",
  "proto_keys",
  "proto_comp",
  "proto_stale",
  "proto_share",
  "proto_offsets",
  "proto_del",
  "proto_cors",
  "proto_cache",
  "proto_now"
]

beforeAll(async () => {
  pool = testPool()
  for (const t of TABLES) await pool.query(`DROP TABLE IF EXISTS ${t}`)
  for (const t of TABLES) {
    if (t === "proto_values") {
      await pool.query(`CREATE TABLE ${t} (id int PRIMARY KEY, n int, b bool, j jsonb, f float8, big int8, t text)`)
    } else if (t === "proto_schema") {
      await pool.query(`CREATE TABLE ${t} (id int PRIMARY KEY, tags int4[], name text NOT NULL, note text)`)
    } else if (t === "proto_comp") {
      await pool.query(`CREATE TABLE ${t} (id int, a text, v text, PRIMARY KEY (id, a))`)
    } else {
      await pool.query(`CREATE TABLE ${t} (id int PRIMARY KEY, v text)`)
    }
  }
  for (const t of ["proto_params", "proto_handle", "proto_headers", "proto_share", "proto_cors", "proto_cache"]) {
    await pool.query(`INSERT INTO ${t} SELECT i, 'row ' || i FROM generate_series(1, 3) i`)
  }
  // About 30 kB of rows against a 4 kB chunk threshold: several snapshot chunks.
  await pool.query(`INSERT INTO proto_chunks SELECT i, repeat('x', 100) FROM generate_series(1, 200) i`)
  await pool.query(`INSERT INTO proto_values VALUES (1, 42, true, '{"a": [1, 2]}', 1.5, 9007199254740993, NULL)`)
  await pool.query(`INSERT INTO proto_schema VALUES (1, '{1,2}', 'n', NULL)`)
  await pool.query(`INSERT INTO proto_keys VALUES (1, 'a')`)
  await pool.query(`INSERT INTO proto_comp VALUES (1, 'a', 'x')`)
  ;[server, locked] = await Promise.all([
    startSyncline({ streamId: STREAM, settings: { longPollTimeoutMs: 1500, chunkBytesThreshold: 4000 } }),
    startSyncline({
      streamId: STREAM_LOCKED,
      settings: { enableIntegrationTesting: false, secret: Option.some(Redacted.make(SECRET)), longPollTimeoutMs: 20_000 }
    })
  ])
})

afterAll(async () => {
  await server?.stop()
  await locked?.stop()
  await dropReplication(pool, STREAM)
  await dropReplication(pool, STREAM_LOCKED)
  await pool.end()
})

type Message = {
  readonly key?: string
  readonly value?: Record<string, unknown>
  readonly headers: Record<string, unknown>
}

interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
  readonly ms: number
}

type Query = string | Record<string, string>

const queryString = (query: Query): string => (typeof query === "string" ? query : new URLSearchParams(query).toString())

const request = async (
  base: string,
  path: string,
  query: Query,
  init: RequestInit = {}
): Promise<Reply> => {
  const started = Date.now()
  const res = await fetch(`${base}${path}?${queryString(query)}`, init)
  const text = await res.text()
  return { status: res.status, headers: res.headers, text, ms: Date.now() - started }
}

const shape = (query: Query, init: RequestInit = {}) => request(server.baseUrl, "/v1/shape", query, init)

const messages = (reply: Reply): Array<Message> => {
  const body = JSON.parse(reply.text) as unknown
  if (!Array.isArray(body)) throw new Error(`expected a JSON array, got ${reply.text}`)
  return body as Array<Message>
}

const isControl = (m: Message, control: string) => m.headers["control"] === control
const changes = (ms: ReadonlyArray<Message>) => ms.filter((m) => m.key !== undefined)
const endsUpToDate = (ms: ReadonlyArray<Message>) => ms.length > 0 && isControl(ms[ms.length - 1]!, "up-to-date")

const header = (reply: Reply, name: string): string => {
  const value = reply.headers.get(name)
  if (value === null) throw new Error(`missing header ${name} (status ${reply.status}: ${reply.text})`)
  return value
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Synced {
  readonly handle: string
  readonly offset: string
  readonly replies: Array<Reply>
  readonly messages: Array<Message>
}

/** Follows non-live requests from `-1` until a batch ends in up-to-date. */
const syncToEnd = async (table: string, extra: Record<string, string> = {}): Promise<Synced> => {
  const replies: Array<Reply> = []
  const all: Array<Message> = []
  let reply = await shape({ table, offset: "-1", ...extra })
  for (let i = 0; i < 200; i++) {
    expect(reply.status).toBe(200)
    replies.push(reply)
    const batch = messages(reply)
    all.push(...batch)
    if (endsUpToDate(batch)) {
      return { handle: header(reply, "electric-handle"), offset: header(reply, "electric-offset"), replies, messages: all }
    }
    reply = await shape({
      table,
      ...extra,
      handle: header(reply, "electric-handle"),
      offset: header(reply, "electric-offset")
    })
  }
  throw new Error("never reached up-to-date")
}

/** Non-live catch-up from `offset` until `done` holds for the changes seen, within a bounded wait. */
const catchUpUntil = async (
  table: string,
  handle: string,
  offset: string,
  done: (changes: ReadonlyArray<Message>) => boolean
): Promise<{ offset: string; messages: Array<Message>; replies: Array<Reply> }> => {
  const seen: Array<Message> = []
  const replies: Array<Reply> = []
  const deadline = Date.now() + 15_000
  let current = offset
  for (;;) {
    const reply = await shape({ table, handle, offset: current })
    expect(reply.status).toBe(200)
    replies.push(reply)
    seen.push(...messages(reply))
    current = header(reply, "electric-offset")
    if (done(changes(seen)) && endsUpToDate(messages(reply))) return { offset: current, messages: seen, replies }
    if (Date.now() > deadline) throw new Error(`timed out catching up on ${table}`)
    if (endsUpToDate(messages(reply))) await sleep(50)
  }
}

/** `<tx>_<op>` as numbers; `inf` (end of a tx, e.g. `0_inf`) sorts after every op. */
const parseOffset = (text: string): readonly [bigint, bigint] => {
  const [tx, op] = text.split("_")
  return [BigInt(tx!), op === "inf" ? BigInt(Number.MAX_SAFE_INTEGER) + 1n : BigInt(op!)]
}

const compareOffsets = (a: string, b: string): number => {
  const [atx, aop] = parseOffset(a)
  const [btx, bop] = parseOffset(b)
  if (atx !== btx) return atx < btx ? -1 : 1
  return aop === bop ? 0 : aop < bop ? -1 : 1
}

describe("protocol.md §14 over raw HTTP", () => {
  it("1. ignores unknown params, treats live as true unless 'false', accepts an empty cursor", async () => {
    const table = "proto_params"
    const first = await shape({ table, offset: "-1", "cache-buster": "1-abc", expired_handle: "1-2", customParam: "x" })
    expect(first.status).toBe(200)
    expect(changes(messages(first))).toHaveLength(3)

    const { handle, offset } = await syncToEnd(table)
    const base = `table=${table}&handle=${encodeURIComponent(handle)}&offset=${offset}&cache-buster=9&customParam=y`
    const [bare, empty, explicit, emptyCursor] = await Promise.all([
      shape(`${base}&live`),
      shape(`${base}&live=`),
      shape(`${base}&live=true`),
      shape(`${base}&live=true&cursor=`)
    ])
    for (const reply of [bare, empty, explicit, emptyCursor]) {
      expect(reply.status).toBe(200)
      expect(reply.headers.has("electric-cursor")).toBe(true)
      expect(reply.headers.has("electric-schema")).toBe(false)
      expect(reply.headers.get("cache-control")).toBe("public, max-age=5, stale-while-revalidate=5")
    }
    expect(header(emptyCursor, "electric-cursor")).toMatch(/^\d+$/)

    const notLive = await shape(`${base}&live=false`)
    expect(notLive.status).toBe(200)
    expect(notLive.headers.has("electric-cursor")).toBe(false)
    expect(notLive.headers.has("electric-schema")).toBe(true)
    expect(endsUpToDate(messages(notLive))).toBe(true)
  })

  it("2. ignores any handle, even a bogus one, on offset=-1 and offset=now", async () => {
    const table = "proto_handle"
    const plain = await shape({ table, offset: "-1" })
    expect(plain.status).toBe(200)
    const handle = header(plain, "electric-handle")

    const bogus = await shape({ table, offset: "-1", handle: "12345-67890" })
    expect(bogus.status).toBe(200)
    expect(header(bogus, "electric-handle")).toBe(handle)
    expect(bogus.text).toBe(plain.text)

    const now = await shape({ table, offset: "now", handle: "12345-67890" })
    expect(now.status).toBe(200)
    expect(header(now, "electric-handle")).toBe(handle)
  })

  it("3. sends handle+offset on every 2xx, schema only when not live, cursor only when live", async () => {
    const table = "proto_headers"
    const synced = await syncToEnd(table)
    const nonLive: Array<Reply> = [...synced.replies]
    const live: Array<Reply> = []

    nonLive.push(await shape({ table, offset: "now" }))
    // A held live request woken by a write, then one that times out.
    const woken = shape({ table, handle: synced.handle, offset: synced.offset, live: "true", cursor: "" })
    await sleep(200)
    await pool.query(`INSERT INTO proto_headers VALUES (10, 'ten')`)
    let reply = await woken
    live.push(reply)
    let offset = header(reply, "electric-offset")
    for (let i = 0; changes(live.flatMap(messages)).length === 0; i++) {
      if (i === 10) throw new Error("the write never reached a live reply")
      reply = await shape({ table, handle: synced.handle, offset, live: "true", cursor: header(reply, "electric-cursor") })
      live.push(reply)
      offset = header(reply, "electric-offset")
    }
    const timedOut = await shape({ table, handle: synced.handle, offset, live: "true", cursor: header(reply, "electric-cursor") })
    expect(changes(messages(timedOut))).toHaveLength(0)
    live.push(timedOut)
    nonLive.push(await shape({ table, handle: synced.handle, offset: synced.offset }))

    for (const r of [...nonLive, ...live]) {
      expect(r.status).toBe(200)
      expect(r.headers.get("electric-handle")).toBe(synced.handle)
      expect(r.headers.get("electric-offset")).toMatch(/^(\d+_(\d+|inf)|-1)$/)
    }
    for (const r of nonLive) {
      expect(r.headers.has("electric-schema")).toBe(true)
      expect(r.headers.has("electric-cursor")).toBe(false)
    }
    for (const r of live) {
      expect(r.headers.has("electric-schema")).toBe(false)
      expect(r.headers.get("electric-cursor")).toMatch(/^\d+$/)
    }
  })

  it("4. ends every batch reaching the tip with up-to-date as the last element; non-live responses advance or are up-to-date", async () => {
    const table = "proto_chunks"
    const check = (replies: ReadonlyArray<Reply>, requested: ReadonlyArray<string>) => {
      replies.forEach((r, i) => {
        const batch = messages(r)
        const upToDate = endsUpToDate(batch)
        expect(batch.slice(0, -1).some((m) => isControl(m, "up-to-date"))).toBe(false)
        expect(r.headers.has("electric-up-to-date")).toBe(upToDate)
        if (!upToDate) expect(header(r, "electric-offset")).not.toBe(requested[i])
      })
      expect(endsUpToDate(messages(replies[replies.length - 1]!))).toBe(true)
    }

    const synced = await syncToEnd(table)
    expect(synced.replies.length).toBeGreaterThan(2)
    check(synced.replies, ["-1", ...synced.replies.slice(0, -1).map((r) => header(r, "electric-offset"))])
    expect(new Set(changes(synced.messages).map((m) => m.key)).size).toBe(200)

    await pool.query(`INSERT INTO proto_chunks SELECT i, repeat('y', 100) FROM generate_series(201, 300) i`)
    const caught = await catchUpUntil(table, synced.handle, synced.offset, (cs) => cs.length === 100)
    const requested = [synced.offset, ...caught.replies.slice(0, -1).map((r) => header(r, "electric-offset"))]
    // Replies that only say "nothing new yet" repeat the offset by design; the rest must advance.
    check(caught.replies, requested)
    expect(changes(caught.messages).map((m) => m.value?.["id"])).toEqual(
      Array.from({ length: 100 }, (_, i) => String(201 + i))
    )
  })

  it("5. never puts up-to-date in the offset=-1 response; an empty table answers exactly one snapshot-end", async () => {
    const empty = await shape({ table: "proto_empty", offset: "-1" })
    expect(empty.status).toBe(200)
    const batch = messages(empty)
    expect(batch).toHaveLength(1)
    expect(batch[0]!.headers["control"]).toBe("snapshot-end")
    expect(Object.keys(batch[0]!).sort()).toEqual(["headers"])
    expect(empty.headers.has("electric-up-to-date")).toBe(false)

    const full = await shape({ table: "proto_chunks", offset: "-1" })
    expect(full.status).toBe(200)
    expect(messages(full).some((m) => isControl(m, "up-to-date"))).toBe(false)
    expect(full.headers.has("electric-up-to-date")).toBe(false)

    // The next request of an empty shape is the one that says up-to-date.
    const next = await shape({ table: "proto_empty", offset: header(empty, "electric-offset"), handle: header(empty, "electric-handle") })
    expect(next.status).toBe(200)
    expect(messages(next).map((m) => m.headers["control"])).toEqual(["up-to-date"])
    expect(next.headers.has("electric-up-to-date")).toBe(true)
  })

  it("6. holds a live request with no data, then answers [up-to-date] at the same offset", async () => {
    const { handle, offset } = await syncToEnd("proto_lp")
    const reply = await shape({ table: "proto_lp", handle, offset, live: "true", cursor: "" })
    expect(reply.ms).toBeGreaterThanOrEqual(1000)
    expect(reply.status).toBe(200)
    const batch = messages(reply)
    expect(batch).toHaveLength(1)
    expect(batch[0]!.headers["control"]).toBe("up-to-date")
    expect(header(reply, "electric-offset")).toBe(offset)
    expect(header(reply, "electric-has-data")).toBe("false")
    expect(reply.headers.has("electric-up-to-date")).toBe(true)
  })

  it("6. a write during the hold wakes the live request with the data", async () => {
    const table = "proto_wake"
    const auth = { secret: SECRET }
    const first = await request(locked.baseUrl, "/v1/shape", { table, offset: "-1", ...auth })
    const handle = header(first, "electric-handle")
    const tip = await request(locked.baseUrl, "/v1/shape", { table, handle, offset: header(first, "electric-offset"), ...auth })
    expect(endsUpToDate(messages(tip))).toBe(true)
    const offset = header(tip, "electric-offset")

    const held = request(locked.baseUrl, "/v1/shape", { table, handle, offset, live: "true", cursor: "", ...auth })
    await sleep(300)
    await pool.query(`INSERT INTO proto_wake VALUES (1, 'woke')`)
    // With a 20 s long-poll, a reply carrying the row can only come from the write waking it.
    const reply = await held
    expect(reply.status).toBe(200)
    const batch = messages(reply)
    expect(changes(batch).map((m) => [m.headers["operation"], m.value])).toEqual([["insert", { id: "1", v: "woke" }]])
    expect(endsUpToDate(batch)).toBe(true)
    expect(header(reply, "electric-has-data")).toBe("true")
    expect(compareOffsets(header(reply, "electric-offset"), offset)).toBeGreaterThan(0)
  })

  it("7. sends values as strings or null, lsn as a decimal string, txids as numbers, decimal control fields", async () => {
    const table = "proto_values"
    const synced = await syncToEnd(table)
    const [row] = changes(synced.messages)
    expect(row!.value).toEqual({
      id: "1",
      n: "42",
      b: "true",
      j: `{"a": [1, 2]}`,
      f: "1.5",
      big: "9007199254740993",
      t: null
    })
    expect(row!.headers).toEqual({ operation: "insert", relation: ["public", "proto_values"] })
    const end = synced.messages.find((m) => isControl(m, "snapshot-end"))!
    expect(end.headers["xmin"]).toMatch(/^\d+$/)
    expect(end.headers["xmax"]).toMatch(/^\d+$/)
    expect(Array.isArray(end.headers["xip_list"])).toBe(true)
    for (const xip of end.headers["xip_list"] as Array<unknown>) expect(xip).toMatch(/^\d+$/)
    const upToDate = synced.messages[synced.messages.length - 1]!
    expect(upToDate.headers["global_last_seen_lsn"]).toMatch(/^\d+$/)

    const client = await pool.connect()
    let xid: string
    try {
      await client.query("BEGIN")
      await client.query(`INSERT INTO proto_values VALUES (2, -7, false, '[1]', -0.25, 1, 'two')`)
      xid = (await client.query("SELECT pg_current_xact_id()::xid::text AS xid")).rows[0].xid as string
      await client.query("COMMIT")
    } finally {
      client.release()
    }
    const caught = await catchUpUntil(table, synced.handle, synced.offset, (cs) => cs.length === 1)
    const [change] = changes(caught.messages)
    expect(change!.value).toEqual({ id: "2", n: "-7", b: "f", j: "[1]", f: "-0.25", big: "1", t: "two" })
    for (const v of Object.values(change!.value!)) expect(typeof v).toBe("string")
    expect(change!.headers["lsn"]).toMatch(/^[1-9]\d*$/)
    expect(change!.headers["txids"]).toEqual([Number(xid)])
    expect(Number.isInteger(change!.headers["op_position"])).toBe(true)
    const last = caught.messages[caught.messages.length - 1]!
    expect(last.headers["global_last_seen_lsn"]).toMatch(/^\d+$/)
    // The change's lsn is the tx part of its offset, which the response's end offset reaches.
    expect(BigInt(change!.headers["lsn"] as string)).toBeLessThanOrEqual(parseOffset(caught.offset)[0])
  })

  it("8. describes columns with type, dims only for arrays, not_null only when true, pk_index for pk columns", async () => {
    const reply = await shape({ table: "proto_schema", offset: "-1" })
    expect(reply.status).toBe(200)
    expect(JSON.parse(header(reply, "electric-schema"))).toEqual({
      id: { type: "int4", pk_index: 0, not_null: true },
      tags: { type: "int4", dims: 1 },
      name: { type: "text", not_null: true },
      note: { type: "text" }
    })
    // A projection lists the selected columns only.
    const projected = await shape({ table: "proto_schema", offset: "-1", columns: `"id","note"` })
    expect(projected.status).toBe(200)
    expect(JSON.parse(header(projected, "electric-schema"))).toEqual({
      id: { type: "int4", pk_index: 0, not_null: true },
      note: { type: "text" }
    })
  })

  it("9. builds the same row key for snapshot and log rows, with one quoted part per pk column", async () => {
    const keys = await syncToEnd("proto_keys")
    const [snap] = changes(keys.messages)
    expect(snap!.key).toBe(`"public"."proto_keys"/"1"`)
    await pool.query(`UPDATE proto_keys SET v = 'b' WHERE id = 1`)
    const updated = await catchUpUntil("proto_keys", keys.handle, keys.offset, (cs) => cs.length === 1)
    const [update] = changes(updated.messages)
    expect(update!.headers["operation"]).toBe("update")
    expect(update!.key).toBe(snap!.key)

    const comp = await syncToEnd("proto_comp")
    expect(changes(comp.messages).map((m) => m.key)).toEqual([`"public"."proto_comp"/"1"/"a"`])
    await pool.query(`INSERT INTO proto_comp VALUES (2, 'b/c', 'y')`)
    await pool.query(`UPDATE proto_comp SET v = 'z' WHERE id = 1`)
    const logged = await catchUpUntil("proto_comp", comp.handle, comp.offset, (cs) => cs.length === 2)
    expect(changes(logged.messages).map((m) => m.key)).toEqual([
      `"public"."proto_comp"/"2"/"b//c"`,
      `"public"."proto_comp"/"1"/"a"`
    ])
  })

  it("10. answers 409 [must-refetch] with a new handle for a stale or bogus handle", async () => {
    const table = "proto_stale"
    const first = await syncToEnd(table)
    const deleted = await shape({ table }, { method: "DELETE" })
    expect(deleted.status).toBe(202)

    const stale = await shape({ table, handle: first.handle, offset: first.offset })
    expect(stale.status).toBe(409)
    expect(JSON.parse(stale.text)).toEqual([{ headers: { control: "must-refetch" } }])
    const fresh = header(stale, "electric-handle")
    expect(fresh).not.toBe(first.handle)
    expect(stale.headers.get("cache-control")).toBe("public, max-age=60, must-revalidate")

    const bogus = await shape({ table, handle: "999-999", offset: "0_0" })
    expect(bogus.status).toBe(409)
    expect(JSON.parse(bogus.text)).toEqual([{ headers: { control: "must-refetch" } }])
    expect(header(bogus, "electric-handle")).toBe(fresh)

    const refetched = await shape({ table, offset: "-1", handle: fresh })
    expect(refetched.status).toBe(200)
    expect(header(refetched, "electric-handle")).toBe(fresh)

    // A live request held on a shape that gets deleted is answered with 409 as well.
    const second = await syncToEnd(table)
    expect(second.handle).toBe(fresh)
    const held = shape({ table, handle: fresh, offset: second.offset, live: "true", cursor: "" })
    await sleep(300)
    expect((await shape({ handle: fresh }, { method: "DELETE" })).status).toBe(202)
    const gone = await held
    expect(gone.status).toBe(409)
    expect(JSON.parse(gone.text)).toEqual([{ headers: { control: "must-refetch" } }])
    // §8.3: the new handle is sent "when one exists"; whichever it is, an old handle never comes back.
    const third = gone.headers.get("electric-handle")
    if (third !== null) expect([fresh, first.handle]).not.toContain(third)
    const again = await shape({ table, offset: "-1" })
    expect(again.status).toBe(200)
    expect([fresh, first.handle]).not.toContain(header(again, "electric-handle"))
  })

  it("11. shares one shape per definition: later offset=-1 requests replay the original snapshot", async () => {
    const table = "proto_share"
    const a = await shape({ table, offset: "-1" })
    await pool.query(`INSERT INTO proto_share VALUES (4, 'four')`)
    await pool.query(`UPDATE proto_share SET v = 'changed' WHERE id = 1`)
    const synced = await syncToEnd(table)
    const handle = header(a, "electric-handle")
    expect(synced.handle).toBe(handle)
    await catchUpUntil(table, handle, header(a, "electric-offset"), (cs) => cs.length === 2)

    const b = await shape({ table, offset: "-1" })
    expect(b.status).toBe(200)
    expect(header(b, "electric-handle")).toBe(handle)
    expect(header(b, "etag")).toBe(header(a, "etag"))
    expect(b.text).toBe(a.text)
    expect(changes(messages(b)).map((m) => m.value)).toEqual([
      { id: "1", v: "row 1" },
      { id: "2", v: "row 2" },
      { id: "3", v: "row 3" }
    ])

    const filtered = await shape({ table, offset: "-1", where: "id > 1" })
    expect(filtered.status).toBe(200)
    expect(header(filtered, "electric-handle")).not.toBe(handle)
    const filteredAgain = await shape({ table, offset: "-1", where: "id > 1" })
    expect(header(filteredAgain, "electric-handle")).toBe(header(filtered, "electric-handle"))
  })

  it("12. uses real log offsets with tx > 0 that compare numerically, and accepts offsets between entries", async () => {
    const table = "proto_offsets"
    const synced = await syncToEnd(table)
    await pool.query(`INSERT INTO proto_offsets VALUES (1, 'a')`)
    const one = await catchUpUntil(table, synced.handle, synced.offset, (cs) => cs.length === 1)
    await pool.query(`INSERT INTO proto_offsets VALUES (2, 'b')`)
    const two = await catchUpUntil(table, synced.handle, one.offset, (cs) => cs.length === 1)

    const [tx1] = parseOffset(one.offset)
    const [tx2] = parseOffset(two.offset)
    expect(tx1).toBeGreaterThan(0n)
    expect(tx2).toBeGreaterThan(tx1)
    expect(compareOffsets(two.offset, one.offset)).toBe(1)
    expect(BigInt(changes(one.messages)[0]!.headers["lsn"] as string)).toBe(tx1)

    const between = `${tx2 - 1n}_0`
    const mid = await shape({ table, handle: synced.handle, offset: between })
    expect(mid.status).toBe(200)
    expect(changes(messages(mid)).map((m) => m.value?.["id"])).toEqual(["2"])
    expect(endsUpToDate(messages(mid))).toBe(true)
    const midEtag = header(mid, "etag")
    const revalidated = await shape({ table, handle: synced.handle, offset: between }, { headers: { "if-none-match": midEtag } })
    expect(revalidated.status).toBe(304)
    expect(revalidated.text).toBe("")
  })

  it("13. deletes by table (202, then 404) and by handle (202); 405 when integration testing is off", async () => {
    const table = "proto_del"
    const created = await shape({ table, offset: "-1" })
    expect(created.status).toBe(200)

    const first = await shape({ table }, { method: "DELETE" })
    expect(first.status).toBe(202)
    expect(first.text).toBe("")
    const second = await shape({ table }, { method: "DELETE" })
    expect(second.status).toBe(404)
    expect(JSON.parse(second.text)).toEqual({ message: "No existing shape found" })

    const recreated = await shape({ table, offset: "-1" })
    const handle = header(recreated, "electric-handle")
    expect(handle).not.toBe(header(created, "electric-handle"))
    const byHandle = await shape({ handle }, { method: "DELETE" })
    expect(byHandle.status).toBe(202)
    expect((await shape({ table, handle, offset: "0_0" })).status).toBe(409)

    // A definition requested while its old shape is still being removed gets a new shape, not an error.
    for (let i = 0; i < 10; i++) {
      const [removed, fetched] = await Promise.all([
        shape({ table }, { method: "DELETE" }),
        (async () => {
          await sleep(i)
          return shape({ table, offset: "-1" })
        })()
      ])
      expect([202, 404]).toContain(removed.status)
      expect(fetched.status).toBe(200)
    }

    const disabled = await request(locked.baseUrl, "/v1/shape", { table, secret: SECRET }, { method: "DELETE" })
    expect(disabled.status).toBe(405)
    expect(JSON.parse(disabled.text)).toEqual({ message: "DELETE not allowed" })
  })

  it("14. reports health as active", async () => {
    const reply = await request(server.baseUrl, "/v1/health", "")
    expect(reply.status).toBe(200)
    expect(JSON.parse(reply.text)).toEqual({ status: "active" })
    expect(reply.headers.get("cache-control")).toBe("no-cache, no-store, must-revalidate")
    // Health is open even when the server has a secret.
    expect((await request(locked.baseUrl, "/v1/health", "")).status).toBe(200)
  })

  it("15. exposes every electric-* header to browsers, echoes the origin, answers preflight with 204", async () => {
    const table = "proto_cors"
    const origin = { origin: "https://app.example.com" }
    const first = await shape({ table, offset: "-1" }, { headers: origin })
    const tip = await shape(
      { table, handle: header(first, "electric-handle"), offset: header(first, "electric-offset") },
      { headers: origin }
    )
    const live = await shape(
      { table, handle: header(tip, "electric-handle"), offset: header(tip, "electric-offset"), live: "true", cursor: "" },
      { headers: origin }
    )
    const used = new Set<string>()
    for (const r of [first, tip, live]) {
      expect(r.headers.get("access-control-allow-origin")).toBe("https://app.example.com")
      r.headers.forEach((_, name) => {
        // electric-server is informational; upstream does not expose it either.
        if (name.startsWith("electric-") && name !== "electric-server") used.add(name)
      })
    }
    expect([...used].sort()).toEqual([
      "electric-cursor",
      "electric-handle",
      "electric-has-data",
      "electric-offset",
      "electric-schema",
      "electric-up-to-date"
    ])
    for (const r of [first, tip, live]) {
      const exposed = header(r, "access-control-expose-headers").split(",").map((s) => s.trim())
      for (const name of used) expect(exposed).toContain(name)
    }

    const noOrigin = await shape({ table, offset: "-1" })
    expect(noOrigin.headers.get("access-control-allow-origin")).toBe("*")

    const preflight = await shape("", {
      method: "OPTIONS",
      headers: { ...origin, "access-control-request-method": "GET", "access-control-request-headers": "if-none-match" }
    })
    expect(preflight.status).toBe(204)
    expect(preflight.headers.get("access-control-max-age")).toBe("86400")
    expect(preflight.headers.get("access-control-allow-origin")).toBe("https://app.example.com")
    expect(preflight.headers.get("access-control-allow-methods")).toContain("GET")
    expect(preflight.headers.get("access-control-allow-headers")).toBe("if-none-match")
  })
})

describe("errors, auth, caching", () => {
  const invalid = async (query: Query, errors: Record<string, Array<string>>) => {
    const reply = await shape(query)
    expect(reply.status).toBe(400)
    expect(reply.headers.get("content-type")).toContain("application/json")
    expect(JSON.parse(reply.text)).toEqual({ message: "Invalid request", errors })
    expect(reply.headers.get("cache-control")).toBe("no-store")
  }

  it("answers 400 with Electric's messages for invalid requests", async () => {
    await invalid({ table: "proto_params" }, { offset: ["can't be blank"] })
    await invalid({ table: "proto_params", offset: "abc" }, { offset: ["has invalid format"] })
    await invalid({ table: "proto_params", offset: "0_0" }, { handle: ["can't be blank when offset != -1"] })
    await invalid({ table: "proto_params", offset: "-1", live: "true" }, { live: ["can't be true when offset == -1"] })
    await invalid({ table: "nonexistent", offset: "-1" }, {
      table: [
        `Table "public"."nonexistent" does not exist. If the table name contains capitals or special characters you must quote it.`
      ]
    })
    await invalid({ table: "proto_params", offset: "-1", where: "1 x 1" }, { where: [`At location 17: syntax error at or near "x"`] })
    await invalid({ table: "proto_comp", offset: "-1", columns: `"id","v"` }, {
      columns: ["The list of columns must include all primary key columns, missing: a"]
    })
    await invalid({ table: "proto_params", offset: "-1", columns: `"id","nope"` }, {
      columns: ["The following columns are not found on the table: nope"]
    })
  })

  it("answers 401 without the right secret, 200 with secret or api_secret", async () => {
    const table = "proto_params"
    const get = (query: Record<string, string>) => request(locked.baseUrl, "/v1/shape", { table, offset: "-1", ...query })
    for (const reply of [await get({}), await get({ secret: "wrong" }), await get({ api_secret: "wrong" })]) {
      expect(reply.status).toBe(401)
      expect(JSON.parse(reply.text)).toEqual({ message: "Unauthorized - Invalid API secret" })
    }
    const withSecret = await get({ secret: SECRET })
    expect(withSecret.status).toBe(200)
    expect(changes(messages(withSecret))).toHaveLength(3)
    expect((await get({ api_secret: SECRET })).status).toBe(200)
    // Preflights are never authenticated.
    expect((await request(locked.baseUrl, "/v1/shape", "", { method: "OPTIONS" })).status).toBe(204)
  })

  it("revalidates etags with 304 and sends Electric's cache-control strings", async () => {
    const table = "proto_cache"
    const first = await shape({ table, offset: "-1" })
    expect(first.headers.get("cache-control")).toBe("public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746")
    const etag = header(first, "etag")
    const again = await shape({ table, offset: "-1" }, { headers: { "if-none-match": etag } })
    expect(again.status).toBe(304)
    expect(again.text).toBe("")
    expect(header(again, "electric-handle")).toBe(header(first, "electric-handle"))

    const handle = header(first, "electric-handle")
    const tip = await shape({ table, handle, offset: header(first, "electric-offset") })
    expect(tip.headers.get("cache-control")).toBe(`public, max-age=${server.settings.cacheMaxAge}, stale-while-revalidate=${server.settings.cacheStaleAge}`)
    const tipAgain = await shape({ table, handle, offset: header(first, "electric-offset") }, {
      headers: { "if-none-match": `W/"x", ${header(tip, "etag")}` }
    })
    expect(tipAgain.status).toBe(304)

    const live = await shape({ table, handle, offset: header(tip, "electric-offset"), live: "true", cursor: "" })
    expect(live.status).toBe(200)
    expect(live.headers.get("cache-control")).toBe("public, max-age=5, stale-while-revalidate=5")
    // A no-change live reply must never revalidate: its etag differs from every later one.
    const liveAgain = await shape({ table, handle, offset: header(tip, "electric-offset"), live: "true", cursor: "" }, {
      headers: { "if-none-match": header(live, "etag") }
    })
    expect(liveAgain.status).toBe(200)
  })

  it("offset=now answers [up-to-date] at the shape's latest offset, and catch-up from it sees only later writes", async () => {
    const table = "proto_now"
    await pool.query(`INSERT INTO proto_now VALUES (1, 'before')`)
    const now = await shape({ table, offset: "now" })
    expect(now.status).toBe(200)
    expect(messages(now).map((m) => m.headers["control"])).toEqual(["up-to-date"])
    expect(header(now, "electric-has-data")).toBe("false")
    expect(now.headers.has("electric-schema")).toBe(true)
    expect(now.headers.has("electric-up-to-date")).toBe(true)
    const handle = header(now, "electric-handle")

    await pool.query(`INSERT INTO proto_now VALUES (2, 'after')`)
    const caught = await catchUpUntil(table, handle, header(now, "electric-offset"), (cs) => cs.length >= 1)
    expect(changes(caught.messages).map((m) => m.value)).toEqual([{ id: "2", v: "after" }])
  })
})
