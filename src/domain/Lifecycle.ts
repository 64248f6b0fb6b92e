import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"

/**
 * Logs `<name> stopped` at debug level when the current scope closes. A
 * service registers it first, so it runs after the service's other
 * finalizers: the stack's teardown order becomes observable in the logs.
 */
export const logWhenStopped = (name: string): Effect.Effect<void, never, Scope.Scope> =>
  Effect.addFinalizer(() => Effect.logDebug(`${name} stopped`))

/**
 * Waits `ms` of real time, whatever clock the stack runs on: a wait for the disk or for Postgres, which a
 * `TestClock` would otherwise hold forever.
 */
export const realDelay = (ms: number): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    const timer = setTimeout(() => resume(Effect.void), ms)
    return Effect.sync(() => clearTimeout(timer))
  })
