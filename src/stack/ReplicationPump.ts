import { Cause, Context, Deferred, Effect, Layer, Metric, Stream } from "effect"
import type { Lsn } from "../domain/Lsn.js"
import type { PostgresError, ReplicationError } from "../domain/errors.js"
import { PgAdmin } from "../postgres/PgAdmin.js"
import { ReplicationConnection } from "../postgres/ReplicationConnection.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import { ShapeLogCollector } from "../replication/ShapeLogCollector.js"
import { ConsumerSupervisor } from "../shapes/ConsumerSupervisor.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { logWhenStopped } from "../domain/Lifecycle.js"
import * as Metrics from "../observability/Metrics.js"

/**
 * How many routed transactions may wait in consumers (not yet durable in every shape they went to) before
 * the pump stops reading the slot. Transactions durable everywhere but behind a slow one cost no memory to
 * speak of and do not count: one long snapshot does not stall every other shape.
 */
const MAX_IN_FLIGHT = 20_000

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
 * shapes it touches. It is the first thing to stop when the stack closes.
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
      const transactions = Metric.tagged(Metrics.transactions, "slot", admin.slotName)
      const changes = Metric.tagged(Metrics.changes, "slot", admin.slotName)
      const progress: { -readonly [K in keyof ReplicationProgress]: ReplicationProgress[K] } = {
        walEnd: 0n,
        lastEndLsn: 0n,
        lastCommitTime: undefined
      }

      yield* replication.events.pipe(
        Stream.runForEach((txn) =>
          Effect.gen(function*() {
            if (txn.kind === "position") {
              if (txn.lsn > progress.walEnd) progress.walEnd = txn.lsn
              return tracker.trackPosition(txn.lsn)
            }
            if (tracker.inFlight() >= maxInFlight) yield* tracker.awaitInFlightBelow(maxInFlight)
            if (txn.endLsn > progress.walEnd) progress.walEnd = txn.endLsn
            progress.lastEndLsn = txn.endLsn
            progress.lastCommitTime = txn.commitTime
            yield* Metric.increment(transactions)
            yield* Metric.incrementBy(changes, txn.changes.length)
            const deliveries = collector.route(txn)
            if (deliveries === undefined) return
            tracker.track(txn.commitLsn, txn.endLsn, deliveries.map((d) => d.handle))
            for (const delivery of deliveries) yield* consumers.deliver(txn, delivery)
          })
        ),
        // A defect here (a bug) must stop the stack like a failure does: a pump that died quietly would leave
        // the stack active and frozen.
        Effect.catchAllCause((cause) => Cause.isInterruptedOnly(cause) ? Effect.failCause(cause) : Deferred.failCause(failure, cause)),
        Effect.forkScoped
      )
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
