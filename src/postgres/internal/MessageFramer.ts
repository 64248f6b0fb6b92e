import { uint32 } from "./BigEndian.js"

/** A backend message's type byte and length word: where its payload starts. */
export const HEADER_BYTES = 5

/** Where the message starting at `pos` ends: its length word counts itself, not its type byte. */
const messageEnd = (buf: Buffer, pos: number): number => {
  const length = uint32(buf, pos + 1)
  if (length < 4) throw new Error(`backend message ${String.fromCharCode(buf[pos]!)} of impossible length ${length}`)
  return pos + 1 + length
}

/**
 * Takes a connection's socket chunks apart into whole backend messages, for a reader that has the socket to itself
 * for a while (a COPY, a replication stream). A message is handed over where it lies in its chunk, with no copy or
 * object of its own; one split across chunks is gathered into a buffer first.
 */
export class MessageFramer {
  /** A message split across chunks: its bytes so far (type and length first), and how many there are. */
  private partial: Buffer | undefined = undefined
  private partialUsed = 0

  /**
   * Hands each whole message of `chunk`, `data[start, end)` from its type byte on, to `onMessage` until it returns
   * true. Returns where the unread rest of the chunk starts: `chunk.length` when every byte was taken (a message
   * still incomplete is kept for the next chunk). Throws on an impossible message length.
   */
  feed(chunk: Buffer, onMessage: (data: Buffer, start: number, end: number) => boolean): number {
    let pos = 0
    const partial = this.partial
    if (partial !== undefined) {
      pos = this.fill(partial, chunk)
      const whole = this.partial!
      if (this.partialUsed < whole.length) return pos
      this.partial = undefined
      this.partialUsed = 0
      if (onMessage(whole, 0, whole.length)) return pos
    }
    const length = chunk.length
    while (pos < length) {
      if (length - pos < HEADER_BYTES) return this.keep(chunk, pos)
      const end = messageEnd(chunk, pos)
      if (end > length) return this.keep(chunk, pos)
      if (onMessage(chunk, pos, end)) return end
      pos = end
    }
    return pos
  }

  /** Starts a split message with the rest of `chunk` from `pos`; the whole chunk is taken. */
  private keep(chunk: Buffer, pos: number): number {
    const size = chunk.length - pos >= HEADER_BYTES ? messageEnd(chunk, pos) - pos : HEADER_BYTES
    this.partial = Buffer.allocUnsafe(size)
    this.partialUsed = chunk.copy(this.partial, 0, pos)
    return chunk.length
  }

  /** Adds the start of `chunk` to the split message `partial` (grown once its length is known); where the chunk's next message starts. */
  private fill(partial: Buffer, chunk: Buffer): number {
    let pos = 0
    if (this.partialUsed < HEADER_BYTES) {
      // Only the start of the header was there: now its length is known.
      pos = chunk.copy(partial, this.partialUsed, 0, HEADER_BYTES - this.partialUsed)
      this.partialUsed += pos
      if (this.partialUsed < HEADER_BYTES) return pos
      const grown = Buffer.allocUnsafe(messageEnd(partial, 0))
      partial.copy(grown, 0, 0, HEADER_BYTES)
      partial = grown
      this.partial = grown
    }
    const copied = chunk.copy(partial, this.partialUsed, pos, pos + partial.length - this.partialUsed)
    this.partialUsed += copied
    return pos + copied
  }
}
