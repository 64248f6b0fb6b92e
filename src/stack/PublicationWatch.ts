import { type Duration, Effect, Layer, Schedule } from "effect"
import { logWhenStopped } from "../domain/Lifecycle.js"
import { Inspector } from "../postgres/Inspector.js"
import { PgAdmin } from "../postgres/PgAdmin.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { checkPublication } from "./SourceCheck.js"

/**
 * Checks the publication while the stack is active, every `interval`
 * (DESIGN.md, invariant 8): every table with shapes in it must be published
 * with `REPLICA IDENTITY FULL`. A table found otherwise (an operator removed
 * it, or changed its replica identity) may have changed unseen: its shapes are
 * invalidated, then it is put back.
 */
export const PublicationWatch = {
  layer: (interval: Duration.DurationInput): Layer.Layer<never, never, ShapeCache | PgAdmin | Inspector> =>
    Layer.scopedDiscard(
      Effect.gen(function*() {
        yield* logWhenStopped("PublicationWatch")
        const cache = yield* ShapeCache
        const admin = yield* PgAdmin
        const check = Effect.gen(function*() {
          const shapes = yield* cache.list
          yield* checkPublication(shapes, (handles, table, why) =>
            Effect.gen(function*() {
              const reason = `its table ${why}, so changes may have been missed`
              for (const handle of handles) yield* cache.remove(handle, reason)
              yield* admin.addTable(table)
            }))
        })
        yield* check.pipe(
          Effect.catchAll((error) => Effect.logWarning("could not check the publication; trying again later", error)),
          Effect.repeat(Schedule.spaced(interval)),
          Effect.delay(interval),
          Effect.forkScoped
        )
      })
    )
} as const
