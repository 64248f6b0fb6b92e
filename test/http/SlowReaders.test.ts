import { spawn } from "node:child_process"
import * as dc from "node:diagnostics_channel"
import * as fs from "node:fs/promises"
import type * as http from "node:http"
import * as net from "node:net"
import * as path from "node:path"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { PIECE_BYTES } from "../../src/storage/ShapeLogStorage.js"
import { dropReplication, itemsTable, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

/**
 * Clients that read slowly or not at all, against the real server: a large
 * response is streamed from the shape's files, so each such client holds about
 * two pieces, not the whole chunk; one that takes no bytes for the send timeout is
 * dropped; one that reads steadily, however slowly, gets every byte.
 */

const STREAM = "slow_readers"
const TABLE = "slow_rows"
const ROWS = 7500
/**
 * One snapshot chunk of about 8 MB (the update of every row makes one log chunk of about the same): well past
 * what the kernel takes off a socket on loopback (a send buffer grows to 4 MB), so that a response that is held
 * whole shows in the process.
 */
const CHUNK_THRESHOLD = 16 * 1024 * 1024
const SEND_TIMEOUT_MS = 2000
const LONG_POLL_TIMEOUT_MS = 2500
const READERS = 100
/**
 * What a streamed response may hold per stalled reader: its piece, counted once in its socket and once among the
 * array buffers, and the next piece, read while the socket takes the one before. A chunk held whole counts its
 * size (here about 8 MB) twice.
 */
const HELD_PER_READER = 4 * PIECE_BYTES

let server: RunningSyncline
let pool: pg.Pool

beforeAll(async () => {
  pool = testPool()
  await itemsTable(pool, TABLE, `SELECT i, repeat('x', 1000) FROM generate_series(1, ${ROWS}) i`)
  server = await startSyncline({
    streamId: STREAM,
    settings: {
      chunkBytesThreshold: CHUNK_THRESHOLD,
      sendTimeoutMs: SEND_TIMEOUT_MS,
      longPollTimeoutMs: LONG_POLL_TIMEOUT_MS
    }
  })
})

afterAll(async () => {
  await server?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

/** `global.gc`, reached without starting node with `--expose-gc`: the measurements below count live bytes only. */
const collectGarbage = (() => {
  v8.setFlagsFromString("--expose-gc")
  return vm.runInNewContext("gc") as () => void
})()

/** Bytes in live array buffers once what was in flight has settled (the least of a few collections). */
const liveArrayBuffers = async (): Promise<number> => {
  let least = Infinity
  for (let i = 0; i < 3; i++) {
    await sleep(100)
    collectGarbage()
    least = Math.min(least, process.memoryUsage().arrayBuffers)
  }
  return least
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const waitFor = async (
  what: string,
  ok: () => boolean | Promise<boolean>,
  timeoutMs: number,
  everyMs = 50
): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await sleep(everyMs)
  }
}

const shapeUrl = (query: Record<string, string>) => `/v1/shape?${new URLSearchParams({ table: TABLE, ...query })}`

/** Descriptors this process holds open on one shape's first snapshot chunk (the owner's own handles are on its log). */
const descriptorsOnSnapshot = async (handle: string): Promise<number> => {
  const file = path.join(server.settings.storageDir, "shapes", handle, "snapshot.0.jsonl")
  let n = 0
  for (const fd of await fs.readdir("/proc/self/fd")) {
    if ((await fs.readlink(`/proc/self/fd/${fd}`).catch(() => "")) === file) n++
  }
  return n
}

/** The server side of every request whose URL carries `marker`, as Node's HTTP server starts it. */
const serverSockets = (marker: string) => {
  const sockets = new Map<string, net.Socket>()
  const onStart = (message: unknown) => {
    const { request, socket } = message as { request: http.IncomingMessage; socket: net.Socket }
    const url = request.url ?? ""
    if (url.includes(marker)) sockets.set(url, socket)
  }
  dc.subscribe("http.server.request.start", onStart)
  return { sockets, stop: () => dc.unsubscribe("http.server.request.start", onStart) }
}

/**
 * Raw TCP clients that each send a GET and then never read (their sockets are paused before they connect). They
 * run in a process of their own, so that what they buffer does not count as memory of this one, the server's.
 */
const stalledClients = (paths: ReadonlyArray<string>): { readonly stop: () => void } => {
  const { port } = new URL(server.baseUrl)
  const script = `
    const net = require("node:net")
    const sockets = JSON.parse(process.argv[1]).map((path) => {
      const socket = net.connect(${Number(port)}, "127.0.0.1")
      socket.pause()
      socket.on("error", () => {})
      socket.write("GET " + path + " HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n")
      return socket
    })
    process.stdin.on("end", () => process.exit(0)).resume()
  `
  const child = spawn(process.execPath, ["-e", script, JSON.stringify(paths)], { stdio: ["pipe", "inherit", "inherit"] })
  return { stop: () => void child.kill("SIGKILL") }
}

interface RawResponse {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: Buffer
  /** The status line and headers, with the blank line that ends them. */
  readonly headBytes: number
  readonly ms: number
}

/**
 * A raw TCP client that reads steadily but slowly: after each read it pauses
 * `pauseMs` before taking the next (at most 64 KiB per read).
 */
const steadyRead = (pathAndQuery: string, pauseMs: number, connection = "close"): Promise<RawResponse> =>
  new Promise((resolve, reject) => {
    const started = Date.now()
    const { port } = new URL(server.baseUrl)
    const socket = net.connect(Number(port), "127.0.0.1")
    const received: Array<Buffer> = []
    let size = 0
    const finish = (): boolean => {
      const all = Buffer.concat(received)
      const end = all.indexOf("\r\n\r\n")
      if (end === -1) return false
      const [statusLine, ...lines] = all.subarray(0, end).toString("latin1").split("\r\n")
      const headers: Record<string, string> = {}
      for (const l of lines) {
        const colon = l.indexOf(":")
        headers[l.slice(0, colon).trim().toLowerCase()] = l.slice(colon + 1).trim()
      }
      const length = Number(headers["content-length"])
      if (all.length - end - 4 < length) return false
      socket.destroy()
      resolve({
        status: Number(statusLine!.split(" ")[1]),
        headers,
        body: all.subarray(end + 4, end + 4 + length),
        headBytes: end + 4,
        ms: Date.now() - started
      })
      return true
    }
    socket.on("data", (data: Buffer) => {
      received.push(data)
      size += data.length
      if (finish()) return
      socket.pause()
      setTimeout(() => socket.resume(), pauseMs)
    })
    socket.on("error", reject)
    socket.on("close", () => reject(new Error(`closed after ${size} bytes`)))
    socket.write(`GET ${pathAndQuery} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: ${connection}\r\n\r\n`)
  })

const fetchShape = async (query: Record<string, string>) => {
  const res = await fetch(`${server.baseUrl}${shapeUrl(query)}`)
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) }
}

describe("slow readers", () => {
  it("hold about a piece each while they do not read, and are dropped after the send timeout", async () => {
    const reference = await fetchShape({ offset: "-1" })
    expect(reference.status).toBe(200)
    const handle = reference.headers.get("electric-handle")!
    const chunkBytes = reference.body.length
    expect(chunkBytes).toBeGreaterThan(8_000_000)
    expect(reference.headers.get("electric-offset")).toBe("0_0")
    const whole = await steadyRead(shapeUrl({ offset: "-1", handle, stalled: "none" }), 0, "keep-alive")
    expect(whole.body.equals(reference.body)).toBe(true)
    const responseBytes = whole.headBytes + whole.body.length

    const watched = serverSockets("stalled=")
    const before = await liveArrayBuffers()
    const clients = stalledClients(Array.from({ length: READERS }, (_, i) => shapeUrl({ offset: "-1", handle, stalled: String(i) })))
    try {
      const sockets = () => [...watched.sockets.values()]
      const pending = () => sockets().map((s) => s.writableLength)
      // every response has begun and is stuck: bytes wait in each server socket, and no more go out
      await waitFor("every response is stuck", () => sockets().length === READERS && pending().every((n) => n > 0), 15_000)
      const progress = () => sockets().map((s) => `${s.bytesWritten}/${s.writableLength}`).join(" ")
      let last = ""
      await waitFor("no more bytes go out", () => last === (last = progress()), 15_000, 300)
      const inSockets = pending().reduce((a, b) => a + b, 0)
      const grown = (await liveArrayBuffers()) - before
      const held = inSockets + grown
      console.log(
        `${READERS} stalled readers of a ${chunkBytes}-byte chunk: ${inSockets} bytes in server sockets, ` +
          `array buffers grew ${grown} bytes; held ${held} (${(held / (READERS * chunkBytes)).toFixed(4)} of ${READERS} chunks)`
      )
      expect(sockets().every((s) => !s.destroyed)).toBe(true)
      expect(held).toBeLessThan(READERS * HELD_PER_READER)
      // each response reads through a descriptor of its own
      // each response still reading its file reads through a descriptor of its own; one whose whole body already
      // went into its socket and the kernel's buffers (they can take megabytes on loopback) may have closed its own
      const handedOver = sockets().map((s) => s.bytesWritten + s.writableLength)
      const stillReading = handedOver.filter((n) => n < responseBytes).length
      const descriptors = await descriptorsOnSnapshot(handle)
      const seen = `${descriptors} descriptors; bytes handed to each socket of ${responseBytes}: ${handedOver.join(" ")}`
      expect(stillReading, seen).toBeGreaterThan(0)
      expect(descriptors, seen).toBeGreaterThanOrEqual(stillReading)
      expect(descriptors, seen).toBeLessThanOrEqual(READERS)

      // nothing taken for the send timeout: every connection is dropped, and what it held with it
      await waitFor("every stalled connection is dropped", () => sockets().every((s) => s.destroyed), SEND_TIMEOUT_MS + 10_000)
      // the responses' fibers ended, closing the descriptors their reads held
      await waitFor("no descriptor stays open", async () => (await descriptorsOnSnapshot(handle)) === 0, 5000)
      const left = (await liveArrayBuffers()) - before
      console.log(`after the drop, array buffers are ${left} bytes above the start`)
      expect(left).toBeLessThan(4 * PIECE_BYTES)
    } finally {
      watched.stop()
      clients.stop()
    }

    // the server still answers in full
    const after = await fetchShape({ offset: "-1", handle })
    expect(after.body.equals(reference.body)).toBe(true)
  })

  it("give every reader that reads the complete body, a steady slow one included; held long-polls outlive the send timeout", async () => {
    const snapshot = await fetchShape({ offset: "-1" })
    const handle = snapshot.headers.get("electric-handle")!
    const snapshotEnd = await fetchShape({ offset: "0_0", handle })
    expect(snapshotEnd.status).toBe(200)
    const logFrom = snapshotEnd.headers.get("electric-offset")!

    // one transaction of ROWS updates: a log range of about a chunk, served with a trailing up-to-date
    await pool.query(`UPDATE ${TABLE} SET v = repeat('y', 1000)`)
    let change = await fetchShape({ offset: logFrom, handle })
    await waitFor("the update reaches the shape", async () => {
      change = await fetchShape({ offset: logFrom, handle })
      return change.body.length > 1_000_000
    }, 10_000, 100)
    const messages = JSON.parse(change.body.toString("utf8")) as Array<{ headers: Record<string, string> }>
    expect(messages.length).toBe(ROWS + 1)
    expect(messages.slice(0, ROWS).every((m) => m.headers["operation"] === "update")).toBe(true)
    expect(messages[ROWS]!.headers["control"]).toBe("up-to-date")
    const tip = change.headers.get("electric-offset")!

    const started = Date.now()
    const [slowSnapshot, slowChange, longPoll] = await Promise.all([
      // at most 64 KiB every 25 ms: seconds for a body, longer than the send timeout
      steadyRead(shapeUrl({ offset: "-1", handle }), 25),
      steadyRead(shapeUrl({ offset: logFrom, handle }), 25),
      fetch(`${server.baseUrl}${shapeUrl({ offset: tip, handle, live: "true" })}`).then(async (res) => ({
        status: res.status,
        upToDate: res.headers.get("electric-up-to-date"),
        body: await res.text(),
        ms: Date.now() - started
      }))
    ])

    for (const [slow, fast] of [[slowSnapshot, snapshot], [slowChange, change]] as const) {
      expect(slow.status).toBe(200)
      expect(slow.headers["content-length"]).toBe(fast.headers.get("content-length"))
      expect(slow.headers["etag"]).toBe(fast.headers.get("etag"))
      expect(slow.headers["electric-offset"]).toBe(fast.headers.get("electric-offset"))
      expect(slow.body.length).toBe(fast.body.length)
      expect(slow.body.equals(fast.body)).toBe(true)
    }
    // a streamed body keeps HEAD and revalidation as they were
    const head = await fetch(`${server.baseUrl}${shapeUrl({ offset: "-1", handle })}`, { method: "HEAD" })
    expect(head.status).toBe(200)
    expect(head.headers.get("content-length")).toBe(snapshot.headers.get("content-length"))
    expect(head.headers.get("etag")).toBe(snapshot.headers.get("etag"))
    expect((await head.arrayBuffer()).byteLength).toBe(0)
    const revalidated = await fetch(`${server.baseUrl}${shapeUrl({ offset: "-1", handle })}`, {
      headers: { "if-none-match": snapshot.headers.get("etag")! }
    })
    expect(revalidated.status).toBe(304)
    expect((await revalidated.arrayBuffer()).byteLength).toBe(0)
    await waitFor("no descriptor stays open", async () => (await descriptorsOnSnapshot(handle)) === 0, 5000)

    console.log(`steady readers took ${slowSnapshot.ms} and ${slowChange.ms} ms; the long-poll was held ${longPoll.ms} ms`)
    expect(Math.max(slowSnapshot.ms, slowChange.ms)).toBeGreaterThan(SEND_TIMEOUT_MS)
    expect(longPoll.status).toBe(200)
    expect(longPoll.upToDate).toBe("")
    expect(longPoll.ms).toBeGreaterThan(SEND_TIMEOUT_MS)
  })

  it("a client that leaves mid-body releases what its response held; a body that fails mid-stream drops only its connection", async () => {
    const reference = await fetchShape({ offset: "-1" })
    const handle = reference.headers.get("electric-handle")!
    const length = Number(reference.headers.get("content-length"))
    const { port } = new URL(server.baseUrl)

    /** A client that takes the first bytes of the big chunk, then stops reading. */
    const startReading = async () => {
      const socket = net.connect(Number(port), "127.0.0.1")
      const received: Array<Buffer> = []
      let closed = false
      socket.on("close", () => (closed = true))
      socket.on("error", () => undefined)
      socket.on("data", (data: Buffer) => {
        received.push(data)
        if (received.length === 1) socket.pause()
      })
      socket.write(`GET ${shapeUrl({ offset: "-1", handle })} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
      // the response is under way: its read holds a descriptor
      await waitFor("the response holds a descriptor", async () => (await descriptorsOnSnapshot(handle)) === 1, 5000)
      return { socket, received, closed: () => closed }
    }
    const descriptorsReleased = () =>
      waitFor("no descriptor stays open", async () => (await descriptorsOnSnapshot(handle)) === 0, 5000)

    // the client goes away: the response's fiber is interrupted and its descriptor closed
    const leaving = await startReading()
    leaving.socket.destroy()
    await descriptorsReleased()

    // the file under a response is cut short mid-stream: that response's connection is dropped, nothing else
    const file = path.join(server.settings.storageDir, "shapes", handle, "snapshot.0.jsonl")
    const stored = await fs.readFile(file)
    const failing = await startReading()
    await fs.truncate(file, 0)
    try {
      failing.socket.resume()
      // at once: not by the keep-alive timeout (5 s) after a response ended short, which the client would misread
      await waitFor("the failed response's connection is dropped", failing.closed, 3000)
    } finally {
      await fs.writeFile(file, stored)
    }
    const all = Buffer.concat(failing.received)
    const headerEnd = all.indexOf("\r\n\r\n")
    expect(all.subarray(0, headerEnd).toString("latin1")).toMatch(/^HTTP\/1\.1 200 /)
    expect(all.subarray(0, headerEnd).toString("latin1")).toContain(`content-length: ${length}`)
    const bodyBytes = all.length - headerEnd - 4
    expect(bodyBytes).toBeGreaterThan(0)
    expect(bodyBytes).toBeLessThan(length)
    expect(all.subarray(headerEnd + 4).equals(reference.body.subarray(0, bodyBytes))).toBe(true)
    await descriptorsReleased()

    const again = await fetchShape({ offset: "-1", handle })
    expect(again.status).toBe(200)
    expect(again.body.equals(reference.body)).toBe(true)
  })
})
