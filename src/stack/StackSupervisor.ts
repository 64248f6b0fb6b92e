import { Cause, Context, Deferred, Duration, Effect, FiberHandle, Layer, Option, Schedule, Scope, Stream, SubscriptionRef } from "effect"
import { PostgresError, StackNotReady } from "../domain/errors.js"
import type { FlushTracker } from "../replication/FlushTracker.js"
import type { ShapeLogCollector } from "../replication/ShapeLogCollector.js"
import type { ShapeCache } from "../shapes/ShapeCache.js"
import type { ShapeLogStorage } from "../storage/ShapeLogStorage.js"
import { ReplicationPump } from "./ReplicationPump.js"

/** Where the current stack is in its life. `ReadOnly` serves existing shapes while waiting for the slot's lock. */
export interface StackStatus {
  readonly _tag: "Starting" | "ReadOnly" | "Active" | "Stopping"
}

const Status = {
  starting: { _tag: "Starting" } as StackStatus,
  readOnly: { _tag: "ReadOnly" } as StackStatus,
  active: { _tag: "Active" } as StackStatus,
  stopping: { _tag: "Stopping" } as StackStatus
}

/**
 * Owns the current stack in a scope of its own, rebuilt on restart (or after
 * the replication stream fails) in the same process. HTTP handlers reach the
 * stack's services only through `current`, so a restart swaps the stack
 * without touching a handler.
 */
export interface StackSupervisorService<R> {
  readonly status: SubscriptionRef.SubscriptionRef<StackStatus>
  /** The active stack's services; waits up to `timeout` for one, then fails with `StackNotReady`. */
  readonly current: (timeout: Duration.DurationInput) => Effect.Effect<Context.Context<R>, StackNotReady>
  /** Closes the current stack (teardown in layer order) and builds a new one. */
  readonly restart: Effect.Effect<void>
  /** Fails when the stack cannot start and retrying cannot help (e.g. `wal_level` is not logical). */
  readonly fatal: Effect.Effect<never, PostgresError>
}

/** Errors no retry can fix: the operator must change Postgres's configuration or the role. */
const isFatal = (error: unknown): error is PostgresError =>
  error instanceof PostgresError && (error.reason === "WalLevel" || error.reason === "Permission")

const backoff = Schedule.exponential("500 millis").pipe(Schedule.either(Schedule.spaced("30 seconds")))

/** Builds the supervisor for a stack layer; the stack is started at once and closed with the caller's scope. */
export const makeStackSupervisor = <R, E, RIn>(
  stack: Layer.Layer<R | ReplicationPump, E, RIn>
): Effect.Effect<StackSupervisorService<R>, never, Scope.Scope | RIn> =>
  Effect.gen(function*() {
    const status = yield* SubscriptionRef.make<StackStatus>(Status.starting)
    let context: Option.Option<Context.Context<R | ReplicationPump>> = Option.none()
    const running = yield* FiberHandle.make()

    // One life of a stack: built in its own scope, active until the pump fails or the fiber is interrupted.
    const runOnce = Effect.acquireUseRelease(
      Scope.make(),
      (scope) =>
        Effect.gen(function*() {
          const built = yield* Layer.buildWithScope(stack, scope)
          context = Option.some(built)
          yield* SubscriptionRef.set(status, Status.active)
          yield* Effect.logInfo("stack active")
          return yield* Effect.flatMap(ReplicationPump, (pump) => pump.failure).pipe(Effect.provide(built))
        }),
      (scope, exit) =>
        Effect.gen(function*() {
          context = Option.none()
          yield* SubscriptionRef.set(status, Status.stopping)
          yield* Scope.close(scope, exit)
          yield* SubscriptionRef.set(status, Status.starting)
        })
    )

    const fatal = yield* Deferred.make<never, PostgresError>()
    const supervise = runOnce.pipe(
      Effect.tapErrorCause((cause) => {
        const failure = Cause.failureOption(cause)
        return Option.isSome(failure) && isFatal(failure.value)
          ? Deferred.fail(fatal, failure.value)
          : Effect.logError("stack stopped; starting it again", cause)
      }),
      Effect.retry({ schedule: backoff, while: (error) => !isFatal(error) })
    )

    const environment = yield* Effect.context<RIn>()
    const start = FiberHandle.run(running, supervise).pipe(Effect.provide(environment), Effect.asVoid)
    const stop = FiberHandle.clear(running)
    yield* start
    yield* Effect.addFinalizer(() => stop)

    const notReady = Effect.flatMap(SubscriptionRef.get(status), (s) => Effect.fail(new StackNotReady({ status: s._tag })))
    const current = (timeout: Duration.DurationInput) =>
      Effect.suspend((): Effect.Effect<Context.Context<R>, StackNotReady> => {
        if (Option.isSome(context)) return Effect.succeed(context.value as Context.Context<R>)
        return status.changes.pipe(
          Stream.filter(() => Option.isSome(context)),
          Stream.runHead,
          Effect.timeoutOption(timeout),
          Effect.flatMap(() => (Option.isSome(context) ? Effect.succeed(context.value as Context.Context<R>) : notReady))
        )
      })

    return { status, current, restart: Effect.zipRight(stop, start), fatal: Deferred.await(fatal) }
  })

/** The services of a stack that request handlers use. */
export type StackServices = ShapeCache | ShapeLogStorage | ShapeLogCollector | FlushTracker

/** The supervisor as a service: what the HTTP layer holds instead of a stack. */
export class StackSupervisor extends Context.Tag("syncline/StackSupervisor")<
  StackSupervisor,
  StackSupervisorService<StackServices>
>() {
  static readonly layer = <E, RIn>(
    stack: Layer.Layer<StackServices | ReplicationPump, E, RIn>
  ): Layer.Layer<StackSupervisor, never, RIn> => Layer.scoped(StackSupervisor, makeStackSupervisor(stack))
}
