import * as fs from "node:fs/promises"
import { isChangeMessage, isControlMessage, type Message, type Row, ShapeStream } from "@electric-sql/client"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest"
import { LogOffset } from "../../src/domain/LogOffset.js"
import { resumeLsn } from "../../src/http/EventStream.js"
import { prng, sleep } from "../support/oracle.js"
import { type ChildService, freePort, serviceEnv, spawnSyncline, stopAllChildren } from "../support/process.js"
import { type Instance, restartService, waitStatus } from "../support/restarts.js"
import { dropReplication, itemsTable, type RunningSyncline, startSyncline, tempDir, testPool } from "../support/syncline.js"

/**
 * Live mode over server-sent events (protocol.md §8.5): the raw event stream
 * against the real server, then the official client following a busy table
 * over SSE, with and without restarts of the service under it.
 */

const STREAM = "live_sse"
/** A server of its own for the graceful stop, so the other tests keep theirs. */
const STREAM_STOP = "live_sse_stop"
/** A server whose streams outlive the test: only a removal can end them. */
const STREAM_REMOVAL = "live_sse_removal"
/** The service as a child process, for the restarts (kill -9 among them). */
const STREAM_CHILD = "live_sse_child"

const SSE_TIMEOUT_MS = 2000
const SSE_KEEPALIVE_MS = 300

let server: RunningSyncline
let pool: pg.Pool
const storageDirs: Array<string> = []

beforeAll(async () => {
  pool = testPool()
  server = await startSyncline({
    streamId: STREAM,
    settings: { sseTimeoutMs: SSE_TIMEOUT_MS, sseKeepAliveMs: SSE_KEEPALIVE_MS, longPollTimeoutMs: 2000 }
  })
})

afterAll(async () => {
  await stopAllChildren()
  await server?.stop()
  for (const stream of [STREAM, STREAM_STOP, STREAM_REMOVAL, STREAM_CHILD]) await dropReplication(pool, stream)
  await pool.end()
  for (const dir of storageDirs) await fs.rm(dir, { recursive: true, force: true })
})

/** A message as it is on the wire (values as text). */
interface WireMessage {
  readonly key?: string
  readonly value?: Record<string, string | null>
  readonly headers: Record<string, unknown>
}

const isUpToDate = (m: WireMessage) => m.headers["control"] === "up-to-date"
const isChange = (m: WireMessage) => typeof m.headers["operation"] === "string"
/** A change's place in the log: the same change delivered twice has the same one. */
const placeOf = (m: WireMessage) => `${m.key} @ ${m.headers["lsn"]}/${m.headers["op_position"]}`

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

/** Reads a shape with plain requests until it is up-to-date: the handle and offset a live request starts from. */
const catchUp = async (baseUrl: string, table: string): Promise<{ handle: string; offset: string }> => {
  let offset = "-1"
  let handle: string | undefined
  for (let i = 0; i < 100; i++) {
    const query = new URLSearchParams({ table, offset, ...(handle === undefined ? {} : { handle }) })
    const res = await fetch(`${baseUrl}/v1/shape?${query}`)
    const body = await res.text()
    expect(res.status, body).toBe(200)
    handle = res.headers.get("electric-handle")!
    offset = res.headers.get("electric-offset")!
    if ((JSON.parse(body) as Array<WireMessage>).some(isUpToDate)) return { handle, offset }
  }
  throw new Error(`${table} never became up-to-date`)
}

const sseUrl = (baseUrl: string, table: string, handle: string, offset: string, flags = "live=true&live_sse=true") =>
  `${baseUrl}/v1/shape?${new URLSearchParams({ table, handle, offset })}&${flags}`

/**
 * One raw SSE response read as it arrives. Every event is kept in order; anything that is
 * not a `data: <json>` event or the keep-alive comment is kept apart as malformed.
 */
class RawEventStream {
  readonly events: Array<{ readonly kind: "data"; readonly message: WireMessage } | { readonly kind: "keep-alive" }> = []
  readonly malformed: Array<string> = []
  raw = ""
  /** Bytes after the last complete event. */
  rest = ""
  endedByServer = false
  readonly closed: Promise<void>

  private constructor(readonly response: Response, private readonly abort: AbortController) {
    this.closed = this.pump()
  }

  static async open(url: string): Promise<RawEventStream> {
    const abort = new AbortController()
    const response = await fetch(url, { signal: abort.signal, headers: { accept: "text/event-stream" } })
    return new RawEventStream(response, abort)
  }

  private async pump(): Promise<void> {
    if (this.response.body === null) return
    const reader = this.response.body.getReader()
    const decoder = new TextDecoder()
    try {
      for (;;) {
        const { done, value } = await reader.read()
        if (done) {
          this.endedByServer = true
          return
        }
        const chunk = decoder.decode(value, { stream: true })
        this.raw += chunk
        this.rest += chunk
        for (let end = this.rest.indexOf("\n\n"); end !== -1; end = this.rest.indexOf("\n\n")) {
          const event = this.rest.slice(0, end)
          this.rest = this.rest.slice(end + 2)
          if (event === ": keep-alive") this.events.push({ kind: "keep-alive" })
          else if (event.startsWith("data: ") && !event.includes("\n")) {
            try {
              this.events.push({ kind: "data", message: JSON.parse(event.slice("data: ".length)) as WireMessage })
            } catch {
              this.malformed.push(event)
            }
          } else this.malformed.push(event)
        }
      }
    } catch {
      // Closed by the test.
    }
  }

  get messages(): Array<WireMessage> {
    return this.events.flatMap((e) => (e.kind === "data" ? [e.message] : []))
  }

  get changes(): Array<WireMessage> {
    return this.messages.filter(isChange)
  }

  get upToDates(): Array<WireMessage> {
    return this.messages.filter(isUpToDate)
  }

  get keepAlives(): number {
    return this.events.filter((e) => e.kind === "keep-alive").length
  }

  /** Waits (bounded) until `n` up-to-date events have arrived. */
  awaitUpToDates(n: number): Promise<void> {
    return waitFor(`up-to-date event #${n} (got ${this.upToDates.length}: ${this.raw})`, () => this.upToDates.length >= n)
  }

  /** Waits (bounded) for the server to end the response. */
  async awaitEnd(timeoutMs = 15_000): Promise<void> {
    await Promise.race([this.closed, sleep(timeoutMs)])
    expect(this.endedByServer, `the server ended the stream within ${timeoutMs} ms`).toBe(true)
  }

  /**
   * The stream, ended by a stop, closed with a second up-to-date that resumes where the first (after the one
   * batch of changes) did; returns that resume offset.
   */
  expectEndedWithResumingUpToDate(): string {
    const last = this.events.at(-1)!
    expect(last.kind === "data" && isUpToDate(last.message), `the stream ends with an up-to-date: ${this.raw}`).toBe(true)
    expect(this.upToDates.length).toBe(2)
    const resume = resumeOffsetOf(this.upToDates[1]!)
    expect(resume).toBe(resumeOffsetOf(this.upToDates[0]!))
    this.expectWellFormed()
    return resume
  }

  /** Every byte was an event: `data: <one line of JSON>\n\n` or `: keep-alive\n\n`. */
  expectWellFormed(): void {
    expect(this.malformed).toEqual([])
    expect(this.rest).toBe("")
    expect(this.raw).toMatch(/^(?:(?:data: [^\n]+|: keep-alive)\n\n)*$/)
  }

  close(): void {
    this.abort.abort()
  }
}

/** The resume offset an up-to-date event gives a client: `<global_last_seen_lsn>_0`. */
const resumeOffsetOf = (upToDate: WireMessage): string => {
  const lsn = upToDate.headers["global_last_seen_lsn"]
  expect(lsn).toMatch(/^\d+$/)
  return `${lsn}_0`
}

describe("live SSE on the wire", () => {
  it("answers with the event-stream headers and sends each change, a whole transaction before its up-to-date", async () => {
    const table = "sse_wire"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 3) i`)
    const { handle, offset } = await catchUp(server.baseUrl, table)
    const stream = await RawEventStream.open(sseUrl(server.baseUrl, table, handle, offset))
    try {
      expect(stream.response.status).toBe(200)
      const headers = stream.response.headers
      expect(headers.get("content-type")).toMatch(/^text\/event-stream/)
      expect(headers.get("cache-control")).toBe(`public, max-age=${SSE_TIMEOUT_MS / 1000 - 1}`)
      expect(headers.get("electric-cursor")).toMatch(/^\d+$/)
      expect(headers.get("electric-handle")).toBe(handle)
      expect(headers.get("electric-offset")).toBe(offset)
      expect(headers.get("x-accel-buffering")).toBe("no")

      await pool.query(`INSERT INTO ${table} VALUES (10, 'ten')`)
      await stream.awaitUpToDates(1)
      const single = stream.messages
      expect(single.map((m) => m.headers["operation"] ?? m.headers["control"])).toEqual(["insert", "up-to-date"])
      expect(single[0]!.value).toEqual({ id: "10", v: "ten" })
      const singleLsn = BigInt(single[0]!.headers["lsn"] as string)
      expect(single[1]!.headers["global_last_seen_lsn"]).toBe(String(resumeLsn(LogOffset.make(singleLsn, 0))))

      // Five rows of one transaction: all five, then the up-to-date, nothing in between.
      const client = await pool.connect()
      try {
        await client.query("BEGIN")
        for (let id = 11; id <= 15; id++) await client.query(`INSERT INTO ${table} VALUES ($1, $2)`, [id, `row ${id}`])
        await client.query("COMMIT")
      } finally {
        client.release()
      }
      await stream.awaitUpToDates(2)
      const batch = stream.messages.slice(2)
      expect(batch.map((m) => m.headers["operation"] ?? m.headers["control"])).toEqual([
        "insert",
        "insert",
        "insert",
        "insert",
        "insert",
        "up-to-date"
      ])
      const inserts = batch.slice(0, 5)
      expect(inserts.map((m) => m.value!["id"])).toEqual(["11", "12", "13", "14", "15"])
      const txLsn = inserts[0]!.headers["lsn"] as string
      expect(new Set(inserts.map((m) => m.headers["lsn"]))).toEqual(new Set([txLsn]))
      expect(BigInt(txLsn)).toBeGreaterThan(singleLsn)
      const lastOp = inserts[4]!.headers["op_position"] as number
      expect(batch[5]!.headers["global_last_seen_lsn"]).toBe(String(resumeLsn(LogOffset.make(BigInt(txLsn), lastOp))))
      // The resume offset sorts after the last change delivered.
      expect(LogOffset.gt(LogOffset.parse(resumeOffsetOf(batch[5]!))!, LogOffset.make(BigInt(txLsn), lastOp))).toBe(true)

      expect(stream.messages.length).toBe(8)
      stream.expectWellFormed()
    } finally {
      stream.close()
    }

    // Nothing new: keep-alive comments only, until the server ends the stream at the end of its lifetime.
    const quiet = await RawEventStream.open(sseUrl(server.baseUrl, table, handle, resumeOffsetOf(stream.upToDates[1]!)))
    try {
      expect(quiet.response.status).toBe(200)
      await quiet.awaitEnd()
      expect(quiet.keepAlives).toBeGreaterThan(0)
      expect(quiet.messages).toEqual([])
      quiet.expectWellFormed()
    } finally {
      quiet.close()
    }
  })

  it("a reconnect at <global_last_seen_lsn>_0 is in bounds, repeats nothing and gets the next change", async () => {
    const table = "sse_resume"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 5) i`)
    let { handle, offset } = await catchUp(server.baseUrl, table)
    const seen = new Set<string>()
    const rows = new Map<string, Record<string, string | null>>()
    for (const row of (await pool.query(`SELECT id::text, v FROM ${table}`)).rows) rows.set(row.id, row)
    const transactions: ReadonlyArray<{ readonly sql: ReadonlyArray<string>; readonly whileAway: boolean }> = [
      // Several changes: the resume LSN lies between this transaction and the next.
      { sql: [`INSERT INTO ${table} SELECT i, 'multi ' || i FROM generate_series(10, 14) i`], whileAway: false },
      // One change: the resume LSN is the change's own.
      { sql: [`UPDATE ${table} SET v = 'single' WHERE id = 1`], whileAway: false },
      // Written while no stream is open: the reconnect finds it waiting.
      { sql: [`DELETE FROM ${table} WHERE id = 2`, `UPDATE ${table} SET v = 'away' WHERE id IN (3, 4)`], whileAway: true },
      { sql: [`INSERT INTO ${table} VALUES (20, 'one')`], whileAway: true },
      { sql: [`DELETE FROM ${table} WHERE id >= 10`, `INSERT INTO ${table} VALUES (30, 'last')`], whileAway: false }
    ]
    for (const [i, tx] of transactions.entries()) {
      const write = async () => {
        const client = await pool.connect()
        try {
          await client.query("BEGIN")
          for (const sql of tx.sql) await client.query(sql)
          await client.query("COMMIT")
        } finally {
          client.release()
        }
      }
      if (tx.whileAway) await write()
      const stream = await RawEventStream.open(sseUrl(server.baseUrl, table, handle, offset))
      try {
        expect(stream.response.status, `reconnect #${i} at ${offset}`).toBe(200)
        expect(stream.response.headers.get("content-type")).toMatch(/^text\/event-stream/)
        expect(stream.response.headers.get("electric-offset")).toBe(offset)
        if (!tx.whileAway) await write()
        await stream.awaitUpToDates(1)
        const messages = stream.messages
        expect(isUpToDate(messages.at(-1)!)).toBe(true)
        const changes = messages.filter(isChange)
        expect(changes.length).toBeGreaterThan(0)
        expect(new Set(changes.map((m) => m.headers["lsn"])).size, "one transaction per batch").toBe(1)
        for (const m of changes) {
          expect(seen.has(placeOf(m)), `${placeOf(m)} delivered again after reconnecting at ${offset}`).toBe(false)
          seen.add(placeOf(m))
          const op = m.headers["operation"]
          if (op === "delete") rows.delete(m.value!["id"]!)
          else rows.set(m.value!["id"]!, { ...rows.get(m.value!["id"]!), ...m.value })
        }
        offset = resumeOffsetOf(messages.at(-1)!)
        handle = stream.response.headers.get("electric-handle")!
        stream.expectWellFormed()
      } finally {
        stream.close()
      }
    }
    const expected = (await pool.query(`SELECT id::text, v FROM ${table} ORDER BY ${table}.id`)).rows
    const got = [...rows.values()].sort((a, b) => Number(a["id"]) - Number(b["id"]))
    expect(got).toEqual(expected)

    // A long-poll from the last resume offset is in bounds too, and gets the next change.
    const longPoll = fetch(`${server.baseUrl}/v1/shape?${new URLSearchParams({ table, handle, offset })}&live=true`, {
      signal: AbortSignal.timeout(10_000)
    })
    await pool.query(`INSERT INTO ${table} VALUES (40, 'long-polled')`)
    const res = await longPoll
    const body = await res.text()
    expect(res.status, body).toBe(200)
    const changes = (JSON.parse(body) as Array<WireMessage>).filter(isChange)
    expect(changes.map((m) => [m.headers["operation"], m.value])).toEqual([["insert", { id: "40", v: "long-polled" }]])
  })

  it("experimental_live_sse=true alone streams the same way", async () => {
    const table = "sse_experimental"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 2) i`)
    const { handle, offset } = await catchUp(server.baseUrl, table)
    const stream = await RawEventStream.open(sseUrl(server.baseUrl, table, handle, offset, "live=true&experimental_live_sse=true"))
    try {
      expect(stream.response.status).toBe(200)
      expect(stream.response.headers.get("content-type")).toMatch(/^text\/event-stream/)
      expect(stream.response.headers.get("electric-offset")).toBe(offset)
      await pool.query(`UPDATE ${table} SET v = 'changed' WHERE id = 2`)
      await stream.awaitUpToDates(1)
      expect(stream.messages.map((m) => m.headers["operation"] ?? m.headers["control"])).toEqual(["update", "up-to-date"])
      expect(stream.messages[0]!.value).toEqual({ id: "2", v: "changed" })
      stream.expectWellFormed()
    } finally {
      stream.close()
    }
  })

  it("live_sse=true without live is a 400 naming live_sse", async () => {
    const table = "sse_not_live"
    await itemsTable(pool, table, `SELECT 1, 'one'`)
    const res = await fetch(`${server.baseUrl}/v1/shape?table=${table}&offset=-1&live_sse=true`)
    const body = await res.text()
    expect(res.status, body).toBe(400)
    expect(res.headers.get("content-type")).toMatch(/^application\/json/)
    expect(Object.keys((JSON.parse(body) as { errors: Record<string, unknown> }).errors)).toContain("live_sse")
  })

  it("HEAD answers the stream's headers and no stream", async () => {
    const table = "sse_head"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 3) i`)
    const { handle, offset } = await catchUp(server.baseUrl, table)
    const res = await fetch(sseUrl(server.baseUrl, table, handle, offset), { method: "HEAD" })
    expect(res.status).toBe(200)
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/)
    expect(res.headers.get("electric-handle")).toBe(handle)
    expect(res.headers.get("electric-offset")).toBe(offset)
    expect(await res.text()).toBe("")
  })

  it("a stack restart (POST /v1/admin/restart) ends a held stream with an up-to-date, and the reconnect carries on", async () => {
    const table = "sse_admin_restart"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 3) i`)
    const { handle, offset } = await catchUp(server.baseUrl, table)
    const stream = await RawEventStream.open(sseUrl(server.baseUrl, table, handle, offset))
    let resume: string
    try {
      expect(stream.response.status).toBe(200)
      await pool.query(`INSERT INTO ${table} SELECT i, 'multi ' || i FROM generate_series(10, 12) i`)
      await stream.awaitUpToDates(1)
      const restart = await fetch(`${server.baseUrl}/v1/admin/restart`, { method: "POST" })
      await restart.body?.cancel()
      expect(restart.status).toBeLessThan(300)
      await stream.awaitEnd()
      resume = stream.expectEndedWithResumingUpToDate()
    } finally {
      stream.close()
    }
    await waitFor("the new stack", async () => {
      const res = await fetch(`${server.baseUrl}/v1/health`)
      return ((await res.json()) as { status?: string }).status === "active"
    })
    const next = await RawEventStream.open(sseUrl(server.baseUrl, table, handle, resume))
    try {
      expect(next.response.status).toBe(200)
      await pool.query(`INSERT INTO ${table} VALUES (20, 'after restart')`)
      await next.awaitUpToDates(1)
      expect(next.changes.map((m) => [m.headers["operation"], m.value!["id"]])).toEqual([["insert", "20"]])
    } finally {
      next.close()
    }
  })

  it("a removed shape ends the stream without an up-to-date, and the reconnect gets a 409", async () => {
    const table = "sse_removed"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 3) i`)
    const storageDir = await tempDir(STREAM_REMOVAL)
    storageDirs.push(storageDir)
    // Streams live a minute and keep-alives come rarely here: the stream can only end by the removal.
    const server = await startSyncline({ streamId: STREAM_REMOVAL, storageDir, settings: { sseKeepAliveMs: 60_000 } })
    try {
      await removalEndsStream(server, table)
    } finally {
      await server.stop()
    }
  })

  const removalEndsStream = async (server: RunningSyncline, table: string) => {
    const { handle, offset } = await catchUp(server.baseUrl, table)
    const stream = await RawEventStream.open(sseUrl(server.baseUrl, table, handle, offset))
    let resume: string
    try {
      expect(stream.response.status).toBe(200)
      await pool.query(`UPDATE ${table} SET v = 'x' WHERE id = 1`)
      await stream.awaitUpToDates(1)
      resume = resumeOffsetOf(stream.upToDates[0]!)
      const eventsBefore = stream.messages.length
      const removal = await fetch(`${server.baseUrl}/v1/shape?table=${table}`, { method: "DELETE" })
      await removal.body?.cancel()
      expect(removal.status).toBe(202)
      await stream.awaitEnd()
      expect(stream.messages.slice(eventsBefore)).toEqual([])
      stream.expectWellFormed()
    } finally {
      stream.close()
    }
    const again = await fetch(sseUrl(server.baseUrl, table, handle, resume))
    const body = await again.text()
    expect(again.status, body).toBe(409)
    const current = again.headers.get("electric-handle")
    expect(current).not.toBeNull()
    expect(current).not.toBe(handle)
  }

  it("a graceful stop of the server ends a held stream with an up-to-date; the next server takes the reconnect", async () => {
    const table = "sse_stop"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 3) i`)
    const storageDir = await tempDir(STREAM_STOP)
    storageDirs.push(storageDir)
    // Default SSE settings: a stream held for a minute, unless the server stops.
    const first = await startSyncline({ streamId: STREAM_STOP, storageDir })
    let stopped = false
    let resume: string
    let handle: string
    try {
      const start = await catchUp(first.baseUrl, table)
      handle = start.handle
      const stream = await RawEventStream.open(sseUrl(first.baseUrl, table, handle, start.offset))
      try {
        expect(stream.response.status).toBe(200)
        expect(stream.response.headers.get("cache-control")).toBe("public, max-age=59")
        await pool.query(`INSERT INTO ${table} SELECT i, 'multi ' || i FROM generate_series(10, 13) i`)
        await stream.awaitUpToDates(1)
        // The headers came at once, not with the first keep-alive (21 s by default).
        expect(stream.events[0]).toMatchObject({ kind: "data" })
        // The server waits for open requests before it closes: the stream has to end for the stop to finish.
        const stopping = first.stop()
        stopped = true
        await stream.awaitEnd(30_000)
        await stopping
        resume = stream.expectEndedWithResumingUpToDate()
      } finally {
        stream.close()
      }
    } finally {
      if (!stopped) await first.stop()
    }
    const second = await startSyncline({ streamId: STREAM_STOP, storageDir })
    try {
      await pool.query(`UPDATE ${table} SET v = 'after stop' WHERE id = 10`)
      const next = await RawEventStream.open(sseUrl(second.baseUrl, table, handle, resume))
      try {
        expect(next.response.status).toBe(200)
        await next.awaitUpToDates(1)
        expect(next.changes.map((m) => [m.headers["operation"], m.value])).toEqual([["update", { id: "10", v: "after stop" }]])
      } finally {
        next.close()
      }
    } finally {
      await second.stop()
    }
  })
})

/**
 * Writes inserts, updates and deletes to a table `(id int PRIMARY KEY, v text)`, alone and
 * in transactions of several statements, counting the rows changed: every changed row is
 * one change message. Every update sets a value never used before, so none is a no-op.
 */
class Writer {
  changes = 0
  private readonly ids: Array<number>
  private nextId: number
  private serial = 0

  constructor(
    private readonly table: string,
    private readonly random: () => number,
    initialIds: ReadonlyArray<number>
  ) {
    this.ids = [...initialIds]
    this.nextId = Math.max(0, ...initialIds) + 1
  }

  private pickIds(n: number): Array<number> {
    const picked = new Set<number>()
    for (let i = 0; i < n && this.ids.length > 0; i++) picked.add(this.ids[Math.floor(this.random() * this.ids.length)]!)
    return [...picked]
  }

  private async statement(client: pg.PoolClient): Promise<void> {
    const r = this.random()
    const rows = 1 + Math.floor(this.random() * 3)
    let result: pg.QueryResult
    if (r < 0.4 || this.ids.length < 10) {
      const from = this.nextId
      this.nextId += rows
      result = await client.query(`INSERT INTO ${this.table} SELECT i, 'w ' || i FROM generate_series($1::int, $2::int) i`, [
        from,
        from + rows - 1
      ])
      for (let id = from; id < from + rows; id++) this.ids.push(id)
    } else if (r < 0.8) {
      result = await client.query(`UPDATE ${this.table} SET v = $2 WHERE id = ANY($1::int[])`, [
        this.pickIds(rows),
        `u ${++this.serial}`
      ])
    } else {
      const gone = this.pickIds(rows)
      result = await client.query(`DELETE FROM ${this.table} WHERE id = ANY($1::int[])`, [gone])
      for (const id of gone) this.ids.splice(this.ids.indexOf(id), 1)
    }
    this.changes += result.rowCount ?? 0
  }

  /** One transaction: mostly a single statement, sometimes several. */
  async transaction(): Promise<void> {
    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      const statements = this.random() < 0.3 ? 2 + Math.floor(this.random() * 4) : 1
      for (let i = 0; i < statements; i++) await this.statement(client)
      await client.query("COMMIT")
    } finally {
      client.release()
    }
  }

  /** Writes, a short pause after each transaction, until `done()` (or, bounded, until `timeoutMs` has passed). */
  async runUntil(done: () => boolean, pauseMs: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!done() && Date.now() < deadline) {
      await this.transaction()
      await sleep(pauseMs)
    }
  }
}

interface RecordedRequest {
  readonly url: URL
  /** The phase of the test when the response came (its headers). */
  phase?: number
  status?: number
}

/**
 * The official client following a table over SSE, every message checked the way a strict
 * subscriber would: an insert of a key it holds, an update or delete of a key it does not,
 * a change delivered twice (same key, lsn and op_position) or a must-refetch is a
 * violation. Every request is recorded, with the phase of the test its answer came in.
 */
class StrictFollower {
  readonly rows = new Map<string, Record<string, unknown>>()
  readonly violations: Array<string> = []
  readonly errors: Array<string> = []
  readonly requests: Array<RecordedRequest> = []
  liveChanges = 0
  upToDates = 0
  phase = 0
  private readonly seen = new Set<string>()
  private readonly stream: ShapeStream<Row>

  /** Where requests go: a rolling restart moves the client to the new process. */
  target: string

  constructor(baseUrl: string, table: string) {
    this.target = baseUrl
    const recording = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
      const url = new URL(input instanceof Request ? input.url : String(input))
      const target = new URL(this.target)
      url.host = target.host
      const entry: RecordedRequest = { url }
      this.requests.push(entry)
      const res = await fetch(url, init)
      entry.status = res.status
      entry.phase = this.phase
      return res
    }
    this.stream = new ShapeStream<Row>({
      url: `${baseUrl}/v1/shape`,
      params: { table },
      liveSse: true,
      fetchClient: recording as typeof fetch,
      backoffOptions: { initialDelay: 100, maxDelay: 500, multiplier: 1.5 },
      onError: (error) => {
        this.errors.push(String(error))
      }
    })
    this.stream.subscribe(
      (batch) => this.receive(batch),
      (error) => {
        this.errors.push(String(error))
      }
    )
  }

  private receive(batch: ReadonlyArray<Message<Row>>): void {
    for (const m of batch) {
      if (isControlMessage(m)) {
        if (m.headers.control === "must-refetch") this.violations.push("must-refetch")
        if (m.headers.control === "up-to-date") this.upToDates++
        continue
      }
      if (!isChangeMessage(m)) continue
      const op = m.headers.operation
      const lsn = m.headers["lsn"]
      if (lsn !== undefined) {
        const place = `${m.key} @ ${String(lsn)}/${String(m.headers["op_position"])}`
        if (this.seen.has(place)) this.violations.push(`${place} delivered again`)
        this.seen.add(place)
        this.liveChanges++
      }
      const held = this.rows.get(m.key)
      if (op === "insert") {
        if (held !== undefined) this.violations.push(`insert of ${m.key}, which the client holds`)
        this.rows.set(m.key, { ...m.value })
      } else if (held === undefined) {
        this.violations.push(`${op} of ${m.key}, which the client does not hold`)
      } else if (op === "update") {
        this.rows.set(m.key, { ...held, ...m.value })
      } else {
        this.rows.delete(m.key)
      }
    }
  }

  /** The rows held, as text, in id order: comparable with `SELECT id::text, v`. */
  asText(): Array<{ id: string; v: string | null }> {
    return [...this.rows.values()]
      .map((r) => ({ id: String(r["id"]), v: r["v"] === null ? null : String(r["v"]) }))
      .sort((a, b) => Number(a.id) - Number(b.id))
  }

  /** Waits (bounded) until the client holds what Postgres holds now, failing at once on a violation. */
  async equalsPostgres(table: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    let expected: Array<{ id: string; v: string | null }> = []
    for (;;) {
      expect(this.violations).toEqual([])
      expect(this.errors).toEqual([])
      expected = (await pool.query(`SELECT id::text, v FROM ${table} ORDER BY ${table}.id`)).rows
      if (JSON.stringify(this.asText()) === JSON.stringify(expected)) return
      if (Date.now() > deadline) break
      await sleep(50)
    }
    expect(this.asText(), `the client never caught up with Postgres; requests:\n${this.describeRequests()}`).toEqual(expected)
  }

  get isUpToDate(): boolean {
    return this.stream.isUpToDate
  }

  /** Live requests that asked for SSE. */
  sseRequests(): Array<RecordedRequest> {
    return this.requests.filter((r) => r.url.searchParams.get("live_sse") === "true")
  }

  /** Live requests that did not ask for SSE: a fallback to long polling. */
  longPolls(): Array<RecordedRequest> {
    return this.requests.filter((r) => r.url.searchParams.get("live") === "true" && r.url.searchParams.get("live_sse") !== "true")
  }

  describeRequests(): string {
    return this.requests.map((r) => `  [${r.phase ?? "-"}] ${r.status ?? "(no response)"} ${r.url.search}`).join("\n")
  }

  stop(): void {
    this.stream.unsubscribeAll()
  }
}

describe("the official client over live SSE", () => {
  it("follows 1,000 changes (multi-row transactions among them) with nothing lost or repeated", async () => {
    const table = "sse_client"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 50) i`)
    const follower = new StrictFollower(server.baseUrl, table)
    try {
      await waitFor("the client to be up-to-date", () => follower.isUpToDate)
      await follower.equalsPostgres(table)
      const writer = new Writer(table, prng(20240611), Array.from({ length: 50 }, (_, i) => i + 1))
      // Paced, and kept going, so that the changes span several SSE connections (each lives SSE_TIMEOUT_MS).
      await writer.runUntil(
        () =>
          (writer.changes >= 1000 && follower.sseRequests().length >= 4) || follower.violations.length > 0 ||
          follower.errors.length > 0 || follower.longPolls().length > 0,
        12,
        25_000
      )
      expect(follower.violations).toEqual([])
      expect(follower.errors).toEqual([])
      expect(follower.longPolls().map((r) => r.url.search), "fell back to long polling").toEqual([])
      expect(writer.changes).toBeGreaterThanOrEqual(1000)
      await follower.equalsPostgres(table)
      expect(follower.liveChanges).toBe(writer.changes)
      expect(follower.violations).toEqual([])
      expect(follower.errors).toEqual([])
      expect(follower.requests.map((r) => r.status).filter((s) => s !== 200), follower.describeRequests()).toEqual([])
      expect(follower.sseRequests().length, follower.describeRequests()).toBeGreaterThanOrEqual(4)
      expect(follower.longPolls().map((r) => r.url.search)).toEqual([])
    } finally {
      follower.stop()
    }
  })
})

describe("the official client over live SSE across restarts of the service", () => {
  it("a graceful restart, a stack restart, a rolling restart and a kill -9, with writes going on: no 409, nothing lost or repeated", async () => {
    const table = "sse_restarts"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 50) i`)
    const storageDir = await tempDir(STREAM_CHILD)
    storageDirs.push(storageDir)
    // The same port for every restart but the rolling one, whose new process the client is moved to.
    const spawn = async (port: number): Promise<Instance> => {
      const baseUrl = `http://127.0.0.1:${port}`
      const child: ChildService = spawnSyncline({
        env: serviceEnv({
          databaseUrl: inject("databaseUrl"),
          port,
          storageDir,
          streamId: STREAM_CHILD,
          extra: {
            ELECTRIC_LONG_POLL_TIMEOUT: "2000",
            SYNCLINE_SSE_TIMEOUT: String(SSE_TIMEOUT_MS),
            SYNCLINE_SSE_KEEPALIVE: String(SSE_KEEPALIVE_MS)
          }
        })
      })
      // Not waited for here: a rolling restart's new process waits read-only (202) until the old one stops.
      return { child, baseUrl }
    }
    let instance = await spawn(await freePort())
    await waitStatus(instance, "active")
    const follower = new StrictFollower(instance.baseUrl, table)
    const writer = new Writer(table, prng(77), Array.from({ length: 50 }, (_, i) => i + 1))
    try {
      await waitFor("the client to be up-to-date", () => follower.isUpToDate)
      const kinds = ["graceful", "admin", "rolling", "kill"] as const
      for (const [i, kind] of kinds.entries()) {
        // Writes before, during and after the restart.
        let restarted = false
        const writing = writer.runUntil(() => restarted, 15)
        try {
          await sleep(500)
          // Responses from here on come from the restarted service.
          const port = Number(new URL(instance.baseUrl).port)
          const spawnNext = async () => {
            if (kind !== "rolling") follower.phase = i + 1
            return spawn(kind === "rolling" ? await freePort() : port)
          }
          if (kind === "kill") {
            instance.child.kill("SIGKILL")
            await instance.child.exited
            instance = await spawnNext()
            await waitStatus(instance, "active")
          } else {
            if (kind === "admin") follower.phase = i + 1
            instance = await restartService(kind, instance, spawnNext, (next) => {
              follower.phase = i + 1
              follower.target = next.baseUrl
            })
          }
          await sleep(500)
        } finally {
          restarted = true
          await writing
        }
        await follower.equalsPostgres(table, 30_000)
        expect(follower.liveChanges, `after the ${kind} restart`).toBe(writer.changes)
        const served = follower.sseRequests().filter((r) => r.phase === i + 1 && r.status === 200)
        expect(served.length, `SSE requests answered after the ${kind} restart:\n${follower.describeRequests()}`).toBeGreaterThan(0)
        expect(follower.longPolls().map((r) => r.url.search), `fell back to long polling by the ${kind} restart`).toEqual([])
      }
      expect(writer.changes).toBeGreaterThan(100)
      expect(follower.violations).toEqual([])
      expect(follower.errors).toEqual([])
      const statuses = follower.requests.map((r) => r.status).filter((s) => s !== undefined && s >= 400 && s < 500)
      expect(statuses, follower.describeRequests()).toEqual([])
      expect(follower.longPolls().map((r) => r.url.search)).toEqual([])
    } finally {
      follower.stop()
      await stopAllChildren()
    }
  })
})
