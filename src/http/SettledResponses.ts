import type { Shape } from "../shapes/Shape.js"
import type { HeaderRecord } from "./ResponseHeaders.js"

/** A catch-up response that never changes: its bytes and every header but the CORS ones. */
export interface SettledResponse {
  readonly shape: Shape
  readonly headers: HeaderRecord
  readonly etag: string
  readonly body: Uint8Array
}

/** What an entry costs besides its body. */
const ENTRY_BYTES = 512

/**
 * The catch-up responses of one stack whose bytes never change (a snapshot
 * chunk, a closed log chunk), by the request's URL: the next request for the
 * same URL is answered from here while its shape lives, without resolving its
 * definition or reading its log again. Catch-up clients and the caches in
 * front of them ask for the same chunks over and over. Least recently used
 * responses go first once the bodies held pass `maxBytes`.
 */
export class SettledResponses {
  private readonly entries = new Map<string, SettledResponse>()
  private bytes = 0
  /** The URLs asked for (or answered) since the last `sweep`. */
  private used = new Set<string>()

  constructor(private readonly maxBytes: number) {}

  get(url: string): SettledResponse | undefined {
    const entry = this.entries.get(url)
    if (entry === undefined) return undefined
    this.entries.delete(url)
    this.entries.set(url, entry)
    this.used.add(url)
    return entry
  }

  set(url: string, entry: SettledResponse): void {
    this.delete(url)
    this.entries.set(url, entry)
    this.used.add(url)
    this.bytes += entry.body.length + ENTRY_BYTES
    for (const [key, old] of this.entries) {
      if (this.bytes <= this.maxBytes) break
      this.entries.delete(key)
      this.bytes -= old.body.length + ENTRY_BYTES
    }
  }

  /**
   * Forgets the responses no one asked for since the previous sweep: what catch-up clients go through again and
   * again stays, and a response asked for once (the first one of each new shape) is not kept for good.
   */
  sweep(): void {
    for (const url of this.entries.keys()) if (!this.used.has(url)) this.delete(url)
    this.used = new Set()
  }

  /** Forgets a response whose shape is gone. */
  delete(url: string): void {
    const entry = this.entries.get(url)
    if (entry === undefined) return
    this.entries.delete(url)
    this.bytes -= entry.body.length + ENTRY_BYTES
  }
}
