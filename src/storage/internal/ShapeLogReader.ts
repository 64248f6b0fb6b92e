import * as fs from "node:fs/promises"
import * as path from "node:path"
import { LogOffset } from "../../domain/LogOffset.js"
import { StorageError } from "../../domain/errors.js"
import type { LogRead } from "../ShapeLogStorage.js"
import {
  type CommittedLog,
  logSpan,
  type OpenedSpan,
  type BodyFormat,
  openSpan,
  readCommittedLog,
  readSnapshotChunk,
  snapshotChunkAfter,
  snapshotSpan
} from "./committedRead.js"
import { type CommitPointer, decodeChunks, FileNames, INDEX_RECORD_BYTES, isErrno, readPointer, readRange } from "./files.js"

/**
 * Reads of a shape directory that another process owns and is appending to.
 * Plain async code, wrapped by `openReader` in `ShapeLogStorage.ts`. Every call
 * reads the commit pointer once and touches only bytes within its lengths;
 * files are opened read-only per call and closed before it returns (but for
 * the one a streamed read hands to its caller), so nothing on disk is ever
 * created, written or truncated.
 */
export const ShapeLogReaderFiles = {
  /** Fails with reason "Removed" unless the shape's directory exists. */
  async check(dir: string, handle: string): Promise<void> {
    if (!(await directoryExists(dir))) throw removed(handle)
  },

  /** The durable offset per the pointer on disk now: `-1` while the snapshot is incomplete. */
  async latestOffset(dir: string, handle: string): Promise<LogOffset> {
    const pointer = await loadPointer(dir, handle)
    if (pointer === undefined || !pointer.snapshotComplete) return LogOffset.beforeAll
    return pointer.lastOffset ?? LogOffset.lastBeforeReal
  },

  /** Reads after `from`, bounded by the pointer read at the start of the call. */
  read(dir: string, handle: string, from: LogOffset): Promise<LogRead> {
    return withPointer(dir, handle, async (pointer) => {
      const n = snapshotChunkAfter(from, pointer.snapshotChunkBytes.length)
      if (n !== undefined) return readSnapshotChunk(dir, n, pointer.snapshotChunkBytes[n]!)
      return withLogFiles(dir, handle, pointer, (c) => readCommittedLog(c, from))
    })
  },

  /**
   * Prepares a streamed read after `from`, bounded by the pointer read at the
   * start of the call; a large body keeps a descriptor of its own open.
   */
  openSpan(dir: string, handle: string, from: LogOffset, format: BodyFormat): Promise<OpenedSpan> {
    return withPointer(dir, handle, async (pointer) => {
      const n = snapshotChunkAfter(from, pointer.snapshotChunkBytes.length)
      if (n !== undefined) return openSpan(dir, snapshotSpan(n, pointer.snapshotChunkBytes[n]!), undefined, format)
      return withLogFiles(dir, handle, pointer, async (c) => openSpan(dir, await logSpan(c, from), c.log, format))
    })
  }
} as const

/** Runs `f` on the commit pointer on disk now, for a shape whose snapshot is complete. */
const withPointer = async <A>(dir: string, handle: string, f: (pointer: CommitPointer) => Promise<A>): Promise<A> => {
  const pointer = await loadPointer(dir, handle)
  if (pointer === undefined || !pointer.snapshotComplete) {
    throw new StorageError({ reason: "Closed", handle, message: "the shape's snapshot is not complete" })
  }
  try {
    return await f(pointer)
  } catch (cause) {
    // a removal renames the directory away mid-read: that is "Removed", not a broken file
    if (!(await directoryExists(dir))) throw removed(handle)
    if (isErrno(cause, "ENOENT")) {
      throw new StorageError({ reason: "Corrupt", handle, message: "a file covered by the commit pointer is missing" })
    }
    throw cause
  }
}

const removed = (handle: string) => new StorageError({ reason: "Removed", handle, message: "the shape log was removed" })

const directoryExists = async (dir: string): Promise<boolean> => {
  try {
    return (await fs.stat(dir)).isDirectory()
  } catch (cause) {
    if (isErrno(cause, "ENOENT")) return false
    throw cause
  }
}

/**
 * Reads the commit pointer once. The owner replaces it by rename, which is
 * atomic, so a pointer that fails to parse is retried once before it counts as
 * corrupt. Undefined when the directory holds no pointer yet.
 */
const loadPointer = async (dir: string, handle: string): Promise<CommitPointer | undefined> => {
  let pointer: CommitPointer | undefined
  try {
    pointer = await readPointer(dir)
  } catch (cause) {
    if (!(cause instanceof StorageError && cause.reason === "Corrupt")) throw cause
    pointer = await readPointer(dir)
  }
  if (pointer === undefined && !(await directoryExists(dir))) throw removed(handle)
  return pointer
}

/** Runs `f` on the log as `pointer` covers it, with the log files opened read-only for the call. */
const withLogFiles = async <A>(
  dir: string,
  handle: string,
  pointer: CommitPointer,
  f: (c: CommittedLog) => Promise<A>
): Promise<A> => {
  const opened: Array<fs.FileHandle> = []
  const openReadOnly = async (name: string) => {
    const fh = await fs.open(path.join(dir, name), "r")
    opened.push(fh)
    return fh
  }
  try {
    const log = await openReadOnly(FileNames.log)
    const index = await openReadOnly(FileNames.index)
    const closedChunks = pointer.chunkIndexBytes > 0
      ? decodeChunks(await readRange(await openReadOnly(FileNames.chunks), 0, pointer.chunkIndexBytes))
      : []
    return await f({
      handle,
      lines: pointer.indexBytes / INDEX_RECORD_BYTES,
      logBytes: pointer.logBytes,
      lastOffset: pointer.lastOffset,
      closedChunks,
      chunkCount: closedChunks.length,
      recent: [],
      log,
      index
    })
  } finally {
    await Promise.all(opened.map((fh) => fh.close().catch(() => undefined)))
  }
}
