import { LogOffset } from "../domain/LogOffset.js"

const NEWLINE = 0x0a
const NO_BYTES = Buffer.alloc(0)
/** The smallest buffer a first line gets: most batches of a live shape are one small transaction, and a buffer this small comes from Node's shared pool. */
const FIRST_BYTES = 2048
/** Above this many UTF-16 units a line's UTF-8 length is measured rather than bounded. */
const LONG_LINE = 64 * 1024

/**
 * Log lines as a shape log stores them, UTF-8 and each ended by a newline, with the offset of each: what a
 * consumer encodes a batch into, and what an append copies as it is.
 *
 * A line's text becomes bytes as soon as it is made. The strings are then garbage while still young, instead of
 * living until the commit that writes them: in a catch-up that commit is a round of fsyncs away, so every line
 * used to survive into the old generation before it was dropped, and collecting them was a quarter of the time.
 */
export class LogLines {
  private bytes: Buffer = NO_BYTES
  private byteCount = 0
  /** Where the room `reserve` made for the line being written ends; -1 when no line is being written. */
  private reservedEnd = -1
  private readonly txs: Array<bigint> = []
  private readonly ops: Array<number> = []
  /** The byte position after each line's newline. */
  private readonly ends: Array<number> = []

  /** Lines from complete JSON messages (no newline), as an append of `LogEntry`s takes them. */
  static of(entries: ReadonlyArray<{ readonly offset: LogOffset; readonly json: string }>): LogLines {
    const lines = new LogLines()
    for (const { offset, json } of entries) lines.push(offset.tx, offset.op, json)
    return lines
  }

  /** How many lines there are. */
  get count(): number {
    return this.ends.length
  }

  /** How many bytes they take, newlines included. */
  get byteLength(): number {
    return this.byteCount
  }

  /** Adds one complete JSON message (no newline) at offset `tx`/`op`, above every line before it. */
  push(tx: bigint, op: number, json: string): void {
    // A UTF-16 code unit is at most 3 bytes of UTF-8 (a surrogate pair, two units, is 4); a long line is measured
    // instead, so that one large value does not reserve three times its size.
    const most = this.byteCount + (json.length > LONG_LINE ? Buffer.byteLength(json, "utf8") : json.length * 3) + 1
    if (most > this.bytes.length) this.grow(most)
    this.addLine(tx, op, this.byteCount + this.bytes.write(json, this.byteCount, "utf8"))
  }

  /**
   * Makes room for one more line of at most `maxBytes` bytes, its newline not counted, and returns where it starts in
   * `buffer`: the line's bytes are written there, then `endLine` adds it. What `buffer` was before may be replaced.
   */
  reserve(maxBytes: number): number {
    const most = this.byteCount + maxBytes + 1
    if (most > this.bytes.length) this.grow(most)
    this.reservedEnd = this.byteCount + maxBytes
    return this.byteCount
  }

  /** The bytes lines are written into (see `reserve`). */
  get buffer(): Buffer {
    return this.bytes
  }

  /** Adds the line written into `buffer` from `reserve`'s position to `end` (a complete JSON message) at offset `tx`/`op`. */
  endLine(tx: bigint, op: number, end: number): void {
    // Past the room made, the bytes written beyond the buffer's end were dropped (a typed array ignores writes out of
    // its range; a run `writeBytes` copies whole throws there instead): the line is not what was meant, and must not
    // be stored.
    if (end > this.reservedEnd) throw new Error(`a log line of ${end - this.byteCount} bytes was written where ${this.reservedEnd - this.byteCount} were made room for`)
    this.reservedEnd = -1
    this.addLine(tx, op, end)
  }

  /** Ends the line whose bytes run from the end of the last one to `end` with its newline, and records it. */
  private addLine(tx: bigint, op: number, end: number): void {
    this.bytes[end] = NEWLINE
    this.byteCount = end + 1
    this.txs.push(tx)
    this.ops.push(op)
    this.ends.push(this.byteCount)
  }

  /** Replaces the last `drop` bytes of the last line (before its newline) by `add`. */
  replaceLastTail(drop: number, add: Uint8Array): void {
    const at = this.byteCount - 1 - drop
    const most = at + add.length + 1
    if (most > this.bytes.length) this.grow(most)
    this.bytes.set(add, at)
    this.bytes[at + add.length] = NEWLINE
    this.byteCount = at + add.length + 1
    this.ends[this.ends.length - 1] = this.byteCount
  }

  txAt(i: number): bigint {
    return this.txs[i]!
  }

  opAt(i: number): number {
    return this.ops[i]!
  }

  offsetAt(i: number): LogOffset {
    return LogOffset.make(this.txs[i]!, this.ops[i]!)
  }

  /** Where line `i` starts in the bytes. */
  startAt(i: number): number {
    return i === 0 ? 0 : this.ends[i - 1]!
  }

  /** Where line `i` ends in the bytes, after its newline. */
  endAt(i: number): number {
    return this.ends[i]!
  }

  /** The bytes from `start` to the end, without copying. */
  bytesFrom(start: number): Buffer {
    return this.bytes.subarray(start, this.byteCount)
  }

  /** The JSON messages of the lines from `i` on, read back from the bytes. */
  textsFrom(i: number): Array<string> {
    const texts: Array<string> = []
    for (let j = i; j < this.ends.length; j++) texts.push(this.bytes.toString("utf8", this.startAt(j), this.ends[j]! - 1))
    return texts
  }

  private grow(needed: number): void {
    const grown = Buffer.allocUnsafe(Math.max(needed, this.bytes.length * 2, FIRST_BYTES))
    this.bytes.copy(grown, 0, 0, this.byteCount)
    this.bytes = grown
  }
}
