import * as fs from "node:fs/promises"
import * as path from "node:path"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option, Scope, Stream, TestClock } from "effect"
import { LogOffset } from "../../src/domain/LogOffset.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import { LogLines } from "../../src/storage/LogLines.js"
import { RECENT_KEEP_MS } from "../../src/storage/internal/RecentCommits.js"
import { type LogEntry, type LogRead, make, openReader, type ShapeLog } from "../../src/storage/ShapeLogStorage.js"
import { entry, fmt, line, off, tempDir, THRESHOLD } from "./fixtures.js"

const decoder = new TextDecoder()


const bodyOf = (read: LogRead): string => decoder.decode(read.body)


const withStorage = (threshold = THRESHOLD, recentCommitBytes?: number) =>
  Effect.gen(function*() {
    const dir = yield* tempDir
    const storage = yield* make({ directory: dir, chunkBytesThreshold: threshold, ...(recentCommitBytes === undefined ? {} : { recentCommitBytes }) })
    return { dir, storage }
  })

/** Opens storage in a scope of its own, so a test can drop it and reopen the same directory. */
const openIn = (dir: string, threshold = THRESHOLD) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const storage = yield* Scope.extend(make({ directory: dir, chunkBytesThreshold: threshold }), scope)
    return { storage, close: Scope.close(scope, Exit.void) }
  })

const withSnapshot = (log: ShapeLog, lines: ReadonlyArray<string> = []) =>
  Effect.gen(function*() {
    yield* log.appendSnapshot(lines)
    yield* log.completeSnapshot
  })

/** Reads from `from` until a read reaches the end; returns every read. */
const readAll = (log: ShapeLog, from: LogOffset) =>
  Effect.gen(function*() {
    const reads: Array<LogRead> = []
    let at = from
    for (let guard = 0; guard < 10_000; guard++) {
      const read = yield* log.read(at)
      reads.push(read)
      if (read.reachedEnd) break
      at = read.nextOffset
    }
    return reads
  })

const bodies = (reads: ReadonlyArray<LogRead>): Array<string> =>
  reads.filter((r) => r.count > 0).flatMap((r) => bodyOf(r).split(/,(?=\{"key")/))

/** How many descriptors of this process are open on paths `matches` accepts. */
const openDescriptors = (matches: (target: string) => boolean) =>
  Effect.promise(async () => {
    let n = 0
    for (const fd of await fs.readdir("/proc/self/fd")) {
      if (matches(await fs.readlink(path.join("/proc/self/fd", fd)).catch(() => ""))) n++
    }
    return n
  })

/** How many descriptors of this process are open on files under `dir`. */
const openFilesUnder = (dir: string) => openDescriptors((target) => target.startsWith(dir + path.sep))

/** Full garbage collections, after the current job (a WeakRef's target is kept until then). */
const collectGarbage = async (): Promise<void> => {
  v8.setFlagsFromString("--expose-gc")
  const gc = vm.runInNewContext("gc") as () => void
  for (let i = 0; i < 3; i++) {
    await new Promise((r) => setTimeout(r, 10))
    gc()
  }
}

describe("ShapeLogStorage", () => {
  it.scoped("cuts the snapshot into chunks at the byte threshold and serves them as 0_n", () =>
    Effect.gen(function*() {
      const { dir, storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("snap-1"))
      const lines = Array.from({ length: 25 }, (_, i) => line("snap", i))
      expect(log.latestOffset()).toEqual(LogOffset.beforeAll)
      yield* log.appendSnapshot(lines.slice(0, 7))
      yield* log.appendSnapshot(lines.slice(7))
      expect(log.isSnapshotComplete()).toBe(false)
      expect(log.latestOffset()).toEqual(LogOffset.beforeAll)
      yield* log.completeSnapshot
      expect(log.isSnapshotComplete()).toBe(true)
      expect(log.latestOffset()).toEqual(LogOffset.lastBeforeReal)

      const files = (yield* Effect.promise(() => fs.readdir(path.join(dir, "snap-1")))).filter((f) => f.startsWith("snapshot."))
      expect(files.sort()).toEqual(["snapshot.0.jsonl", "snapshot.1.jsonl", "snapshot.2.jsonl"])

      const r0 = yield* log.read(LogOffset.beforeAll)
      expect([fmt(r0.nextOffset), r0.count, r0.reachedEnd]).toEqual(["0_0", 10, false])
      expect(bodyOf(r0)).toBe(lines.slice(0, 10).join(","))
      const r1 = yield* log.read(r0.nextOffset)
      expect([fmt(r1.nextOffset), r1.count, r1.reachedEnd]).toEqual(["0_1", 10, false])
      expect(bodyOf(r1)).toBe(lines.slice(10, 20).join(","))
      const r2 = yield* log.read(r1.nextOffset)
      expect([fmt(r2.nextOffset), r2.count, r2.reachedEnd]).toEqual(["0_2", 5, false])
      expect(bodyOf(r2)).toBe(lines.slice(20).join(","))
      const r3 = yield* log.read(r2.nextOffset)
      expect([fmt(r3.nextOffset), r3.count, r3.reachedEnd, r3.body.length]).toEqual(["0_inf", 0, true, 0])
      const beyond = yield* log.read(off("0_7"))
      expect([fmt(beyond.nextOffset), beyond.count, beyond.reachedEnd]).toEqual(["0_inf", 0, true])
    }))

  it.scoped("closes a snapshot chunk on the line that reaches the threshold exactly, opening no empty chunk", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("snap-2"))
      const lines = Array.from({ length: 20 }, (_, i) => line("snap", i))
      yield* withSnapshot(log, lines)
      const r1 = yield* log.read(off("0_0"))
      expect([fmt(r1.nextOffset), r1.count]).toEqual(["0_1", 10])
      const r2 = yield* log.read(off("0_1"))
      expect([fmt(r2.nextOffset), r2.count, r2.reachedEnd]).toEqual(["0_inf", 0, true])
    }))

  it.scoped("an empty snapshot is one empty chunk 0", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("snap-3"))
      yield* log.completeSnapshot
      const r0 = yield* log.read(LogOffset.beforeAll)
      expect([fmt(r0.nextOffset), r0.count, r0.body.length, r0.reachedEnd]).toEqual(["0_0", 0, 0, false])
      const r1 = yield* log.read(r0.nextOffset)
      expect([fmt(r1.nextOffset), r1.count, r1.reachedEnd]).toEqual(["0_inf", 0, true])
    }))

  it.scoped("a read waits for the snapshot to complete", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("snap-4"))
      yield* log.appendSnapshot([line("snap", 0)])
      const reader = yield* Effect.fork(log.read(LogOffset.beforeAll))
      yield* Effect.yieldNow()
      yield* Effect.yieldNow()
      expect(Option.isNone(yield* Fiber.poll(reader))).toBe(true)
      yield* log.completeSnapshot
      const read = yield* Fiber.join(reader)
      expect(bodyOf(read)).toBe(line("snap", 0))
    }))

  it.scoped("reads the log after an offset: between entries, before the first, at and past the end", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage(1_000_000)
      const log = yield* storage.create(ShapeHandle("log-1"))
      yield* withSnapshot(log)
      const entries = [entry(100, 0), entry(100, 2), entry(100, 4), entry(200, 0), entry(300, 0), entry(300, 2)]
      yield* log.append(entries.slice(0, 3))
      yield* log.append(entries.slice(3))
      expect(log.latestOffset()).toEqual(LogOffset.lastBeforeReal)
      expect(fmt(yield* log.commit)).toBe("300_2")
      expect(fmt(log.latestOffset())).toBe("300_2")

      const joined = (from: number) => entries.slice(from).map((e) => e.json).join(",")
      const all = yield* log.read(LogOffset.lastBeforeReal)
      expect([all.count, fmt(all.nextOffset), all.reachedEnd]).toEqual([6, "300_2", true])
      expect(bodyOf(all)).toBe(joined(0))
      for (const [from, skip] of [["50_0", 0], ["100_0", 1], ["100_3", 2], ["100_inf", 3], ["150_7", 3], ["200_0", 4], ["300_1", 5]] as const) {
        const read = yield* log.read(off(from))
        expect([from, read.count, fmt(read.nextOffset), read.reachedEnd]).toEqual([from, 6 - skip, "300_2", true])
        expect(bodyOf(read)).toBe(joined(skip))
      }
      const atEnd = yield* log.read(off("300_2"))
      expect([atEnd.count, atEnd.body.length, fmt(atEnd.nextOffset), atEnd.reachedEnd]).toEqual([0, 0, "300_2", true])
      const pastEnd = yield* log.read(off("999_0"))
      expect([pastEnd.count, fmt(pastEnd.nextOffset), pastEnd.reachedEnd]).toEqual([0, "999_0", true])
    }))

  it.scoped("serves only committed entries", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("log-2"))
      yield* withSnapshot(log, [line("snap", 0)])
      yield* log.append([entry(10, 0)])
      yield* log.commit
      yield* log.append([entry(11, 0), entry(12, 0)])
      expect(fmt(log.latestOffset())).toBe("10_0")
      const read = yield* log.read(LogOffset.lastBeforeReal)
      expect([read.count, fmt(read.nextOffset), bodyOf(read)]).toEqual([1, "10_0", entry(10, 0).json])
      const after = yield* log.read(off("10_0"))
      expect([after.count, fmt(after.nextOffset), after.reachedEnd]).toEqual([0, "10_0", true])
      expect(fmt(yield* log.commit)).toBe("12_0")
      expect((yield* log.read(off("10_0"))).count).toBe(2)
    }))

  it.scoped("cuts the log into line-aligned chunks and each read ends at its chunk's end", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("log-3"))
      const snapshot = Array.from({ length: 15 }, (_, i) => line("snap", i))
      yield* withSnapshot(log, snapshot)
      // 95 entries of 100 bytes in transactions of 3 changes, committed every 7 appends
      const entries = Array.from({ length: 95 }, (_, i) => entry(1000 + Math.floor(i / 3), (i % 3) * 2))
      for (let i = 0; i < entries.length; i++) {
        yield* log.append([entries[i]!])
        if (i % 7 === 6) yield* log.commit
      }
      yield* log.commit

      const reads = yield* readAll(log, LogOffset.beforeAll)
      expect(reads.map((r) => [fmt(r.nextOffset), r.count, r.reachedEnd])).toEqual([
        ["0_0", 10, false],
        ["0_1", 5, false],
        ...Array.from({ length: 9 }, (_, c) => [fmt(entries[c * 10 + 9]!.offset), 10, false]),
        [fmt(entries[94]!.offset), 5, true]
      ])
      expect(bodies(reads)).toEqual([...snapshot, ...entries.map((e) => e.json)])
      for (const read of reads) expect(read.body.length).toBe(read.count * 100 - 1)

      // a read starting inside a chunk ends where that chunk ends
      const mid = yield* log.read(entries[43]!.offset)
      expect([mid.count, fmt(mid.nextOffset), mid.reachedEnd]).toEqual([6, fmt(entries[49]!.offset), false])
      expect(bodyOf(mid)).toBe(entries.slice(44, 50).map((e) => e.json).join(","))
      expect(fmt(entries[43]!.offset)).toBe("1014_2")
      const between = yield* log.read(off("1014_3"))
      expect([between.count, fmt(between.nextOffset)]).toEqual([6, fmt(entries[49]!.offset)])
    }))

  it.scoped("finds any offset in a chunk of many lines through the index", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage(10_000_000)
      const log = yield* storage.create(ShapeHandle("log-4"))
      yield* withSnapshot(log)
      const entries = Array.from({ length: 3000 }, (_, i) => entry(5000 + 2 * i, 4))
      for (let i = 0; i < entries.length; i += 100) {
        yield* log.append(entries.slice(i, i + 100))
        yield* log.commit
      }
      for (const i of [0, 1, 255, 256, 257, 1000, 1499, 2047, 2998]) {
        const exact = yield* log.read(entries[i]!.offset)
        expect([i, exact.count]).toEqual([i, 2999 - i])
        expect(bodyOf(exact).slice(0, 99)).toBe(entries[i + 1]!.json)
        const between = yield* log.read(LogOffset.make(entries[i]!.offset.tx + 1n, 0))
        expect([i, between.count]).toEqual([i, 2999 - i])
        const before = yield* log.read(LogOffset.make(entries[i]!.offset.tx, 3))
        expect([i, before.count]).toEqual([i, 3000 - i])
        expect(bodyOf(before).length).toBe((3000 - i) * 100 - 1)
      }
    }))

  it.scoped("ignores replayed entries at or below the last appended offset", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage(1_000_000)
      const log = yield* storage.create(ShapeHandle("log-5"))
      yield* withSnapshot(log)
      const entries = Array.from({ length: 15 }, (_, i) => entry(100 + i, 0))
      yield* log.append(entries.slice(0, 10))
      yield* log.commit
      yield* log.append(entries.slice(4, 12))
      yield* log.append(entries.slice(8, 15))
      yield* log.append([entry(1, 0), entry(0, 2)])
      yield* log.commit
      const read = yield* log.read(LogOffset.lastBeforeReal)
      expect(read.count).toBe(15)
      expect(bodyOf(read)).toBe(entries.map((e) => e.json).join(","))
    }))

  it.effect("recovers after a crash: only committed data remains and appending continues", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const handle = ShapeHandle("crash-1")
      const entries = Array.from({ length: 40 }, (_, i) => entry(700 + i, 0))

      const first = yield* openIn(dir)
      const log1 = yield* first.storage.create(handle)
      yield* withSnapshot(log1, [line("snap", 0)])
      yield* log1.append(entries.slice(0, 25))
      yield* log1.commit
      yield* log1.append(entries.slice(25, 30))
      yield* first.close
      // what a kill -9 mid-commit leaves: bytes past the commit pointer
      const shapeDir = path.join(dir, handle)
      for (const name of ["log.jsonl", "log.idx", "log.chunks"]) {
        yield* Effect.promise(() => fs.appendFile(path.join(shapeDir, name), Buffer.from("garbage that was never committed\n")))
      }

      const second = yield* openIn(dir)
      const log2 = yield* second.storage.open(handle)
      expect(log2.isSnapshotComplete()).toBe(true)
      expect(fmt(log2.latestOffset())).toBe(fmt(entries[24]!.offset))
      expect(bodies(yield* readAll(log2, LogOffset.beforeAll))).toEqual([
        line("snap", 0),
        ...entries.slice(0, 25).map((e) => e.json)
      ])
      const pointer = JSON.parse(yield* Effect.promise(() => fs.readFile(path.join(shapeDir, "commit.json"), "utf8")))
      const size = (name: string) => Effect.promise(() => fs.stat(path.join(shapeDir, name)).then((s) => s.size))
      expect(yield* size("log.jsonl")).toBe(pointer.logBytes)
      expect(yield* size("log.idx")).toBe(pointer.indexBytes)
      expect(yield* size("log.chunks")).toBe(pointer.chunkIndexBytes)

      // replay from the durable offset: the consumer resends what was lost
      yield* log2.append(entries.slice(20, 40))
      yield* log2.commit
      const reads = yield* readAll(log2, LogOffset.beforeAll)
      expect(bodies(reads)).toEqual([line("snap", 0), ...entries.map((e) => e.json)])
      expect(reads.slice(1).map((r) => r.count)).toEqual([10, 10, 10, 10])
      yield* second.close

      const third = yield* openIn(dir)
      const log3 = yield* third.storage.open(handle)
      expect(fmt(log3.latestOffset())).toBe(fmt(entries[39]!.offset))
      expect(bodies(yield* readAll(log3, LogOffset.beforeAll))).toEqual([line("snap", 0), ...entries.map((e) => e.json)])
      yield* third.close
    })))

  it.effect("lines of several bytes a character are indexed and cut into chunks by their bytes, and recovered", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const handle = ShapeHandle("multibyte")
      // Lines of one-byte characters and of two-, three- and four-byte ones in the same batches.
      const text = ["plain", "é".repeat(40), "日本語".repeat(12), "🙂".repeat(20)]
      const entries = Array.from({ length: 24 }, (_, i) => ({
        offset: LogOffset.make(BigInt(500 + i), 0),
        json: JSON.stringify({ key: `k-${i}`, value: { text: text[i % text.length] } })
      }))
      const first = yield* openIn(dir, 300)
      const log1 = yield* first.storage.create(handle)
      yield* withSnapshot(log1)
      yield* log1.append(entries.slice(0, 5))
      yield* log1.append(entries.slice(5, 13))
      yield* log1.commit
      yield* log1.append(entries.slice(13))
      yield* log1.commit
      const expectReads = (log: ShapeLog) =>
        Effect.gen(function*() {
          const reads = yield* readAll(log, LogOffset.lastBeforeReal)
          expect(bodies(reads)).toEqual(entries.map((e) => e.json))
          // Each chunk but the last ends with the line that makes it reach the threshold in bytes, not characters.
          expect(reads.length).toBeGreaterThan(2)
          for (const r of reads.slice(0, -1)) {
            const lines = bodies([r])
            const chunkBytes = r.body.length + 1
            expect(chunkBytes).toBeGreaterThanOrEqual(300)
            expect(chunkBytes - Buffer.byteLength(lines[lines.length - 1]!) - 1).toBeLessThan(300)
          }
          for (const [i, e] of entries.entries()) {
            expect(bodies(yield* readAll(log, e.offset))).toEqual(entries.slice(i + 1).map((x) => x.json))
          }
        })
      yield* expectReads(log1)
      yield* first.close
      const second = yield* openIn(dir, 300)
      const log2 = yield* second.storage.open(handle)
      expect(fmt(log2.latestOffset())).toBe(fmt(entries[23]!.offset))
      yield* expectReads(log2)
      yield* second.close
    })))

  it.effect("lines appended already encoded skip what the log holds and read back as the entries they were made of", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const handle = ShapeHandle("encoded-lines")
      const text = ["plain", "é".repeat(300), "日本語".repeat(200), "🙂".repeat(500)]
      const entries = Array.from({ length: 40 }, (_, i) => ({
        offset: LogOffset.make(BigInt(700 + Math.floor(i / 3)), (i % 3) * 2),
        json: JSON.stringify({ key: `k-${i}`, value: { text: text[i % text.length] } })
      }))
      const first = yield* openIn(dir, 2000)
      const log1 = yield* first.storage.create(handle)
      yield* withSnapshot(log1)
      yield* log1.append(entries.slice(0, 10))
      yield* log1.commit
      // A batch encoded while that commit ran, from an older end: its first lines are already in the log.
      const lines = LogLines.of(entries.slice(4))
      expect(lines.byteLength).toBe(entries.slice(4).reduce((n, e) => n + Buffer.byteLength(e.json) + 1, 0))
      yield* log1.appendLines(lines)
      yield* log1.commit
      expect(fmt(log1.latestOffset())).toBe(fmt(entries[39]!.offset))
      expect(bodies(yield* readAll(log1, LogOffset.lastBeforeReal))).toEqual(entries.map((e) => e.json))
      expect(bodies(yield* readAll(log1, entries[9]!.offset))).toEqual(entries.slice(10).map((e) => e.json))
      // Lines the log holds entirely add nothing.
      yield* log1.appendLines(LogLines.of(entries.slice(30)))
      yield* log1.commit
      yield* first.close
      const second = yield* openIn(dir, 2000)
      const log2 = yield* second.storage.open(handle)
      expect(bodies(yield* readAll(log2, LogOffset.lastBeforeReal))).toEqual(entries.map((e) => e.json))
      for (const i of [0, 9, 10, 25]) {
        expect(bodies(yield* readAll(log2, entries[i]!.offset))).toEqual(entries.slice(i + 1).map((e) => e.json))
      }
      yield* second.close
    })))

  it.effect("a pointer staged for a commit that never finished is not what recovery reads", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const handle = ShapeHandle("staged-pointer")
      const entries = Array.from({ length: 20 }, (_, i) => entry(800 + i, 0))
      const first = yield* openIn(dir)
      const log1 = yield* first.storage.create(handle)
      yield* withSnapshot(log1)
      yield* log1.append(entries.slice(0, 10))
      yield* log1.commit
      yield* first.close
      // A kill -9 after the next pointer was staged, before its data was durable and it was renamed: the
      // staged pointer covers bytes that never reached the log.
      const shapeDir = path.join(dir, handle)
      const pointer = JSON.parse(yield* Effect.promise(() => fs.readFile(path.join(shapeDir, "commit.json"), "utf8")))
      const staged = { ...pointer, lastOffset: fmt(entries[14]!.offset), logBytes: pointer.logBytes + 500, indexBytes: pointer.indexBytes + 5 * 24 }
      yield* Effect.promise(() => fs.writeFile(path.join(shapeDir, "commit.json.tmp"), JSON.stringify(staged)))
      yield* Effect.promise(() => fs.appendFile(path.join(shapeDir, "log.jsonl"), Buffer.from("half a line that was never synced")))

      const second = yield* openIn(dir)
      const log2 = yield* second.storage.open(handle)
      expect(fmt(log2.latestOffset())).toBe(fmt(entries[9]!.offset))
      expect(bodies(yield* readAll(log2, LogOffset.lastBeforeReal))).toEqual(entries.slice(0, 10).map((e) => e.json))
      yield* log2.append(entries.slice(10))
      yield* log2.commit
      yield* second.close

      const third = yield* openIn(dir)
      const log3 = yield* third.storage.open(handle)
      expect(fmt(log3.latestOffset())).toBe(fmt(entries[19]!.offset))
      expect(bodies(yield* readAll(log3, LogOffset.lastBeforeReal))).toEqual(entries.map((e) => e.json))
      yield* third.close
    })))

  it.effect("a snapshot of several megabytes, synced as it is written, reads back whole after a restart", () =>
    Effect.scoped(Effect.gen(function*() {
      // Chunks of 2.5 MB: each gets an early sync at 2 MB, still running, as likely as not, when the chunk closes.
      const threshold = 2_500_000
      const dir = yield* tempDir
      const lines = Array.from({ length: 60_000 }, (_, i) => line("big", i))
      const first = yield* openIn(dir, threshold)
      const log = yield* first.storage.create(ShapeHandle("big-1"))
      for (let i = 0; i < lines.length; i += 2_500) {
        yield* log.appendSnapshotRows(Buffer.from(lines.slice(i, i + 2_500).map((l) => `${l}\n`).join("")))
      }
      yield* log.completeSnapshot
      yield* first.close
      const second = yield* openIn(dir, threshold)
      const reopened = yield* second.storage.open(ShapeHandle("big-1"))
      const reads = yield* readAll(reopened, LogOffset.beforeAll)
      expect(reads.filter((r) => r.count > 0).length).toBe(3)
      expect(bodies(reads)).toEqual(lines)
      yield* second.close
    })))

  it.effect("starts over when the snapshot never completed", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const handle = ShapeHandle("crash-2")
      const first = yield* openIn(dir)
      const log1 = yield* first.storage.create(handle)
      yield* log1.appendSnapshot(Array.from({ length: 25 }, (_, i) => line("snap", i)))
      yield* log1.append([entry(5, 0)])
      yield* log1.commit
      yield* first.close

      const second = yield* openIn(dir)
      const log2 = yield* second.storage.open(handle)
      expect(log2.isSnapshotComplete()).toBe(false)
      expect(log2.latestOffset()).toEqual(LogOffset.beforeAll)
      const files = yield* Effect.promise(() => fs.readdir(path.join(dir, handle)))
      expect(files.filter((f) => f.startsWith("snapshot.") || f === "commit.json")).toEqual([])
      yield* withSnapshot(log2, [line("snap", 99)])
      const read = yield* log2.read(LogOffset.beforeAll)
      expect(bodyOf(read)).toBe(line("snap", 99))
      expect((yield* log2.read(read.nextOffset)).count).toBe(0)
      yield* second.close
    })))

  it.scoped("awaitDataAfter wakes on commit, not on append", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("wait-1"))
      const snapshotWaiter = yield* Effect.fork(log.awaitDataAfter(LogOffset.beforeAll))
      yield* Effect.yieldNow()
      expect(Option.isNone(yield* Fiber.poll(snapshotWaiter))).toBe(true)
      yield* withSnapshot(log)
      yield* Fiber.join(snapshotWaiter)

      const waiter = yield* Effect.fork(log.awaitDataAfter(log.latestOffset()))
      yield* Effect.yieldNow()
      yield* log.append([entry(42, 0)])
      yield* Effect.yieldNow()
      expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)
      yield* log.commit
      yield* Fiber.join(waiter)
      // data already past the offset: no wait at all
      yield* log.awaitDataAfter(LogOffset.lastBeforeReal)
      const later = yield* Effect.fork(log.awaitDataAfter(off("42_0")))
      yield* Effect.yieldNow()
      yield* log.commit
      expect(Option.isNone(yield* Fiber.poll(later))).toBe(true)
      yield* Fiber.interrupt(later)
    }))

  it.scoped("gives back the descriptors of a log left idle, and opens them again for its next read or commit", () =>
    Effect.gen(function*() {
      const { dir, storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("idle-1"))
      yield* withSnapshot(log, [line("snap", 0)])
      yield* log.append([entry(7, 0)])
      yield* log.commit
      const shapeDir = path.join(dir, "idle-1")
      const openFiles = openFilesUnder(shapeDir)
      expect(yield* openFiles).toBe(3)
      // Unused across two checks: its descriptors are closed, its state stays.
      yield* TestClock.adjust("25 seconds")
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      expect(yield* openFiles).toBe(0)
      expect(fmt(log.latestOffset())).toBe("7_0")
      const waiter = yield* Effect.fork(log.awaitDataAfter(off("7_0")))
      yield* log.append([entry(8, 0), entry(8, 1)])
      expect(fmt(yield* log.commit)).toBe("8_1")
      yield* Fiber.join(waiter)
      expect(yield* openFiles).toBe(3)
      expect(bodies(yield* readAll(log, LogOffset.lastBeforeReal))).toEqual([entry(7, 0), entry(8, 0), entry(8, 1)].map((e) => e.json))
      // Used since the last check: left open.
      yield* TestClock.adjust("10 seconds")
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      expect(yield* openFiles).toBe(3)
      yield* TestClock.adjust("10 seconds")
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      expect(yield* openFiles).toBe(0)
      const reopened = yield* openIn(dir)
      expect(fmt((yield* reopened.storage.open(ShapeHandle("idle-1"))).latestOffset())).toBe("8_1")
      yield* reopened.close
    }))

  it.scoped("the shape directory's descriptor is held with the log's files and given back with them", () =>
    Effect.gen(function*() {
      const { dir, storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("dirfd-1"))
      yield* withSnapshot(log, [line("snap", 0)])
      yield* log.append([entry(7, 0)])
      yield* log.commit
      const shapeDir = path.join(dir, "dirfd-1")
      const onDirectory = openDescriptors((target) => target === shapeDir)
      expect(yield* onDirectory).toBe(1)
      yield* TestClock.adjust("25 seconds")
      // The descriptors close in the background: looked at again until they are, for at most a few seconds.
      const closedBy = Date.now() + 5_000
      while ((yield* onDirectory) > 0 && Date.now() < closedBy) yield* Effect.promise(() => new Promise((r) => setTimeout(r, 20)))
      expect(yield* onDirectory).toBe(0)
      yield* log.append([entry(8, 0)])
      expect(fmt(yield* log.commit)).toBe("8_0")
      expect(yield* onDirectory).toBe(1)
      const reopened = yield* openIn(dir)
      expect(fmt((yield* reopened.storage.open(ShapeHandle("dirfd-1"))).latestOffset())).toBe("8_0")
      yield* reopened.close
    }))

  it.scoped("a log gives back its descriptors once its snapshot completes; reading the snapshot does not open them", () =>
    Effect.gen(function*() {
      const { dir, storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("done-1"))
      const shapeDir = path.join(dir, "done-1")
      expect(yield* openFilesUnder(shapeDir)).toBe(3)
      yield* withSnapshot(log, [line("snap", 0)])
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      expect(yield* openFilesUnder(shapeDir)).toBe(0)
      const read = yield* log.read(LogOffset.beforeAll)
      expect(bodyOf(read)).toBe(line("snap", 0))
      const streamed = yield* Effect.scoped(Effect.map(log.stream(LogOffset.beforeAll), (s) => decoder.decode(s.bytes)))
      expect(streamed).toBe(line("snap", 0))
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      expect(yield* openFilesUnder(shapeDir)).toBe(0)
      // The next commit opens them again.
      yield* log.append([entry(3, 0)])
      expect(fmt(yield* log.commit)).toBe("3_0")
      expect(yield* openFilesUnder(shapeDir)).toBe(3)
    }))

  it.scoped("a log without descriptors is the same log for every holder: a commit through a later open wakes an earlier waiter", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const handle = ShapeHandle("held-1")
      const created = yield* storage.create(handle)
      yield* withSnapshot(created, [line("snap", 0)])
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      const waiter = yield* Effect.fork(created.awaitDataAfter(created.latestOffset()))
      yield* Effect.yieldNow()
      const later = yield* storage.open(handle)
      expect(later).toBe(created)
      yield* later.append([entry(4, 0)])
      expect(fmt(yield* later.commit)).toBe("4_0")
      yield* Fiber.join(waiter)
      expect(fmt(created.latestOffset())).toBe("4_0")
      // Removed while held weakly: its holders see the removal.
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      const removedWaiter = yield* Effect.fork(created.awaitDataAfter(created.latestOffset()))
      yield* Effect.yieldNow()
      yield* storage.remove(handle)
      yield* Fiber.join(removedWaiter)
      expect((yield* Effect.flip(created.commit)).reason).toBe("Removed")
      expect((yield* Effect.flip(storage.open(handle))).reason).toBe("Removed")
    }))

  it.scoped("a log no one holds is forgotten, and the next open recovers it from its files", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const handle = ShapeHandle("gone-1")
      // Everything that refers to the first log lives in this function only.
      const first = yield* Effect.promise(() =>
        Effect.runPromise(Effect.gen(function*() {
          const log = yield* storage.create(handle)
          yield* withSnapshot(log, [line("snap", 0)])
          yield* log.append([entry(5, 0), entry(5, 1)])
          yield* log.commit
          return new WeakRef(log)
        }))
      )
      // Its descriptors are given back by the idle checks; then nothing holds it.
      yield* TestClock.adjust("25 seconds")
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 50)))
      yield* Effect.promise(collectGarbage)
      expect(first.deref()).toBeUndefined()
      const again = yield* storage.open(handle)
      expect(fmt(again.latestOffset())).toBe("5_1")
      expect(bodies(yield* readAll(again, LogOffset.lastBeforeReal))).toEqual([entry(5, 0), entry(5, 1)].map((e) => e.json))
      yield* again.append([entry(6, 0)])
      expect(fmt(yield* again.commit)).toBe("6_0")
      expect(yield* storage.open(handle)).toBe(again)
    }))

  it.scoped("open returns the log create made for a handle; list shows shape directories", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const a = yield* storage.create(ShapeHandle("same-1"))
      const b = yield* storage.open(ShapeHandle("same-1"))
      expect(a).toBe(b)
      yield* storage.create(ShapeHandle("same-2"))
      expect([...(yield* storage.list)].sort()).toEqual(["same-1", "same-2"])
    }))

  it.scoped("remove is idempotent, wakes waiters and closes the log", () =>
    Effect.gen(function*() {
      const { dir, storage } = yield* withStorage()
      const handle = ShapeHandle("rm-1")
      const log = yield* storage.create(handle)
      yield* withSnapshot(log, [line("snap", 0)])
      const waiter = yield* Effect.fork(log.awaitDataAfter(log.latestOffset()))
      yield* Effect.yieldNow()
      expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)
      yield* storage.remove(handle)
      yield* Fiber.join(waiter)
      yield* storage.remove(handle)
      yield* storage.remove(ShapeHandle("never-existed"))
      expect(yield* storage.list).toEqual([])
      expect(yield* Effect.promise(() => fs.readdir(dir))).toEqual([])
      const failure = yield* Effect.flip(log.read(LogOffset.beforeAll))
      expect([failure._tag, failure.reason]).toEqual(["StorageError", "Removed"])
      expect((yield* Effect.flip(log.append([entry(1, 0)]))).reason).toBe("Removed")
      expect((yield* Effect.flip(log.commit)).reason).toBe("Removed")
      // a later open does not bring the shape back; only create starts a fresh, empty one
      expect((yield* Effect.flip(storage.open(handle))).reason).toBe("Removed")
      expect(yield* Effect.promise(() => fs.readdir(dir))).toEqual([])
      const again = yield* storage.create(handle)
      expect(again).not.toBe(log)
      expect(again.isSnapshotComplete()).toBe(false)
    }))

  it.scoped("remove wakes a reader waiting for the snapshot with a Removed error", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const handle = ShapeHandle("rm-2")
      const log = yield* storage.create(handle)
      const reader = yield* Effect.fork(Effect.flip(log.read(LogOffset.beforeAll)))
      yield* Effect.yieldNow()
      yield* storage.remove(handle)
      expect((yield* Fiber.join(reader)).reason).toBe("Removed")
    }))

  it.scoped("open never creates a shape: Removed without a directory, Corrupt without a commit pointer", () =>
    Effect.gen(function*() {
      const { dir, storage } = yield* withStorage()
      const missing = yield* Effect.flip(storage.open(ShapeHandle("never-created")))
      expect([missing._tag, missing.reason, missing.handle]).toEqual(["StorageError", "Removed", "never-created"])
      expect(yield* Effect.promise(() => fs.readdir(dir))).toEqual([])

      // a directory left by a creation cut short: nothing says what it holds, so it is not wiped
      const handle = ShapeHandle("no-pointer")
      const shapeDir = path.join(dir, handle)
      yield* Effect.promise(() => fs.mkdir(shapeDir))
      yield* Effect.promise(() => fs.writeFile(path.join(shapeDir, "snapshot.0.jsonl"), line("snap", 0) + "\n"))
      const corrupt = yield* Effect.flip(storage.open(handle))
      expect(corrupt.reason).toBe("Corrupt")
      expect(yield* Effect.promise(() => fs.readdir(shapeDir))).toEqual(["snapshot.0.jsonl"])
      // a failed open is not cached: the next open looks at the disk again
      expect((yield* Effect.flip(storage.open(handle))).reason).toBe("Corrupt")
    }))

  it.effect("open after a restart finds a created shape; create resets one, closing its open log as removed", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* tempDir
      const handle = ShapeHandle("recreate-1")
      const first = yield* openIn(dir)
      const log1 = yield* first.storage.create(handle)
      yield* withSnapshot(log1, [line("snap", 0)])
      yield* log1.append([entry(3, 0)])
      yield* log1.commit
      yield* first.close

      const second = yield* openIn(dir)
      const log2 = yield* second.storage.open(handle)
      expect(fmt(log2.latestOffset())).toBe("3_0")
      const waiter = yield* Effect.fork(log2.awaitDataAfter(log2.latestOffset()))
      yield* Effect.yieldNow()

      const fresh = yield* second.storage.create(handle)
      yield* Fiber.join(waiter)
      expect(fresh).not.toBe(log2)
      expect((yield* Effect.flip(log2.read(LogOffset.beforeAll))).reason).toBe("Removed")
      expect(fresh.isSnapshotComplete()).toBe(false)
      expect(fresh.latestOffset()).toEqual(LogOffset.beforeAll)
      expect(yield* Effect.promise(() => fs.readdir(path.join(dir, handle)))).not.toContain("commit.json")
      expect(yield* second.storage.open(handle)).toBe(fresh)
      yield* second.close

      // created but never committed, then restarted: left as found
      const third = yield* openIn(dir)
      expect((yield* Effect.flip(third.storage.open(handle))).reason).toBe("Corrupt")
      yield* third.close
    })))

  it.scoped("a stopped stack's storage refuses to open or remove logs, so it never truncates the next stack's files", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const first = yield* openIn(dir)
      const handle = ShapeHandle("after-close")
      const log = yield* first.storage.create(handle)
      yield* withSnapshot(log, ["{\"a\":1}"])
      yield* log.append([entry(5, 0)])
      yield* log.commit
      yield* first.close
      const second = yield* openIn(dir)
      const next = yield* second.storage.open(handle)
      yield* next.append([entry(6, 0)])
      const opened = yield* Effect.flip(first.storage.open(handle))
      expect(opened.reason).toBe("Closed")
      expect((yield* Effect.flip(first.storage.create(handle))).reason).toBe("Closed")
      expect((yield* Effect.flip(first.storage.remove(handle))).reason).toBe("Closed")
      yield* next.commit
      expect(LogOffset.format(next.latestOffset())).toBe("6_0")
      yield* second.close
    }))

  it.scoped("requests reading after the same offset share one read, and a commit is seen by the next read", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("shared-1"))
      yield* withSnapshot(log, [line("snap", 0)])
      yield* log.append([entry(1, 0), entry(1, 1)])
      yield* log.commit
      const streams = yield* Effect.all(Array.from({ length: 50 }, () => log.stream(off("0_inf"))), { concurrency: "unbounded" })
      const first = streams[0]!
      expect(decoder.decode(first.bytes)).toBe([entry(1, 0).json, entry(1, 1).json].join(","))
      // One read of the file: every request holds the very same bytes.
      expect(streams.every((s) => s.bytes === first.bytes)).toBe(true)
      // The open chunk reaches the log's end, so its bytes change with the next commit and are not settled.
      expect(streams.every((s) => s.reachedEnd && !s.settled)).toBe(true)

      yield* log.append([entry(2, 0)])
      yield* log.commit
      const after = yield* log.stream(off("0_inf"))
      expect(decoder.decode(after.bytes)).toBe([entry(1, 0).json, entry(1, 1).json, entry(2, 0).json].join(","))
      expect(fmt(after.nextOffset)).toBe("2_0")
      const tail = yield* log.stream(off("1_1"))
      expect(decoder.decode(tail.bytes)).toBe(entry(2, 0).json)
    }))

  it.scoped("the requests a commit wakes read its bytes from memory, whole at any size, as a later read of the files has them", () =>
    Effect.gen(function*() {
      const lines = Array.from({ length: 3000 }, (_, i): LogEntry => ({ offset: LogOffset.make(2n, i), json: line("fresh", i) }))
      /** A read of the log after 1_0 as a response streams it: whole (`bytes`), or from its file piece by piece. */
      const streamed = (log: ShapeLog, format: "array" | "lines") =>
        Effect.scoped(Effect.flatMap(log.stream(off("1_0"), format), (s) =>
          Effect.map(Stream.runCollect(s.pieces), (pieces) => ({
            whole: s.bytes !== undefined,
            body: Buffer.concat([...pieces]).toString(),
            nextOffset: fmt(s.nextOffset)
          }))))
      // 300 kB in one chunk; with the smaller threshold, the reads end where the first chunk the commit closed ends.
      // The log keeps no commit past its turn: the later reads are of the files.
      for (const threshold of [10_000_000, 250_000]) {
        const { storage } = yield* withStorage(threshold, 0)
        const log = yield* storage.create(ShapeHandle(`fresh-${threshold}`))
        yield* withSnapshot(log)
        yield* log.append([entry(1, 0)])
        yield* log.commit
        // Made at the commit, as the requests it wakes make theirs.
        const atCommit = () =>
          Promise.all([
            Effect.runPromise(streamed(log, "array")),
            Effect.runPromise(streamed(log, "lines")),
            log.readWhole(off("1_0"), "array")
          ])
        let woken: ReturnType<typeof atCommit> | undefined
        log.onNextCommit(() => {
          woken = atCommit()
        })
        yield* log.append(lines)
        yield* log.commit
        const [array, asLines, lane] = yield* Effect.promise(() => woken!)
        // Once the event loop has moved on, the same read comes from the files.
        yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
        const later = yield* streamed(log, "array")
        const large = threshold === 10_000_000
        expect(later.whole).toBe(!large)
        expect(array.whole && asLines.whole).toBe(true)
        expect(array.body).toBe(later.body)
        expect(array.nextOffset).toBe(later.nextOffset)
        const messages = later.body.split(/,(?=\{"key")/)
        if (large) expect(messages).toEqual(lines.map((l) => l.json))
        else expect(messages.length).toBeLessThan(3000)
        expect(asLines.body).toBe(messages.join("\n"))
        expect(asLines.nextOffset).toBe(later.nextOffset)
        // A held long-poll's lane takes the commit's body whole at any size, the same bytes.
        expect(lane === undefined ? undefined : bodyOf(lane)).toBe(later.body)
        // After the turn, a body larger than WHOLE_BYTES is streamed from the file: not the lane's.
        const laneLater = yield* Effect.promise(() => log.readWhole(off("1_0"), "array"))
        if (large) expect(laneLater).toBeUndefined()
        else expect(laneLater === undefined ? undefined : bodyOf(laneLater)).toBe(later.body)
      }
    }))

  it.scoped("reads in the second after a commit come from the recent commits' bytes, whole at any size, as the files have them", () =>
    Effect.gen(function*() {
      const { dir, storage } = yield* withStorage(10_000_000)
      const handle = ShapeHandle("recent")
      const log = yield* storage.create(handle)
      yield* withSnapshot(log)
      yield* log.append([entry(1, 0)])
      yield* log.commit
      const reader = yield* openReader({ directory: dir, chunkBytesThreshold: 10_000_000 }, handle)
      // Three commits of 100 kB each: the body after 1_0 is larger than WHOLE_BYTES, and lies in three buffers.
      for (let tx = 2; tx <= 4; tx++) {
        yield* log.append(Array.from({ length: 1000 }, (_, i): LogEntry => ({ offset: LogOffset.make(BigInt(tx), i), json: line(`recent-${tx}`, i) })))
        yield* log.commit
      }
      const streamed = (source: Pick<ShapeLog, "stream">, from: string, format: "array" | "lines") =>
        Effect.scoped(Effect.flatMap(source.stream(off(from), format), (s) =>
          Effect.map(Stream.runCollect(s.pieces), (pieces) => ({
            whole: s.bytes !== undefined,
            body: Buffer.concat([...pieces]).toString(),
            nextOffset: fmt(s.nextOffset),
            reachedEnd: s.reachedEnd
          }))))
      // Past the turn of the last commit, where the requests it woke read.
      yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      for (const from of ["1_0", "2_999", "3_500", "4_998"]) {
        for (const format of ["array", "lines"] as const) {
          const recent = yield* streamed(log, from, format)
          const files = yield* streamed(reader, from, format)
          expect({ from, format, ...recent }).toEqual({ from, format, ...files, whole: true })
          expect(files.whole).toBe(from !== "1_0")
        }
      }
      expect((yield* streamed(log, "1_0", "array")).body.split(/,(?=\{"key")/).length).toBe(3000)
      // A second after the last commit its bytes are let go: the owner reads its files, as the reader does.
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, RECENT_KEEP_MS + 200)))
      const later = yield* streamed(log, "1_0", "array")
      expect(later).toEqual(yield* streamed(reader, "1_0", "array"))
      expect(later.whole).toBe(false)
    }))

  it.scoped("a closed chunk and a snapshot chunk are settled: read again after later commits, they are the same bytes", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const log = yield* storage.create(ShapeHandle("shared-2"))
      yield* withSnapshot(log, Array.from({ length: 12 }, (_, i) => line("snap", i)))
      // Ten 100-byte lines close a chunk.
      yield* log.append(Array.from({ length: 10 }, (_, i) => entry(1, i)))
      yield* log.commit
      const open = yield* log.stream(off("0_inf"))
      // The chunk is closed but ends the log: its `reachedEnd` changes with the next commit.
      expect([fmt(open.nextOffset), open.reachedEnd, open.settled]).toEqual(["1_9", true, false])
      yield* log.append([entry(2, 0)])
      yield* log.commit
      const closed = yield* log.stream(off("0_inf"))
      expect([fmt(closed.nextOffset), closed.reachedEnd, closed.settled]).toEqual(["1_9", false, true])
      yield* log.append([entry(3, 0)])
      yield* log.commit
      const again = yield* log.stream(off("0_inf"))
      expect(again.bytes).toBe(closed.bytes)
      expect(decoder.decode(again.bytes)).toBe(Array.from({ length: 10 }, (_, i) => entry(1, i).json).join(","))
      const snapshotChunk = yield* log.stream(off("0_0"))
      expect([fmt(snapshotChunk.nextOffset), snapshotChunk.settled]).toEqual(["0_1", true])
      expect(decoder.decode(snapshotChunk.bytes)).toBe([line("snap", 10), line("snap", 11)].join(","))
    }))

  it.scoped("a removed log fails a read that an earlier request already made, and its files emptied anew are read afresh", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage()
      const handle = ShapeHandle("shared-3")
      const log = yield* storage.create(handle)
      yield* withSnapshot(log, [line("old", 0), line("old", 1)])
      const before = yield* log.stream(LogOffset.beforeAll)
      expect(before.settled).toBe(true)
      const recreated = yield* storage.create(handle)
      const failed = yield* Effect.flip(log.stream(LogOffset.beforeAll))
      expect(failed.reason).toBe("Removed")
      yield* withSnapshot(recreated, [line("new", 0)])
      const fresh = yield* recreated.stream(LogOffset.beforeAll)
      expect(decoder.decode(fresh.bytes)).toBe(line("new", 0))
    }))

  it.scoped("streamed bodies are never shared: each concurrent reader of a large chunk has its own descriptor", () =>
    Effect.gen(function*() {
      const { storage } = yield* withStorage(1_000_000)
      const log = yield* storage.create(ShapeHandle("shared-4"))
      yield* withSnapshot(log, Array.from({ length: 3000 }, (_, i) => line("big", i)))
      // Each in a scope of its own, as each response is: one that ends closes its descriptor, not the others'.
      const scopes = yield* Effect.all(Array.from({ length: 5 }, () => Scope.make()))
      const streams = yield* Effect.all(scopes.map((scope) => Scope.extend(log.stream(LogOffset.beforeAll), scope)), {
        concurrency: "unbounded"
      })
      expect(streams.every((s) => s.bytes === undefined && !s.settled)).toBe(true)
      yield* Scope.close(scopes[0]!, Exit.void)
      const bodies = yield* Effect.all(streams.slice(1).map((s) => Stream.runCollect(s.pieces)), { concurrency: "unbounded" })
      const expected = Array.from({ length: 3000 }, (_, i) => line("big", i)).join(",")
      for (const body of bodies) expect(Buffer.concat([...body]).toString()).toBe(expected)
      yield* Effect.forEach(scopes.slice(1), (scope) => Scope.close(scope, Exit.void))
    }))
})
