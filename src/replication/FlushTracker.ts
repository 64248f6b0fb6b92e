import * as SqlClient from "@effect/sql/SqlClient"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { Lsn } from "../domain/Lsn.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { RegistryError } from "../domain/errors.js"
import { ReplicationConnection } from "../postgres/ReplicationConnection.js"
import { ReplicationState } from "../storage/ReplicationState.js"
import { logWhenStopped, realDelay } from "../domain/Lifecycle.js"

interface Pending {
  /** The transaction's commit LSN; undefined for a stream position (a keepalive's), which no shape receives. */
  commitLsn: Lsn | undefined
  endLsn: Lsn
  remaining: number
}

/** How often the acknowledged position is retried when it could not be persisted or sent. */
const RETRY = "1 second"

/**
 * The least time between two persisted acknowledgements, and the most. Each is a synchronous SQLite commit
 * with an fsync (about a millisecond, the event loop blocked meanwhile): under a burst of small transactions,
 * one every batch would take a large share of the loop, while spacing them costs at most that much delay.
 * A slow disk spaces them further, so that the commits take at most a fifth of the time.
 */
const PERSIST_SPACING_MS = 10
const PERSIST_SPACING_MAX_MS = 200
/**
 * While transactions keep arriving (a catch-up after a restart reads them as fast as it can), a persisted
 * acknowledgement waits for more to become durable, up to this long after the last: what the slot learns a little
 * later costs nothing, while a commit every `PERSIST_SPACING_MS` blocked the loop for a tenth of a catch-up. The
 * burst is over, and the position persisted at once, when the server has said it has sent everything (the
 * keepalive a walsender sends when it has caught up and waits for more WAL), or when a spacing passes with no new
 * transaction.
 */
const PERSIST_BURST_MS = 100

/** The queue length below which completed entries are not folded together. */
const COMPACT_MIN = 4096

/**
 * Decides what Postgres may forget (DESIGN.md, invariant 3). Every routed
 * transaction is tracked with the shapes that received it; the acknowledged
 * position is the end LSN of the highest transaction below which everything is
 * durable in every shape. A transaction that touched no shape, and a stream
 * position past which the server has sent nothing (a keepalive's), count as
 * durable once everything before them is: so the slot moves on while the
 * synced tables are quiet and other tables are written.
 *
 * Each acknowledged position is persisted in the registry, with the commit
 * LSN of the last transaction durable everywhere, before the standby status
 * carrying it is sent. After a restart the collector drops replayed
 * transactions at or below that commit LSN; and a slot found acknowledged
 * past the persisted position means the storage is older than the slot
 * (DESIGN.md, invariant 8).
 */
export class FlushTracker extends Context.Tag("syncline/FlushTracker")<FlushTracker, {
  /** Records a routed transaction and the shapes it went to; called in commit order. */
  readonly track: (commitLsn: Lsn, endLsn: Lsn, handles: ReadonlyArray<ShapeHandle>) => void
  /** Records a stream position past every transaction tracked so far (a keepalive's WAL end); called in stream order. */
  readonly trackPosition: (lsn: Lsn) => void
  /** A shape made everything up to `commitLsn` durable (or skipped it). */
  readonly durable: (handle: ShapeHandle, commitLsn: Lsn) => Effect.Effect<void>
  /** A shape went away: it no longer holds transactions back. */
  readonly forget: (handle: ShapeHandle) => Effect.Effect<void>
  /** Transactions routed to some shape and not yet durable in all of them: what consumers hold in memory. */
  readonly inFlight: () => number
  /** Whether a stream position was tracked after the last transaction: the server had sent everything it had then. */
  readonly caughtUp: () => boolean
  /** Waits until fewer than `limit` transactions are in flight. */
  readonly awaitInFlightBelow: (limit: number) => Effect.Effect<void>
  /** The commit LSN of the last transaction durable everywhere. */
  readonly lastProcessedLsn: () => Lsn
  /**
   * `lastProcessedLsn` as the registry holds it, persisted with the acknowledgement sent after it: a restart drops
   * every transaction at or below it, so nothing at or below it is ever handled again.
   */
  readonly persistedProcessedLsn: () => Lsn
  /** The end LSN that may be acknowledged: everything below it is durable (persisted and sent shortly after). */
  readonly acknowledgedLsn: () => Lsn
  /** The end LSN last sent to Postgres, after it was persisted. */
  readonly sentLsn: () => Lsn
}>() {
  static readonly layer: Layer.Layer<FlushTracker, RegistryError, ReplicationConnection | SqlClient.SqlClient> =
    Layer.scoped(
      FlushTracker,
      Effect.gen(function*() {
        yield* logWhenStopped("FlushTracker")
        const sql = yield* SqlClient.SqlClient
        const replication = yield* ReplicationConnection
        const stored = yield* ReplicationState.read(sql)
        let lastProcessed: Lsn = stored.lastProcessed ?? 0n
        let persistedAck: Lsn = stored.acknowledged ?? 0n
        let persistedProcessed: Lsn = stored.lastProcessed ?? 0n
        let acked: Lsn = 0n
        let sentAck: Lsn = 0n
        /** Transactions tracked so far: the sender tells a burst from a pause by it. */
        let tracked = 0
        /** Whether a stream position came after the last transaction: the server has sent what it had. */
        let positionSinceTransaction = false

        // `queue[head..]` are the transactions and positions not yet durable everywhere, in stream order.
        let queue: Array<Pending> = []
        let head = 0
        let compactAt = COMPACT_MIN
        let undurable = 0
        /** Per shape, the transactions it has not made durable: `items[head..]`, in commit order. */
        const perShape = new Map<ShapeHandle, { items: Array<Pending>; head: number }>()
        let wake = Deferred.unsafeMake<void>(undefined as never)
        const ackWanted = yield* Effect.makeLatch(false)

        const complete = (commitLsn: Lsn | undefined, endLsn: Lsn) => {
          if (commitLsn !== undefined) lastProcessed = commitLsn
          if (endLsn > acked) acked = endLsn
        }

        // Called after transactions became durable somewhere: wakes a pump waiting for room, moves the ack.
        const advance = (): void => {
          const old = wake
          wake = Deferred.unsafeMake<void>(undefined as never)
          Deferred.unsafeDone(old, Effect.void)
          let moved = false
          while (head < queue.length && queue[head]!.remaining === 0) {
            const p = queue[head++]!
            complete(p.commitLsn, p.endLsn)
            moved = true
          }
          if (head > 1024 && head * 2 > queue.length) {
            queue.splice(0, head)
            head = 0
          }
          if (moved) ackWanted.unsafeOpen()
        }

        /**
         * Folds each run of entries durable everywhere into one (no shape's list refers to them any more), so
         * that transactions behind one slow shape cost memory for the pending ones only. Amortised: it runs
         * when the queue has doubled since the last time.
         */
        const compact = () => {
          const kept: Array<Pending> = []
          for (let i = head; i < queue.length; i++) {
            const p = queue[i]!
            const last = kept[kept.length - 1]
            if (p.remaining === 0 && last !== undefined && last.remaining === 0) {
              if (p.commitLsn !== undefined) last.commitLsn = p.commitLsn
              if (p.endLsn > last.endLsn) last.endLsn = p.endLsn
            } else {
              kept.push(p)
            }
          }
          queue = kept
          head = 0
          compactAt = Math.max(COMPACT_MIN, kept.length * 2)
        }

        const push = (p: Pending) => {
          queue.push(p)
          if (queue.length - head > compactAt) compact()
        }

        /**
         * Something no shape holds back: durable at once when nothing before it is pending, else merged
         * into the last entry when that one is complete too (a long run of such entries behind one slow
         * shape costs one entry, not one each).
         */
        const trackDurable = (commitLsn: Lsn | undefined, endLsn: Lsn) => {
          if (head === queue.length) {
            complete(commitLsn, endLsn)
            ackWanted.unsafeOpen()
            return
          }
          const last = queue[queue.length - 1]!
          if (last.remaining === 0) {
            if (commitLsn !== undefined) last.commitLsn = commitLsn
            if (endLsn > last.endLsn) last.endLsn = endLsn
            return
          }
          push({ commitLsn, endLsn, remaining: 0 })
        }

        // Persisted, then sent: the registry never holds less than Postgres was told (invariant 8). One step,
        // so that a stop never cuts it; an interrupted or failed step is taken again by the next one.
        const sendAcks = Effect.suspend(function loop(): Effect.Effect<void, RegistryError> {
          if (acked <= sentAck) return Effect.void
          const value = acked
          const processed = lastProcessed
          return Effect.uninterruptible(
            Effect.gen(function*() {
              if (value > persistedAck) {
                yield* ReplicationState.writePositions(sql, processed, value)
                persistedAck = value
                if (processed > persistedProcessed) persistedProcessed = processed
              }
              yield* replication.ack(value)
              if (value > sentAck) sentAck = value
            })
          ).pipe(Effect.zipRight(Effect.suspend(loop)))
        })

        // Whatever goes wrong here (a full disk under SQLite, a bug), the sender goes on: a sender that died would
        // hold the slot's position for the rest of the stack's life.
        let failing = false
        let persistedAt = -Infinity
        let spacing = PERSIST_SPACING_MS
        const sender = Effect.gen(function*() {
          yield* ackWanted.await
          // A burst: what becomes durable meanwhile goes with this one.
          const since = performance.now() - persistedAt
          if (since < spacing) yield* realDelay(spacing - since)
          while (!positionSinceTransaction && performance.now() - persistedAt < PERSIST_BURST_MS) {
            const before = tracked
            yield* realDelay(PERSIST_SPACING_MS)
            if (tracked === before) break
          }
          yield* ackWanted.close
          persistedAt = performance.now()
          yield* sendAcks.pipe(
            Effect.ensuring(Effect.sync(() => {
              spacing = Math.min(PERSIST_SPACING_MAX_MS, Math.max(PERSIST_SPACING_MS, 5 * (performance.now() - persistedAt)))
            })),
            Effect.tap(() => {
              if (!failing) return Effect.void
              failing = false
              return Effect.logInfo("the replication position is persisted and acknowledged again")
            }),
            Effect.catchAllCause((cause) => {
              if (Cause.isInterruptedOnly(cause)) return Effect.failCause(cause)
              const report = failing
                ? Effect.void
                : Effect.logWarning("could not persist the replication position; the acknowledgement waits", cause)
              failing = true
              return Effect.zipRight(report, Effect.delay(ackWanted.open, RETRY))
            })
          )
        }).pipe(Effect.forever)
        // The final ack, when the stack stops: consumers are gone by now, so this is the last word. Registered
        // first, so it runs last: after the sender below has been stopped (and finished the step it was in).
        yield* Effect.addFinalizer(() =>
          sendAcks.pipe(Effect.catchAll((error) => Effect.logWarning("could not persist the final replication position", error)))
        )
        yield* Effect.forkScoped(sender)

        return FlushTracker.of({
          track: (commitLsn, endLsn, handles) => {
            tracked++
            positionSinceTransaction = false
            if (handles.length === 0) return trackDurable(commitLsn, endLsn)
            const p: Pending = { commitLsn, endLsn, remaining: handles.length }
            push(p)
            undurable++
            for (const h of handles) {
              const list = perShape.get(h)
              if (list === undefined) perShape.set(h, { items: [p], head: 0 })
              else list.items.push(p)
            }
          },
          trackPosition: (lsn) => {
            positionSinceTransaction = true
            if (lsn > acked) trackDurable(undefined, lsn)
          },
          durable: (handle, commitLsn) =>
            Effect.sync(() => {
              const list = perShape.get(handle)
              if (list === undefined) return
              const { items } = list
              const first = list.head
              let n = first
              while (n < items.length && items[n]!.commitLsn! <= commitLsn) {
                if (--items[n]!.remaining === 0) undurable--
                n++
              }
              if (n === first) return
              if (n === items.length) perShape.delete(handle)
              else if (n > 1024 && n * 2 > items.length) {
                // Dropped in bulk now and then, so that a shape far behind does not pay for its whole list each time.
                items.splice(0, n)
                list.head = 0
              } else list.head = n
              advance()
            }),
          forget: (handle) =>
            Effect.sync(() => {
              const list = perShape.get(handle)
              if (list === undefined) return
              perShape.delete(handle)
              for (let i = list.head; i < list.items.length; i++) if (--list.items[i]!.remaining === 0) undurable--
              advance()
            }),
          inFlight: () => undurable,
          caughtUp: () => positionSinceTransaction,
          awaitInFlightBelow: (limit) =>
            Effect.suspend(function loop(): Effect.Effect<void> {
              if (undurable < limit) return Effect.void
              return Effect.zipRight(Deferred.await(wake), Effect.suspend(loop))
            }),
          lastProcessedLsn: () => lastProcessed,
          persistedProcessedLsn: () => persistedProcessed,
          acknowledgedLsn: () => acked,
          sentLsn: () => sentAck
        })
      })
    )
}
