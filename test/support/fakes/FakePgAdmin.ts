import { Effect, Layer } from "effect"
import { PgAdmin } from "../../../src/postgres/PgAdmin.js"
import type { FakePostgres } from "./FakePostgres.js"

/**
 * The administrative side of the fake database: publication and slot always
 * exist, tables need no set-up, and the slot's advisory lock is the fake's
 * shared lock, so a stack waits while "another process" (`db.lock(other)`)
 * holds it. Records `lock: acquired` / `lock: released` in `db.events`.
 */
export const FakePgAdmin = {
  layer: (db: FakePostgres, holder = "syncline"): Layer.Layer<PgAdmin> =>
    Layer.succeed(
      PgAdmin,
      PgAdmin.of({
        publicationName: "fake_publication",
        slotName: "fake_slot",
        checkPrerequisites: Effect.void,
        ensurePublication: Effect.void,
        ensureSlot: Effect.succeed({ created: false }),
        addTable: () => Effect.void,
        acquireLock: Effect.acquireRelease(
          Effect.zipRight(db.lock(holder), Effect.sync(() => db.record("lock: acquired"))),
          () => Effect.zipRight(db.unlock(holder), Effect.sync(() => db.record("lock: released")))
        ),
        isLockHeld: Effect.sync(() => db.lockedBy === holder),
        lockLost: Effect.never
      })
    )
} as const
