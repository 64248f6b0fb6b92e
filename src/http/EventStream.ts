import { LogOffset } from "../domain/LogOffset.js"
import { upToDateMessage } from "./ResponseHeaders.js"

/**
 * The bytes of a live SSE response (`text/event-stream`): one `data: <message>`
 * event per message, control messages included, and comment lines to keep a
 * quiet stream open.
 */

const NEWLINE = 0x0a
const DATA = Buffer.from("data: ")
const EVENT_END = Buffer.from("\n\n")
const BETWEEN = Buffer.from("\n\ndata: ")

/** The comment an idle stream sends so that proxies and the client see it alive. */
export const KEEP_ALIVE = Buffer.from(": keep-alive\n\n")

/**
 * A piece of a log read in the `lines` format (messages separated by
 * newlines) as events: every newline ends one event and starts the next. The
 * first piece of a read opens the first event, and `EVENT_END` closes the last
 * once the read is over; the messages themselves are copied as stored.
 */
export const eventsOfPiece = (piece: Uint8Array, first: boolean): Uint8Array => {
  let newlines = 0
  for (let i = piece.indexOf(NEWLINE); i !== -1; i = piece.indexOf(NEWLINE, i + 1)) newlines++
  if (newlines === 0 && !first) return piece
  const out = Buffer.allocUnsafe(piece.length + newlines * (BETWEEN.length - 1) + (first ? DATA.length : 0))
  let o = 0
  if (first) o += DATA.copy(out, 0)
  let from = 0
  for (let i = piece.indexOf(NEWLINE); i !== -1; i = piece.indexOf(NEWLINE, i + 1)) {
    out.set(piece.subarray(from, i), o)
    o += i - from
    o += BETWEEN.copy(out, o)
    from = i + 1
  }
  out.set(piece.subarray(from), o)
  return out
}

/** What closes the last event of a read. */
export const LAST_EVENT_END: Uint8Array = EVENT_END

/**
 * The commit LSN an SSE up-to-date reports after the client has received
 * everything up to `position` (the end of a transaction). The client resumes
 * at `<lsn>_0` (protocol.md §8.5), so this is the least LSN whose `_0` offset
 * is not below `position`: reading after that offset repeats nothing and
 * skips nothing, since the next transaction's commit LSN lies past it.
 */
export const resumeLsn = (position: LogOffset): bigint =>
  position.tx === 0n ? 1n : position.op === 0 ? position.tx : position.tx + 1n

/**
 * Whether `offset` is the resume offset of a client that received the whole
 * log up to `latest` (`<resumeLsn(latest)>_0`): past the last entry, yet not
 * out of bounds.
 */
export const isResumeOffset = (offset: LogOffset, latest: LogOffset): boolean =>
  offset.op === 0 && offset.tx === resumeLsn(latest)

/** An up-to-date control message as one event. */
export const upToDateEvent = (globalLastSeenLsn: bigint): Uint8Array =>
  Buffer.from(`data: ${upToDateMessage(globalLastSeenLsn)}\n\n`)
