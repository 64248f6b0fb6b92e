import { type BodyFormat, joinedRead, type OpenedSpan, type ReadSpan, WHOLE_BYTES } from "./committedRead.js"

/**
 * How long the bytes of a log's commits stay in memory after its last commit. A client following a busy log
 * (a catch-up after a restart) asks for the next bytes as soon as it has the last: read from a file, a body of a
 * few megabytes costs a turn of the event loop for its opening and one for each of its pieces, and in a catch-up
 * each turn waits behind the reading of the slot.
 */
export const RECENT_KEEP_MS = 1_000
/** The most one log keeps of its recent commits. */
export const RECENT_LOG_BYTES = 8 * 1024 * 1024
/** The most the logs of one storage keep of their recent commits, together. */
export const RECENT_STORAGE_BYTES = 64 * 1024 * 1024

/** What the logs of one storage hold of their recent commits, together. */
export class RecentBudget {
  used = 0
  constructor(readonly maxBytes: number = RECENT_STORAGE_BYTES) {}
}

/** The memory a commit's bytes hold: the whole buffer they lie in. */
const heldBy = (data: Buffer): number => data.buffer.byteLength

/** A commit's bytes as they are kept: a commit of a few lines lies in a buffer made for many, and is copied out of it. */
const keptOf = (data: Buffer): Buffer => {
  if (heldBy(data) <= 2 * data.length) return data
  const own = Buffer.allocUnsafeSlow(data.length)
  data.copy(own)
  return own
}

/**
 * The bytes recent commits of one log wrote, `[start, start + length)` of the log, in the commits' own buffers:
 * what the reads after them are served from, with one copy and no file. The newest commit's bytes are kept until
 * the next check phase whatever their size, so that the requests its commit wakes read them alike; older ones while
 * the log and its storage stay within their bounds, and until `RECENT_KEEP_MS` passes with no commit.
 */
export class RecentCommits {
  private start = 0
  private length = 0
  private readonly parts: Array<Buffer> = []
  private held = 0
  /**
   * The reads made since the last commit, by format and span: requests reading alike (the ones a commit wakes)
   * share one body. The first read's body whatever its size, then up to `RECENT_LOG_BYTES` of bodies in all.
   */
  private reads: Map<string, OpenedSpan> | undefined = undefined
  private readBytes = 0
  private timer: NodeJS.Timeout | undefined = undefined
  /** Set when the newest bytes are over the bounds: they go at the next check phase. */
  private dropping: NodeJS.Immediate | undefined = undefined

  constructor(private readonly budget: RecentBudget) {}

  /** The bytes a commit wrote, `written`, at byte `start` of the log; they must never change. */
  add(start: number, written: Buffer): void {
    if (written.length === 0) return
    const data = keptOf(written)
    if (this.parts.length > 0 && start !== this.start + this.length) this.clear()
    if (this.parts.length === 0) this.start = start
    this.parts.push(data)
    this.length += data.length
    const cost = heldBy(data)
    this.held += cost
    this.budget.used += cost
    this.reads = undefined
    this.readBytes = 0
    while (this.parts.length > 1 && this.overBounds()) this.dropOldest()
    if (this.dropping !== undefined) {
      clearImmediate(this.dropping)
      this.dropping = undefined
    }
    if (this.overBounds()) {
      this.dropping = setImmediate(() => {
        this.dropping = undefined
        this.clear()
      })
    }
    if (this.timer === undefined) {
      this.timer = setTimeout(() => {
        this.timer = undefined
        this.clear()
      }, RECENT_KEEP_MS)
      this.timer.unref()
    } else {
      this.timer.refresh()
    }
  }

  /**
   * The read of `span` as `format` joins it, when all of its bytes are here: one copy of them, shared. Undefined
   * when a body larger than `WHOLE_BYTES` could not be shared (see `reads`): it is streamed from the file instead,
   * a piece at a time, rather than held whole for one response.
   */
  read(span: ReadSpan, format: BodyFormat): OpenedSpan | undefined {
    if (span.end === span.start || span.start < this.start || span.end > this.start + this.length) return undefined
    const key = `${format} ${span.start} ${span.end}`
    const reads = this.reads ??= new Map()
    let opened = reads.get(key)
    if (opened === undefined) {
      const length = span.end - span.start
      const shared = this.readBytes === 0 || this.readBytes + length <= RECENT_LOG_BYTES
      if (!shared && length > WHOLE_BYTES) return undefined
      // Memory of its own: a small body kept by the read cache must not hold the commits' buffers.
      const buf = Buffer.allocUnsafeSlow(length)
      let partStart = this.start
      let written = 0
      for (const part of this.parts) {
        const partEnd = partStart + part.length
        if (partEnd > span.start && partStart < span.end) {
          const from = Math.max(span.start, partStart) - partStart
          const to = Math.min(span.end, partEnd) - partStart
          written += part.copy(buf, written, from, to)
        }
        partStart = partEnd
      }
      opened = { _tag: "Whole", read: joinedRead(buf, span, format) }
      if (shared) {
        reads.set(key, opened)
        this.readBytes += length
      }
    }
    return opened
  }

  /** Lets go of every byte kept. */
  clear(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer)
      this.timer = undefined
    }
    if (this.dropping !== undefined) {
      clearImmediate(this.dropping)
      this.dropping = undefined
    }
    this.budget.used -= this.held
    this.held = 0
    this.parts.length = 0
    this.start += this.length
    this.length = 0
    this.reads = undefined
    this.readBytes = 0
  }

  /** Whether this log, or its storage's logs together, keep more than they may. */
  private overBounds(): boolean {
    return this.held > RECENT_LOG_BYTES || this.budget.used > this.budget.maxBytes
  }

  private dropOldest(): void {
    const oldest = this.parts.shift()!
    const cost = heldBy(oldest)
    this.held -= cost
    this.budget.used -= cost
    this.start += oldest.length
    this.length -= oldest.length
  }
}
