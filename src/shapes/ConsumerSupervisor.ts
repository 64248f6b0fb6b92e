import { Cause, Context, Deferred, Effect, FiberMap, Layer, Queue } from "effect"
import type { Transaction } from "../domain/Change.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import type { Delivery } from "../replication/ShapeLogCollector.js"
import { ShapeLogStorage } from "../storage/ShapeLogStorage.js"
import { type Invalidation, runConsumer, type Work } from "./Consumer.js"
import type { Shape } from "./Shape.js"
import { type SnapshotMark, ShapeStatus } from "./ShapeStatus.js"
import { logWhenStopped } from "../domain/Lifecycle.js"

interface Registered {
  readonly shape: Shape
  readonly snapshot: Deferred.Deferred<SnapshotMark>
  queue: Queue.Queue<Work> | undefined
  /** The consumer found the shape invalid; it is being removed. */
  invalidated: boolean
}

/**
 * Owns the consumers of a stack, one fiber per shape in a `FiberMap`, started
 * lazily on the first transaction routed to the shape: an idle shape costs a
 * registration, not a fiber. Closing the stack interrupts them; each finishes
 * the batch it is writing first (the write is uninterruptible). A shape's
 * storage faults stay with the shape (`runConsumer`); only a defect (a bug)
 * restarts the stack.
 */
export class ConsumerSupervisor extends Context.Tag("syncline/ConsumerSupervisor")<ConsumerSupervisor, {
  /** Makes a shape known; `snapshot` is given for restored shapes, later through `snapshotReady` for new ones. */
  readonly register: (shape: Shape, snapshot: SnapshotMark | undefined) => Effect.Effect<void>
  readonly snapshotReady: (handle: ShapeHandle, mark: SnapshotMark) => Effect.Effect<void>
  /** Hands a routed transaction to the shape's consumer, starting it if needed. */
  readonly deliver: (txn: Transaction, delivery: Delivery) => Effect.Effect<void>
  /** Stops a shape's consumer and forgets the shape (removal). */
  readonly unregister: (handle: ShapeHandle) => Effect.Effect<void>
  /** Shapes whose consumer found them invalid (e.g. truncated); the shape cache removes them. */
  readonly invalidations: Queue.Dequeue<Invalidation>
  /** Fails when a consumer hits a defect: the stack must restart. */
  readonly failure: Effect.Effect<never>
}>() {
  static readonly layer: Layer.Layer<ConsumerSupervisor, never, FlushTracker | ShapeLogStorage | ShapeStatus> = Layer.scoped(
    ConsumerSupervisor,
    Effect.gen(function*() {
      yield* logWhenStopped("ConsumerSupervisor")
      const tracker = yield* FlushTracker
      const storage = yield* ShapeLogStorage
      const status = yield* ShapeStatus
      const fibers = yield* FiberMap.make<ShapeHandle>()
      const registered = new Map<ShapeHandle, Registered>()
      const invalidations = yield* Queue.unbounded<Invalidation>()
      const failed = yield* Deferred.make<never>()

      const start = (reg: Registered): Effect.Effect<Queue.Queue<Work>> =>
        Effect.gen(function*() {
          const queue = yield* Queue.unbounded<Work>()
          reg.queue = queue
          const handle = reg.shape.handle
          // The log is opened once the snapshot is written (`runConsumer` waits for it): a new shape's storage
          // is created by its snapshot.
          const consumer = runConsumer({
            shape: reg.shape,
            openLog: storage.open(handle),
            queue,
            snapshot: reg.snapshot,
            tracker,
            invalidate: (reason) =>
              Effect.suspend(() => {
                // Work still routed to it is dropped, not acknowledged: the ack waits for the removal.
                reg.invalidated = true
                return Queue.offer(invalidations, { handle, reason })
              }),
            markPastSnapshot: status.markPastSnapshot(handle).pipe(
              Effect.catchAll((e) => Effect.logWarning(`shape ${handle}: could not record that it is past its snapshot`, e))
            )
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
              Effect.sync(() => {
                if (reg.queue === queue) reg.queue = undefined
              })
            )
          )
          yield* FiberMap.run(fibers, handle, consumer)
          return queue
        })

      return ConsumerSupervisor.of({
        register: (shape, snapshot) =>
          Effect.gen(function*() {
            const deferred = yield* Deferred.make<SnapshotMark>()
            if (snapshot !== undefined) yield* Deferred.succeed(deferred, snapshot)
            registered.set(shape.handle, { shape, snapshot: deferred, queue: undefined, invalidated: false })
          }),
        snapshotReady: (handle, mark) =>
          Effect.suspend(() => {
            const reg = registered.get(handle)
            return reg === undefined ? Effect.void : Deferred.succeed(reg.snapshot, mark)
          }),
        deliver: (txn, delivery) =>
          Effect.suspend(() => {
            const reg = registered.get(delivery.handle)
            if (reg === undefined) return tracker.forget(delivery.handle)
            if (reg.invalidated) return Effect.void
            if (reg.queue !== undefined) return Queue.offer(reg.queue, { txn, delivery })
            return Effect.flatMap(start(reg), (queue) => Queue.offer(queue, { txn, delivery }))
          }),
        unregister: (handle) =>
          Effect.suspend(() => {
            registered.delete(handle)
            return Effect.zipRight(FiberMap.remove(fibers, handle), tracker.forget(handle))
          }),
        invalidations,
        failure: Deferred.await(failed)
      })
    })
  )
}
