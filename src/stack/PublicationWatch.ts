import * as Cause from "effect/Cause"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import { logWhenStopped } from "../domain/Lifecycle.js"
import { Inspector } from "../postgres/Inspector.js"
import { PgAdmin } from "../postgres/PgAdmin.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { checkTables } from "./SourceCheck.js"

/**
 * Checks the tables with shapes while the stack is active, every `interval`
 * (DESIGN.md, invariant 8): each must still be the table the shapes were
 * taken from, published with `REPLICA IDENTITY FULL`. A table found otherwise
 * (dropped, created again, taken out of the publication, its replica identity
 * changed) may have changed unseen: its shapes are invalidated, then it is
 * put back when it still exists.
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
          yield* checkTables(shapes, (handles, _table, why, putBack) =>
            Effect.gen(function*() {
              const reason = `its table ${why}, so changes may have been missed`
              for (const handle of handles) yield* cache.remove(handle, reason)
              if (putBack !== undefined) yield* admin.addTable(putBack)
            }))
        })
        yield* check.pipe(
          // A check that cannot run now (Postgres unreachable, even a bug) is tried again at the next one.
          Effect.catchAllCause((cause) =>
            Cause.isInterruptedOnly(cause)
              ? Effect.failCause(cause)
              : Effect.logWarning("could not check the publication; trying again later", cause)
          ),
          Effect.repeat(Schedule.spaced(interval)),
          Effect.delay(interval),
          Effect.forkScoped
        )
      })
    )
} as const
