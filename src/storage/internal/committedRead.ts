import * as fs from "node:fs/promises"
import * as path from "node:path"
import { LogOffset } from "../../domain/LogOffset.js"
import { StorageError } from "../../domain/errors.js"
import type { LogRead } from "../ShapeLogStorage.js"
import { type ChunkEnd, FileNames, INDEX_RECORD_BYTES, isErrno, readRange, readRangeInto } from "./files.js"

/** Below this many candidate lines the index search reads them all in one go. */
const SEARCH_BLOCK_LINES = 256
const NEWLINE = 0x0a
const COMMA = 0x2c

const EMPTY = new Uint8Array(0)

/** Where a commit ended in the log: lets a reader resuming at that offset skip the index search. */
export interface CommitEnd {
  readonly offset: LogOffset
  readonly lines: number
  readonly pos: number
}

/**
 * The committed part of a shape's log, as one read sees it: the lengths come
 * from a commit pointer (in memory for the owner, on disk for a read-only
 * reader), so bytes past them, appended but not committed, are never read.
 */
export interface CommittedLog {
  readonly handle: string
  readonly lines: number
  readonly logBytes: number
  readonly lastOffset: LogOffset | undefined
  /** Closed chunks in order; only the first `chunkCount` are covered by the commit. */
  readonly closedChunks: ReadonlyArray<ChunkEnd>
  readonly chunkCount: number
  readonly recent: ReadonlyArray<CommitEnd>
  readonly log: fs.FileHandle
  readonly index: fs.FileHandle
}

/**
 * Which snapshot chunk a read after `from` serves, or undefined when it reads
 * the log. `-1` starts at chunk 0; `0_n` moves to chunk `n + 1` while there is one.
 */
export const snapshotChunkAfter = (from: LogOffset, chunkCount: number): number | undefined => {
  if (LogOffset.isBeforeAll(from)) return 0
  if (LogOffset.isVirtual(from) && from.op !== Infinity && from.op + 1 < chunkCount) return from.op + 1
  return undefined
}

/**
 * The pieces a streamed read yields are at most this long: what one streamed
 * response holds stays about two pieces (one in its socket, one read ahead)
 * whatever the chunk size. A body of many megabytes (an initial sync) costs a
 * read and a socket write per piece: pieces this large keep those turns small
 * beside the bytes they carry.
 */
export const PIECE_BYTES = 256 * 1024

/**
 * A body of at most this many bytes is read whole instead of streamed: the
 * small bodies of long-polls and of catch-up chunks cost one read and no
 * descriptor of their own, and requests reading the same bytes share them.
 */
export const WHOLE_BYTES = 256 * 1024

/**
 * The committed bytes a read serves: whole lines `[start, end)` of one file of
 * the shape's directory, each ending in `\n`.
 */
export interface ReadSpan {
  /** The file's name inside the shape's directory. */
  readonly file: string
  readonly start: number
  readonly end: number
  /** Lines in the span; undefined for a snapshot chunk, whose lines are only counted by reading them. */
  readonly count: number | undefined
  readonly nextOffset: LogOffset
  readonly reachedEnd: boolean
}

/** The body's length: the span without its last newline. */
export const bodyLength = (span: ReadSpan): number => (span.end > span.start ? span.end - span.start - 1 : 0)

/**
 * Snapshot chunk `n` (its first `size` bytes). Snapshot chunk reads never
 * report `reachedEnd`: their next offset `0_n` lies below `0_inf`, so the
 * client always asks once more and meets the log.
 */
export const snapshotSpan = (n: number, size: number): ReadSpan => ({
  file: FileNames.snapshot(n),
  start: 0,
  end: size,
  count: size === 0 ? 0 : undefined,
  nextOffset: LogOffset.make(0n, n),
  reachedEnd: false
})

/**
 * How a read joins its lines: `array` with commas, to be served inside `[` `]`
 * (long-polls and catch-up); `lines` with newlines, one message per line (SSE
 * events).
 */
export type BodyFormat = "array" | "lines"

/** Counts the newlines of `buf`, turning each into a comma for the `array` format. */
const joinLines = (buf: Buffer, format: BodyFormat): number => {
  if (format === "lines") {
    let lines = 0
    for (let i = buf.indexOf(NEWLINE); i !== -1; i = buf.indexOf(NEWLINE, i + 1)) lines++
    return lines
  }
  return newlinesToCommas(buf)
}

/** Turns every newline of `buf` into a comma; returns how many there were. */
const newlinesToCommas = (buf: Buffer): number => {
  let count = 0
  let i = buf.indexOf(NEWLINE)
  while (i !== -1) {
    buf[i] = COMMA
    count++
    i = buf.indexOf(NEWLINE, i + 1)
  }
  return count
}

/** Reads a whole span from `fh` as one body: its lines joined as `format` says. */
export const readSpan = async (fh: fs.FileHandle, span: ReadSpan, format: BodyFormat = "array"): Promise<LogRead> => {
  if (span.end === span.start) return { body: EMPTY, count: 0, nextOffset: span.nextOffset, reachedEnd: span.reachedEnd }
  return joinedRead(await readRange(fh, span.start, span.end - span.start, true), span, format)
}

/** The read of a span whose bytes, its last newline included, are `buf`: its lines are joined in place. */
export const joinedRead = (buf: Buffer, span: ReadSpan, format: BodyFormat): LogRead => {
  const lines = joinLines(buf, format)
  return { body: buf.subarray(0, buf.length - 1), count: span.count ?? lines, nextOffset: span.nextOffset, reachedEnd: span.reachedEnd }
}

/**
 * The piece of a span's body that starts `at` bytes into the body: at most
 * `PIECE_BYTES`, its lines joined as `format` says. The span's last newline is
 * not part of the body and is never read. The piece is read into the start of
 * `into` when it is given (at least `PIECE_BYTES` long), else into a buffer
 * of its own.
 */
export const readPiece = async (
  fh: fs.FileHandle,
  span: ReadSpan,
  at: number,
  format: BodyFormat = "array",
  into?: Buffer
): Promise<Buffer> => {
  const length = Math.min(PIECE_BYTES, bodyLength(span) - at)
  const position = span.start + at
  const buf = into === undefined ? await readRange(fh, position, length) : await readRangeInto(fh, position, into.subarray(0, length))
  if (format === "array") newlinesToCommas(buf)
  return buf
}

/**
 * Opens a span's file for reading, checking it still holds the span: a file
 * that is missing or shorter than its commit pointer says is damage
 * ("Corrupt"), found before any byte of a response is sent.
 */
const openSpanFile = async (dir: string, span: ReadSpan): Promise<fs.FileHandle> => {
  const corrupt = (message: string) => new StorageError({ reason: "Corrupt", handle: path.basename(dir), message })
  let fh: fs.FileHandle
  try {
    fh = await fs.open(path.join(dir, span.file), "r")
  } catch (cause) {
    if (isErrno(cause, "ENOENT") && (await directoryExists(dir))) throw corrupt(`${span.file} is missing`)
    throw cause
  }
  try {
    if ((await fh.stat()).size < span.end) throw corrupt(`${span.file} is shorter than its commit pointer says`)
    return fh
  } catch (cause) {
    await fh.close().catch(() => undefined)
    throw cause
  }
}

const directoryExists = (dir: string): Promise<boolean> =>
  fs.stat(dir).then((s) => s.isDirectory(), () => false)

/** Reads a whole span from the named file, opened for this read only. */
const readSpanOfFile = async (dir: string, span: ReadSpan, format: BodyFormat = "array"): Promise<LogRead> => {
  if (span.end === span.start) {
    return { body: EMPTY, count: 0, nextOffset: span.nextOffset, reachedEnd: span.reachedEnd }
  }
  const fh = await openSpanFile(dir, span)
  try {
    return await readSpan(fh, span, format)
  } finally {
    await fh.close()
  }
}

/** Serves snapshot chunk `n` (its first `size` bytes) whole. */
export const readSnapshotChunk = (dir: string, n: number, size: number): Promise<LogRead> =>
  readSpanOfFile(dir, snapshotSpan(n, size))

/**
 * A read prepared for streaming: a body of at most one piece is already read
 * (or, of what recent commits wrote, a body of any size, from memory); a
 * larger one has a read-only descriptor of its own on the span's file, so a
 * slow consumer never keeps the owner's handles busy, and a removal (the
 * directory renamed away) leaves the open file readable.
 */
export type OpenedSpan =
  | {
    readonly _tag: "Whole"
    readonly read: LogRead
    /** The bytes never change: a snapshot chunk or a closed log chunk (not the log's end) of the owner's log. */
    readonly settled?: boolean
  }
  | { readonly _tag: "Open"; readonly span: ReadSpan; readonly fh: fs.FileHandle }

/**
 * Prepares `span` for streaming in `format`; a small body is read through `shared` when it is given (an open
 * handle on the span's file).
 */
export const openSpan = async (
  dir: string,
  span: ReadSpan,
  shared: fs.FileHandle | undefined,
  format: BodyFormat
): Promise<OpenedSpan> => {
  if (bodyLength(span) > WHOLE_BYTES) return { _tag: "Open", span, fh: await openSpanFile(dir, span) }
  const read = shared === undefined ? await readSpanOfFile(dir, span, format) : await readSpan(shared, span, format)
  return { _tag: "Whole", read }
}

/**
 * Where a read of the log after `from` (exclusive) lies: to the end of the
 * chunk that holds the next entry, within the committed lengths only. The
 * snapshot is complete.
 */
export const logSpan = async (c: CommittedLog, from: LogOffset): Promise<ReadSpan> => {
  const last = c.lastOffset
  if (last === undefined || LogOffset.lte(last, from)) {
    return {
      file: FileNames.log,
      start: c.logBytes,
      end: c.logBytes,
      count: 0,
      nextOffset: LogOffset.max(from, last ?? LogOffset.lastBeforeReal),
      reachedEnd: true
    }
  }

  // the first chunk whose end lies past `from`; the open chunk when none does
  let lo = 0
  let hi = c.chunkCount
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (LogOffset.gt(c.closedChunks[mid]!.endOffset, from)) hi = mid
    else lo = mid + 1
  }
  const k = lo
  const previous = k > 0 ? c.closedChunks[k - 1] : undefined
  const chunkStartLine = previous?.endLine ?? 0
  const chunkStartPos = previous?.endPos ?? 0
  const chunk = k < c.chunkCount ? c.closedChunks[k]! : undefined
  const endLine = chunk?.endLine ?? c.lines
  const endPos = chunk?.endPos ?? c.logBytes
  const nextOffset = chunk?.endOffset ?? last

  let startLine: number
  let startPos: number
  const resume = c.recent.find((r) => LogOffset.equals(r.offset, from))
  if (
    (previous !== undefined && LogOffset.equals(previous.endOffset, from)) ||
    (previous === undefined && !LogOffset.isReal(from))
  ) {
    startLine = chunkStartLine
    startPos = chunkStartPos
  } else if (resume !== undefined && resume.lines >= chunkStartLine && resume.lines < endLine) {
    startLine = resume.lines
    startPos = resume.pos
  } else {
    ;[startLine, startPos] = await search(c, chunkStartLine, endLine, chunkStartPos, from)
  }
  return {
    file: FileNames.log,
    start: startPos,
    end: endPos,
    count: endLine - startLine,
    nextOffset,
    reachedEnd: endLine === c.lines
  }
}

/** Reads the log after `from` (exclusive) whole; see `logSpan`. */
export const readCommittedLog = async (c: CommittedLog, from: LogOffset): Promise<LogRead> =>
  readSpan(c.log, await logSpan(c, from))

/**
 * Finds the first line in `[lo, hi)` whose offset is above `from` (one
 * exists: the chunk ends past `from`), and the byte position where it starts.
 */
const search = async (
  c: CommittedLog,
  lo: number,
  hi: number,
  chunkStartPos: number,
  from: LogOffset
): Promise<[number, number]> => {
  const base = lo
  const probe = Buffer.allocUnsafe(INDEX_RECORD_BYTES)
  while (hi - lo > SEARCH_BLOCK_LINES) {
    const mid = (lo + hi) >>> 1
    const { bytesRead } = await c.index.read(probe, 0, INDEX_RECORD_BYTES, mid * INDEX_RECORD_BYTES)
    if (bytesRead !== INDEX_RECORD_BYTES) {
      throw new StorageError({ reason: "Corrupt", handle: c.handle, message: "the offset index is truncated" })
    }
    if (recordAbove(probe, 0, from)) hi = mid + 1
    else lo = mid + 1
  }
  const first = lo > base ? lo - 1 : lo
  const block = await readRange(c.index, first * INDEX_RECORD_BYTES, (hi - first) * INDEX_RECORD_BYTES)
  for (let line = lo; line < hi; line++) {
    if (recordAbove(block, (line - first) * INDEX_RECORD_BYTES, from)) {
      const pos = line === base ? chunkStartPos : block.readDoubleLE((line - 1 - first) * INDEX_RECORD_BYTES + 16)
      return [line, pos]
    }
  }
  throw new StorageError({ reason: "Corrupt", handle: c.handle, message: "the offset index is out of order" })
}

const recordAbove = (buf: Buffer, at: number, from: LogOffset): boolean => {
  const tx = buf.readBigUInt64LE(at)
  return tx !== from.tx ? tx > from.tx : buf.readDoubleLE(at + 8) > from.op
}
