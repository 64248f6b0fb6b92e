import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { PgAdmin } from "../postgres/PgAdmin.js"
import type { FakePostgres } from "./FakePostgres.js"

/**
 * The administrative side of the fake database: the publication always holds
 * every table, the slot is the fake's (dropped and created through it), and
 * the slot's advisory lock is the fake's
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
        publicationOid: Effect.succeed(16_000),
        identifySystem: Effect.sync(() => ({ systemId: db.systemId, timeline: db.timeline })),
        slotState: Effect.sync(() =>
          db.slotExists ? { _tag: "Usable", confirmedFlushLsn: db.confirmedFlush } as const : { _tag: "Missing" } as const
        ),
        createSlot: Effect.sync(() => db.createSlot()),
        dropSlot: Effect.sync(() => db.dropSlot()),
        publicationStates: (oids) =>
          Effect.succeed(new Map(oids.map((oid) => [oid, { published: true, replicaFull: true }] as const))),
        addTable: () => Effect.succeed(false),
        logRunningTransactions: () => db.logRunningTransactions(),
        acquireLock: Effect.acquireRelease(
          Effect.zipRight(db.lock(holder), Effect.sync(() => db.record("lock: acquired"))),
          () => Effect.zipRight(db.unlock(holder), Effect.sync(() => db.record("lock: released")))
        ),
        isLockHeld: Effect.sync(() => db.lockedBy === holder),
        lockLost: Effect.never
      })
    )
} as const
