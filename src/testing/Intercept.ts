import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"

/**
 * A one-shot interception point inside a fake: the next call whose argument
 * matches runs the test's effect first (to block it, or interrupt it mid-call),
 * then the fake's own behaviour. Later calls run normally.
 */
export class Intercept<A> {
  private pending: { readonly when: (a: A) => boolean; readonly run: (a: A) => Effect.Effect<void, unknown> } | undefined

  /** Arms the interception for the next matching call; an effect that fails makes the call fail with its error. */
  next(run: (a: A) => Effect.Effect<void, unknown>, when: (a: A) => boolean = () => true): void {
    this.pending = { when, run }
  }

  /** Whether the next call with `a` would be intercepted. */
  matches(a: A): boolean {
    return this.pending !== undefined && this.pending.when(a)
  }

  /** Runs `body`, preceded by the armed effect if `a` is the call it waits for. */
  around<X, E, R>(a: A, body: Effect.Effect<X, E, R>): Effect.Effect<X, E, R> {
    return Effect.suspend(() => {
      const p = this.pending
      if (p === undefined || !p.when(a)) return body
      this.pending = undefined
      // A failure armed by the test is the call's failure, whatever its type: the fakes stand in for I/O.
      return Effect.zipRight(p.run(a) as Effect.Effect<void, E>, body)
    })
  }
}

/** What a blocking interception reports: `reached` completes when the call arrives, `release` lets it go on. */
export interface Gate {
  readonly reached: Deferred.Deferred<void>
  readonly release: Deferred.Deferred<void>
  /** The effect to arm an `Intercept` with. */
  readonly hold: Effect.Effect<void>
}

/** A gate that holds one call until the test releases it. */
export const makeGate: Effect.Effect<Gate> = Effect.gen(function*() {
  const reached = yield* Deferred.make<void>()
  const release = yield* Deferred.make<void>()
  return { reached, release, hold: Effect.zipRight(Deferred.succeed(reached, undefined), Deferred.await(release)) }
})
