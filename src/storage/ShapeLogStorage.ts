import * as fs from "node:fs/promises"
import * as path from "node:path"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { LogOffset } from "../domain/LogOffset.js"
import { ShapeHandle } from "../domain/ShapeHandle.js"
import { LogLines } from "./LogLines.js"
import { StorageError } from "../domain/errors.js"
import { type BodyFormat, bodyLength, type OpenedSpan, PIECE_BYTES, readPiece } from "./internal/committedRead.js"
import { isErrno } from "./internal/files.js"
import { ShapeLogReaderFiles } from "./internal/ShapeLogReader.js"
import { ReadCache } from "./internal/ReadCache.js"
import { RecentBudget } from "./internal/RecentCommits.js"
import { ioError, ShapeLogFiles } from "./internal/ShapeLogFiles.js"
import { logWhenStopped } from "../domain/Lifecycle.js"

/**
 * One line of a shape log: a complete JSON message, stored and served as is.
 */
export interface LogEntry {
  readonly offset: LogOffset
  /** One complete JSON message without a trailing newline. */
  readonly json: string
}

/** What a read returns: the stored messages, joined by `,`, ready to be placed inside `[` `]`. */
export interface LogRead {
  /** Stored lines joined by `,` (no brackets); empty when `count` is 0. */
  readonly body: Uint8Array
  readonly count: number
  /** The offset for the client's next request: the end of the chunk served. */
  readonly nextOffset: LogOffset
  /** True when the read reached the last committed entry of the shape. */
  readonly reachedEnd: boolean
}

/**
 * A read whose body is served in pieces: the same bytes, offsets and end as
 * the `LogRead` of the same call, bounded by the committed lengths when it was
 * made. A body of at most `WHOLE_BYTES` is read at once (and yields pieces of
 * it without copying); a larger one is read from disk only as its pieces are
 * pulled, through a file descriptor the read holds until its scope closes.
 * What recent commits wrote, read while it is kept (see `RecentCommits`: the
 * reads a commit wakes, and those soon after), is held whole, in memory shared
 * by the streams reading it: the first read after a commit at any size.
 */
export interface LogStream {
  /** Byte length of the body (stored lines joined by `,`); 0 when nothing was read. */
  readonly length: number
  /** The whole body, when it was small enough to read at once. */
  readonly bytes: Uint8Array | undefined
  /** The body in pieces of at most `PIECE_BYTES`; pulling it again reads it again. */
  readonly pieces: Stream.Stream<Uint8Array, StorageError>
  /**
   * For a body not held whole (`bytes` undefined): reads the piece of `pieces` that starts `at` bytes into the
   * body into the start of `into` (at least `PIECE_BYTES` long) and returns the part it fills, failing with a
   * `StorageError`. For a writer that reads each piece while the one before is being sent, into buffers it
   * reuses: no Effect step and no allocation per piece. The descriptor stays usable until the stream's scope
   * closes, which waits for a read still running.
   */
  readonly readPiece: ((at: number, into: Buffer) => Promise<Buffer>) | undefined
  readonly nextOffset: LogOffset
  readonly reachedEnd: boolean
  /** The body is whole and never changes (see `OpenedSpan`): a response made of it may be served again. */
  readonly settled: boolean
}

/**
 * The size of the pieces a `LogStream` yields, and the largest body read from a file whole (a read of what recent
 * commits wrote is whole at any size, from memory: see `RecentCommits`).
 */
export { PIECE_BYTES, WHOLE_BYTES } from "./internal/committedRead.js"
export type { BodyFormat } from "./internal/committedRead.js"

/**
 * The storage of one shape: snapshot chunks, an append-only log, and a commit
 * pointer written (atomically) after the data is fsync'd.
 */
export interface ShapeLog {
  readonly handle: ShapeHandle
  /** Appends snapshot messages; chunks close at the byte threshold. Not durable until `completeSnapshot`. */
  readonly appendSnapshot: (lines: ReadonlyArray<string>) => Effect.Effect<void, StorageError>
  /** `appendSnapshot` of messages already encoded: UTF-8, each ended by a newline, written as they are. */
  readonly appendSnapshotRows: (bytes: Uint8Array) => Effect.Effect<void, StorageError>
  /** Closes the last snapshot chunk, fsyncs and commits: the snapshot is complete and readable in full. */
  readonly completeSnapshot: Effect.Effect<void, StorageError>
  readonly isSnapshotComplete: () => boolean
  /** Appends log entries (offsets strictly increasing, all above the last appended). Not durable until `commit`. */
  readonly append: (entries: ReadonlyArray<LogEntry>) => Effect.Effect<void, StorageError>
  /**
   * `append` of lines already encoded (offsets strictly increasing), copied as they are; lines at or below the last
   * appended are skipped. The lines may be dropped or reused once it returns.
   */
  readonly appendLines: (lines: LogLines) => Effect.Effect<void, StorageError>
  /** fsyncs what was appended, writes the commit pointer, wakes waiting readers. Returns the durable offset. */
  readonly commit: Effect.Effect<LogOffset, StorageError>
  /** The last durable offset: `-1` before the snapshot completes, `0_inf` for an empty log, else the last entry's. */
  readonly latestOffset: () => LogOffset
  /** Reads after `from` (exclusive) to the end of the chunk that holds the next entry; only durable data. */
  readonly read: (from: LogOffset) => Effect.Effect<LogRead, StorageError>
  /**
   * `read`, with the body in pieces read as they are pulled, its lines joined as `format` says (`array` when
   * not given). Its descriptor is the stream's own: a slow consumer never delays the log's removal or close, and a
   * stream goes on after them.
   */
  readonly stream: (from: LogOffset, format?: BodyFormat) => Effect.Effect<LogStream, StorageError, Scope.Scope>
  /** Completes when durable data past `after` exists (or the log was removed). */
  readonly awaitDataAfter: (after: LogOffset) => Effect.Effect<void>
  /** True once the log is closed or removed: no commit comes any more. */
  readonly isClosed: () => boolean
  /** See `ShapeLogFiles.onNextCommit`: a callback at the next commit or close, without a fiber. */
  readonly onNextCommit: (listener: () => void) => () => void
  /**
   * `stream`'s read when its body is held whole, without a scope: one of at most `WHOLE_BYTES`, or what recent
   * commits wrote while it is kept (`RecentCommits`; the first read after a commit at any size), shared with the
   * requests reading the same: a caller writes a large one as it is, never a copy of its own. Undefined when the
   * body would be streamed from the file, or the log is closed. The snapshot must be complete.
   */
  readonly readWhole: (from: LogOffset, format: BodyFormat) => Promise<LogRead | undefined>
}

/**
 * A log read from disk only, for serving a shape while another process owns
 * it (a rolling restart's read-only phase): never writes, never truncates, and
 * every call reads the current commit pointer, so it follows the owner's
 * commits and never sees bytes appended past them. It has no way to wait for
 * data: callers poll `latestOffset`.
 */
export interface ShapeLogReader {
  readonly handle: ShapeHandle
  /** Same semantics as ShapeLog.latestOffset, from the pointer on disk now (`-1` while the snapshot is incomplete). */
  readonly latestOffset: Effect.Effect<LogOffset, StorageError>
  /**
   * Same semantics and bytes as ShapeLog.read, bounded by the pointer read at the start of the call; fails with
   * reason "Removed" if the shape directory is gone, and with reason "Closed" (not a wait) if the snapshot is not
   * complete.
   */
  readonly read: (from: LogOffset) => Effect.Effect<LogRead, StorageError>
  /** `read`, with the body in pieces read as they are pulled (see ShapeLog.stream); a stream outlives a removal. */
  readonly stream: (from: LogOffset, format?: BodyFormat) => Effect.Effect<LogStream, StorageError, Scope.Scope>
}

/**
 * All shape logs of a stack, under `<storage dir>/shapes`. Opening a log is
 * lazy and recovers it (files truncated to the commit pointer); an idle shape
 * costs nothing in memory.
 */
export class ShapeLogStorage extends Context.Tag("syncline/ShapeLogStorage")<ShapeLogStorage, {
  /** Starts a fresh, empty shape under the handle, discarding whatever the handle held (an open log is closed as removed). */
  readonly create: (handle: ShapeHandle) => Effect.Effect<ShapeLog, StorageError>
  /**
   * The log of an existing shape, recovered from disk on first use. Never creates one: fails with reason
   * "Removed" when the shape has no directory and "Corrupt" when its directory has no commit pointer.
   */
  readonly open: (handle: ShapeHandle) => Effect.Effect<ShapeLog, StorageError>
  /** Deletes a shape's files; idempotent. Open logs are closed and their waiters woken. */
  readonly remove: (handle: ShapeHandle) => Effect.Effect<void, StorageError>
  /** Handles that have a directory on disk (for boot-time clean-up of orphans). */
  readonly list: Effect.Effect<ReadonlyArray<ShapeHandle>, StorageError>
  /**
   * What a shape's files take on disk, and when they were last written (milliseconds since the epoch; undefined
   * for a shape with no files). Read from the directory: no log is opened.
   */
  readonly usage: (handle: ShapeHandle) => Effect.Effect<{ readonly bytes: number; readonly writtenAt: number | undefined }, StorageError>
}>() {
  /** The file-backed storage under `options.directory`; closing the layer closes every open file. */
  static readonly layer = (options: ShapeLogStorageOptions): Layer.Layer<ShapeLogStorage, StorageError> =>
    Layer.scoped(ShapeLogStorage, make(options))
}

/** Where shape logs live and how large a chunk grows before it closes. */
export interface ShapeLogStorageOptions {
  /** `<storage dir>/shapes`; one sub-directory per handle. */
  readonly directory: string
  /** A chunk (snapshot or log) closes at the line that makes it reach this many bytes, newlines included. */
  readonly chunkBytesThreshold: number
  /**
   * What the logs keep in memory of their recent commits, together, to serve the reads after them (`RecentCommits`);
   * default 64 MiB. With 0 each log keeps its newest commit only until the event loop's next check phase.
   */
  readonly recentCommitBytes?: number
}

const TRASH_PREFIX = ".trash-"

/** The bodies a storage keeps to serve again (see `ReadCache`); bodies are at most one piece each. */
const READ_CACHE_BYTES = 32 * 1024 * 1024

/**
 * How often logs are checked for idleness: one unused since the previous check gives its descriptors back, and
 * the shared reads no one asked for since are dropped.
 */
const IDLE_CHECK = Duration.seconds(10)

const attempt = <A>(handle: string | undefined, f: () => Promise<A>): Effect.Effect<A, StorageError> =>
  Effect.tryPromise({
    try: f,
    catch: (cause) => (cause instanceof StorageError ? cause : ioError(handle, cause))
  })

const closedError = (files: ShapeLogFiles) =>
  new StorageError({
    reason: files.closed === "removed" ? "Removed" : "Closed",
    handle: files.handle,
    message: `the shape log is ${files.closed}`
  })

/**
 * Holds a prepared span's descriptor for the scope and reads its pieces on
 * demand. `open` runs uninterruptibly, so a descriptor is never opened without
 * its release registered.
 */
const streamOf = (
  handle: string,
  format: BodyFormat,
  open: () => Promise<OpenedSpan>
): Effect.Effect<LogStream, StorageError, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      attempt(handle, open),
      (opened) => opened._tag === "Open" ? Effect.promise(() => opened.fh.close().catch(() => undefined)) : Effect.void
    ),
    (opened): LogStream => {
      if (opened._tag === "Whole") {
        const { body, nextOffset, reachedEnd } = opened.read
        const pieces = body.length <= PIECE_BYTES
          ? body.length > 0 ? Stream.succeed(body) : Stream.empty
          : Stream.fromIterable(piecesOf(body))
        return {
          length: body.length,
          bytes: body,
          pieces,
          readPiece: undefined,
          nextOffset,
          reachedEnd,
          settled: opened.settled === true
        }
      }
      const { fh, span } = opened
      const length = bodyLength(span)
      const pieces = Stream.unfoldEffect(0, (at) =>
        at >= length
          ? Effect.succeed(Option.none())
          : Effect.map(attempt(handle, () => readPiece(fh, span, at, format)), (piece) => Option.some([piece, at + piece.length] as const))
      )
      // A FileHandle closed while a read runs closes its descriptor once the read is over.
      const readPieceInto = (at: number, into: Buffer): Promise<Buffer> =>
        readPiece(fh, span, at, format, into).catch((cause: unknown) => {
          throw cause instanceof StorageError ? cause : ioError(handle, cause)
        })
      return {
        length,
        bytes: undefined,
        pieces,
        readPiece: readPieceInto,
        nextOffset: span.nextOffset,
        reachedEnd: span.reachedEnd,
        settled: false
      }
    }
  )

/** A whole body as the pieces a stream yields: views of it, nothing copied. */
const piecesOf = (body: Uint8Array): Array<Uint8Array> => {
  const pieces: Array<Uint8Array> = []
  for (let at = 0; at < body.length; at += PIECE_BYTES) pieces.push(body.subarray(at, at + PIECE_BYTES))
  return pieces
}

const toShapeLog = (files: ShapeLogFiles): ShapeLog => {
  const handle = ShapeHandle(files.handle)
  const awaitSnapshot = Effect.suspend(() => {
    const latch = files.awaitSnapshot()
    return latch === undefined ? Effect.void : Deferred.await(latch)
  })
  const awaitDataAfter = (after: LogOffset): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (files.closed !== "open" || LogOffset.gt(files.latestOffset(), after)) return Effect.void
      return Effect.flatMap(Deferred.await(files.nextCommit()), () => awaitDataAfter(after))
    })
  const appendLines = (lines: LogLines): Effect.Effect<void, StorageError> =>
    Effect.suspend(() => {
      if (files.closed !== "open") return Effect.fail(closedError(files))
      try {
        files.appendLines(lines)
        return Effect.void
      } catch (cause) {
        return Effect.fail(ioError(handle, cause))
      }
    })
  return {
    handle,
    appendSnapshot: (lines) => attempt(handle, () => files.appendSnapshot(lines)),
    appendSnapshotRows: (bytes) => attempt(handle, () => files.appendSnapshotRows(bytes)),
    completeSnapshot: attempt(handle, () => files.completeSnapshot()),
    isSnapshotComplete: () => files.snapshotComplete,
    append: (entries) => Effect.suspend(() => appendLines(LogLines.of(entries))),
    appendLines,
    commit: attempt(handle, () => files.commit()),
    latestOffset: () => files.latestOffset(),
    read: (from) =>
      Effect.zipRight(
        awaitSnapshot,
        Effect.suspend(() =>
          files.closed !== "open" ? Effect.fail(closedError(files)) : attempt(handle, () => files.read(from))
        )
      ),
    stream: (from, format = "array") =>
      Effect.zipRight(
        awaitSnapshot,
        Effect.suspend(() =>
          files.closed !== "open"
            ? Effect.fail(closedError(files))
            : streamOf(handle, format, () => files.openSpan(from, format))
        )
      ),
    awaitDataAfter,
    isClosed: () => files.closed !== "open",
    onNextCommit: (listener) => files.onNextCommit(listener),
    readWhole: async (from, format) => {
      if (files.closed !== "open" || !files.snapshotComplete) return undefined
      const opened = await files.openSpan(from, format)
      if (opened._tag === "Whole") return opened.read
      await opened.fh.close().catch(() => undefined)
      return undefined
    }
  }
}

/**
 * Builds the file-backed storage: one directory per shape holding snapshot
 * chunk files, an append-only JSON-lines log with a binary offset index and a
 * chunk index, and an atomically replaced commit pointer. Open logs are cached
 * per handle; the scope closing closes their files (uncommitted data is dropped,
 * as recovery would drop it).
 */
export const make = (
  options: ShapeLogStorageOptions
): Effect.Effect<ShapeLogStorage["Type"], StorageError, Scope.Scope> =>
  Effect.gen(function*() {
    yield* logWhenStopped("ShapeLogStorage")
    const root = options.directory
    const threshold = options.chunkBytesThreshold
    yield* attempt(undefined, async () => {
      await fs.mkdir(root, { recursive: true })
      for (const name of await fs.readdir(root)) {
        if (name.startsWith(TRASH_PREFIX)) await fs.rm(path.join(root, name), { recursive: true, force: true })
      }
    })

    interface Opened {
      readonly files: ShapeLogFiles
      readonly log: ShapeLog
    }
    /** A log being opened or created, or open with its descriptors: held here until they are closed. */
    interface Held {
      readonly opening: Promise<Opened>
      /** Set once `opening` has resolved. */
      opened: Opened | undefined
    }
    const logs = new Map<string, Held>()
    /**
     * Logs without descriptors (idle, or whose snapshot has just completed), held weakly: whoever still uses one
     * (a consumer, a request, a waiting long-poll) keeps it, and `open` finds it while it is kept, so there is never
     * a second `ShapeLogFiles` for a handle beside a live one. A log no one holds is collected and the next `open`
     * recovers it from disk, as at start-up: a process serving many idle shapes keeps none of their state.
     */
    const unheld = new Map<string, WeakRef<ShapeLogFiles>>()
    const collected = new FinalizationRegistry<string>((handle) => {
      if (unheld.get(handle)?.deref() === undefined) unheld.delete(handle)
    })
    /** Each log's `ShapeLog`, one per `ShapeLogFiles` for as long as it lives. */
    const views = new WeakMap<ShapeLogFiles, Opened>()
    // Once the stack's scope closes, a caller still holding this storage (a request of the old stack) must
    // not open a log: opening recovers, and recovery truncates files the next stack may be writing.
    let accepting = true

    const stopped = (handle: ShapeHandle) =>
      new StorageError({ reason: "Closed", handle, message: "the storage of a stopped stack" })

    const track = (handle: ShapeHandle, opening: Promise<Opened>): Promise<Opened> => {
      const held: Held = { opening, opened: undefined }
      logs.set(handle, held)
      unheld.delete(handle)
      opening.then(
        (opened) => {
          held.opened = opened
          // Its descriptors were closed before this resolved (a snapshot completed meanwhile).
          if (logs.get(handle) === held && !opened.files.holdsDescriptors) letGo(opened.files)
        },
        () => {
          if (logs.get(handle) === held) logs.delete(handle)
        }
      )
      return opening
    }

    /** The log's descriptors are closed: it is held weakly from now on. */
    const letGo = (files: ShapeLogFiles): void => {
      const held = logs.get(files.handle)
      if (held?.opened?.files !== files || files.closed !== "open" || !files.snapshotComplete) return
      logs.delete(files.handle)
      unheld.set(files.handle, new WeakRef(files))
      collected.register(files, files.handle, files)
    }

    /** The log opened its descriptors again: held strongly until they are closed. */
    const holdAgain = (files: ShapeLogFiles): void => {
      if (unheld.get(files.handle)?.deref() !== files) return
      unheld.delete(files.handle)
      collected.unregister(files)
      const opened = viewOf(files)
      logs.set(files.handle, { opening: Promise.resolve(opened), opened })
    }

    /** A log still alive though not held here (see `unheld`). */
    const kept = (handle: string): ShapeLogFiles | undefined => {
      const ref = unheld.get(handle)
      if (ref === undefined) return undefined
      const files = ref.deref()
      if (files === undefined || files.closed !== "open") {
        unheld.delete(handle)
        if (files !== undefined) collected.unregister(files)
        return undefined
      }
      return files
    }

    const readCache = new ReadCache(READ_CACHE_BYTES)
    const recentBudget = new RecentBudget(options.recentCommitBytes)
    const viewOf = (files: ShapeLogFiles): Opened => {
      let opened = views.get(files)
      if (opened === undefined) {
        files.readCache = readCache
        files.recentBudget = recentBudget
        files.onDescriptors = (open) => (open ? holdAgain(files) : letGo(files))
        opened = { files, log: toShapeLog(files) }
        views.set(files, opened)
      }
      return opened
    }

    const openCached = (handle: ShapeHandle): Promise<Opened> => {
      if (!accepting) return Promise.reject(stopped(handle))
      const cached = logs.get(handle)
      if (cached !== undefined) {
        return cached.opening.then((entry) => {
          if (entry.files.closed !== "failed") return entry
          if (logs.get(handle) === cached) logs.delete(handle)
          return openCached(handle)
        })
      }
      const alive = kept(handle)
      if (alive !== undefined) return Promise.resolve(viewOf(alive))
      return track(handle, ShapeLogFiles.open(path.join(root, handle), handle, threshold).then(viewOf))
    }

    /** Takes the log of a handle out of the storage (strongly or weakly held): the caller shuts it down. */
    const takeOut = (handle: string): Promise<Opened | undefined> => {
      const cached = logs.get(handle)
      logs.delete(handle)
      const alive = kept(handle)
      unheld.delete(handle)
      if (alive !== undefined) {
        collected.unregister(alive)
        return Promise.resolve(viewOf(alive))
      }
      return cached === undefined ? Promise.resolve(undefined) : cached.opening.catch(() => undefined)
    }

    const createCached = (handle: ShapeHandle): Promise<Opened> => {
      if (!accepting) return Promise.reject(stopped(handle))
      const previous = takeOut(handle)
      return track(
        handle,
        (async () => {
          // The old log's files are about to be emptied: its readers and writers must stop first.
          const entry = await previous
          await entry?.files.shutdown("removed")
          return viewOf(await ShapeLogFiles.create(path.join(root, handle), handle, threshold))
        })()
      )
    }

    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        accepting = false
        const handles = new Set([...logs.keys(), ...unheld.keys()])
        const entries = await Promise.all([...handles].map(takeOut))
        await Promise.all(entries.map((entry) => entry?.files.shutdown("closed")))
      })
    )

    yield* Effect.sync(() => {
      for (const held of logs.values()) held.opening.then((entry) => entry.files.closeIfIdle(), () => undefined)
      readCache.sweep()
    }).pipe(Effect.repeat(Schedule.spaced(IDLE_CHECK)), Effect.forkScoped)

    const open = Effect.fn("ShapeLogStorage.open")(function*(handle: ShapeHandle) {
      const entry = yield* attempt(handle, () => openCached(handle))
      return entry.log
    })

    const create = Effect.fn("ShapeLogStorage.create")(function*(handle: ShapeHandle) {
      const entry = yield* attempt(handle, () => createCached(handle))
      return entry.log
    })

    const remove = Effect.fn("ShapeLogStorage.remove")(function*(handle: ShapeHandle) {
      yield* attempt(handle, async () => {
        if (!accepting) throw stopped(handle)
        const entry = await takeOut(handle)
        await entry?.files.shutdown("removed")
        const trash = path.join(root, `${TRASH_PREFIX}${handle}-${Date.now()}-${Math.random().toString(36).slice(2)}`)
        try {
          await fs.rename(path.join(root, handle), trash)
        } catch (cause) {
          if (isErrno(cause, "ENOENT")) return
          throw cause
        }
        await fs.rm(trash, { recursive: true, force: true })
      })
    })

    const list = attempt(undefined, async () => {
      const entries = await fs.readdir(root, { withFileTypes: true })
      return entries
        .filter((e) => e.isDirectory() && !e.name.startsWith("."))
        .map((e) => ShapeHandle(e.name))
    }).pipe(Effect.withSpan("ShapeLogStorage.list"))

    const usage = (handle: ShapeHandle) =>
      attempt(handle, async () => {
        const dir = path.join(root, handle)
        let names: Array<string>
        try {
          names = await fs.readdir(dir)
        } catch (cause) {
          if (isErrno(cause, "ENOENT")) return { bytes: 0, writtenAt: undefined }
          throw cause
        }
        // A file removed meanwhile (a chunk compacted away) counts for nothing.
        const stats = await Promise.all(names.map((name) => fs.stat(path.join(dir, name)).catch(() => undefined)))
        let bytes = 0
        let writtenAt: number | undefined
        for (const stat of stats) {
          if (stat === undefined) continue
          bytes += stat.size
          if (writtenAt === undefined || stat.mtimeMs > writtenAt) writtenAt = stat.mtimeMs
        }
        return { bytes, writtenAt }
      }).pipe(Effect.withSpan("ShapeLogStorage.usage"))

    return ShapeLogStorage.of({ create, open, remove, list, usage })
  })

/**
 * Opens a read-only view of one shape's files under `options.directory`,
 * without creating, recovering or locking anything: safe beside the process
 * that owns and appends to them. Fails with reason "Removed" when the shape
 * has no directory. Holds no open files between calls, so it needs no scope
 * (a streamed read's descriptor belongs to the scope of that read).
 */
export const openReader = (
  options: ShapeLogStorageOptions,
  handle: ShapeHandle
): Effect.Effect<ShapeLogReader, StorageError> => {
  const dir = path.join(options.directory, handle)
  const reader: ShapeLogReader = {
    handle,
    latestOffset: attempt(handle, () => ShapeLogReaderFiles.latestOffset(dir, handle)).pipe(
      Effect.withSpan("ShapeLogReader.latestOffset")
    ),
    read: (from) =>
      attempt(handle, () => ShapeLogReaderFiles.read(dir, handle, from)).pipe(Effect.withSpan("ShapeLogReader.read")),
    stream: (from, format = "array") =>
      streamOf(handle, format, () => ShapeLogReaderFiles.openSpan(dir, handle, from, format)).pipe(
        Effect.withSpan("ShapeLogReader.stream")
      )
  }
  return attempt(handle, () => ShapeLogReaderFiles.check(dir, handle)).pipe(
    Effect.as(reader),
    Effect.withSpan("ShapeLogStorage.openReader")
  )
}
