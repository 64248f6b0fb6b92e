import * as fsSync from "node:fs"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { LogOffset } from "../../domain/LogOffset.js"
import { StorageError } from "../../domain/errors.js"

/** File names inside one shape's directory. */
export const FileNames = {
  log: "log.jsonl",
  index: "log.idx",
  chunks: "log.chunks",
  pointer: "commit.json",
  pointerTemp: "commit.json.tmp",
  snapshot: (n: number): string => `snapshot.${n}.jsonl`
} as const

/**
 * One record per log line: tx (u64 LE), op (f64 LE), byte position just past
 * the line's `\n` (f64 LE, exact below 2^53).
 */
export const INDEX_RECORD_BYTES = 24

/**
 * One record per closed log chunk: the last entry's tx (u64 LE) and op (f64 LE),
 * the byte position where the chunk ends, and the line count up to its end (both f64 LE).
 */
export const CHUNK_RECORD_BYTES = 32

/** A closed log chunk, as kept in memory for an open shape. */
export interface ChunkEnd {
  readonly endOffset: LogOffset
  readonly endPos: number
  readonly endLine: number
}

/**
 * Reads exactly `length` bytes at `position`. With `kept`, into memory of its own rather than a slice of Node's
 * shared pool: a small body that is kept (a cached read) would otherwise hold a whole pool slab of 8 kB.
 */
export const readRange = (fh: fs.FileHandle, position: number, length: number, kept = false): Promise<Buffer> =>
  readRangeInto(fh, position, kept ? Buffer.allocUnsafeSlow(length) : Buffer.allocUnsafe(length))

/** Reads the bytes at `position` at once, for the small reads of opening a log (see `readPointerNow`). */
export const readRangeNow = (fh: fs.FileHandle, position: number, length: number): Buffer => {
  const buf = Buffer.allocUnsafe(length)
  let done = 0
  while (done < length) {
    const bytesRead = fsSync.readSync(fh.fd, buf, done, length - done, position + done)
    if (bytesRead === 0) {
      throw new StorageError({ reason: "Corrupt", message: `unexpected end of file at byte ${position + done}` })
    }
    done += bytesRead
  }
  return buf
}

/** Fills `buf` with the bytes at `position`. */
export const readRangeInto = async (fh: fs.FileHandle, position: number, buf: Buffer): Promise<Buffer> => {
  const length = buf.length
  let done = 0
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, position + done)
    if (bytesRead === 0) {
      throw new StorageError({ reason: "Corrupt", message: `unexpected end of file at byte ${position + done}` })
    }
    done += bytesRead
  }
  return buf
}

/**
 * Writes all of `buf` at `position` of `fh` at once, on the event loop. Each asynchronous step of a commit waits for
 * a turn of the event loop, and in a catch-up a turn takes tens of milliseconds, while a write is as a rule a copy
 * into the page cache that takes far less: what waits on the disk is the fdatasync after it, which stays
 * asynchronous. The kernel may still make a write wait (dirty pages over its limit, a journal that is full), and
 * then the event loop waits with it.
 */
export const writeAtNow = (fh: fs.FileHandle, buf: Uint8Array, position: number): void => writeAllNow(fh.fd, buf, position)

const writeAllNow = (fd: number, buf: Uint8Array, position: number): void => {
  let done = 0
  while (done < buf.length) done += fsSync.writeSync(fd, buf, done, buf.length - done, position + done)
}

/** Writes all of `buf` at `position`. */
export const writeAt = async (fh: fs.FileHandle, buf: Uint8Array, position: number): Promise<void> => {
  let done = 0
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done)
    done += bytesWritten
  }
}

/** fsyncs a directory, so that files created or renamed in it survive a crash. */
export const syncDirectory = async (dir: string): Promise<void> => {
  const fh = await fs.open(dir, "r")
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/** Whether an error is a Node file system error with the given code. */
export const isErrno = (cause: unknown, code: string): boolean =>
  typeof cause === "object" && cause !== null && (cause as { code?: unknown }).code === code

/** Encodes closed chunks as consecutive chunk-index records. */
export const encodeChunks = (chunks: ReadonlyArray<ChunkEnd>): Buffer => {
  const buf = Buffer.allocUnsafe(chunks.length * CHUNK_RECORD_BYTES)
  let o = 0
  for (const c of chunks) {
    buf.writeBigUInt64LE(c.endOffset.tx, o)
    buf.writeDoubleLE(c.endOffset.op, o + 8)
    buf.writeDoubleLE(c.endPos, o + 16)
    buf.writeDoubleLE(c.endLine, o + 24)
    o += CHUNK_RECORD_BYTES
  }
  return buf
}

/** Decodes a chunk-index file's contents. */
export const decodeChunks = (buf: Buffer): Array<ChunkEnd> => {
  const out: Array<ChunkEnd> = []
  for (let o = 0; o + CHUNK_RECORD_BYTES <= buf.length; o += CHUNK_RECORD_BYTES) {
    out.push({
      endOffset: LogOffset.make(buf.readBigUInt64LE(o), buf.readDoubleLE(o + 8)),
      endPos: buf.readDoubleLE(o + 16),
      endLine: buf.readDoubleLE(o + 24)
    })
  }
  return out
}

/**
 * The commit pointer: what of a shape's files is durable. Everything past
 * these lengths is dropped on recovery.
 */
export interface CommitPointer {
  readonly snapshotComplete: boolean
  /** Byte size of each snapshot chunk file (meaningful once complete). */
  readonly snapshotChunkBytes: ReadonlyArray<number>
  /** The last durable log entry's offset; undefined while the log is empty. */
  readonly lastOffset: LogOffset | undefined
  readonly logBytes: number
  readonly indexBytes: number
  readonly chunkIndexBytes: number
}

const POINTER_VERSION = 1

const isLength = (u: unknown): u is number => typeof u === "number" && Number.isSafeInteger(u) && u >= 0

const corrupt = (dir: string, message: string) =>
  new StorageError({ reason: "Corrupt", handle: path.basename(dir), message })

/** Reads a shape's commit pointer; undefined when none was ever written. */
export const readPointer = async (dir: string): Promise<CommitPointer | undefined> => {
  let text: string
  try {
    text = await fs.readFile(path.join(dir, FileNames.pointer), "utf8")
  } catch (cause) {
    if (isErrno(cause, "ENOENT")) return undefined
    throw cause
  }
  return parsePointer(dir, text)
}

/**
 * `readPointer`, synchronously, for opening a log: the pointer is a few hundred bytes, read in microseconds, where
 * reading it asynchronously takes four steps (open, stat, read, close) that each wait for a turn of the event loop.
 * During a catch-up the reading of the slot takes most of every turn, and a log opened then (a consumer's first
 * transaction, a restored shape's first request) waits tens of milliseconds for it.
 */
export const readPointerNow = (dir: string): CommitPointer | undefined => {
  let text: string
  try {
    text = fsSync.readFileSync(path.join(dir, FileNames.pointer), "utf8")
  } catch (cause) {
    if (isErrno(cause, "ENOENT")) return undefined
    throw cause
  }
  return parsePointer(dir, text)
}

const parsePointer = (dir: string, text: string): CommitPointer => {
  let raw: Record<string, unknown>
  try {
    raw = JSON.parse(text) as Record<string, unknown>
  } catch {
    throw corrupt(dir, "commit pointer is not valid JSON")
  }
  const chunkBytes = raw["snapshotChunkBytes"]
  const last = raw["lastOffset"]
  const lastOffset = typeof last === "string" ? LogOffset.parse(last) : undefined
  if (
    raw["version"] !== POINTER_VERSION ||
    typeof raw["snapshotComplete"] !== "boolean" ||
    !Array.isArray(chunkBytes) || !chunkBytes.every(isLength) ||
    !(last === null || (lastOffset !== undefined && LogOffset.isReal(lastOffset))) ||
    !isLength(raw["logBytes"]) || !isLength(raw["indexBytes"]) || !isLength(raw["chunkIndexBytes"]) ||
    raw["indexBytes"] % INDEX_RECORD_BYTES !== 0 || raw["chunkIndexBytes"] % CHUNK_RECORD_BYTES !== 0
  ) {
    throw corrupt(dir, "commit pointer has an unexpected form")
  }
  return {
    snapshotComplete: raw["snapshotComplete"],
    snapshotChunkBytes: chunkBytes as Array<number>,
    lastOffset,
    logBytes: raw["logBytes"],
    indexBytes: raw["indexBytes"],
    chunkIndexBytes: raw["chunkIndexBytes"]
  }
}

const pointerText = (pointer: CommitPointer): string =>
  JSON.stringify({
    version: POINTER_VERSION,
    snapshotComplete: pointer.snapshotComplete,
    snapshotChunkBytes: pointer.snapshotChunkBytes,
    lastOffset: pointer.lastOffset === undefined ? null : LogOffset.format(pointer.lastOffset),
    logBytes: pointer.logBytes,
    indexBytes: pointer.indexBytes,
    chunkIndexBytes: pointer.chunkIndexBytes
  })

/**
 * Writes and fdatasyncs the next commit pointer under its temporary name, where recovery never reads it: it may
 * run while the data it covers is still being synced. `publishPointer` then makes it the commit pointer. The file is
 * created and written at once, like a commit's data (`writeAtNow`); only its fdatasync waits for the disk.
 */
export const stagePointer = async (dir: string, pointer: CommitPointer): Promise<void> => {
  const fd = fsSync.openSync(path.join(dir, FileNames.pointerTemp), "w")
  try {
    writeAllNow(fd, Buffer.from(pointerText(pointer), "utf8"), 0)
    await new Promise<void>((resolve, reject) => fsSync.fdatasync(fd, (error) => (error === null ? resolve() : reject(error))))
  } finally {
    fsSync.closeSync(fd)
  }
}

/**
 * Renames the staged pointer over the commit pointer and fsyncs the directory, through `directory`, a descriptor the
 * log holds on it. Only once everything the pointer covers is durable: the rename may reach the disk with any later
 * journal commit, before the directory's fsync. The rename, as a rule a change to the directory in memory, is made at
 * once (see `writeAtNow`).
 */
export const publishPointer = async (dir: string, directory: fs.FileHandle): Promise<void> => {
  fsSync.renameSync(path.join(dir, FileNames.pointerTemp), path.join(dir, FileNames.pointer))
  await directory.sync()
}
