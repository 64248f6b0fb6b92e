import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type * as Scope from "effect/Scope"
import pg from "pg"
import type { ReplicationEvent } from "../domain/Change.js"
import { ReplicationError } from "../domain/errors.js"
import type { Lsn } from "../domain/Lsn.js"
import {
  encodeStandbyStatus,
  KEEPALIVE_REPLY_FLAG_OFFSET,
  KEEPALIVE_WAL_END_OFFSET,
  pgClockNow,
  TransactionAssembler,
  XLOG_DATA_HEADER_BYTES
} from "./PgOutput.js"
import { logWhenStopped } from "../domain/Lifecycle.js"
import { uint64 } from "./internal/BigEndian.js"
import { HEADER_BYTES, MessageFramer } from "./internal/MessageFramer.js"

/** How to reach the slot: it and its publication must already exist. */
export interface ReplicationConnectionOptions {
  readonly connectionString: string
  readonly slotName: string
  readonly publicationName: string
  /** How often a standby status with the last acknowledged position is sent; default 10 000 ms. */
  readonly statusIntervalMs?: number
  /** Transactions buffered before the socket is paused; default 4096. */
  readonly bufferSize?: number
}

/**
 * One logical replication connection on a named slot (pgoutput v1). It streams
 * whole committed transactions and reports back only the positions it is told
 * are durable, so a restart resumes exactly after the last acknowledged
 * transaction. Reconnecting is the caller's job: rebuild the layer.
 */
export class ReplicationConnection extends Context.Tag("syncline/ReplicationConnection")<ReplicationConnection, {
  /**
   * Whole committed transactions in commit order, and now and then the WAL position of a keepalive (at
   * most one waiting at a time); back-pressured (the socket is paused while the consumer is slow). Single
   * consumer.
   */
  readonly events: Stream.Stream<ReplicationEvent, ReplicationError>
  /** Records `endLsn` as durable (monotonic: lower values are ignored) and sends a standby status with exactly that value as write/flush/apply. */
  readonly ack: (endLsn: Lsn) => Effect.Effect<void>
  /** The last acknowledged end LSN. */
  readonly acknowledged: Effect.Effect<Lsn>
}>() {
  /** The connection as a scoped layer: opened when built, closed (after a final status) when released. */
  static readonly layer = (options: ReplicationConnectionOptions): Layer.Layer<ReplicationConnection, ReplicationError> =>
    Layer.scoped(ReplicationConnection, make(options))
}

// Output settings of the walsender session: pgoutput formats values with them,
// and the shape log wants the same text a snapshot query gives.
export const SESSION_SETTINGS = "SET bytea_output = 'hex'; SET DateStyle = 'ISO, DMY'; SET TimeZone = 'UTC'; " +
  "SET extra_float_digits = 1; SET IntervalStyle = 'iso_8601'"

const CLOSE_TIMEOUT = Duration.seconds(5)

const DEFAULT_BUFFER_SIZE = 4096

/**
 * The longest the socket is read in one turn of the event loop before it waits for the next. A socket with much
 * waiting (catch-up after a restart) is otherwise read chunk after chunk in one turn, each chunk decoded and
 * routed at once, while the completions of the consumers' writes and fsyncs wait behind the whole burst: their
 * commits, and so the acknowledgement, would lag the reading by seconds. Checked every `TURN_CHECK` messages.
 */
const TURN_MS = 8
const TURN_CHECK = 32

// The parts of pg's Connection the typings leave out.
interface RawConnection {
  readonly stream: NodeJS.ReadableStream & { destroy(): void }
  sendCopyFromChunk(chunk: Buffer): void
  on(event: "replicationStart", listener: () => void): unknown
}

const COPY_DATA = 0x64 // d

/**
 * The connection's socket, read here rather than by `pg` once streaming is asked for: each CopyData message is
 * handed over where it lies in the socket's chunk, with no message object, payload copy or event per message
 * (about a third of reading a catch-up). Every other message (CopyBothResponse, an error, the end of the stream)
 * goes to `pg` whole, which handles it as before.
 */
class CopyDataReader {
  private readonly framer = new MessageFramer()
  private broken = false
  /** What pg's data listener threw on a message handed to it, if it did: the chunk's reading stops there. */
  private pgThrew: { readonly cause: unknown } | undefined = undefined

  private constructor(
    private readonly pgOnData: (chunk: Buffer) => void,
    /** A CopyData message's payload, `data[start, end)`. */
    private readonly onCopyData: (data: Buffer, start: number, end: number) => void,
    /** The socket cannot be read on (its bytes are not backend messages, or pg failed on one): nothing more is. */
    private readonly onBroken: (cause: unknown) => void
  ) {}

  /** Takes over the socket from `pg`'s one data listener; an error when it has another number of them. */
  static attach(
    stream: NodeJS.ReadableStream,
    onCopyData: (data: Buffer, start: number, end: number) => void,
    onBroken: (cause: unknown) => void
  ): Error | undefined {
    const listeners = stream.listeners("data")
    if (listeners.length !== 1) return new Error(`the replication connection has ${listeners.length} data listeners, not pg's one`)
    const pgOnData = listeners[0] as (chunk: Buffer) => void
    const reader = new CopyDataReader(pgOnData, onCopyData, onBroken)
    stream.removeListener("data", pgOnData)
    stream.on("data", reader.onChunk)
    return undefined
  }

  private readonly onChunk = (chunk: Buffer): void => {
    if (this.broken) return
    try {
      this.framer.feed(chunk, this.onMessage)
    } catch (cause) {
      this.broken = true
      this.onBroken(cause)
      return
    }
    const thrown = this.pgThrew
    if (thrown === undefined) return
    // The rest of the chunk is not read, so nothing after it can be: the stream fails, and what pg's own listener
    // threw goes on as it would have without this reader.
    this.pgThrew = undefined
    this.broken = true
    this.onBroken(thrown.cause)
    throw thrown.cause
  }

  private readonly onMessage = (data: Buffer, start: number, end: number): boolean => {
    if (data[start] === COPY_DATA) {
      this.onCopyData(data, start + HEADER_BYTES, end)
      return false
    }
    try {
      this.pgOnData(data.subarray(start, end))
      return false
    } catch (cause) {
      this.pgThrew = { cause }
      return true
    }
  }
}

const quoteIdent = (name: string): string => `"${name.replace(/"/g, "\"\"")}"`
const quoteLiteral = (text: string): string => `'${text.replace(/'/g, "''")}'`

const errorText = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

// SQLSTATEs that mean the slot (or what it reads) cannot be used as asked.
const SLOT_SQLSTATES = new Set(["42704", "55000", "55006"])

const classify = (cause: unknown): ReplicationError => {
  const code = typeof cause === "object" && cause !== null && "code" in cause ? String(cause.code) : undefined
  const message = errorText(cause)
  if (code === undefined || code.startsWith("08") || code.startsWith("57")) {
    return new ReplicationError({ reason: "Connection", message, cause })
  }
  if (SLOT_SQLSTATES.has(code)) return new ReplicationError({ reason: "Slot", message, cause })
  return new ReplicationError({ reason: "Protocol", message, cause })
}

/**
 * Opens the replication connection in the current scope and starts streaming
 * from the slot's `confirmed_flush_lsn` (always `0/0`: never from a position
 * this process merely received). Succeeds once the server has entered COPY mode.
 */
export const make = (
  options: ReplicationConnectionOptions
): Effect.Effect<Context.Tag.Service<ReplicationConnection>, ReplicationError, Scope.Scope> =>
  Effect.gen(function*() {
    yield* logWhenStopped("ReplicationConnection")
    const statusInterval = Duration.millis(options.statusIntervalMs ?? 10_000)
    const bufferSize = options.bufferSize ?? DEFAULT_BUFFER_SIZE
    const failed = yield* Deferred.make<never, ReplicationError>()
    const started = yield* Deferred.make<void>()
    const assembler = new TransactionAssembler()

    let acked: Lsn = 0n
    let streaming = false
    let closing = false
    let stopped = false
    // What the socket produced and the reader has not taken yet, in stream order. The reader takes all of it at
    // once: every transaction one socket read completed goes through the pipeline as one batch.
    let buffered: Array<ReplicationEvent> = []
    let paused = false
    // When the first message of this turn of the event loop was read (-1 before it), and whether reading waits for
    // the next turn (`TURN_MS`).
    let turnStarted = -1
    let readThisTurn = 0
    let yielding = false
    let reader: Deferred.Deferred<void> | undefined
    // Why the stream ended, once it did: the reader's next take fails with it, waiting or not.
    let failure: ReplicationError | undefined

    const wakeReader = (): void => {
      if (reader === undefined) return
      const waiting = reader
      reader = undefined
      Deferred.unsafeDone(waiting, Exit.void)
    }

    const fail = (error: ReplicationError): void => {
      if (closing || stopped) return
      stopped = true
      failure = error
      Deferred.unsafeDone(failed, Exit.fail(error))
      wakeReader()
    }

    const clientConfig: pg.ClientConfig & { replication: string } = {
      connectionString: options.connectionString,
      replication: "database"
    }
    const client = new pg.Client(clientConfig)
    const connection = client.connection as unknown as RawConnection
    client.on("error", (cause) => fail(classify(cause)))
    client.on("end", () => fail(new ReplicationError({ reason: "Connection", message: "replication connection ended" })))

    const sendStatus = (): void => {
      if (!streaming) return
      try {
        connection.sendCopyFromChunk(encodeStandbyStatus(acked, pgClockNow()))
      } catch (cause) {
        fail(classify(cause))
      }
    }

    const deliver = (event: ReplicationEvent): void => {
      buffered.push(event)
      if (buffered.length >= bufferSize && !paused) {
        paused = true
        connection.stream.pause()
      }
      wakeReader()
    }

    /**
     * Everything buffered, once there is something; the socket reads again while the batch is handled. Fails once
     * the connection failed, with whatever is buffered left behind: none of it was acknowledged, so the slot sends
     * it again. The failure is looked at in the same step as the buffer, with no fiber racing the wait: a batch
     * costs no fork.
     */
    const take: Effect.Effect<Chunk.Chunk<ReplicationEvent>, ReplicationError> = Effect.suspend(function attempt(): Effect.Effect<
      Chunk.Chunk<ReplicationEvent>,
      ReplicationError
    > {
      if (failure !== undefined) return Effect.fail(failure)
      if (buffered.length === 0) {
        const waiting = reader ?? (reader = Deferred.unsafeMake<void>(FiberId.none))
        return Effect.flatMap(Deferred.await(waiting), attempt)
      }
      const batch = buffered
      buffered = []
      if (paused) {
        paused = false
        if (!closing && !yielding) connection.stream.resume()
      }
      return Effect.succeed(Chunk.unsafeFromArray(batch))
    })

    connection.on("replicationStart", () => {
      streaming = true
      Deferred.unsafeDone(started, Exit.void)
    })
    const turnEnded = (): void => {
      turnStarted = -1
      readThisTurn = 0
      if (!yielding) return
      yielding = false
      if (!paused && !closing) connection.stream.resume()
    }

    /** One CopyData payload, `data[start, end)`: an XLogData message or a keepalive. */
    const onCopyData = (data: Buffer, start: number, end: number): void => {
      if (closing || stopped) return
      if (turnStarted < 0) {
        turnStarted = performance.now()
        setImmediate(turnEnded)
      } else if (++readThisTurn % TURN_CHECK === 0 && !yielding && performance.now() - turnStarted >= TURN_MS) {
        yielding = true
        connection.stream.pause()
      }
      try {
        const kind = data[start]
        if (kind === 0x77 /* w: XLogData */) {
          if (end - start < XLOG_DATA_HEADER_BYTES + 1) throw new Error("truncated XLogData message")
          const tx = assembler.pushBuffer(data, start + XLOG_DATA_HEADER_BYTES, end)
          if (tx !== undefined) deliver(tx)
        } else if (kind === 0x6b /* k: primary keepalive */) {
          if (end - start < KEEPALIVE_REPLY_FLAG_OFFSET + 1) throw new Error("truncated keepalive message")
          const lsn = uint64(data, start + KEEPALIVE_WAL_END_OFFSET)
          // A position right after another replaces it: under a write load on other tables keepalives come by the
          // hundred, and the last is as good as all of them. One after a transaction is kept whole, since the keepalive
          // a walsender sends once it has sent everything tells the flush tracker a burst is over.
          const last = buffered.length > 0 ? buffered[buffered.length - 1]! : undefined
          if (last !== undefined && last.kind === "position") buffered[buffered.length - 1] = { kind: "position", lsn }
          else deliver({ kind: "position", lsn })
          if (data[start + KEEPALIVE_REPLY_FLAG_OFFSET] === 1) sendStatus()
        } else {
          throw new Error(`unknown replication message type 0x${(kind ?? 0).toString(16)}`)
        }
      } catch (cause) {
        fail(new ReplicationError({ reason: "Protocol", message: errorText(cause), cause }))
      }
    }

    yield* Effect.acquireRelease(
      Effect.tryPromise({ try: () => client.connect(), catch: classify }),
      () =>
        Effect.gen(function*() {
          sendStatus()
          closing = true
          streaming = false
          // A paused socket never reads the server's EOF, so `end` would never settle.
          connection.stream.resume()
          yield* Effect.tryPromise(() => client.end()).pipe(Effect.timeout(CLOSE_TIMEOUT), Effect.ignore)
          connection.stream.destroy()
        })
    )

    yield* Effect.tryPromise({ try: () => client.query(SESSION_SETTINGS), catch: classify })

    const notAttached = CopyDataReader.attach(
      connection.stream,
      onCopyData,
      (cause) => fail(new ReplicationError({ reason: "Protocol", message: errorText(cause), cause }))
    )
    if (notAttached !== undefined) {
      return yield* new ReplicationError({ reason: "Protocol", message: notAttached.message, cause: notAttached })
    }

    const startCommand = `START_REPLICATION SLOT ${quoteIdent(options.slotName)} LOGICAL 0/0 ` +
      `(proto_version '1', publication_names ${quoteLiteral(quoteIdent(options.publicationName))})`
    client.query(startCommand).then(
      () => fail(new ReplicationError({ reason: "Connection", message: "replication stream ended by the server" })),
      (cause: unknown) => fail(classify(cause))
    )
    yield* Effect.raceFirst(Deferred.await(started), Deferred.await(failed))

    yield* Effect.sync(sendStatus).pipe(
      Effect.repeat(Schedule.spaced(statusInterval)),
      Effect.delay(statusInterval),
      Effect.forkScoped
    )

    return {
      events: Stream.repeatEffectChunk(take),
      ack: (endLsn: Lsn) =>
        Effect.sync(() => {
          if (endLsn <= acked) return
          acked = endLsn
          sendStatus()
        }),
      acknowledged: Effect.sync(() => acked)
    }
  })
