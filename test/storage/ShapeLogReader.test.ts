import * as fs from "node:fs/promises"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer } from "effect"
import { LogOffset } from "../../src/domain/LogOffset.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import {
  type LogEntry,
  type LogRead,
  openReader,
  type ShapeLog,
  type ShapeLogReader,
  ShapeLogStorage,
  type ShapeLogStorageOptions
} from "../../src/storage/ShapeLogStorage.js"
import { entry, fmt, line, off, tempDir, THRESHOLD } from "./fixtures.js"

const decoder = new TextDecoder()



/** A read in a form `toEqual` compares byte for byte. */
const view = (read: LogRead) => ({
  body: decoder.decode(read.body),
  count: read.count,
  nextOffset: fmt(read.nextOffset),
  reachedEnd: read.reachedEnd
})


/** The owning process: the normal storage layer on a fresh directory. */
const withWriter = Effect.gen(function*() {
  const directory = yield* tempDir
  const options: ShapeLogStorageOptions = { directory, chunkBytesThreshold: THRESHOLD }
  const context = yield* Layer.build(ShapeLogStorage.layer(options))
  return { options, storage: Context.get(context, ShapeLogStorage) }
})

/** Follows reads from `from` until one reaches the end; returns the messages served. */
const readAll = (read: (from: LogOffset) => Effect.Effect<LogRead, unknown>, from: LogOffset) =>
  Effect.gen(function*() {
    const messages: Array<string> = []
    let at = from
    for (let guard = 0; guard < 10_000; guard++) {
      const r = yield* read(at)
      if (r.count > 0) messages.push(...decoder.decode(r.body).split(/,(?=\{"key")/))
      if (r.reachedEnd) return messages
      at = r.nextOffset
    }
    throw new Error("reads never reached the end")
  })

/**
 * Every offset worth asking from: `-1`, each snapshot chunk, `0_inf`, each
 * entry, a position between entries, and one past the end.
 */
const probes = (snapshotChunks: number, entries: ReadonlyArray<LogEntry>): Array<LogOffset> => [
  LogOffset.beforeAll,
  ...Array.from({ length: snapshotChunks + 1 }, (_, n) => LogOffset.make(0n, n)),
  LogOffset.lastBeforeReal,
  ...entries.flatMap((e) => [e.offset, LogOffset.make(e.offset.tx, e.offset.op + 1), LogOffset.make(e.offset.tx, Infinity)]),
  LogOffset.make(1_000_000n, 0)
]

/** Asserts the reader answers every probe exactly as the owner's own log does. */
const expectSameReads = (log: ShapeLog, reader: ShapeLogReader, from: ReadonlyArray<LogOffset>) =>
  Effect.gen(function*() {
    for (const offset of from) {
      const mine = view(yield* log.read(offset))
      const theirs = view(yield* reader.read(offset))
      expect({ from: fmt(offset), ...theirs }).toEqual({ from: fmt(offset), ...mine })
    }
  })

interface FileState {
  readonly name: string
  readonly size: number
  readonly mtimeMs: number
  readonly ino: number
}

const fileStates = (dir: string) =>
  Effect.promise(async (): Promise<Array<FileState>> => {
    const names = (await fs.readdir(dir)).sort()
    return Promise.all(names.map(async (name) => {
      const st = await fs.stat(path.join(dir, name))
      return { name, size: st.size, mtimeMs: st.mtimeMs, ino: st.ino }
    }))
  })

const snapshotLines = Array.from({ length: 25 }, (_, i) => line("snap", i))

describe("ShapeLogReader", () => {
  it.scoped("follows the owner's commits and never sees appended, uncommitted entries", () =>
    Effect.gen(function*() {
      const { options, storage } = yield* withWriter
      const handle = ShapeHandle("reader-follow")
      const log = yield* storage.create(handle)
      yield* log.appendSnapshot(snapshotLines)
      yield* log.completeSnapshot

      const reader = yield* openReader(options, handle)
      expect(reader.handle).toBe(handle)
      expect(yield* reader.latestOffset).toEqual(LogOffset.lastBeforeReal)
      expect(yield* readAll(reader.read, LogOffset.beforeAll)).toEqual(snapshotLines)
      yield* expectSameReads(log, reader, probes(3, []))

      const committed: Array<LogEntry> = []
      for (let batch = 0; batch < 6; batch++) {
        // two transactions of varying size, so chunks close at various points
        const tx = 100 + batch * 2
        const entries = [
          ...Array.from({ length: 2 + batch * 3 }, (_, i) => entry(tx, i * 2)),
          ...Array.from({ length: 3 }, (_, i) => entry(tx + 1, i * 2))
        ]
        yield* log.append(entries)

        const before = committed.length === 0 ? LogOffset.lastBeforeReal : committed[committed.length - 1]!.offset
        expect(yield* reader.latestOffset).toEqual(before)
        expect(yield* readAll(reader.read, LogOffset.lastBeforeReal)).toEqual(committed.map((e) => e.json))

        const durable = yield* log.commit
        committed.push(...entries)
        expect(durable).toEqual(entries[entries.length - 1]!.offset)
        expect(yield* reader.latestOffset).toEqual(durable)
        expect(yield* readAll(reader.read, LogOffset.beforeAll)).toEqual([
          ...snapshotLines,
          ...committed.map((e) => e.json)
        ])
        yield* expectSameReads(log, reader, probes(3, committed))
      }
    }))

  it.scoped("gives the owner's answer for an empty snapshot and for offsets deep inside a large chunk", () =>
    Effect.gen(function*() {
      const directory = yield* tempDir
      const options: ShapeLogStorageOptions = { directory, chunkBytesThreshold: 1_000_000 }
      const storage = Context.get(yield* Layer.build(ShapeLogStorage.layer(options)), ShapeLogStorage)
      const handle = ShapeHandle("reader-search")
      const log = yield* storage.create(handle)
      yield* log.completeSnapshot
      const reader = yield* openReader(options, handle)
      yield* expectSameReads(log, reader, probes(1, []))

      // one chunk of 2,000 lines: the reader has no recent-commit hints, so it searches the index
      const entries = Array.from({ length: 2000 }, (_, i) => entry(500 + Math.floor(i / 4), (i % 4) * 2))
      for (let i = 0; i < entries.length; i += 500) {
        yield* log.append(entries.slice(i, i + 500))
        yield* log.commit
      }
      yield* expectSameReads(log, reader, probes(1, entries.filter((_, i) => i % 37 === 0 || i > 1990)))
      expect(yield* readAll(reader.read, LogOffset.beforeAll)).toEqual(entries.map((e) => e.json))
    }))

  it.scoped("never changes a file, and ignores bytes written past the commit pointer", () =>
    Effect.gen(function*() {
      const { options, storage } = yield* withWriter
      const handle = ShapeHandle("reader-untouched")
      const log = yield* storage.create(handle)
      yield* log.appendSnapshot(snapshotLines)
      yield* log.completeSnapshot
      const committed = Array.from({ length: 14 }, (_, i) => entry(300 + Math.floor(i / 2), (i % 2) * 2))
      yield* log.append(committed)
      yield* log.commit
      // buffered by the owner, not yet written or committed
      yield* log.append([entry(400, 0), entry(400, 2)])

      // what a commit in flight leaves on disk before its pointer: whole lines, index and chunk
      // records, and stray bytes after the last snapshot chunk
      const shapeDir = path.join(options.directory, handle)
      const extra = Array.from({ length: 12 }, (_, i) => entry(900, i * 2))
      const pointer = JSON.parse(yield* Effect.promise(() => fs.readFile(path.join(shapeDir, "commit.json"), "utf8")))
      const index = Buffer.alloc(extra.length * 24)
      extra.forEach((e, i) => {
        index.writeBigUInt64LE(e.offset.tx, i * 24)
        index.writeDoubleLE(e.offset.op, i * 24 + 8)
        index.writeDoubleLE(pointer.logBytes + (i + 1) * 100, i * 24 + 16)
      })
      const chunk = Buffer.alloc(32)
      chunk.writeBigUInt64LE(900n, 0)
      chunk.writeDoubleLE(18, 8)
      chunk.writeDoubleLE(pointer.logBytes + 1000, 16)
      chunk.writeDoubleLE(pointer.indexBytes / 24 + 10, 24)
      yield* Effect.promise(async () => {
        await fs.appendFile(path.join(shapeDir, "log.jsonl"), extra.map((e) => e.json + "\n").join(""))
        await fs.appendFile(path.join(shapeDir, "log.idx"), index)
        await fs.appendFile(path.join(shapeDir, "log.chunks"), chunk)
        await fs.appendFile(path.join(shapeDir, "snapshot.2.jsonl"), line("snap", 99) + "\n")
      })

      const before = yield* fileStates(shapeDir)
      const reader = yield* openReader(options, handle)
      expect(yield* reader.latestOffset).toEqual(committed[committed.length - 1]!.offset)
      expect(yield* readAll(reader.read, LogOffset.beforeAll)).toEqual([
        ...snapshotLines,
        ...committed.map((e) => e.json)
      ])
      yield* expectSameReads(log, reader, probes(3, [...committed, ...extra]))
      expect(yield* fileStates(shapeDir)).toEqual(before)

      // the owner's next commit overwrites the stray bytes; the reader picks it up
      const durable = yield* log.commit
      expect(yield* reader.latestOffset).toEqual(durable)
      expect(yield* readAll(reader.read, off("306_2"))).toEqual([entry(400, 0).json, entry(400, 2).json])
    }))

  it.scoped("an incomplete snapshot reads as -1 and fails with Closed instead of waiting", () =>
    Effect.gen(function*() {
      const { options, storage } = yield* withWriter
      const handle = ShapeHandle("reader-incomplete")
      const log = yield* storage.create(handle)
      const reader = yield* openReader(options, handle)
      expect(yield* reader.latestOffset).toEqual(LogOffset.beforeAll)
      yield* log.appendSnapshot(snapshotLines)
      expect(yield* reader.latestOffset).toEqual(LogOffset.beforeAll)
      const error = yield* Effect.flip(reader.read(LogOffset.beforeAll))
      expect(error.reason).toBe("Closed")
      yield* log.completeSnapshot
      expect(yield* reader.latestOffset).toEqual(LogOffset.lastBeforeReal)
      expect(view(yield* reader.read(LogOffset.beforeAll))).toEqual(view(yield* log.read(LogOffset.beforeAll)))
    }))

  it.scoped("a removed shape fails with Removed", () =>
    Effect.gen(function*() {
      const { options, storage } = yield* withWriter
      const handle = ShapeHandle("reader-removed")
      const log = yield* storage.create(handle)
      yield* log.appendSnapshot(snapshotLines)
      yield* log.completeSnapshot
      yield* log.append([entry(10, 0)])
      yield* log.commit
      const reader = yield* openReader(options, handle)
      expect((yield* reader.read(LogOffset.lastBeforeReal)).count).toBe(1)

      yield* storage.remove(handle)
      expect((yield* Effect.flip(reader.read(LogOffset.lastBeforeReal))).reason).toBe("Removed")
      expect((yield* Effect.flip(reader.read(LogOffset.beforeAll))).reason).toBe("Removed")
      expect((yield* Effect.flip(reader.latestOffset)).reason).toBe("Removed")
      expect((yield* Effect.flip(openReader(options, handle))).reason).toBe("Removed")
      expect((yield* Effect.flip(openReader(options, ShapeHandle("never-existed")))).reason).toBe("Removed")
    }))

  it.scoped("a pointer that stays unreadable is Corrupt, and is left as it is", () =>
    Effect.gen(function*() {
      const { options, storage } = yield* withWriter
      const handle = ShapeHandle("reader-corrupt")
      const log = yield* storage.create(handle)
      yield* log.completeSnapshot
      const pointerFile = path.join(options.directory, handle, "commit.json")
      yield* Effect.promise(() => fs.writeFile(pointerFile, "{\"version\":1,"))
      const reader = yield* openReader(options, handle)
      expect((yield* Effect.flip(reader.read(LogOffset.beforeAll))).reason).toBe("Corrupt")
      expect((yield* Effect.flip(reader.latestOffset)).reason).toBe("Corrupt")
      expect(yield* Effect.promise(() => fs.readFile(pointerFile, "utf8"))).toBe("{\"version\":1,")
    }))

  it.scopedLive("reads while the owner keeps committing see whole commits only", () =>
    Effect.gen(function*() {
      const { options, storage } = yield* withWriter
      const handle = ShapeHandle("reader-concurrent")
      const log = yield* storage.create(handle)
      yield* log.appendSnapshot(snapshotLines.slice(0, 3))
      yield* log.completeSnapshot
      const reader = yield* openReader(options, handle)

      const commits = 60
      const perCommit = 3
      const all = Array.from({ length: commits * perCommit }, (_, i) => entry(1000 + Math.floor(i / perCommit), (i % perCommit) * 2))
      const writer = yield* Effect.fork(Effect.gen(function*() {
        for (let c = 0; c < commits; c++) {
          yield* log.append(all.slice(c * perCommit, (c + 1) * perCommit))
          yield* log.commit
        }
      }))

      let seen = 0
      while (seen < all.length) {
        const latest = yield* reader.latestOffset
        const messages = yield* readAll(reader.read, LogOffset.lastBeforeReal)
        // whole commits only, in order, never fewer than an earlier read saw
        expect(messages.length % perCommit).toBe(0)
        expect(messages.length).toBeGreaterThanOrEqual(seen)
        expect(messages).toEqual(all.slice(0, messages.length).map((e) => e.json))
        const index = all.findIndex((e) => LogOffset.equals(e.offset, latest))
        expect(index + 1).toBeLessThanOrEqual(messages.length)
        seen = messages.length
      }
      yield* Fiber.join(writer)
      expect(yield* reader.latestOffset).toEqual(all[all.length - 1]!.offset)
    }))
})
