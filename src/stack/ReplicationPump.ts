import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Stream from "effect/Stream"
import type { ReplicationEvent } from "../domain/Change.js"
import { Lsn } from "../domain/Lsn.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { PostgresError, ReplicationError } from "../domain/errors.js"
import { PgAdmin } from "../postgres/PgAdmin.js"
import { ownTupleBytes } from "../postgres/PgOutput.js"
import { ReplicationConnection } from "../postgres/ReplicationConnection.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import { type Routed, ShapeLogCollector } from "../replication/ShapeLogCollector.js"
import { ConsumerSupervisor } from "../shapes/ConsumerSupervisor.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { logWhenStopped, realDelay } from "../domain/Lifecycle.js"
import * as Metrics from "../observability/Metrics.js"

/**
 * How many routed transactions may wait in consumers (not yet durable in every shape they went to) before
 * the pump stops reading the slot. Transactions durable everywhere but behind a slow one cost no memory to
 * speak of and do not count: one long snapshot does not stall every other shape.
 */
const MAX_IN_FLIGHT = 20_000

const NO_HANDLES: ReadonlyArray<ShapeHandle> = []

/** The longest a stop waits for the slot's restart position to move (`settleRestartPosition`). */
const RESTART_POSITION_WAIT_MS = 1_000
const RESTART_POSITION_POLL_MS = 5

/** Where reading the slot stands. */
export interface ReplicationProgress {
  /** The furthest WAL position the server reported (a keepalive's, or a transaction's end). */
  readonly walEnd: Lsn
  /** The end LSN of the last transaction read. */
  readonly lastEndLsn: Lsn
  /** Its commit time (microseconds since 2000-01-01, as Postgres sends it); undefined before the first. */
  readonly lastCommitTime: bigint | undefined
}

/**
 * Reads the slot and feeds the stack: each transaction is routed by the
 * collector, tracked by the flush tracker and handed to the consumers of the
 * shapes it touches. It works batch by batch (what the connection had buffered
 * when the pump came back for more), so that a burst of small transactions
 * costs one hand-over per shape, not one per transaction. It is the first
 * thing to stop when the stack closes.
 */
export class ReplicationPump extends Context.Tag("syncline/ReplicationPump")<ReplicationPump, {
  /**
   * Fails when the replication stream fails, on a defect in the pump, a consumer or the shape cache's removals, or
   * when the slot's advisory lock is lost (another instance may then take the slot while this one writes); never
   * succeeds.
   */
  readonly failure: Effect.Effect<never, ReplicationError | PostgresError>
  /** Where reading the slot stands, for the replication lag. */
  readonly progress: () => ReplicationProgress
}>() {
  /** The pump; `maxInFlight` bounds what consumers may hold (tests make it small). */
  static readonly layer = (maxInFlight = MAX_IN_FLIGHT): Layer.Layer<
    ReplicationPump,
    never,
    ReplicationConnection | ShapeLogCollector | ConsumerSupervisor | FlushTracker | PgAdmin | ShapeCache
  > => Layer.scoped(
    ReplicationPump,
    Effect.gen(function*() {
      yield* logWhenStopped("ReplicationPump")
      const replication = yield* ReplicationConnection
      const collector = yield* ShapeLogCollector
      const consumers = yield* ConsumerSupervisor
      const tracker = yield* FlushTracker
      const admin = yield* PgAdmin
      const cache = yield* ShapeCache
      const failure = yield* Deferred.make<never, ReplicationError>()
      const { changes, transactions } = Metrics.slotCounters(admin.slotName)
      const progress: { -readonly [K in keyof ReplicationProgress]: ReplicationProgress[K] } = {
        walEnd: 0n,
        lastEndLsn: 0n,
        lastCommitTime: undefined
      }

      /**
       * Routes and tracks the events of one batch in stream order, then hands the routed transactions to their
       * consumers together: one offer per shape per batch. When consumers hold too much, what is routed so far is
       * handed over first, and the rest waits for room.
       */
      const handleBatch = (events: ReadonlyArray<ReplicationEvent>): Effect.Effect<void> => {
        let i = 0
        const step = (): Effect.Effect<void> => {
          const routed: Array<Routed> = []
          let txnCount = 0
          let changeCount = 0
          for (; i < events.length; i++) {
            const event = events[i]!
            if (event.kind === "position") {
              if (event.lsn > progress.walEnd) progress.walEnd = event.lsn
              tracker.trackPosition(event.lsn)
              continue
            }
            if (tracker.inFlight() >= maxInFlight) break
            if (event.endLsn > progress.walEnd) progress.walEnd = event.endLsn
            progress.lastEndLsn = event.endLsn
            progress.lastCommitTime = event.commitTime
            txnCount++
            changeCount += event.changes.length
            const deliveries = collector.route(event)
            if (deliveries === undefined) continue
            if (deliveries.length === 0) {
              tracker.track(event.commitLsn, event.endLsn, NO_HANDLES)
              continue
            }
            ownTupleBytes(event)
            const handles: Array<ShapeHandle> = new Array(deliveries.length)
            for (let d = 0; d < deliveries.length; d++) handles[d] = deliveries[d]!.handle
            tracker.track(event.commitLsn, event.endLsn, handles)
            routed.push({ txn: event, deliveries })
          }
          const counted = txnCount === 0
            ? Effect.void
            : Effect.zipRight(Metric.incrementBy(transactions, txnCount), Metric.incrementBy(changes, changeCount))
          const delivered = routed.length === 0 ? counted : Effect.zipRight(counted, consumers.deliver(routed))
          if (i >= events.length) return delivered
          return delivered.pipe(Effect.zipRight(tracker.awaitInFlightBelow(maxInFlight)), Effect.zipRight(Effect.suspend(step)))
        }
        return Effect.suspend(step)
      }

      yield* replication.events.pipe(
        Stream.runForEachChunk((chunk) => handleBatch(Chunk.toReadonlyArray(chunk))),
        // A defect here (a bug) must stop the stack like a failure does: a pump that died quietly would leave
        // the stack active and frozen.
        Effect.catchAllCause((cause) => Cause.isInterruptedOnly(cause) ? Effect.failCause(cause) : Deferred.failCause(failure, cause)),
        Effect.forkScoped
      )

      /**
       * Moves the slot's restart position up to what is acknowledged, so that the next start decodes from there.
       * Postgres moves it only to a log of the running transactions that the walsender has decoded and the client
       * has confirmed a position past; it writes one on its own every 15 s, so a restart would decode again up to
       * 15 s of WAL, which at a high write rate is most of its catch-up. Here such a log is written, and its position
       * is acknowledged like any keepalive's: only once everything before it is durable. Postgres still keeps the
       * position at a transaction open at that moment. Best effort, and bounded in real time (what it waits for is
       * Postgres): skipped when the pump has not read all the server had sent (the keepalive past the log would come
       * after the rest), and given up without the function (before Postgres 16) or the right to call it, or when
       * the acknowledgement does not get there in time.
       */
      const settleRestartPosition = Effect.gen(function*() {
        if (!tracker.caughtUp()) return yield* Effect.logDebug("the slot's restart position stays: the slot is still being read")
        const started = performance.now()
        const logged = yield* admin.logRunningTransactions(RESTART_POSITION_WAIT_MS)
        if (logged === undefined) {
          return yield* Effect.logDebug("the slot's restart position stays: pg_log_standby_snapshot() is not available")
        }
        while (tracker.sentLsn() < logged) {
          if (performance.now() - started >= RESTART_POSITION_WAIT_MS) {
            return yield* Effect.logDebug(`the slot's restart position stays: ${Lsn.toPg(logged)} was not acknowledged in time`)
          }
          yield* realDelay(RESTART_POSITION_POLL_MS)
        }
        yield* Effect.logDebug(`the slot's restart position moves up to ${Lsn.toPg(logged)}`)
      }).pipe(
        // The pool's own wait for a connection is not bounded by the statement's timeout.
        Effect.raceFirst(Effect.zipRight(
          realDelay(2 * RESTART_POSITION_WAIT_MS),
          Effect.logDebug("the slot's restart position stays: Postgres did not answer in time")
        )),
        // Finalizers run uninterruptibly: without this, the race would wait for its loser to end.
        Effect.interruptible,
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause) ? Effect.void : Effect.logDebug("the slot's restart position stays", cause)
        )
      )
      // Registered after the pump was forked, so it runs while the pump still reads the slot: the walsender's
      // keepalive past the log is what gets acknowledged. Not after a failure: the stack is in no state for it.
      yield* Effect.addFinalizer((exit) => Exit.isSuccess(exit) || Cause.isInterruptedOnly(exit.cause) ? settleRestartPosition : Effect.void)
      return ReplicationPump.of({
        progress: () => ({ ...progress }),
        failure: Deferred.await(failure).pipe(
          Effect.raceFirst(consumers.failure),
          Effect.raceFirst(cache.failure),
          Effect.raceFirst(admin.lockLost)
        )
      })
    })
  )
}
