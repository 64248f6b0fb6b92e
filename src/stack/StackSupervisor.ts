import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberHandle from "effect/FiberHandle"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import { PostgresError, ReplicationError, StackNotReady } from "../domain/errors.js"
import type { Inspector } from "../postgres/Inspector.js"
import type { PgAdmin } from "../postgres/PgAdmin.js"
import { isConnectionError } from "../postgres/PgPool.js"
import type { Snapshot } from "../postgres/Snapshot.js"
import type { FlushTracker } from "../replication/FlushTracker.js"
import type { ShapeLogCollector } from "../replication/ShapeLogCollector.js"
import type { ConsumerSupervisor } from "../shapes/ConsumerSupervisor.js"
import type { ReadOnlyShapes } from "../shapes/ReadOnlyShapes.js"
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

/** What a stack stands on, built before the slot's lock is held. */
export type Infrastructure = Inspector | PgAdmin | Snapshot

/** The services of a read-only stack (waiting for the slot's lock). */
export type ReadOnlyServices = ReadOnlyShapes | Infrastructure

/** The services of an active stack that request handlers use. */
export type StackServices =
  | ShapeCache
  | ShapeLogStorage
  | ShapeLogCollector
  | FlushTracker
  | ConsumerSupervisor
  | ReplicationPump

/** A stack in its two phases: read-only first, then active once the slot's advisory lock is ours. */
export interface StackLayers<E> {
  readonly readOnly: Layer.Layer<ReadOnlyServices, E>
  readonly active: Layer.Layer<StackServices, E, Infrastructure>
}

/** What a request to an active stack can use: its services and what the stack stands on. */
export type ActiveServices = StackServices | Infrastructure

/** The current stack as a request sees it. */
export type StackView =
  | { readonly mode: "active"; readonly context: Context.Context<ActiveServices> }
  | { readonly mode: "readOnly"; readonly context: Context.Context<ReadOnlyShapes> }

/**
 * Owns the current stack in a scope of its own, rebuilt on restart (or after
 * the replication stream fails) in the same process. HTTP handlers reach the
 * stack's services only through `current`, so a restart swaps the stack
 * without touching a handler.
 */
export interface StackSupervisorService {
  readonly status: SubscriptionRef.SubscriptionRef<StackStatus>
  /** The stack, read-only or active; waits up to `timeout` for one, then fails with `StackNotReady`. */
  readonly current: (timeout: Duration.DurationInput) => Effect.Effect<StackView, StackNotReady>
  /** The active stack; waits up to `timeout` for it, then fails with `StackNotReady`. */
  readonly active: (timeout: Duration.DurationInput) => Effect.Effect<Context.Context<ActiveServices>, StackNotReady>
  /** The active stack now, if there is one (no wait). */
  readonly activeNow: () => Option.Option<Context.Context<ActiveServices>>
  /** When the current stack became active, in milliseconds since the epoch; undefined while none is. */
  readonly activeSince: () => number | undefined
  /** Closes the current stack (teardown in layer order) and builds a new one. */
  readonly restart: Effect.Effect<void>
  /** Fails when the stack cannot start and retrying cannot help (e.g. `wal_level` is not logical). */
  readonly fatal: Effect.Effect<never, PostgresError>
  /** True while no stack is active because the last attempt could not reach the database. */
  readonly databaseUnreachable: () => boolean
  /** How many times a stack was started again, after a failure or on `restart`. */
  readonly restarts: () => number
}

/** How a supervisor waits between attempts to start a stack. */
export interface RestartPolicy {
  /** The wait after the first failure, doubled after each further one up to `maxDelay`. */
  readonly firstDelay: Duration.DurationInput
  readonly maxDelay: Duration.DurationInput
  /** A stack that stayed active this long was healthy: the next failure waits `firstDelay` again. */
  readonly healthyAfter: Duration.DurationInput
}

/**
 * A dropped replication connection on a healthy server is back within a second; a server that is down is
 * tried every 10 s at most, so it is found again soon after it returns.
 */
export const defaultRestartPolicy: RestartPolicy = {
  firstDelay: "500 millis",
  maxDelay: "10 seconds",
  healthyAfter: "3 seconds"
}

/** The wait before attempt `failures + 1` (after `failures` failures in a row, at least one). */
export const restartDelay = (policy: RestartPolicy, failures: number): Duration.Duration =>
  Duration.min(
    Duration.times(Duration.decode(policy.firstDelay), 2 ** Math.min(failures - 1, 30)),
    Duration.decode(policy.maxDelay)
  )

/** Errors no retry can fix: the operator must change Postgres's configuration, the role, or the stream id. */
const isFatal = (error: unknown): error is PostgresError =>
  error instanceof PostgresError &&
  (error.reason === "WalLevel" || error.reason === "Permission" || error.reason === "SlotTaken")

/** Whether a stack's failure says the database could not be reached (rather than a query or stream failing). */
const unreachable = (error: unknown): boolean =>
  (error instanceof PostgresError && error.reason === "Connection") ||
  (error instanceof ReplicationError && error.reason === "Connection" && isConnectionError(error.cause))

/** Builds the supervisor for a stack; the stack is started at once and closed with the caller's scope. */
export const makeStackSupervisor = <E>(
  stack: StackLayers<E>,
  policy: RestartPolicy = defaultRestartPolicy
): Effect.Effect<StackSupervisorService, never, Scope.Scope> =>
  Effect.gen(function*() {
    const status = yield* SubscriptionRef.make<StackStatus>(Status.starting)
    let view: Option.Option<StackView> = Option.none()
    const running = yield* FiberHandle.make()
    const fatal = yield* Deferred.make<never, PostgresError>()
    let activeSince: number | undefined
    let lastFailureUnreachable = false
    let restarts = 0

    const publish = (next: Option.Option<StackView>, s: StackStatus) =>
      Effect.suspend(() => {
        view = next
        return SubscriptionRef.set(status, s)
      })

    // One life of a stack: built in its own scope, active until the pump fails or the fiber is interrupted.
    const runOnce = Effect.acquireUseRelease(
      Scope.make(),
      (scope) =>
        Effect.gen(function*() {
          const readOnly = yield* Layer.buildWithScope(stack.readOnly, scope)
          yield* publish(Option.some({ mode: "readOnly", context: readOnly }), Status.readOnly)
          const active = yield* Layer.buildWithScope(
            stack.active.pipe(Layer.provide(Layer.succeedContext(readOnly))),
            scope
          )
          activeSince = yield* Clock.currentTimeMillis
          yield* publish(
            Option.some({ mode: "active", context: Context.merge(readOnly, active) }),
            Status.active
          )
          lastFailureUnreachable = false
          yield* Effect.logInfo("stack active")
          return yield* Effect.flatMap(ReplicationPump, (pump) => pump.failure).pipe(Effect.provide(active))
        }),
      (scope, exit) =>
        Effect.gen(function*() {
          yield* publish(Option.none(), Status.stopping)
          yield* Scope.close(scope, exit)
          yield* publish(Option.none(), Status.starting)
        })
    )

    // Each failure waits longer than the one before, unless the stack had been healthy in between: a crash
    // loop backs off, a blip after hours of service is retried at once.
    const supervise = Effect.gen(function*() {
      let failures = 0
      for (;;) {
        activeSince = undefined
        const exit = yield* Effect.exit(runOnce)
        if (Exit.isSuccess(exit) || Cause.isInterruptedOnly(exit.cause)) return
        const cause = exit.cause
        const failure = Cause.failureOption(cause)
        if (Option.isSome(failure) && isFatal(failure.value)) {
          // Said here too: in a host app nothing may be waiting on `fatal`.
          yield* Effect.logError(`the stack cannot start, and retrying cannot help: ${failure.value.message}`)
          return yield* Deferred.fail(fatal, failure.value)
        }
        const now = yield* Clock.currentTimeMillis
        if (activeSince !== undefined && now - activeSince >= Duration.toMillis(policy.healthyAfter)) failures = 0
        failures++
        // A bug in a stack (a defect) must not end the supervision for good: the stack is rebuilt like after a failure.
        const error = Option.isSome(failure) ? failure.value : Cause.squash(cause)
        lastFailureUnreachable = unreachable(error)
        const delay = restartDelay(policy, failures)
        yield* Effect.logError(`stack stopped; starting it again in ${Duration.format(delay)}`, cause)
        yield* Effect.sleep(delay)
        restarts++
      }
    })

    const start = FiberHandle.run(running, supervise).pipe(Effect.asVoid)
    const stop = FiberHandle.clear(running)
    yield* start
    yield* Effect.addFinalizer(() => stop)

    const waitFor = <A>(pick: (v: StackView) => Option.Option<A>, timeout: Duration.DurationInput) =>
      Effect.suspend((): Effect.Effect<A, StackNotReady> => {
        const now = Option.flatMap(view, pick)
        if (Option.isSome(now)) return Effect.succeed(now.value)
        return status.changes.pipe(
          Stream.filterMap(() => Option.flatMap(view, pick)),
          Stream.runHead,
          Effect.timeoutOption(timeout),
          Effect.map(Option.flatten),
          Effect.flatMap((found) =>
            Option.isSome(found)
              ? Effect.succeed(found.value)
              : Effect.flatMap(SubscriptionRef.get(status), (s) => Effect.fail(new StackNotReady({ status: s._tag })))
          )
        )
      })

    return {
      status,
      current: (timeout) => waitFor((v) => Option.some(v), timeout),
      active: (timeout) => waitFor((v) => (v.mode === "active" ? Option.some(v.context) : Option.none()), timeout),
      activeNow: () => Option.flatMap(view, (v) => (v.mode === "active" ? Option.some(v.context) : Option.none())),
      activeSince: () => (Option.isSome(view) && view.value.mode === "active" ? activeSince : undefined),
      // Never half done: a caller that goes away mid-teardown must not leave the process without a stack.
      restart: Effect.uninterruptible(Effect.zipRight(stop, Effect.zipRight(Effect.sync(() => restarts++), start))),
      fatal: Deferred.await(fatal),
      databaseUnreachable: () => lastFailureUnreachable && Option.isNone(view),
      restarts: () => restarts
    }
  })

/** The supervisor as a service: what the HTTP layer holds instead of a stack. */
export class StackSupervisor extends Context.Tag("syncline/StackSupervisor")<StackSupervisor, StackSupervisorService>() {
  static readonly layer = <E>(stack: StackLayers<E>, policy?: RestartPolicy): Layer.Layer<StackSupervisor> =>
    Layer.scoped(StackSupervisor, makeStackSupervisor(stack, policy))
}
