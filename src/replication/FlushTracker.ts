import { SqlClient } from "@effect/sql"
import { Context, Deferred, Effect, Layer, Schedule } from "effect"
import type { Lsn } from "../domain/Lsn.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import { RegistryError } from "../domain/errors.js"
import { ReplicationConnection } from "../postgres/ReplicationConnection.js"
import { logWhenStopped } from "../domain/Lifecycle.js"

interface Pending {
  readonly commitLsn: Lsn
  readonly endLsn: Lsn
  remaining: number
}

/**
 * Decides what Postgres may forget (DESIGN.md, invariant 3). Every routed
 * transaction is tracked with the shapes that received it; the acknowledged
 * position is the end LSN of the highest transaction below which everything is
 * durable in every shape. A transaction that touched no shape is durable once
 * everything before it is.
 *
 * The commit LSN of that transaction is also persisted (SQLite, every second
 * and at shutdown, so it may trail the ack): after a restart the collector
 * drops replayed transactions at or below it, and consumers drop what their
 * own logs already hold.
 */
export class FlushTracker extends Context.Tag("syncline/FlushTracker")<FlushTracker, {
  /** Records a routed transaction and the shapes it went to; called in commit order. */
  readonly track: (commitLsn: Lsn, endLsn: Lsn, handles: ReadonlyArray<ShapeHandle>) => void
  /** A shape made everything up to `commitLsn` durable (or skipped it). */
  readonly durable: (handle: ShapeHandle, commitLsn: Lsn) => Effect.Effect<void>
  /** A shape went away: it no longer holds transactions back. */
  readonly forget: (handle: ShapeHandle) => Effect.Effect<void>
  /** Transactions routed but not yet durable everywhere. */
  readonly inFlight: () => number
  /** Waits until fewer than `limit` transactions are in flight. */
  readonly awaitInFlightBelow: (limit: number) => Effect.Effect<void>
  /** The commit LSN of the last transaction durable everywhere (persisted). */
  readonly lastProcessedLsn: () => Lsn
  /** The end LSN acknowledged to Postgres. */
  readonly acknowledgedLsn: () => Lsn
}>() {
  static readonly layer: Layer.Layer<FlushTracker, RegistryError, ReplicationConnection | SqlClient.SqlClient> =
    Layer.scoped(
      FlushTracker,
      Effect.gen(function*() {
        yield* logWhenStopped("FlushTracker")
        const sql = yield* SqlClient.SqlClient
        const replication = yield* ReplicationConnection
        const rows = yield* sql<{ value: string }>`SELECT value FROM replication_state WHERE key = 'last_processed_lsn'`.pipe(
          Effect.mapError((cause) => new RegistryError({ operation: "read last_processed_lsn", cause }))
        )
        let lastProcessed: Lsn = rows.length === 0 ? 0n : BigInt(rows[0]!.value)
        let persisted = lastProcessed
        let acked: Lsn = 0n
        let sentAck: Lsn = 0n

        // `queue[head..]` are the transactions not yet durable everywhere, in commit order.
        const queue: Array<Pending> = []
        let head = 0
        const perShape = new Map<ShapeHandle, Array<Pending>>()
        let wake = Deferred.unsafeMake<void>(undefined as never)

        const advance = (): boolean => {
          let moved = false
          while (head < queue.length && queue[head]!.remaining === 0) {
            const p = queue[head++]!
            lastProcessed = p.commitLsn
            if (p.endLsn > acked) acked = p.endLsn
            moved = true
          }
          if (head > 1024 && head * 2 > queue.length) {
            queue.splice(0, head)
            head = 0
          }
          return moved
        }

        const signal = Effect.suspend(() => {
          const old = wake
          wake = Deferred.unsafeMake<void>(undefined as never)
          return Deferred.succeed(old, undefined)
        })

        // An ack counts as sent once it returned: one cut mid-call (its caller interrupted) is sent again by the next tick.
        const sendAck = Effect.suspend(() => {
          const value = acked
          return Effect.tap(replication.ack(value), () =>
            Effect.sync(() => {
              if (value > sentAck) sentAck = value
            }))
        })

        const afterProgress = (moved: boolean) => (moved ? Effect.zipRight(sendAck, signal) : Effect.void)

        const persist = Effect.suspend(() => {
          if (lastProcessed === persisted) return Effect.void
          const value = lastProcessed
          return sql`INSERT INTO replication_state (key, value) VALUES ('last_processed_lsn', ${String(value)})
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value`.pipe(
            Effect.tap(() => Effect.sync(() => void (persisted = value))),
            Effect.catchAll((cause) => Effect.logWarning("could not persist the replication position", cause))
          )
        })

        const tick = Effect.zipRight(
          persist,
          Effect.suspend(() => (acked <= sentAck ? Effect.void : sendAck))
        )
        yield* tick.pipe(Effect.repeat(Schedule.spaced("1 second")), Effect.forkScoped)
        // The final ack and position, when the stack stops: consumers are gone by now, so this is the last word.
        yield* Effect.addFinalizer(() => tick)

        return FlushTracker.of({
          track: (commitLsn, endLsn, handles) => {
            const p: Pending = { commitLsn, endLsn, remaining: handles.length }
            queue.push(p)
            for (const h of handles) {
              let list = perShape.get(h)
              if (list === undefined) {
                list = []
                perShape.set(h, list)
              }
              list.push(p)
            }
            // A transaction no shape received is durable as soon as everything before it is;
            // the periodic tick acknowledges it.
            if (handles.length === 0) advance()
          },
          durable: (handle, commitLsn) =>
            Effect.suspend(() => {
              const list = perShape.get(handle)
              if (list === undefined) return Effect.void
              let n = 0
              while (n < list.length && list[n]!.commitLsn <= commitLsn) {
                list[n]!.remaining--
                n++
              }
              if (n === 0) return Effect.void
              if (n === list.length) perShape.delete(handle)
              else list.splice(0, n)
              return afterProgress(advance())
            }),
          forget: (handle) =>
            Effect.suspend(() => {
              const list = perShape.get(handle)
              if (list === undefined) return Effect.void
              perShape.delete(handle)
              for (const p of list) p.remaining--
              return afterProgress(advance())
            }),
          inFlight: () => queue.length - head,
          awaitInFlightBelow: (limit) =>
            Effect.suspend(function loop(): Effect.Effect<void> {
              if (queue.length - head < limit) return Effect.void
              return Effect.zipRight(Deferred.await(wake), Effect.suspend(loop))
            }),
          lastProcessedLsn: () => lastProcessed,
          acknowledgedLsn: () => acked
        })
      })
    )
}
