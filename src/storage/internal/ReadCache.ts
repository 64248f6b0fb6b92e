import type { OpenedSpan } from "./committedRead.js"

/** A read as the cache holds it: `settled` when its bytes never change (a later commit reads them alike). */
export interface SharedRead {
  readonly opened: OpenedSpan
  readonly settled: boolean
}

interface Entry {
  readonly read: Promise<SharedRead>
  bytes: number
  /** Read since the last `sweep`. */
  used: boolean
}

/** What an entry costs besides its body, so that empty reads are bounded too. */
const ENTRY_BYTES = 128

/**
 * Reads of shape logs that many requests ask for alike, shared by every log of
 * one storage: the requests a commit wakes all read after the same offset, and
 * catch-up clients read the same closed chunks. A key names a log, its
 * committed state (or "settled" for bytes that never change: snapshot chunks,
 * closed log chunks) and the read. The read is shared while it is in flight,
 * so a thousand woken requests read the file once. Least recently used entries
 * go first once the bodies held pass `maxBytes`; only whole bodies (at most
 * `WHOLE_BYTES`) are held, a streamed read is never shared.
 */
export class ReadCache {
  private readonly entries = new Map<string, Entry>()
  private bytes = 0

  constructor(private readonly maxBytes: number) {}

  get(key: string): Promise<SharedRead> | undefined {
    const entry = this.entries.get(key)
    if (entry === undefined) return undefined
    // Map order is insertion order: the entry moves to the young end.
    this.entries.delete(key)
    this.entries.set(key, entry)
    entry.used = true
    return entry.read
  }

  /**
   * Shares `read` under `key` while it runs. Once done, a whole body stays;
   * a settled one moves to `settledKey`, where later committed states find it.
   */
  share(key: string, read: Promise<SharedRead>, settledKey: string): Promise<SharedRead> {
    const entry: Entry = { read, bytes: 0, used: true }
    this.entries.set(key, entry)
    read.then(
      ({ opened, settled }) => {
        if (this.entries.get(key) !== entry) return
        if (opened._tag !== "Whole") {
          this.entries.delete(key)
          return
        }
        entry.bytes = opened.read.body.length + ENTRY_BYTES
        if (settled) {
          this.entries.delete(key)
          if (this.entries.has(settledKey)) return
          this.entries.set(settledKey, entry)
        }
        this.bytes += entry.bytes
        this.evict()
      },
      () => {
        if (this.entries.get(key) === entry) this.entries.delete(key)
      }
    )
    return read
  }

  /**
   * Drops the bodies no request read since the previous sweep: they are shared by requests that come together
   * (the ones a commit wakes, catch-up clients going through the same chunks), and one no one asked for over a
   * whole period is read again from its file if it is asked for later.
   */
  sweep(): void {
    for (const [key, entry] of this.entries) {
      // A read in flight holds nothing yet, and requests may be waiting to share it.
      if (entry.bytes === 0) continue
      if (entry.used) entry.used = false
      else {
        this.entries.delete(key)
        this.bytes -= entry.bytes
      }
    }
  }

  private evict(): void {
    for (const [key, entry] of this.entries) {
      if (this.bytes <= this.maxBytes) return
      // A read in flight holds nothing yet, and requests may be waiting to share it.
      if (entry.bytes === 0) continue
      this.entries.delete(key)
      this.bytes -= entry.bytes
    }
  }
}
