import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { StackConfig } from "../config/StackConfig.js"
import type { StackSupervisor } from "../stack/StackSupervisor.js"
import { sourceTotals, stackFigures } from "./StackFigures.js"

/** One point of the status page's charts: running totals and the lag, at a moment. */
export interface StatusSample {
  /** Milliseconds since the epoch. */
  readonly at: number
  readonly transactions: number
  readonly changes: number
  /** Responses of the shape API so far, by status class. */
  readonly responses: Readonly<Record<string, number>>
  readonly lagBytes: number
  readonly lagSeconds: number
}

/** How often a sample is taken, and how many are kept: the last ten minutes. */
const EVERY = "1 second"
const KEPT = 600

/**
 * The recent history of one source for its status page: a sample every
 * second of its totals and lag, the last ten minutes of them, taken by a fiber
 * that lives as long as the layer.
 */
export class StatusHistory extends Context.Tag("syncline/StatusHistory")<StatusHistory, {
  /** The samples kept, oldest first. */
  readonly samples: () => ReadonlyArray<StatusSample>
}>() {
  static readonly layer: Layer.Layer<StatusHistory, never, StackSupervisor | StackConfig> = Layer.scoped(
    StatusHistory,
    Effect.gen(function*() {
      const kept: Array<StatusSample> = []
      const take = Effect.gen(function*() {
        const figures = yield* stackFigures
        const totals = yield* sourceTotals
        kept.push({
          at: yield* Clock.currentTimeMillis,
          transactions: totals.transactions,
          changes: totals.changes,
          responses: totals.responses,
          lagBytes: figures.active?.lagBytes ?? 0,
          lagSeconds: figures.active?.lagSeconds ?? 0
        })
        if (kept.length > KEPT) kept.splice(0, kept.length - KEPT)
      })
      yield* take
      yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Effect.sleep(EVERY), take)))
      return StatusHistory.of({ samples: () => [...kept] })
    })
  )
}
