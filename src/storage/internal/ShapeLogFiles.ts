import * as fsSync from "node:fs"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as FiberId from "effect/FiberId"
import { LogOffset } from "../../domain/LogOffset.js"
import { StorageError } from "../../domain/errors.js"
import type { LogLines } from "../LogLines.js"
import type { LogRead } from "../ShapeLogStorage.js"
import {
  type ChunkEnd,
  CHUNK_RECORD_BYTES,
  decodeChunks,
  encodeChunks,
  FileNames,
  INDEX_RECORD_BYTES,
  isErrno,
  publishPointer,
  readPointerNow,
  readRangeNow,
  stagePointer,
  syncDirectory,
  writeAt,
  writeAtNow
} from "./files.js"
import {
  type CommitEnd,
  type CommittedLog,
  bodyLength,
  logSpan,
  type OpenedSpan,
  type ReadSpan,
  type BodyFormat,
  openSpan,
  readCommittedLog,
  readSnapshotChunk,
  snapshotChunkAfter,
  snapshotSpan,
  WHOLE_BYTES
} from "./committedRead.js"
import type { ReadCache, SharedRead } from "./ReadCache.js"
import { RecentBudget, RecentCommits } from "./RecentCommits.js"

/** How many recent commit ends are remembered, so that a reader resuming at one needs no index search. */
const RECENT_COMMITS = 32

const EMPTY = new Uint8Array(0)
const NEWLINE = 0x0a
const EMPTY_BUFFER = Buffer.alloc(0)
/** The first sizes of the buffers of index records and of lines appended and not yet committed. */
const PENDING_INDEX_BYTES = 4096
const PENDING_DATA_BYTES = 16384
/** How many closed snapshot chunks may be syncing while the next is written. */
const SNAPSHOT_SYNCS_IN_FLIGHT = 2
/**
 * Every so many bytes written to the open snapshot chunk, an fdatasync of it starts while later bytes are
 * written: the disk takes the chunk as it grows, and the sync that closes it has little left to do.
 */
const SNAPSHOT_FLUSH_BYTES = 2 * 1024 * 1024

/** Names each opened log in a `ReadCache`: a handle's files emptied and written anew are another log. */
let nextCacheId = 0

const openedOf = (shared: SharedRead): OpenedSpan => shared.opened

/** A read to share, marked settled when its bytes never change. */
const settledRead = (opened: OpenedSpan, settled: boolean): SharedRead => ({
  opened: settled && opened._tag === "Whole" ? { _tag: "Whole", read: opened.read, settled } : opened,
  settled
})

type Latch = Deferred.Deferred<void>
const newLatch = (): Latch => Deferred.unsafeMake<void>(FiberId.none)
const release = (latch: Latch): void => Deferred.unsafeDone(latch, Effect.void)

/**
 * The descriptors of a log's three files and of its directory, open while the log is in use. The directory's is
 * what a commit fsyncs after renaming its pointer: held, it saves the commit an open and a close, each a turn of
 * the event loop.
 */
interface Handles {
  readonly log: fs.FileHandle
  readonly index: fs.FileHandle
  readonly chunks: fs.FileHandle
  readonly dir: fs.FileHandle
}

const allOf = (handles: Handles): Array<fs.FileHandle> => [handles.log, handles.index, handles.chunks, handles.dir]

/** Closes descriptors nothing will use again; a close that fails has nothing left to lose. */
const closeAll = (files: ReadonlyArray<fs.FileHandle>): Promise<unknown> =>
  Promise.all(files.map((fh) => fh.close().catch(() => undefined)))

/**
 * Opens a log's descriptors, the files with `mode`; when one fails, the others are closed and its error thrown
 * (a file that should exist, `r+`, missing as "Corrupt").
 */
const openHandles = async (dir: string, handle: string, mode: "r+" | "w+"): Promise<Handles> => {
  const opened = await Promise.allSettled([
    fs.open(path.join(dir, FileNames.log), mode),
    fs.open(path.join(dir, FileNames.index), mode),
    fs.open(path.join(dir, FileNames.chunks), mode),
    fs.open(dir, "r")
  ])
  const failed = opened.find((o) => o.status === "rejected")
  if (failed !== undefined) {
    await closeAll(opened.flatMap((o) => (o.status === "fulfilled" ? [o.value] : [])))
    const cause = (failed as PromiseRejectedResult).reason
    if (mode === "r+" && isErrno(cause, "ENOENT")) {
      throw new StorageError({ reason: "Corrupt", handle, message: "a file of the shape log is missing" })
    }
    throw cause
  }
  const [log, index, chunks, directory] = opened.map((o) => (o as PromiseFulfilledResult<fs.FileHandle>).value) as [
    fs.FileHandle,
    fs.FileHandle,
    fs.FileHandle,
    fs.FileHandle
  ]
  return { log, index, chunks, dir: directory }
}

/**
 * The files and in-memory state of one open shape log. Plain async code: the
 * Effect shell in `ShapeLogStorage.ts` wraps each call. Readers see only the
 * committed state (`lines`, `logBytes`, `lastOffset`, `closedChunks`), which
 * moves forward only after the commit pointer is durable; appends past it are
 * buffered in memory until `commit`.
 *
 * An idle log costs only its state: its descriptors are closed by
 * `closeIfIdle`, and as soon as its snapshot completes, and opened again by
 * the next operation that needs them (a process serving many shapes would
 * otherwise hold four descriptors per shape and run out of them), and its
 * latches and append buffer are made when used. Reads of snapshot chunks open
 * the chunk's file, not these descriptors.
 */
export class ShapeLogFiles {
  // committed snapshot
  snapshotComplete = false
  private snapshotChunkBytes: Array<number> = []
  // snapshot being written
  private snapshotFile: fs.FileHandle | undefined = undefined
  private snapshotOpenBytes = 0
  private snapshotFileBytes = 0
  /** fdatasyncs of closed chunks still running (each then closes its file). */
  private snapshotSyncs: Array<Promise<void>> = []
  /**
   * The early fdatasyncs of the open chunk, one after the other (a failed one fails those after it, and the
   * chunk's closing sync); whether the last is running; the chunk's size when it started.
   */
  private snapshotFlush: Promise<void> | undefined = undefined
  private snapshotFlushing = false
  private snapshotFlushedBytes = 0

  // committed log
  private lines = 0
  private logBytes = 0
  private lastOffset: LogOffset | undefined = undefined
  private readonly closedChunks: Array<ChunkEnd> = []
  private chunkIndexBytes = 0
  private readonly recent: Array<CommitEnd> = []
  /** What the recent commits wrote to the log: what the reads they wake, and the reads soon after, read. */
  private recentCommits: RecentCommits | undefined = undefined

  // appended, not yet committed
  /** The appended lines as they will be written: UTF-8, each ended by `\n`; made by the first append. */
  private pendingData: Buffer = EMPTY_BUFFER
  private pendingDataLength = 0
  private pendingIndex: Buffer = EMPTY_BUFFER
  private pendingIndexLength = 0
  private pendingChunks: Array<ChunkEnd> = []
  private appendedLines = 0
  private appendedBytes = 0
  private appendedLast: LogOffset = LogOffset.lastBeforeReal
  private appendedChunkStart = 0

  // lifecycle
  closed: "open" | "removed" | "closed" | "failed" = "open"
  /** Released when the snapshot completes (or the log closes); made by the first reader that waits for it. */
  private snapshotLatch: Latch | undefined = undefined
  /** Released by the next commit (or the log closing); made by the first reader that waits for one. */
  private dataLatch: Latch | undefined = undefined
  /** Called once at the next commit or close, before the fibers waiting on `dataLatch` resume. */
  private commitListeners: Set<() => void> | undefined = undefined
  private busy = 0
  private onIdle: (() => void) | undefined = undefined
  private writeChain: Promise<unknown> = Promise.resolve()
  /** Where reads of this log are shared with other requests; set by the storage that opened it. */
  readCache: ReadCache | undefined = undefined
  /** What this log may keep of its recent commits, with the other logs of its storage; set by the storage that opened it. */
  recentBudget: RecentBudget | undefined = undefined
  private readonly cacheId = nextCacheId++
  /** The open descriptors; undefined while the log is idle (`closeIfIdle`). */
  private handles: Handles | undefined
  private reopening: Promise<Handles> | undefined = undefined
  /** Whether an operation ran since the last `closeIfIdle`. */
  private usedSinceCheck = true
  /** Set when the snapshot completes: the descriptors close once the operations in flight end. */
  private releaseWhenIdle = false
  /**
   * Told when the descriptors are opened again (`true`) and when they are closed while the log stays open
   * (`false`); set by the storage that opened it, which holds the log strongly only while they are open.
   */
  onDescriptors: ((open: boolean) => void) | undefined = undefined

  private constructor(
    readonly handle: string,
    readonly dir: string,
    private readonly threshold: number,
    handles: Handles
  ) {
    this.handles = handles
  }

  // Valid inside `using` only, which opens the descriptors first.
  private get log(): fs.FileHandle {
    return this.handles!.log
  }
  private get index(): fs.FileHandle {
    return this.handles!.index
  }
  private get chunks(): fs.FileHandle {
    return this.handles!.chunks
  }
  private get directory(): fs.FileHandle {
    return this.handles!.dir
  }

  /** Waits for the snapshot to complete; resolves at once when it is complete or the log is closed. */
  awaitSnapshot(): Latch | undefined {
    if (this.closed !== "open" || this.snapshotComplete) return undefined
    return this.snapshotLatch ??= newLatch()
  }

  /** A latch the next commit (or the log closing) releases. */
  nextCommit(): Latch {
    if (this.closed !== "open") {
      const done = newLatch()
      release(done)
      return done
    }
    return this.dataLatch ??= newLatch()
  }

  /**
   * Calls `listener` once, at the next commit (or when the log closes), synchronously and before the fibers
   * awaiting `nextCommit` resume; the function returned takes it back. For a waiter that answers without a fiber.
   */
  onNextCommit(listener: () => void): () => void {
    if (this.closed !== "open") {
      listener()
      return () => undefined
    }
    const listeners = this.commitListeners ??= new Set()
    listeners.add(listener)
    return () => listeners.delete(listener)
  }

  /**
   * Closes the descriptors of a log that no operation used since the last call; the next operation opens them
   * again. The in-memory state stays: reopening needs no recovery (this process is the only writer).
   */
  closeIfIdle(): void {
    if (this.usedSinceCheck || this.busy > 0) {
      this.usedSinceCheck = false
      return
    }
    this.closeHandles()
  }

  /** Whether the descriptors are open (or being opened again). */
  get holdsDescriptors(): boolean {
    return this.handles !== undefined || this.reopening !== undefined
  }

  private closeHandles(): void {
    const handles = this.handles
    if (handles === undefined || this.closed !== "open" || this.busy > 0) return
    this.handles = undefined
    void closeAll(allOf(handles))
    this.onDescriptors?.(false)
  }

  private reopen(): Promise<Handles> {
    return openHandles(this.dir, this.handle, "r+")
  }

  /** The descriptors, opened again if `closeIfIdle` closed them; one opening for concurrent callers. */
  private async ensureHandles(): Promise<void> {
    if (this.handles !== undefined) return
    if (this.reopening === undefined) {
      const reopening = this.reopen()
      this.reopening = reopening
      reopening.then(
        (handles) => {
          if (this.reopening === reopening) this.reopening = undefined
          // Closed meanwhile: nothing will use them.
          if (this.closed !== "open") {
            void closeAll(allOf(handles))
          } else {
            this.handles = handles
            this.onDescriptors?.(true)
          }
        },
        () => {
          if (this.reopening === reopening) this.reopening = undefined
        }
      )
    }
    await this.reopening
    if (this.handles === undefined) throw this.closedError()
  }

  /** Creates a shape directory, or empties an existing one: a fresh shape with no snapshot and no log. */
  static async create(dir: string, handle: string, threshold: number): Promise<ShapeLogFiles> {
    await fs.mkdir(dir, { recursive: true })
    const self = await ShapeLogFiles.fresh(dir, handle, threshold)
    try {
      await syncDirectory(path.dirname(dir))
    } catch (cause) {
      await self.shutdown("failed")
      throw cause
    }
    return self
  }

  /**
   * Opens and recovers an existing shape directory: without a complete
   * snapshot it starts empty; otherwise each file is cut back to the commit
   * pointer's length. Never creates the directory, so a removed shape stays
   * removed: "Removed" without a directory, "Corrupt" without a commit pointer
   * (nothing there says what the directory holds, so it is left as found).
   */
  static async open(dir: string, handle: string, threshold: number): Promise<ShapeLogFiles> {
    // Each asynchronous step waits for a turn of the event loop, and a log opened during a catch-up (a consumer's
    // first transaction, a restored shape's first request) waits behind every turn's reading of the slot. What
    // reads only metadata or a few bytes is done at once (`readPointerNow`); steps that do not depend on each other run
    // together.
    if (fsSync.statSync(dir, { throwIfNoEntry: false }) === undefined) {
      throw new StorageError({ reason: "Removed", handle, message: "the shape has no directory" })
    }
    const pointer = readPointerNow(dir)
    if (pointer === undefined) {
      throw new StorageError({ reason: "Corrupt", handle, message: "the shape directory has no commit pointer" })
    }
    if (!pointer.snapshotComplete) return ShapeLogFiles.fresh(dir, handle, threshold)

    const [opened, checked] = await Promise.all([
      openHandles(dir, handle, "r+").then((handles) => ({ handles }), (cause: unknown) => ({ cause })),
      checkSnapshotChunks(dir, handle, pointer.snapshotChunkBytes).then(() => undefined, (cause: unknown) => ({ cause }))
    ])
    if ("cause" in opened) throw opened.cause
    try {
      if (checked !== undefined) throw checked.cause
      const self = new ShapeLogFiles(handle, dir, threshold, opened.handles)
      await self.recover(pointer.logBytes, pointer.indexBytes, pointer.chunkIndexBytes, pointer.lastOffset)
      self.snapshotComplete = true
      self.snapshotChunkBytes = [...pointer.snapshotChunkBytes]
      return self
    } catch (cause) {
      await closeAll(allOf(opened.handles))
      throw cause
    }
  }

  /** Empties an existing directory and opens empty log files in it. */
  private static async fresh(dir: string, handle: string, threshold: number): Promise<ShapeLogFiles> {
    for (const name of await fs.readdir(dir)) await fs.rm(path.join(dir, name), { recursive: true, force: true })
    const self = new ShapeLogFiles(handle, dir, threshold, await openHandles(dir, handle, "w+"))
    try {
      await self.directory.sync()
    } catch (cause) {
      await self.shutdown("failed")
      throw cause
    }
    return self
  }

  private async recover(
    logBytes: number,
    indexBytes: number,
    chunkIndexBytes: number,
    lastOffset: LogOffset | undefined
  ): Promise<void> {
    const corrupt = (message: string) => new StorageError({ reason: "Corrupt", handle: this.handle, message })
    const lines = indexBytes / INDEX_RECORD_BYTES
    if ((lines === 0) !== (lastOffset === undefined)) throw corrupt("commit pointer and index disagree")
    const files = [[this.log, logBytes], [this.index, indexBytes], [this.chunks, chunkIndexBytes]] as const
    // Read at once, like the pointer (see `open`): three fstats, the last index record and the chunk index.
    const sizes = files.map(([fh]) => fsSync.fstatSync(fh.fd).size)
    for (let i = 0; i < files.length; i++) {
      if (sizes[i]! < files[i]![1]) throw corrupt("a file is shorter than its commit pointer says")
    }
    // Within the pointer's lengths: the cuts past them come after.
    const last = lines > 0 ? readRangeNow(this.index, indexBytes - INDEX_RECORD_BYTES, INDEX_RECORD_BYTES) : undefined
    const chunkIndex = chunkIndexBytes > 0 ? readRangeNow(this.chunks, 0, chunkIndexBytes) : undefined
    // Past the pointer lie bytes of a commit a crash cut short, written again by the next one.
    await Promise.all(files.map(([fh, length], i) => (sizes[i]! > length ? fh.truncate(length) : undefined)))
    if (
      last !== undefined &&
      (last.readBigUInt64LE(0) !== lastOffset!.tx || last.readDoubleLE(8) !== lastOffset!.op || last.readDoubleLE(16) !== logBytes)
    ) {
      throw corrupt("the last index record does not match the commit pointer")
    }
    const chunks = chunkIndex !== undefined ? decodeChunks(chunkIndex) : []
    const lastChunk = chunks[chunks.length - 1]
    if (lastChunk !== undefined && (lastChunk.endLine > lines || lastChunk.endPos > logBytes)) {
      throw corrupt("the chunk index reaches past the commit pointer")
    }
    this.closedChunks.push(...chunks)
    this.chunkIndexBytes = chunkIndexBytes
    this.lines = lines
    this.logBytes = logBytes
    this.lastOffset = lastOffset
    this.appendedLines = lines
    this.appendedBytes = logBytes
    this.appendedLast = lastOffset ?? LogOffset.lastBeforeReal
    this.appendedChunkStart = chunks.length > 0 ? chunks[chunks.length - 1]!.endPos : 0
    if (lastOffset !== undefined) this.recent.push({ offset: lastOffset, lines, pos: logBytes })
  }


  /** `-1` until the snapshot is complete, then `0_inf` while the log is empty, else the last durable entry's offset. */
  latestOffset(): LogOffset {
    if (!this.snapshotComplete) return LogOffset.beforeAll
    return this.lastOffset ?? LogOffset.lastBeforeReal
  }

  private durableOffset(): LogOffset {
    return this.lastOffset ?? LogOffset.lastBeforeReal
  }

  private closedError(): StorageError {
    return new StorageError({
      reason: this.closed === "removed" ? "Removed" : "Closed",
      handle: this.handle,
      message: this.closed === "failed"
        ? "the shape log failed on a write and must be reopened"
        : `the shape log is ${this.closed}`
    })
  }

  /**
   * Runs an operation on the log, which stays open until it ends; with `descriptors`, the file handles are open
   * for it (a read of a snapshot chunk opens that chunk's file instead).
   */
  private async using<A>(f: () => Promise<A>, descriptors = true): Promise<A> {
    if (this.closed !== "open") throw this.closedError()
    this.busy++
    if (descriptors) this.usedSinceCheck = true
    try {
      if (descriptors) await this.ensureHandles()
      return await f()
    } catch (cause) {
      if (this.closed !== "open" && !(cause instanceof StorageError)) throw this.closedError()
      throw cause
    } finally {
      this.busy--
      if (this.busy === 0) {
        if (this.onIdle !== undefined) this.onIdle()
        else if (this.releaseWhenIdle) {
          this.releaseWhenIdle = false
          this.closeHandles()
        }
      }
    }
  }

  /** Serializes writers (snapshot appends, commits), and fails later writes once one failed. */
  private exclusive<A>(f: () => Promise<A>): Promise<A> {
    const run = this.writeChain.then(() =>
      this.using(async () => {
        try {
          return await f()
        } catch (cause) {
          const error = cause instanceof StorageError ? cause : ioError(this.handle, cause)
          if (this.closed === "open") void this.shutdown("failed")
          throw error
        }
      })
    )
    this.writeChain = run.catch(() => undefined)
    return run
  }

  /**
   * Marks the log closed, wakes every waiter, and closes the files once the
   * operations in flight have finished.
   */
  async shutdown(reason: "removed" | "closed" | "failed"): Promise<void> {
    if (this.closed !== "open") return
    this.closed = reason
    if (this.snapshotLatch !== undefined) release(this.snapshotLatch)
    if (this.dataLatch !== undefined) release(this.dataLatch)
    this.callCommitListeners()
    this.recentCommits?.clear()
    if (this.busy > 0) await new Promise<void>((resolve) => (this.onIdle = resolve))
    await Promise.allSettled(this.snapshotFlush === undefined ? this.snapshotSyncs : [...this.snapshotSyncs, this.snapshotFlush])
    const handles = this.handles
    this.handles = undefined
    const files = handles === undefined ? [] : allOf(handles)
    if (this.snapshotFile !== undefined) files.push(this.snapshotFile)
    this.snapshotFile = undefined
    await closeAll(files)
  }


  /** Writes snapshot lines to the open chunk, closing (and fdatasyncing) each chunk that reaches the threshold. */
  appendSnapshot(lines: ReadonlyArray<string>): Promise<void> {
    if (lines.length === 0) return this.appendSnapshotRows(EMPTY_BUFFER)
    return this.appendSnapshotRows(Buffer.from(lines.join("\n") + "\n", "utf8"))
  }

  /**
   * `appendSnapshot` of lines already encoded (each ended by a newline): a
   * chunk closes on the line that reaches the threshold, found by its newline.
   */
  appendSnapshotRows(data: Uint8Array): Promise<void> {
    return this.exclusive(async () => {
      if (this.snapshotComplete) {
        throw new StorageError({ reason: "Corrupt", handle: this.handle, message: "the snapshot is already complete" })
      }
      let from = 0
      while (from < data.length) {
        const rest = data.length - from
        if (this.snapshotOpenBytes + rest < this.threshold) {
          this.snapshotOpenBytes += rest
          await this.writeSnapshotBytes(data.subarray(from))
          return
        }
        // The line that reaches the threshold ends at the first newline at or past it.
        const end = data.indexOf(NEWLINE, from + Math.max(0, this.threshold - this.snapshotOpenBytes - 1)) + 1
        if (end === 0) throw new StorageError({ reason: "Io", handle: this.handle, message: "snapshot rows must end with a newline" })
        await this.writeSnapshotBytes(data.subarray(from, end))
        this.snapshotOpenBytes += end - from
        await this.closeSnapshotChunk()
        from = end
      }
    })
  }

  private async writeSnapshotBytes(data: Uint8Array): Promise<void> {
    if (this.snapshotFile === undefined) {
      const n = this.snapshotChunkBytes.length
      this.snapshotFile = await fs.open(path.join(this.dir, FileNames.snapshot(n)), "w")
    }
    const fh = this.snapshotFile
    await writeAt(fh, data, this.snapshotFileBytes)
    this.snapshotFileBytes += data.length
    if (!this.snapshotFlushing && this.snapshotFileBytes - this.snapshotFlushedBytes >= SNAPSHOT_FLUSH_BYTES) {
      this.snapshotFlushedBytes = this.snapshotFileBytes
      this.snapshotFlushing = true
      const flush = (this.snapshotFlush ?? Promise.resolve()).then(() => fh.datasync()).finally(() => {
        if (this.snapshotFlush === flush) this.snapshotFlushing = false
      })
      flush.catch(() => undefined)
      this.snapshotFlush = flush
    }
  }

  private async closeSnapshotChunk(): Promise<void> {
    const fh = this.snapshotFile
    if (fh === undefined) {
      await fs.writeFile(path.join(this.dir, FileNames.snapshot(this.snapshotChunkBytes.length)), EMPTY)
    } else {
      this.snapshotFile = undefined
      // The next chunk is written while this one syncs; the commit pointer waits for both.
      if (this.snapshotSyncs.length >= SNAPSHOT_SYNCS_IN_FLIGHT) await this.snapshotSyncs.shift()
      // Follows the early syncs: one that failed fails this one, and all end before the file closes.
      const flush = this.snapshotFlush ?? Promise.resolve()
      this.snapshotFlush = undefined
      this.snapshotFlushing = false
      this.snapshotFlushedBytes = 0
      const synced = flush.then(() => fh.datasync()).finally(() => fh.close())
      synced.catch(() => undefined)
      this.snapshotSyncs.push(synced)
    }
    if (this.snapshotFileBytes !== this.snapshotOpenBytes) {
      throw new StorageError({ reason: "Corrupt", handle: this.handle, message: "snapshot byte accounting mismatch" })
    }
    this.snapshotChunkBytes.push(this.snapshotOpenBytes)
    this.snapshotOpenBytes = 0
    this.snapshotFileBytes = 0
  }

  /** Closes the last chunk and commits the snapshot as complete; readers waiting for it are released. */
  completeSnapshot(): Promise<void> {
    return this.exclusive(async () => {
      if (this.snapshotComplete) return
      if (this.snapshotFile !== undefined || this.snapshotChunkBytes.length === 0) await this.closeSnapshotChunk()
      const syncs = this.snapshotSyncs
      this.snapshotSyncs = []
      // The chunks' data, the directory entries naming them and the staged pointer sync together; the pointer
      // replaces the current one only after all of them. Each settles before completion fails, so none is still
      // running when the log is reopened.
      const settled = await Promise.allSettled([...syncs, this.directory.sync(), stagePointer(this.dir, this.pointer(true))])
      for (const s of settled) if (s.status === "rejected") throw s.reason
      await publishPointer(this.dir, this.directory)
      this.snapshotComplete = true
      if (this.snapshotLatch !== undefined) release(this.snapshotLatch)
      this.snapshotLatch = undefined
      // Most shapes get no change for a while after their snapshot: the next commit opens the log again.
      this.releaseWhenIdle = true
      this.wakeReaders()
    })
  }

  /**
   * Copies the lines above the last appended into the buffer the commit writes from, and adds their index records.
   * Lines at or below it (a batch encoded while the commit before it ran, against an older end) are skipped.
   */
  appendLines(lines: LogLines): void {
    if (this.closed !== "open") throw this.closedError()
    const last = this.appendedLast
    const count = lines.count
    let first = 0
    while (first < count) {
      const tx = lines.txAt(first)
      if (tx > last.tx || (tx === last.tx && lines.opAt(first) > last.op)) break
      first++
    }
    if (first === count) return
    const startByte = lines.startAt(first)
    const text = lines.bytesFrom(startByte)
    const start = this.pendingDataLength
    if (start + text.length > this.pendingData.length) {
      const grown = Buffer.allocUnsafe(Math.max(PENDING_DATA_BYTES, this.pendingData.length * 2, start + text.length))
      this.pendingData.copy(grown, 0, 0, start)
      this.pendingData = grown
    }
    text.copy(this.pendingData, start)
    this.pendingDataLength = start + text.length
    const indexNeeded = this.pendingIndexLength + (count - first) * INDEX_RECORD_BYTES
    if (indexNeeded > this.pendingIndex.length) {
      const grown = Buffer.allocUnsafe(Math.max(PENDING_INDEX_BYTES, this.pendingIndex.length * 2, indexNeeded))
      this.pendingIndex.copy(grown, 0, 0, this.pendingIndexLength)
      this.pendingIndex = grown
    }
    // A DataView's stores compile to plain stores; Buffer's writeDoubleLE goes through a scratch array byte by byte.
    const index = new DataView(this.pendingIndex.buffer, this.pendingIndex.byteOffset, this.pendingIndex.length)
    let at = this.pendingIndexLength
    const base = this.appendedBytes - startByte
    let bytes = this.appendedBytes
    // The lines of one transaction share its tx: split it into two words once per transaction.
    let tx = -1n
    let txLow = 0
    let txHigh = 0
    for (let i = first; i < count; i++) {
      bytes = base + lines.endAt(i)
      const lineTx = lines.txAt(i)
      if (lineTx !== tx) {
        tx = lineTx
        txLow = Number(tx & 0xffffffffn)
        txHigh = Number(tx >> 32n)
      }
      index.setUint32(at, txLow, true)
      index.setUint32(at + 4, txHigh, true)
      index.setFloat64(at + 8, lines.opAt(i), true)
      index.setFloat64(at + 16, bytes, true)
      at += INDEX_RECORD_BYTES
      this.appendedLines++
      if (bytes - this.appendedChunkStart >= this.threshold) {
        this.pendingChunks.push({ endOffset: lines.offsetAt(i), endPos: bytes, endLine: this.appendedLines })
        this.appendedChunkStart = bytes
      }
    }
    this.pendingIndexLength = at
    this.appendedBytes = bytes
    this.appendedLast = lines.offsetAt(count - 1)
  }

  /**
   * Writes what was appended, fdatasyncs log, index and chunk index, then
   * replaces the commit pointer; only then do readers see the new entries.
   */
  commit(): Promise<LogOffset> {
    return this.exclusive(async () => {
      if (this.pendingDataLength === 0) return this.durableOffset()
      const data = this.pendingData.subarray(0, this.pendingDataLength)
      const index = this.pendingIndex.subarray(0, this.pendingIndexLength)
      const chunks = this.pendingChunks
      const lines = this.appendedLines
      const logBytes = this.appendedBytes
      const lastOffset = this.appendedLast
      // The buffers being written are not reused; the next batch makes its own, so an idle log holds none.
      this.pendingData = EMPTY_BUFFER
      this.pendingDataLength = 0
      this.pendingIndex = EMPTY_BUFFER
      this.pendingIndexLength = 0
      this.pendingChunks = []

      if (this.logBytes + data.length !== logBytes) {
        throw new StorageError({ reason: "Corrupt", handle: this.handle, message: "log byte accounting mismatch" })
      }
      const chunkIndexBytes = this.chunkIndexBytes + chunks.length * CHUNK_RECORD_BYTES
      // Written at once (a failed write leaves nothing running), then synced together: a commit waits for two turns
      // of the event loop, these fdatasyncs and then the directory's.
      writeAtNow(this.log, data, this.logBytes)
      writeAtNow(this.index, index, this.lines * INDEX_RECORD_BYTES)
      if (chunks.length > 0) writeAtNow(this.chunks, encodeChunks(chunks), this.chunkIndexBytes)
      // The next pointer is staged while the data it covers syncs; it replaces the current one only after.
      const syncs = [
        this.log.datasync(),
        this.index.datasync(),
        stagePointer(this.dir, {
          snapshotComplete: this.snapshotComplete,
          snapshotChunkBytes: this.snapshotComplete ? this.snapshotChunkBytes : [],
          lastOffset,
          logBytes,
          indexBytes: lines * INDEX_RECORD_BYTES,
          chunkIndexBytes
        })
      ]
      if (chunks.length > 0) syncs.push(this.chunks.datasync())
      // Every sync settles before the commit fails, so none is still running when the log is reopened.
      const settled = await Promise.allSettled(syncs)
      for (const s of settled) if (s.status === "rejected") throw s.reason
      await publishPointer(this.dir, this.directory)
      // Not for a log closed meanwhile (`shutdown` let go of what it kept, and waits for this commit).
      if (this.closed === "open") {
        this.recentCommits ??= new RecentCommits(this.recentBudget ?? new RecentBudget())
        this.recentCommits.add(this.logBytes, data)
      }
      this.closedChunks.push(...chunks)
      this.chunkIndexBytes = chunkIndexBytes
      this.lines = lines
      this.logBytes = logBytes
      this.lastOffset = lastOffset
      this.recent.push({ offset: lastOffset, lines, pos: logBytes })
      if (this.recent.length > RECENT_COMMITS) this.recent.shift()
      this.wakeReaders()
      return lastOffset
    })
  }

  private pointer(snapshotComplete: boolean) {
    return {
      snapshotComplete,
      snapshotChunkBytes: this.snapshotChunkBytes,
      lastOffset: this.lastOffset,
      logBytes: this.logBytes,
      indexBytes: this.lines * INDEX_RECORD_BYTES,
      chunkIndexBytes: this.chunkIndexBytes
    }
  }

  private wakeReaders(): void {
    this.callCommitListeners()
    const latch = this.dataLatch
    if (latch === undefined) return
    this.dataLatch = undefined
    release(latch)
  }

  private callCommitListeners(): void {
    const listeners = this.commitListeners
    if (listeners === undefined) return
    this.commitListeners = undefined
    for (const listener of listeners) {
      // The commit is durable and every other waiter must still wake: a listener's failure stays its own.
      try {
        listener()
      } catch {
        continue
      }
    }
  }


  /** Reads after `from` within the committed state; the caller has waited for the snapshot to complete. */
  read(from: LogOffset): Promise<LogRead> {
    const n = snapshotChunkAfter(from, this.snapshotChunkBytes.length)
    if (n !== undefined) return this.using(() => readSnapshotChunk(this.dir, n, this.snapshotChunkBytes[n]!), false)
    return this.using(() => readCommittedLog(this.committed(), from))
  }

  /**
   * Prepares a streamed read after `from` within the committed state, as `read`
   * sees it now; the caller has waited for the snapshot to complete. A large
   * body gets a descriptor of its own, so the stream neither keeps this log's
   * handles busy nor stops when the log is closed or removed.
   */
  openSpan(from: LogOffset, format: BodyFormat): Promise<OpenedSpan> {
    const cache = this.readCache
    const read = `${format} ${LogOffset.format(from)}`
    const settledKey = `${this.cacheId} settled ${read}`
    // A commit landing before the read below is made files it under this older state: committed bytes still,
    // and newer ones, never stale ones.
    const key = `${this.cacheId} ${this.lines} ${read}`
    const hit = cache === undefined || this.closed !== "open" ? undefined : cache.get(settledKey) ?? cache.get(key)
    if (hit !== undefined) return hit.then(openedOf)
    const inSnapshot = snapshotChunkAfter(from, this.snapshotChunkBytes.length) !== undefined
    return this.using(async () => {
      const [span, settled, shared] = await this.spanAfter(from)
      const recent = this.recentRead(span, format)
      if (recent !== undefined) {
        if (cache === undefined || bodyLength(span) > WHOLE_BYTES) return recent
        return (cache.get(key) ?? cache.share(key, Promise.resolve(settledRead(recent, settled)), settledKey)).then(openedOf)
      }
      // A streamed body reads through a descriptor of its own, which its response closes: it is never shared.
      if (cache === undefined || bodyLength(span) > WHOLE_BYTES) return openSpan(this.dir, span, shared, format)
      const whole = cache.get(key) ??
        cache.share(key, openSpan(this.dir, span, shared, format).then((opened) => settledRead(opened, settled)), settledKey)
      return whole.then(openedOf)
    }, !inSnapshot)
  }

  /**
   * A read of bytes recent commits wrote, from their buffers while they are kept (`RecentCommits`): the requests a
   * commit wakes, and those that come soon after it, need no read of the file, which in a catch-up costs a turn of
   * the event loop for each step (opening a large body's file, and each of its pieces). One copy per format and
   * span, shared as `RecentCommits.read` says: a large one is held until the slowest response streaming it is done.
   */
  private recentRead(span: ReadSpan, format: BodyFormat): OpenedSpan | undefined {
    return span.file === FileNames.log ? this.recentCommits?.read(span, format) : undefined
  }

  /**
   * Where a read after `from` lies, whether its bytes never change (a snapshot chunk, or a closed log chunk that
   * does not end the log: its `reachedEnd` changes with the next commit), and the open handle on its file.
   */
  private async spanAfter(from: LogOffset): Promise<[ReadSpan, boolean, fs.FileHandle | undefined]> {
    const n = snapshotChunkAfter(from, this.snapshotChunkBytes.length)
    if (n !== undefined) return [snapshotSpan(n, this.snapshotChunkBytes[n]!), true, undefined]
    const closedEnd = this.closedChunks.length > 0 ? this.closedChunks[this.closedChunks.length - 1]!.endPos : 0
    const span = await logSpan(this.committed(), from)
    return [span, !span.reachedEnd && span.end <= closedEnd, this.log]
  }

  private committed(): CommittedLog {
    return {
      handle: this.handle,
      lines: this.lines,
      logBytes: this.logBytes,
      lastOffset: this.lastOffset,
      closedChunks: this.closedChunks,
      chunkCount: this.closedChunks.length,
      recent: this.recent,
      log: this.log,
      index: this.index
    }
  }
}

/** How many snapshot chunks are looked at together when a log is opened. */
const STATS_AT_ONCE = 8

/**
 * Every snapshot chunk the pointer covers exists and holds at least the bytes it says: a damaged snapshot
 * is found when the log is opened, not by the first client that reads from the start.
 */
const checkSnapshotChunks = async (dir: string, handle: string, sizes: ReadonlyArray<number>): Promise<void> => {
  // A few at a time: one log's snapshot of thousands of chunks must not fill the thread pool commits' fsyncs wait for.
  const found: Array<PromiseSettledResult<fsSync.Stats>> = []
  for (let n = 0; n < sizes.length; n += STATS_AT_ONCE) {
    const batch = sizes.slice(n, n + STATS_AT_ONCE).map((_, i) => fs.stat(path.join(dir, FileNames.snapshot(n + i))))
    found.push(...(await Promise.allSettled(batch)))
  }
  for (let n = 0; n < sizes.length; n++) {
    const stat = found[n]!
    if (stat.status === "rejected") {
      if (!isErrno(stat.reason, "ENOENT")) throw stat.reason
      // A chunk the pointer covers with no bytes may never have been written.
      if (sizes[n] === 0) continue
      throw new StorageError({ reason: "Corrupt", handle, message: `snapshot chunk ${n} is missing` })
    }
    if (stat.value.size < sizes[n]!) {
      throw new StorageError({ reason: "Corrupt", handle, message: `snapshot chunk ${n} is shorter than its commit pointer says` })
    }
  }
}

/** Wraps a file system failure. */
export const ioError = (handle: string | undefined, cause: unknown): StorageError =>
  new StorageError({
    reason: "Io",
    ...(handle === undefined ? {} : { handle }),
    message: cause instanceof Error ? cause.message : String(cause),
    cause
  })
