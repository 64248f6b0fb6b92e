import { Chunk, Deferred, Duration, Effect, Either, Queue } from "effect"
import type { Transaction } from "../domain/Change.js"
import { LogOffset } from "../domain/LogOffset.js"
import type { StorageError } from "../domain/errors.js"
import type { FlushTracker } from "../replication/FlushTracker.js"
import type { Delivery } from "../replication/ShapeLogCollector.js"
import type { LogEntry, ShapeLog } from "../storage/ShapeLogStorage.js"
import { finishTransaction, makeShapeEncoder, type PendingEntry, transactionHeaders } from "./LogItems.js"
import type { Shape } from "./Shape.js"
import type { SnapshotMark } from "./ShapeStatus.js"

/** One routed transaction waiting in a consumer's queue. */
export interface Work {
  readonly txn: Transaction
  readonly delivery: Delivery
}

/** Why a consumer stopped on its own: its shape must be removed. */
export interface Invalidation {
  readonly handle: Shape["handle"]
  readonly reason: string
}

const TWO_32 = 1n << 32n
const TWO_31 = 1n << 31n

/**
 * The 64-bit xid of a Begin's 32-bit one: widened with the epoch of the
 * snapshot's xmax, choosing the value nearest to xmax (xids in flight are
 * never 2^31 apart).
 */
export const widenXid = (xid: number, mark: SnapshotMark): bigint => {
  let full = (mark.xmax & ~(TWO_32 - 1n)) | BigInt(xid >>> 0)
  if (full - mark.xmax > TWO_31) full -= TWO_32
  else if (mark.xmax - full > TWO_31) full += TWO_32
  return full
}

/** Whether the snapshot already contains transaction `xid` (32-bit, as Begin carries it). */
export const visibleInSnapshot = (xid: number, mark: SnapshotMark): boolean => {
  const full = widenXid(xid, mark)
  if (full < mark.xmin) return true
  if (full >= mark.xmax) return false
  return !mark.xip.includes(full)
}

/** The first wait after a failed write, doubled up to the last one while writes keep failing. */
const RETRY_FIRST = Duration.millis(100)
const RETRY_MAX = Duration.seconds(10)

/**
 * The loop that owns one shape's log: takes routed transactions in order,
 * drops replays (commit LSN at or below its durable offset) and transactions
 * its snapshot already holds, encodes the rest and appends them with one
 * commit (fsync) per batch — group commit — then reports the batch durable to
 * the flush tracker.
 *
 * Snapshot visibility is tested for every transaction until the first whose
 * xid is at or above the snapshot's xmax (DESIGN.md, "Shape creation"): a
 * transaction in progress at snapshot time can commit earlier in the WAL than
 * one the snapshot holds. That point is recorded (`pastSnapshot`), so a
 * restart neither tests again nor stops testing early.
 *
 * Faults stay with the shape. Files found damaged (or gone) invalidate it; a
 * write that fails (a full disk) is retried with backoff on the log reopened,
 * holding the acknowledgement meanwhile, while other shapes go on. It returns
 * when the shape must go (damaged files, a truncate, changed columns), after
 * reporting that through `invalidate`; the batch holding that transaction is
 * not reported durable, so acknowledgements wait for the removal.
 */
export const runConsumer = (options: {
  readonly shape: Shape
  /** Opens (or reopens, after a failed write) the shape's log. */
  readonly openLog: Effect.Effect<ShapeLog, StorageError>
  readonly queue: Queue.Dequeue<Work>
  readonly snapshot: Deferred.Deferred<SnapshotMark>
  readonly tracker: FlushTracker["Type"]
  readonly invalidate: (reason: string) => Effect.Effect<void>
  /** Records durably that the shape is past its snapshot; a failure is only logged (the test would run again). */
  readonly markPastSnapshot: Effect.Effect<void>
}): Effect.Effect<void> => {
  const { shape, queue, tracker } = options
  const encoder = makeShapeEncoder(shape)
  const handle = shape.handle
  const tableOid = shape.table.oid

  /** A storage failure the shape cannot get past: its reason for the invalidation, or undefined to retry. */
  const fatalFor = (error: StorageError): string | undefined => {
    if (error.reason === "Corrupt") return `its files are damaged (${error.message})`
    if (error.reason === "Removed") return "its files are missing"
    return undefined
  }

  return Effect.gen(function*() {
    const mark = yield* Deferred.await(options.snapshot)
    let log: ShapeLog | undefined = undefined
    let failures = 0

    /** Waits before the next attempt, then forgets the failed log: the next one is recovered from disk. */
    const backOff = (error: StorageError) =>
      Effect.gen(function*() {
        const wait = Duration.min(Duration.times(RETRY_FIRST, 2 ** Math.min(failures, 16)), RETRY_MAX)
        if (failures === 0) {
          yield* Effect.logWarning(`shape ${handle}: cannot write its log (${error.message}); retrying, its acknowledgement waits`)
        }
        failures++
        log = undefined
        yield* Effect.sleep(wait)
      })

    /** The log, opened if needed; `Left` with the invalidation reason when the files cannot be used. */
    const currentLog: Effect.Effect<Either.Either<ShapeLog, string>> = Effect.suspend(function attempt(): Effect.Effect<
      Either.Either<ShapeLog, string>
    > {
      if (log !== undefined) return Effect.succeed(Either.right(log))
      return options.openLog.pipe(
        Effect.map((opened) => {
          log = opened
          return Either.right(opened)
        }),
        Effect.catchAll((error) => {
          if (error.reason === "Closed") return Effect.interrupt
          const fatal = fatalFor(error)
          return fatal !== undefined ? Effect.succeed(Either.left(fatal)) : Effect.zipRight(backOff(error), attempt())
        })
      )
    })

    const first = yield* currentLog
    if (Either.isLeft(first)) return yield* options.invalidate(first.left)
    // Marks recorded before `pastSnapshot` existed: a log with changes in it was past its snapshot.
    let pastSnapshot = mark.pastSnapshot ?? LogOffset.isReal(first.right.latestOffset())

    const entries: Array<LogEntry> = []
    const pending: Array<PendingEntry> = []

    for (;;) {
      const batch = Chunk.toReadonlyArray(yield* Queue.takeBetween(queue, 1, 4096))
      // A truncate or a change of columns: nothing after it fits the shape, and its removal drops the rest.
      const invalidated = batch.find(({ delivery }) => delivery.invalidated !== undefined)
      if (invalidated !== undefined) return yield* options.invalidate(invalidated.delivery.invalidated!)
      let lastCommit = 0n
      let passedSnapshot = false
      let durableAt: LogOffset | undefined
      entries.length = 0

      for (;;) {
        const opened = yield* currentLog
        if (Either.isLeft(opened)) return yield* options.invalidate(opened.left)
        const target = opened.right
        if (durableAt === undefined) {
          durableAt = target.latestOffset()
          for (const { delivery, txn } of batch) {
            lastCommit = txn.commitLsn
            if (txn.commitLsn <= durableAt.tx) continue
            if (!pastSnapshot) {
              if (widenXid(txn.xid, mark) >= mark.xmax) {
                pastSnapshot = true
                passedSnapshot = true
              } else if (visibleInSnapshot(txn.xid, mark)) {
                continue
              }
            }
            const txHeaders = transactionHeaders(txn.xid, txn.commitLsn)
            pending.length = 0
            for (const i of delivery.changes) {
              const change = txn.changes[i]!
              if (change.kind !== "truncate" && change.relation.oid !== tableOid) continue
              encoder.encode(change, txn.commitLsn, i * 2, txHeaders, pending)
            }
            finishTransaction(pending, entries)
          }
        }
        // One step, never cut by a stop: the stack closing waits for the batch to be durable.
        const written = yield* Effect.uninterruptible(
          entries.length === 0 ? Effect.void : Effect.zipRight(target.append(entries), target.commit)
        ).pipe(Effect.either)
        if (Either.isRight(written)) break
        const error = written.left
        if (error.reason === "Closed") return yield* Effect.interrupt
        const fatal = fatalFor(error)
        if (fatal !== undefined) return yield* options.invalidate(fatal)
        yield* backOff(error)
      }
      if (failures > 0) {
        yield* Effect.logInfo(`shape ${handle}: its log is written again after ${failures} failed attempt(s)`)
        failures = 0
      }
      if (passedSnapshot) yield* options.markPastSnapshot
      yield* tracker.durable(handle, lastCommit)
    }
  })
}
