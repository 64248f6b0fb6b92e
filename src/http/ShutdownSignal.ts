import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

/**
 * Tells held long-polls that the server is stopping, so they answer at once
 * instead of keeping `server.close()` waiting until their timeout: the Node
 * server waits for open requests before it closes.
 */
export class ShutdownSignal extends Context.Tag("syncline/ShutdownSignal")<ShutdownSignal, {
  /** Completes when the server starts stopping. */
  readonly await: Effect.Effect<void>
  readonly trigger: Effect.Effect<void>
}>() {
  static readonly layer: Layer.Layer<ShutdownSignal> = Layer.effect(
    ShutdownSignal,
    Effect.map(Deferred.make<void>(), (latch) =>
      ShutdownSignal.of({
        await: Deferred.await(latch),
        trigger: Deferred.succeed(latch, undefined).pipe(Effect.asVoid)
      }))
  )

  /**
   * A layer whose release triggers the signal. Merged beside the HTTP server
   * layer (and built after it), it is released before the server starts
   * waiting for open requests.
   */
  static readonly drain: Layer.Layer<never, never, ShutdownSignal> = Layer.scopedDiscard(
    Effect.flatMap(ShutdownSignal, (signal) => Effect.addFinalizer(() => signal.trigger))
  )
}
