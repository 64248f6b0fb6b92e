/**
 * Live SSE responses (`text/event-stream`): one `data: <message>` event per
 * message, control messages included, and comment lines to keep a quiet
 * stream open.
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { StackSettings } from "../config/StackConfig.js"
import { LogOffset } from "../domain/LogOffset.js"
import type { StorageError } from "../domain/errors.js"
import type { BodyFormat, LogStream } from "../storage/ShapeLogStorage.js"
import { upToDateMessage } from "./ResponseHeaders.js"
import type { ShutdownSignal } from "./ShutdownSignal.js"

const NEWLINE = 0x0a
const DATA = Buffer.from("data: ")
const BETWEEN = Buffer.from("\n\ndata: ")

/** What closes the last event of a read. */
export const EVENT_END: Uint8Array = Buffer.from("\n\n")

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

/** The part of a shape's log an event stream reads. */
export interface EventLog {
  readonly read: (from: LogOffset, format: BodyFormat) => Effect.Effect<LogStream, StorageError, Scope.Scope>
  /** Completes once durable data past `after` exists (or the log closed). */
  readonly awaitDataAfter: (after: LogOffset) => Effect.Effect<void, StorageError>
}

/** How an SSE stream's wait for data ends. */
type Wait = "data" | "keepAlive" | "lifetime" | "shutdown"

/**
 * The events of a live SSE response from `start`: whatever the log holds past
 * it, then each batch of new changes as it becomes durable. A batch ends with
 * an up-to-date only where the reads reached the end of the log, which is
 * always the end of a transaction (a read may end inside one, at a chunk's
 * end); its LSN is where the client resumes (`resumeLsn`). A quiet stream gets
 * a keep-alive comment. The stream ends at the first end of a batch past its
 * lifetime; when the shape goes away (the client's reconnect gets the 409);
 * and when the server or the stack stops — with an up-to-date if it was at the
 * end of a batch, so the client resumes there, and without one otherwise, so
 * the client drops the partial batch and resumes at its last up-to-date.
 * Events wait in a queue of two pieces: a slow reader holds back the reads.
 */
export const eventStream = (
  source: EventLog,
  start: LogOffset,
  settings: Pick<StackSettings, "sseTimeoutMs" | "sseKeepAliveMs">,
  shutdown: ShutdownSignal["Type"],
  closeOnFinish: () => void
): Stream.Stream<Uint8Array> =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const out = yield* Queue.bounded<Option.Option<Uint8Array>>(2)
    let lastWrite = yield* Clock.currentTimeMillis
    const deadline = lastWrite + settings.sseTimeoutMs
    const emit = (bytes: Uint8Array) =>
      Effect.zipRight(Queue.offer(out, Option.some(bytes)), Effect.map(Clock.currentTimeMillis, (now) => {
        lastWrite = now
      }))
    let since = start
    // Whether `since` is the end of a batch: where an up-to-date may send the client on.
    let atEnd = true

    /** Reads once after `since`: whether it sent events. */
    const readOnce = Effect.scoped(Effect.gen(function*() {
      const read = yield* source.read(since, "lines")
      if (read.length > 0) {
        atEnd = false
        let first = true
        yield* Stream.runForEach(read.pieces, (piece) => {
          const events = eventsOfPiece(piece, first)
          first = false
          return emit(events)
        })
        yield* emit(EVENT_END)
      }
      since = LogOffset.max(since, read.nextOffset)
      if (read.reachedEnd) atEnd = true
      return read.length > 0
    }))

    const upToDate = Effect.suspend(() => emit(upToDateEvent(resumeLsn(since))))
    const pastLifetime = Effect.map(Clock.currentTimeMillis, (now) => now >= deadline)

    const run = Effect.gen(function*() {
      // An empty first piece sends the headers now: the client learns its handle and cursor before any event.
      yield* Queue.offer(out, Option.some(new Uint8Array(0)))
      for (;;) {
        let sent = false
        do sent = (yield* readOnce) || sent
        while (!atEnd)
        if (sent) yield* upToDate
        for (;;) {
          if (yield* pastLifetime) return
          const now = yield* Clock.currentTimeMillis
          const waits: ReadonlyArray<Effect.Effect<Wait>> = [
            source.awaitDataAfter(since).pipe(Effect.as("data" as const), Effect.orElseSucceed(() => "data" as const)),
            Effect.as(Effect.sleep(Math.max(0, lastWrite + settings.sseKeepAliveMs - now)), "keepAlive" as const),
            Effect.as(Effect.sleep(Math.max(0, deadline - now)), "lifetime" as const),
            Effect.as(shutdown.await, "shutdown" as const)
          ]
          const outcome = yield* Effect.raceAll(waits)
          if (outcome === "data") break
          if (outcome === "lifetime") return
          if (outcome === "shutdown") {
            // The server waits for its connections: this one closes once its last event is out.
            yield* Effect.sync(closeOnFinish)
            return yield* upToDate
          }
          yield* emit(KEEP_ALIVE)
        }
      }
    }).pipe(
      Effect.catchAll((e) => {
        // Its stack stopping closed the log: the client resumes on the next stack, from here if this is the end
        // of a batch.
        if (e.reason === "Closed") return atEnd ? upToDate : Effect.void
        // Removed: the shape is gone and the client's reconnect learns its new handle.
        if (e.reason === "Removed") return Effect.void
        return Effect.logWarning("an SSE stream ended on a storage failure", e)
      })
    )
    const failed = (cause: Cause.Cause<never>) =>
      Cause.isInterruptedOnly(cause) ? Effect.failCause(cause) : Effect.logError("an SSE stream failed", cause)
    yield* Effect.forkScoped(run.pipe(Effect.catchAllCause(failed), Effect.zipRight(Queue.offer(out, Option.none()))))
    return Stream.fromQueue(out).pipe(
      Stream.takeWhile(Option.isSome),
      Stream.map((o) => o.value)
    )
  }))
