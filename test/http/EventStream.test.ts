import { Effect, Stream } from "effect"
import { describe, expect, it } from "vitest"
import { StorageError } from "../../src/domain/errors.js"
import { LogOffset } from "../../src/domain/LogOffset.js"
import {
  type EventLog,
  eventsOfPiece,
  eventStream,
  EVENT_END,
  isResumeOffset,
  KEEP_ALIVE,
  resumeLsn,
  upToDateEvent
} from "../../src/http/EventStream.js"
import type { LogStream } from "../../src/storage/ShapeLogStorage.js"

/**
 * The bytes of an SSE response: a log read comes in pieces cut wherever the
 * storage cuts them, so the events must not depend on where the cuts fall.
 */

const text = (bytes: Uint8Array) => Buffer.from(bytes).toString("utf8")

/** The events of a read whose pieces are `pieces`, as the server writes them. */
const eventsOf = (pieces: ReadonlyArray<Uint8Array>): string =>
  text(Buffer.concat([...pieces.map((p, i) => eventsOfPiece(p, i === 0)), EVENT_END]))

/** `body` cut at every position in `cuts` (ascending). */
const cut = (body: Uint8Array, cuts: ReadonlyArray<number>): Array<Uint8Array> => {
  const pieces: Array<Uint8Array> = []
  let from = 0
  for (const at of cuts) {
    pieces.push(body.subarray(from, at))
    from = at
  }
  pieces.push(body.subarray(from))
  return pieces
}

/** The `data:` payloads of an event stream, parsed as an SSE reader does (one data line per event here). */
const dataOf = (stream: string): Array<string> => {
  expect(stream.endsWith("\n\n")).toBe(true)
  return stream.slice(0, -2).split("\n\n").map((event) => {
    expect(event.startsWith("data: ")).toBe(true)
    const data = event.slice("data: ".length)
    expect(data).not.toContain("\n")
    return data
  })
}

// Messages as a log stores them: JSON text, one per line; escaped newlines and multi-byte characters inside.
const MESSAGES = [
  `{"key":"\\"public\\".\\"t\\"/\\"1\\"","value":{"id":"1","v":"a\\nb"},"headers":{"operation":"insert","lsn":"100","op_position":0}}`,
  `{"key":"\\"public\\".\\"t\\"/\\"2\\"","value":{"id":"2","v":"ünïcödé ✓ 𝄞"},"headers":{"operation":"insert","lsn":"100","op_position":2}}`,
  `{"key":"\\"public\\".\\"t\\"/\\"3\\"","value":{"id":"3","v":""},"headers":{"operation":"delete","lsn":"100","op_position":4,"last":true}}`
]
const BODY = Buffer.from(MESSAGES.join("\n"), "utf8")
const WHOLE = eventsOf([BODY])

describe("eventsOfPiece", () => {
  it("turns a whole read into one `data: <message>` event per message", () => {
    expect(WHOLE).toBe(MESSAGES.map((m) => `data: ${m}\n\n`).join(""))
    expect(dataOf(WHOLE)).toEqual(MESSAGES)
    expect(dataOf(WHOLE).map((d) => JSON.parse(d).value.v)).toEqual(["a\nb", "ünïcödé ✓ 𝄞", ""])
  })

  it("a single message is a single event", () => {
    expect(eventsOf([Buffer.from(MESSAGES[0]!)])).toBe(`data: ${MESSAGES[0]}\n\n`)
  })

  it("gives the same bytes for a body cut once anywhere (inside a message, a multi-byte character, at a newline)", () => {
    for (let at = 0; at <= BODY.length; at++) {
      expect(eventsOf(cut(BODY, [at])), `cut at ${at}`).toBe(WHOLE)
    }
  })

  it("gives the same bytes for a body cut twice anywhere, empty pieces included", () => {
    for (let a = 0; a <= BODY.length; a++) {
      for (let b = a; b <= BODY.length; b++) {
        const got = eventsOf(cut(BODY, [a, b]))
        if (got !== WHOLE) expect(got, `cuts at ${a} and ${b}`).toBe(WHOLE)
      }
    }
  })

  it("gives the same bytes for a body cut into single bytes", () => {
    const cuts = Array.from({ length: BODY.length - 1 }, (_, i) => i + 1)
    expect(eventsOf(cut(BODY, cuts))).toBe(WHOLE)
  })

  it("a piece of newlines only splits events without adding data", () => {
    const body = Buffer.from("a\nb\nc")
    expect(eventsOf([body.subarray(0, 1), body.subarray(1, 2), body.subarray(2, 3), body.subarray(3, 4), body.subarray(4)]))
      .toBe("data: a\n\ndata: b\n\ndata: c\n\n")
  })
})

describe("keep-alive and up-to-date events", () => {
  it("keep-alive is an SSE comment line and a blank line", () => {
    expect(text(KEEP_ALIVE)).toBe(": keep-alive\n\n")
  })

  it("an up-to-date event carries the LSN as a decimal string", () => {
    const event = text(upToDateEvent(12345678901234567890n))
    expect(event.endsWith("\n\n")).toBe(true)
    const [data] = dataOf(event)
    expect(JSON.parse(data!)).toEqual({ headers: { control: "up-to-date", global_last_seen_lsn: "12345678901234567890" } })
  })
})

describe("resumeLsn and isResumeOffset", () => {
  const L = 24_000_000n
  const at = (tx: bigint, op: number) => LogOffset.make(tx, op)
  const parse = (s: string) => LogOffset.parse(s)!

  it("an empty log (0_inf) resumes at 1_0, which sorts after the snapshot and before every real entry", () => {
    expect(resumeLsn(LogOffset.lastBeforeReal)).toBe(1n)
    expect(isResumeOffset(parse("1_0"), LogOffset.lastBeforeReal)).toBe(true)
    expect(LogOffset.gt(parse("1_0"), LogOffset.lastBeforeReal)).toBe(true)
    expect(isResumeOffset(parse("0_0"), LogOffset.lastBeforeReal)).toBe(false)
    expect(isResumeOffset(parse("1_2"), LogOffset.lastBeforeReal)).toBe(false)
    expect(isResumeOffset(parse("2_0"), LogOffset.lastBeforeReal)).toBe(false)
  })

  it("a transaction of one change (L_0) resumes at L_0 itself: a read after it repeats nothing", () => {
    expect(resumeLsn(at(L, 0))).toBe(L)
    expect(isResumeOffset(at(L, 0), at(L, 0))).toBe(true)
    expect(isResumeOffset(at(L + 1n, 0), at(L, 0))).toBe(false)
  })

  it("a transaction of several changes (last at L_4) resumes at (L+1)_0: past L_4, not out of bounds", () => {
    expect(resumeLsn(at(L, 4))).toBe(L + 1n)
    const resume = at(L + 1n, 0)
    expect(LogOffset.gt(resume, at(L, 4))).toBe(true)
    expect(isResumeOffset(resume, at(L, 4))).toBe(true)
    // `L_0` would ask again for L_2 and L_4.
    expect(isResumeOffset(at(L, 0), at(L, 4))).toBe(false)
    expect(isResumeOffset(at(L + 1n, 2), at(L, 4))).toBe(false)
    expect(isResumeOffset(at(L + 2n, 0), at(L, 4))).toBe(false)
  })

  it("the end of a transaction (L_inf) resumes at (L+1)_0", () => {
    expect(resumeLsn(at(L, Infinity))).toBe(L + 1n)
    expect(LogOffset.gt(at(L + 1n, 0), at(L, Infinity))).toBe(true)
    expect(isResumeOffset(at(L + 1n, 0), at(L, Infinity))).toBe(true)
    expect(isResumeOffset(at(L, Infinity), at(L, Infinity))).toBe(false)
  })

  it("the resume offset sorts before the next transaction's first entry", () => {
    // Two commit records are never one byte apart, so the next commit LSN is at least L + 2.
    for (const last of [at(L, 0), at(L, 4), at(L, Infinity), LogOffset.lastBeforeReal]) {
      const resume = at(resumeLsn(last), 0)
      expect(LogOffset.gte(resume, last)).toBe(true)
      expect(LogOffset.lt(resume, at(last.tx + 2n, 0))).toBe(true)
    }
  })
})

/** A read of `lines` (joined by newlines, as the `lines` format stores them) ending at `next`. */
const linesRead = (lines: ReadonlyArray<string>, next: LogOffset, reachedEnd: boolean): LogStream => {
  const bytes = Buffer.from(lines.join("\n"))
  return {
    length: bytes.length,
    bytes,
    pieces: bytes.length > 0 ? Stream.succeed(bytes) : Stream.empty,
    readPiece: undefined,
    nextOffset: next,
    reachedEnd,
    settled: false
  }
}

/** A log whose reads are `reads` in turn (each a read or a failure), with data always waiting. */
const scriptedLog = (reads: ReadonlyArray<LogStream | StorageError>): EventLog => {
  let i = 0
  return {
    read: () =>
      Effect.suspend(() => {
        const next = reads[Math.min(i++, reads.length - 1)]!
        return next instanceof StorageError ? Effect.fail(next) : Effect.succeed(next)
      }),
    awaitDataAfter: () => Effect.void
  }
}

const noShutdown = { await: Effect.never, trigger: Effect.void }
const closed = new StorageError({ reason: "Closed", handle: "h", message: "the shape log is closed" })
const L = 1000n

const streamText = (log: EventLog, settings = { sseTimeoutMs: 60_000, sseKeepAliveMs: 60_000 }) =>
  Effect.runPromise(
    Stream.runCollect(eventStream(log, LogOffset.make(L - 500n, 0), settings, noShutdown, () => {})).pipe(
      Effect.map((chunks) => text(Buffer.concat([...chunks])))
    )
  )

describe("eventStream", () => {
  it("a stack stopping in the middle of a catch-up ends the stream without an up-to-date: the client drops the partial batch", async () => {
    // A chunk ends inside transaction L (at L_2 of L_0..L_4): the rest of L was never sent.
    const body = await streamText(scriptedLog([linesRead(["{\"a\":0}", "{\"a\":2}"], LogOffset.make(L, 2), false), closed]))
    expect(body).toBe(`data: {"a":0}\n\ndata: {"a":2}\n\n`)
  })

  it("a stack stopping at the end of a batch ends the stream with an up-to-date at the resume LSN", async () => {
    const body = await streamText(scriptedLog([linesRead(["{\"a\":0}", "{\"a\":2}"], LogOffset.make(L, 2), true), closed]))
    const upToDate = text(upToDateEvent(L + 1n))
    expect(body).toBe(`data: {"a":0}\n\ndata: {"a":2}\n\n${upToDate}${upToDate}`)
  })

  it("a removed shape ends the stream without an up-to-date", async () => {
    const removed = new StorageError({ reason: "Removed", handle: "h", message: "the shape log is removed" })
    const body = await streamText(scriptedLog([linesRead(["{\"a\":0}"], LogOffset.make(L, 0), false), removed]))
    expect(body).toBe(`data: {"a":0}\n\n`)
  })

  it("ends after its lifetime even when data is always waiting, at the end of a batch", async () => {
    let tx = L
    const log: EventLog = {
      read: () => Effect.sync(() => linesRead([`{"tx":${++tx}}`], LogOffset.make(tx, 0), true)),
      awaitDataAfter: () => Effect.void
    }
    const body = await streamText(log, { sseTimeoutMs: 200, sseKeepAliveMs: 60_000 })
    expect(body.length).toBeGreaterThan(0)
    expect(body.endsWith(text(upToDateEvent(tx)))).toBe(true)
  })
})
