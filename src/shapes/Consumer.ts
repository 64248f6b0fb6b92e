import { Deferred, Effect, Queue } from "effect"
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
 * Whether the snapshot already contains transaction `xid`. Begin carries a
 * 32-bit xid; it is widened with the epoch of the snapshot's xmax, choosing
 * the 64-bit value nearest to xmax (xids in flight are never 2^31 apart).
 */
export const visibleInSnapshot = (xid: number, mark: SnapshotMark): boolean => {
  let full = (mark.xmax & ~(TWO_32 - 1n)) | BigInt(xid >>> 0)
  if (full - mark.xmax > TWO_31) full -= TWO_32
  else if (mark.xmax - full > TWO_31) full += TWO_32
  if (full < mark.xmin) return true
  if (full >= mark.xmax) return false
  return !mark.xip.includes(full)
}

/**
 * The loop that owns one shape's log: takes routed transactions in order,
 * drops replays (commit LSN at or below its durable offset) and transactions
 * its snapshot already holds, encodes the rest and appends them with one
 * commit (fsync) per batch — group commit — then reports the batch durable to
 * the flush tracker. It returns when the shape must go (its table was
 * truncated or changed), after reporting that through `invalidate`; the batch
 * holding that transaction is not reported durable, so acknowledgements wait
 * for the removal.
 */
export const runConsumer = (options: {
  readonly shape: Shape
  readonly log: ShapeLog
  readonly queue: Queue.Dequeue<Work>
  readonly snapshot: Deferred.Deferred<SnapshotMark>
  readonly tracker: FlushTracker["Type"]
  readonly invalidate: (reason: string) => Effect.Effect<void>
}): Effect.Effect<void, StorageError> => {
  const { shape, log, queue, tracker } = options
  const encoder = makeShapeEncoder(shape)
  const handle = shape.handle
  const tableOid = shape.table.oid
  // Transactions commit in order, and those the snapshot holds committed before it was taken: once one is
  // not in the snapshot (or the log holds changes past it), no later one is, so the xid test stops there.
  let pastSnapshot = LogOffset.isReal(log.latestOffset())

  /** One batch; false once the shape was invalidated. */
  const step = (mark: SnapshotMark): Effect.Effect<boolean, StorageError> =>
    Effect.flatMap(Queue.takeBetween(queue, 1, 4096), (batch) =>
      Effect.uninterruptible(
        Effect.gen(function*() {
          const durableAt: LogOffset = log.latestOffset()
          const entries: Array<LogEntry> = []
          const pending: Array<PendingEntry> = []
          let lastCommit = 0n
          for (const { txn, delivery } of batch) {
            lastCommit = txn.commitLsn
            if (delivery.invalidated !== undefined) {
              yield* options.invalidate(delivery.invalidated)
              return false
            }
            if (txn.commitLsn <= durableAt.tx) continue
            if (!pastSnapshot) {
              if (visibleInSnapshot(txn.xid, mark)) continue
              pastSnapshot = true
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
          if (entries.length > 0) {
            yield* log.append(entries)
            yield* log.commit
          }
          yield* tracker.durable(handle, lastCommit)
          return true
        })
      )
    )

  const loop = (mark: SnapshotMark): Effect.Effect<void, StorageError> =>
    Effect.flatMap(step(mark), (more) => (more ? loop(mark) : Effect.void))
  return Effect.flatMap(Deferred.await(options.snapshot), loop)
}
