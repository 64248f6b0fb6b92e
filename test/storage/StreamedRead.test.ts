import * as fs from "node:fs/promises"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Effect, Exit, Layer, Option, Scope, Stream } from "effect"
import { LogOffset } from "../../src/domain/LogOffset.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import {
  type LogEntry,
  type LogRead,
  type LogStream,
  openReader,
  PIECE_BYTES,
  WHOLE_BYTES,
  type ShapeLog,
  ShapeLogStorage,
  type ShapeLogStorageOptions
} from "../../src/storage/ShapeLogStorage.js"
import { fmt, tempDir } from "./fixtures.js"

/** Several pieces per chunk, and chunks that end mid-piece. */
const THRESHOLD = 5 * PIECE_BYTES + 12_345

/** The owner keeps no recent commits past the turn they land in: its reads here are of its files, as the reader's are. */
const FILES_ONLY = { recentCommitBytes: 0 }

/** Lines grow with the piece: a chunk of the threshold above holds as many lines whatever the piece size. */
const LINE_SCALE = PIECE_BYTES / (64 * 1024)

/** About 1 kB of JSON per 64 kB of piece, multi-byte characters included, so that byte and character counts differ. */
const bigLine = (tag: string, i: number): string =>
  JSON.stringify({
    key: `${tag}-${i}`,
    value: { id: String(i), pad: "é".repeat(i % 7) + "x".repeat(LINE_SCALE * (900 + (i * 37) % 200)) }
  })

const bigEntry = (tx: number, op: number): LogEntry => ({
  offset: LogOffset.make(BigInt(tx), op),
  json: bigLine("log", tx * 1000 + op)
})

const storageAt = (options: ShapeLogStorageOptions) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(ShapeLogStorage.layer(options), scope)
    return { storage: Context.get(context, ShapeLogStorage), close: Scope.close(scope, Exit.void) }
  })

/** A shape with a snapshot of several chunks and a log of several chunks plus an open one. */
const fillShape = (log: ShapeLog) =>
  Effect.gen(function*() {
    yield* log.appendSnapshot(Array.from({ length: 900 }, (_, i) => bigLine("snap", i)))
    yield* log.completeSnapshot
    const entries: Array<LogEntry> = []
    for (let tx = 100; tx < 112; tx++) {
      // transactions of varying size, one of them below a piece
      const batch = Array.from({ length: tx === 105 ? 3 : 20 + (tx % 5) * 30 }, (_, op) => bigEntry(tx, op * 2))
      yield* log.append(batch)
      yield* log.commit
      entries.push(...batch)
    }
    return entries
  })

/** Offsets that read a snapshot chunk, a log chunk from its start, from inside it, the open chunk, and nothing. */
const probes = (entries: ReadonlyArray<LogEntry>): Array<LogOffset> => [
  LogOffset.beforeAll,
  ...Array.from({ length: 4 }, (_, n) => LogOffset.make(0n, n)),
  LogOffset.lastBeforeReal,
  ...entries.filter((_, i) => i % 41 === 0 || i === entries.length - 2).map((e) => e.offset),
  entries[entries.length - 1]!.offset
]

const concat = (pieces: ReadonlyArray<Uint8Array>): Buffer => Buffer.concat(pieces)

const collect = (stream: LogStream) => Effect.map(Stream.runCollect(stream.pieces), Chunk.toReadonlyArray)

/** Asserts a streamed read is the whole read of the same offset, in pieces of at most `PIECE_BYTES`. */
const expectSameBody = (from: LogOffset, whole: LogRead, streamed: LogStream, pieces: ReadonlyArray<Uint8Array>) => {
  expect({
    from: fmt(from),
    nextOffset: fmt(streamed.nextOffset),
    reachedEnd: streamed.reachedEnd,
    length: streamed.length,
    heldWhole: streamed.bytes !== undefined
  }).toEqual({
    from: fmt(from),
    nextOffset: fmt(whole.nextOffset),
    reachedEnd: whole.reachedEnd,
    length: whole.body.length,
    heldWhole: whole.body.length <= WHOLE_BYTES
  })
  expect(pieces.every((p) => p.length > 0 && p.length <= PIECE_BYTES)).toBe(true)
  expect(concat(pieces).equals(Buffer.from(whole.body))).toBe(true)
}

/** Descriptors of this process open on files under `dir`. */
const descriptorsUnder = (dir: string) =>
  Effect.promise(async () => {
    let n = 0
    for (const fd of await fs.readdir("/proc/self/fd")) {
      const target = await fs.readlink(`/proc/self/fd/${fd}`).catch(() => "")
      if (target.startsWith(dir)) n++
    }
    return n
  })

/** Pulls one piece of a stream now and the rest later. */
const pullOneThenRest = (stream: LogStream) =>
  Effect.gen(function*() {
    const pull = yield* Stream.toPull(stream.pieces)
    const first = Chunk.toReadonlyArray(yield* pull)
    const rest = Effect.gen(function*() {
      const out: Array<Uint8Array> = [...first]
      for (;;) {
        const next = yield* Effect.either(pull)
        if (next._tag === "Left") {
          if (Option.isSome(next.left)) return yield* Effect.fail(next.left.value)
          return out
        }
        out.push(...Chunk.toReadonlyArray(next.right))
      }
    })
    return { first, rest }
  })

describe("streamed reads", () => {
  it.scoped("yield the bytes of the whole read in bounded pieces: snapshot chunks and log ranges, owner and read-only", () =>
    Effect.gen(function*() {
      const options = { directory: yield* tempDir, chunkBytesThreshold: THRESHOLD, ...FILES_ONLY }
      const { storage } = yield* storageAt(options)
      const handle = ShapeHandle("stream-same")
      const log = yield* storage.create(handle)
      const entries = yield* fillShape(log)
      const reader = yield* openReader(options, handle)

      let streamedInPieces = 0
      let heldWhole = 0
      for (const from of probes(entries)) {
        for (const source of [log, reader]) {
          const whole = yield* source.read(from)
          const streamed = yield* source.stream(from)
          const pieces = yield* collect(streamed)
          expectSameBody(from, whole, streamed, pieces)
          if (pieces.length > 1) streamedInPieces++
          if (streamed.bytes !== undefined) heldWhole++
          // pulled again, it reads the same bytes again
          expect(concat(yield* collect(streamed)).equals(concat(pieces))).toBe(true)
        }
      }
      // both kinds of body were met, from both sources
      expect(streamedInPieces).toBeGreaterThanOrEqual(10)
      expect(heldWhole).toBeGreaterThanOrEqual(4)
    }))

  it.scoped("in the lines format, join the same messages with newlines instead of commas, whole or in pieces", () =>
    Effect.gen(function*() {
      const options = { directory: yield* tempDir, chunkBytesThreshold: THRESHOLD, ...FILES_ONLY }
      const { storage } = yield* storageAt(options)
      const handle = ShapeHandle("stream-lines")
      const log = yield* storage.create(handle)
      const entries = yield* fillShape(log)
      const reader = yield* openReader(options, handle)

      let inPieces = 0
      for (const from of probes(entries)) {
        for (const source of [log, reader]) {
          const array = yield* source.stream(from)
          const lines = yield* source.stream(from, "lines")
          const arrayBody = concat(yield* collect(array)).toString("utf8")
          const linePieces = yield* collect(lines)
          if (linePieces.length > 1) inPieces++
          const linesBody = concat(linePieces).toString("utf8")
          expect({ length: lines.length, nextOffset: fmt(lines.nextOffset), reachedEnd: lines.reachedEnd }).toEqual({
            length: array.length,
            nextOffset: fmt(array.nextOffset),
            reachedEnd: array.reachedEnd
          })
          // Each line is one whole message; joined by commas they are the array body.
          const messages = linesBody === "" ? [] : linesBody.split("\n")
          for (const m of messages) expect(() => JSON.parse(m)).not.toThrow()
          expect(messages.join(",")).toBe(arrayBody)
        }
      }
      expect(inPieces).toBeGreaterThanOrEqual(10)
    }))

  it.scoped("never see bytes committed after the read was made", () =>
    Effect.gen(function*() {
      const options = { directory: yield* tempDir, chunkBytesThreshold: 100 * PIECE_BYTES, ...FILES_ONLY }
      const { storage } = yield* storageAt(options)
      const handle = ShapeHandle("stream-committed")
      const log = yield* storage.create(handle)
      yield* log.appendSnapshot([])
      yield* log.completeSnapshot
      yield* log.append(Array.from({ length: 300 }, (_, op) => bigEntry(200, op)))
      yield* log.commit
      const reader = yield* openReader(options, handle)

      for (const [i, source] of [log, reader].entries()) {
        const before = yield* source.read(LogOffset.lastBeforeReal)
        const streamed = yield* source.stream(LogOffset.lastBeforeReal)
        expect(streamed.bytes).toBeUndefined()
        const { first, rest } = yield* pullOneThenRest(streamed)
        yield* log.append(Array.from({ length: 50 }, (_, op) => bigEntry(300 + i, op)))
        yield* log.commit
        expectSameBody(LogOffset.lastBeforeReal, before, streamed, yield* rest)
        expect(first.length).toBeGreaterThan(0)
        // the log did grow: a new read sees it
        expect((yield* source.read(LogOffset.lastBeforeReal)).body.length).toBeGreaterThan(before.body.length)
      }
    }))

  it.scoped("hold a descriptor of their own: a removal or close does not wait for them, and they read on after it", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const options = { directory, chunkBytesThreshold: THRESHOLD, ...FILES_ONLY }
      const shapeFiles = (handle: string) => path.join(directory, handle)

      for (const ending of ["removed", "closed"] as const) {
        for (const side of ["owner", "read-only"] as const) {
          const { storage, close } = yield* storageAt(options)
          const handle = ShapeHandle(`stream-${ending}-${side}`)
          const log = yield* storage.create(handle)
          const entries = yield* fillShape(log)
          const source = side === "owner" ? log : yield* openReader(options, handle)

          const scope = yield* Scope.make()
          const reads = [LogOffset.beforeAll, LogOffset.lastBeforeReal, entries[30]!.offset]
          const opened = yield* Effect.forEach(reads, (from) =>
            Effect.all([source.read(from), Scope.extend(source.stream(from), scope)]))
          expect(opened.every(([, streamed]) => streamed.bytes === undefined)).toBe(true)
          const pulls = yield* Effect.forEach(opened, ([, streamed]) => Scope.extend(pullOneThenRest(streamed), scope))

          // neither waits for the open streams, and only the streams' own descriptors stay open
          if (ending === "removed") yield* storage.remove(handle).pipe(Effect.timeout("2 seconds"))
          else yield* close.pipe(Effect.timeout("2 seconds"))
          expect(yield* Effect.promise(() => fs.stat(shapeFiles(handle)).then(() => true, () => false))).toBe(
            ending === "closed"
          )
          expect(yield* descriptorsUnder(directory)).toBe(reads.length)

          for (const [i, [whole, streamed]] of opened.entries()) {
            expectSameBody(reads[i]!, whole, streamed, yield* pulls[i]!.rest)
          }
          yield* Scope.close(scope, Exit.void)
          expect(yield* descriptorsUnder(directory)).toBe(0)
          if (ending === "removed") yield* close
        }
      }
    }))
})
