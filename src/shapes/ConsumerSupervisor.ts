import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FiberId from "effect/FiberId"
import * as FiberMap from "effect/FiberMap"
import * as Layer from "effect/Layer"
import * as Queue from "effect/Queue"
import type { Lsn } from "../domain/Lsn.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import { MaterializerGone } from "../domain/errors.js"
import { Snapshot } from "../postgres/Snapshot.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import type { Routed } from "../replication/ShapeLogCollector.js"
import { ShapeLogStorage } from "../storage/ShapeLogStorage.js"
import { type Invalidation, runConsumer, type Work, WorkQueue } from "./Consumer.js"
import { Materializer } from "./Materializer.js"
import type { Shape } from "./Shape.js"
import { shapeWhere } from "./ShapeResolver.js"
import { type SnapshotMark, ShapeStatus } from "./ShapeStatus.js"
import type { DependencyLink } from "./Subqueries.js"
import { logWhenStopped, realDelay } from "../domain/Lifecycle.js"

/**
 * The longest the pump waits for the consumers a batch started to open their logs (`start`). Opening takes a few
 * milliseconds; a log whose snapshot has thousands of chunks to check, or a disk that lags, takes longer, and the
 * other shapes must not wait for it.
 */
const OPEN_WAIT_MS = 50

/**
 * What the supervisor keeps of a registered shape. An idle shape is only this object: the Deferreds a consumer or
 * a reader waits on (an Effect Deferred takes most of a kilobyte) are made when someone first needs them.
 */
interface Registered {
  shape: Shape
  /** Where the shape's snapshot ended; undefined while it is being taken. */
  mark: SnapshotMark | undefined
  /** A consumer started before the snapshot completed waits here for the mark. */
  markWaiter: Deferred.Deferred<SnapshotMark> | undefined
  queue: WorkQueue | undefined
  /** The consumer found the shape invalid; it is being removed. */
  invalidated: boolean
  /** The commit LSN of the last transaction handed to its consumer. */
  deliveredLsn: Lsn
  /** The commit LSN up to which its consumer has made durable what it was handed, and who waits for more. */
  durableLsn: Lsn
  waiters: Array<{ readonly lsn: Lsn; readonly done: Deferred.Deferred<void, MaterializerGone> }>
  /** When other shapes read this one through a subquery: its materializer, and when it is loaded (`readyOf`). */
  materializer: Materializer | undefined
  ready: Deferred.Deferred<Materializer, MaterializerGone> | undefined
}

const readyOf = (reg: Registered): Deferred.Deferred<Materializer, MaterializerGone> =>
  reg.ready ??= Deferred.unsafeMake<Materializer, MaterializerGone>(FiberId.none)

const markOf = (reg: Registered): Effect.Effect<SnapshotMark> =>
  Effect.suspend(() => {
    if (reg.mark !== undefined) return Effect.succeed(reg.mark)
    reg.markWaiter ??= Deferred.unsafeMake<SnapshotMark>(FiberId.none)
    return Deferred.await(reg.markWaiter)
  })

/**
 * Owns the consumers of a stack, one fiber per shape in a `FiberMap`, started
 * lazily on the first transaction routed to the shape: an idle shape costs a
 * registration, not a fiber. Closing the stack interrupts them; each finishes
 * the batch it is writing first (the write is uninterruptible). A shape's
 * storage faults stay with the shape (`runConsumer`); only a defect (a bug)
 * restarts the stack.
 *
 * It also links subquery shapes to the shapes they read (DESIGN.md, "Subquery
 * shapes"): each dependency shape gets a materializer, which its own consumer
 * loads from its log and feeds; each transaction handed to a shape with
 * subqueries carries, per dependency, the last transaction handed to that
 * dependency, which its consumer waits to be durable there before evaluating it.
 */
export class ConsumerSupervisor extends Context.Tag("syncline/ConsumerSupervisor")<ConsumerSupervisor, {
  /**
   * Makes shapes known, in order (a shape after those its subqueries read); `snapshot` is given for restored
   * shapes, later through `snapshotReady` for new ones. Thousands are restored at start-up: a call takes many, as
   * one effect.
   */
  readonly register: (shapes: ReadonlyArray<{ readonly shape: Shape; readonly snapshot: SnapshotMark | undefined }>) => Effect.Effect<void>
  /**
   * A new shape's snapshot is complete; `shape` is the form the shape is kept in from now on (its consumer, if
   * running, goes on with the one it started with).
   */
  readonly snapshotReady: (handle: ShapeHandle, mark: SnapshotMark, shape: Shape) => Effect.Effect<void>
  /**
   * Hands routed transactions (in commit order) to the consumers of the shapes they go to, starting those not
   * running: each consumer gets its part of the batch in one offer. Then waits, at most `OPEN_WAIT_MS` in all,
   * until the consumers it started are done with their first attempt at opening their logs (`start`).
   */
  readonly deliver: (batch: ReadonlyArray<Routed>) => Effect.Effect<void>
  /** Stops a shape's consumer and forgets the shape (removal). */
  readonly unregister: (handle: ShapeHandle) => Effect.Effect<void>
  /** Shapes whose consumer found them invalid (e.g. truncated); the shape cache removes them. */
  readonly invalidations: Queue.Dequeue<Invalidation>
  /** Fails when a consumer hits a defect: the stack must restart. */
  readonly failure: Effect.Effect<never>
  /** How many consumers run now (a shape's consumer starts with the first transaction routed to it). */
  readonly running: Effect.Effect<number>
}>() {
  static readonly layer: Layer.Layer<ConsumerSupervisor, never, FlushTracker | ShapeLogStorage | ShapeStatus | Snapshot> =
    Layer.scoped(
      ConsumerSupervisor,
      Effect.gen(function*() {
        yield* logWhenStopped("ConsumerSupervisor")
        const tracker = yield* FlushTracker
        const storage = yield* ShapeLogStorage
        const status = yield* ShapeStatus
        const snapshot = yield* Snapshot
        const fibers = yield* FiberMap.make<ShapeHandle>()
        const registered = new Map<ShapeHandle, Registered>()
        const invalidations = yield* Queue.unbounded<Invalidation>()
        const failed = yield* Deferred.make<never>()
        // Transactions at or below it were handled before this stack started: the slot does not send them again.
        const replayFloor = tracker.lastProcessedLsn()
        let lastDelivered = replayFloor

        const durable = (reg: Registered, lsn: Lsn) => {
          if (lsn > reg.durableLsn) reg.durableLsn = lsn
          if (reg.waiters.length === 0) return
          const still: Registered["waiters"] = []
          for (const w of reg.waiters) {
            if (w.lsn <= reg.durableLsn) Deferred.unsafeDone(w.done, Effect.void)
            else still.push(w)
          }
          reg.waiters = still
        }

        const linkTo = (handle: ShapeHandle): DependencyLink => {
          const gone = new MaterializerGone({ handle })
          return {
            handle,
            materializer: Effect.suspend(() => {
              const reg = registered.get(handle)
              return reg === undefined ? Effect.fail(gone) : Deferred.await(readyOf(reg))
            }),
            awaitDurable: (lsn) =>
              Effect.suspend(() => {
                const reg = registered.get(handle)
                if (reg === undefined) return Effect.fail(gone)
                if (lsn <= reg.durableLsn) return Effect.void
                const done = Deferred.unsafeMake<void, MaterializerGone>(undefined as never)
                reg.waiters.push({ lsn, done })
                return Deferred.await(done)
              })
          }
        }

        /**
         * Starts a shape's consumer. `opened` completes once the consumer's first attempt at opening its log is
         * done (opened or failed) or the consumer has stopped; it is undefined when there is nothing to wait for:
         * the shape's snapshot is still being taken (the log is opened after it) or its where no longer parses (no
         * consumer runs). The pump waits for it (`deliver`): each asynchronous step of an open waits for a turn of
         * the event loop, and during a catch-up the reading of the slot takes most of every turn; behind it, the
         * open takes tens of milliseconds, while what the pump routes to the shape meanwhile waits in its queue.
         */
        const start = (reg: Registered): Effect.Effect<{ readonly queue: WorkQueue; readonly opened: Effect.Effect<void> | undefined }> =>
          Effect.gen(function*() {
            const queue = new WorkQueue()
            reg.queue = queue
            const handle = reg.shape.handle
            // A restored shape's where is parsed here, when a transaction first reaches it: one that no longer
            // parses cannot be followed, and is removed as it would have been at start-up. What is routed to it
            // meanwhile is dropped, and the ack waits for the removal.
            const where = shapeWhere(reg.shape)
            if (Either.isLeft(where)) {
              reg.invalidated = true
              yield* Queue.offer(invalidations, { handle, reason: `its where no longer parses: ${where.left.message}` })
              return { queue, opened: undefined }
            }
            // Dropped once settled: a running consumer keeps its `openLog`, which would keep the Deferred.
            let opening = reg.mark === undefined ? undefined : Deferred.unsafeMake<void>(FiberId.none)
            const opened = opening === undefined ? undefined : Deferred.await(opening)
            const settleOpening = Effect.sync(() => {
              if (opening === undefined) return
              Deferred.unsafeDone(opening, Effect.void)
              opening = undefined
            })
            // The log is opened once the snapshot is written (`runConsumer` waits for it): a new shape's storage
            // is created by its snapshot.
            const consumer = runConsumer({
              shape: reg.shape,
              openLog: Effect.ensuring(storage.open(handle), settleOpening),
              queue,
              snapshot: markOf(reg),
              tracker,
              invalidate: (reason) =>
                Effect.suspend(() => {
                  // Work still routed to it is dropped, not acknowledged: the ack waits for the removal.
                  reg.invalidated = true
                  return Queue.offer(invalidations, { handle, reason })
                }),
              markPastSnapshot: (at) => status.markPastSnapshot(handle, at).pipe(
                Effect.catchAll((e) => Effect.logWarning(`shape ${handle}: could not record that it is past its snapshot`, e))
              ),
              subqueries: {
                links: reg.shape.dependencies.map(linkTo),
                own: () => reg.materializer,
                loaded: (m) => Deferred.succeed(readyOf(reg), m).pipe(Effect.asVoid),
                durable: (lsn) => durable(reg, lsn),
                replayFloor,
                rows: snapshot.rows,
                moves: {
                  load: status.moves(handle),
                  record: (moves) => status.recordMoves(handle, moves),
                  forget: (lsns) => status.forgetMoves(handle, lsns)
                }
              }
            }).pipe(
              // A bug is a fault of the stack, not of the shape: the stack restarts and the shape, with what it
              // already made durable, stays.
              Effect.catchAllCause((cause) =>
                Cause.isInterruptedOnly(cause)
                  ? Effect.failCause(cause)
                  : Effect.zipRight(
                    Effect.logError(`consumer of shape ${handle} failed; restarting the stack`, cause),
                    Deferred.failCause(failed, cause)
                  )
              ),
              Effect.ensuring(
                Effect.zipRight(
                  settleOpening,
                  Effect.sync(() => {
                    if (reg.queue === queue) reg.queue = undefined
                  })
                )
              )
            )
            yield* FiberMap.run(fibers, handle, consumer)
            return { queue, opened }
          })

        /** A shape is read through a subquery: it gets a materializer, which its consumer loads now. */
        const readBy = (dependency: Registered, reader: Shape) =>
          Effect.gen(function*() {
            if (dependency.materializer === undefined) dependency.materializer = new Materializer(dependency.shape.handle)
            const m = dependency.materializer
            // From here on the reader may ask how the values were at any later commit: keep that history.
            m.dependentAt(reader.handle, lastDelivered)
            const where = reader.where!
            for (const p of where.positions) {
              if (reader.dependencies[p.node.dependency] !== dependency.shape.handle) continue
              const select = where.dependencies[p.node.dependency]!.select
              m.index({ columns: select.map((c) => c.name), types: select.map((c) => c.type), domains: p.node.domains })
            }
            if (m.loaded) return
            // A wake-up: the consumer loads the materializer at its next batch boundary, when all it handled is durable.
            const queue = dependency.queue ?? (yield* start(dependency)).queue
            queue.offer({ txn: undefined, delivery: undefined })
          })

        return ConsumerSupervisor.of({
          register: (shapes) =>
            Effect.gen(function*() {
              for (const { shape, snapshot } of shapes) {
                const reg: Registered = {
                  shape,
                  mark: snapshot,
                  markWaiter: undefined,
                  queue: undefined,
                  invalidated: false,
                  deliveredLsn: 0n,
                  durableLsn: 0n,
                  waiters: [],
                  materializer: undefined,
                  ready: undefined
                }
                registered.set(shape.handle, reg)
                if (shape.dependencies.length === 0) continue
                for (const d of new Set(shape.dependencies)) {
                  const dependency = registered.get(d)
                  if (dependency !== undefined) yield* readBy(dependency, shape)
                }
              }
            }),
          snapshotReady: (handle, mark, shape) =>
            Effect.suspend(() => {
              const reg = registered.get(handle)
              if (reg === undefined || reg.mark !== undefined) return Effect.void
              reg.mark = mark
              reg.shape = shape
              return reg.markWaiter === undefined ? Effect.void : Deferred.succeed(reg.markWaiter, mark)
            }),
          deliver: (batch) =>
            Effect.suspend(() => {
              // In commit order, so that each transaction's `needs` are the dependencies' deliveries up to it.
              const works = new Map<Registered, Array<Work>>()
              let unknown: Set<ShapeHandle> | undefined
              for (const { txn, deliveries } of batch) {
                if (txn.commitLsn > lastDelivered) lastDelivered = txn.commitLsn
                for (const delivery of deliveries) {
                  const reg = registered.get(delivery.handle)
                  if (reg === undefined) {
                    ;(unknown ??= new Set()).add(delivery.handle)
                    continue
                  }
                  if (reg.invalidated) continue
                  reg.deliveredLsn = txn.commitLsn
                  const deps = reg.shape.dependencies
                  const work: Work = {
                    txn,
                    delivery,
                    needs: deps.length === 0 ? undefined : deps.map((d) => registered.get(d)?.deliveredLsn ?? 0n)
                  }
                  const list = works.get(reg)
                  if (list === undefined) works.set(reg, [work])
                  else list.push(work)
                }
              }
              let starting: Array<readonly [Registered, Array<Work>]> | undefined
              for (const [reg, list] of works) {
                if (reg.queue !== undefined) reg.queue.offerAll(list)
                else (starting ??= []).push([reg, list])
              }
              const offers = starting === undefined ? Effect.void : Effect.flatMap(
                Effect.forEach(starting, ([reg, list]) => {
                  if (reg.queue !== undefined) {
                    reg.queue.offerAll(list)
                    return Effect.succeed(undefined)
                  }
                  return Effect.map(start(reg), ({ opened, queue }) => {
                    queue.offerAll(list)
                    return opened
                  })
                }),
                (started) => {
                  const openings = started.filter((o) => o !== undefined)
                  return openings.length === 0
                    ? Effect.void
                    : Effect.raceFirst(Effect.all(openings, { discard: true }), realDelay(OPEN_WAIT_MS))
                }
              )
              return unknown === undefined ? offers : Effect.zipRight(offers, Effect.forEach(unknown, tracker.forget, { discard: true }))
            }),
          unregister: (handle) =>
            Effect.suspend(() => {
              const reg = registered.get(handle)
              registered.delete(handle)
              if (reg !== undefined) {
                const gone = new MaterializerGone({ handle })
                if (reg.ready !== undefined) Deferred.unsafeDone(reg.ready, Effect.fail(gone))
                for (const w of reg.waiters) Deferred.unsafeDone(w.done, Effect.fail(gone))
                reg.waiters = []
                for (const d of reg.shape.dependencies) registered.get(d)?.materializer?.dependentGone(handle)
              }
              return Effect.zipRight(FiberMap.remove(fibers, handle), tracker.forget(handle))
            }),
          invalidations,
          failure: Deferred.await(failed),
          running: FiberMap.size(fibers)
        })
      })
    )
}
