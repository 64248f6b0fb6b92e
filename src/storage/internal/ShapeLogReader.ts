import * as fs from "node:fs/promises"
import * as path from "node:path"
import { LogOffset } from "../../domain/LogOffset.js"
import { StorageError } from "../../domain/errors.js"
import type { LogRead } from "../ShapeLogStorage.js"
import { readCommittedLog, readSnapshotChunk, snapshotChunkAfter } from "./committedRead.js"
import { type CommitPointer, decodeChunks, FileNames, INDEX_RECORD_BYTES, isErrno, readPointer, readRange } from "./files.js"

/**
 * Reads of a shape directory that another process owns and is appending to.
 * Plain async code, wrapped by `openReader` in `ShapeLogStorage.ts`. Every call
 * reads the commit pointer once and touches only bytes within its lengths;
 * files are opened read-only per call and closed before it returns, so nothing
 * on disk is ever created, written or truncated.
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
  async read(dir: string, handle: string, from: LogOffset): Promise<LogRead> {
    const pointer = await loadPointer(dir, handle)
    if (pointer === undefined || !pointer.snapshotComplete) {
      throw new StorageError({ reason: "Closed", handle, message: "the shape's snapshot is not complete" })
    }
    try {
      const n = snapshotChunkAfter(from, pointer.snapshotChunkBytes.length)
      if (n !== undefined) return await readSnapshotChunk(dir, n, pointer.snapshotChunkBytes[n]!)
      return await readLog(dir, handle, pointer, from)
    } catch (cause) {
      // a removal renames the directory away mid-read: that is "Removed", not a broken file
      if (!(await directoryExists(dir))) throw removed(handle)
      if (isErrno(cause, "ENOENT")) {
        throw new StorageError({ reason: "Corrupt", handle, message: "a file covered by the commit pointer is missing" })
      }
      throw cause
    }
  }
} as const

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

const readLog = async (dir: string, handle: string, pointer: CommitPointer, from: LogOffset): Promise<LogRead> => {
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
    return await readCommittedLog({
      handle,
      lines: pointer.indexBytes / INDEX_RECORD_BYTES,
      logBytes: pointer.logBytes,
      lastOffset: pointer.lastOffset,
      closedChunks,
      chunkCount: closedChunks.length,
      recent: [],
      log,
      index
    }, from)
  } finally {
    await Promise.all(opened.map((fh) => fh.close().catch(() => undefined)))
  }
}
