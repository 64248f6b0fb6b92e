import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import { logWhenStopped } from "../domain/Lifecycle.js"
import type { Lsn } from "../domain/Lsn.js"
import type { ReplicationError } from "../domain/errors.js"
import { ReplicationConnection } from "../postgres/ReplicationConnection.js"
import type { FakePostgres } from "./FakePostgres.js"

/**
 * A replication connection on the fake slot: each build is a new connection
 * that resumes from the slot's `confirmed_flush_lsn` (or fails, while
 * `db.refuseConnections` says so; `db.breakStreams` fails the open ones). Its acks go to the slot
 * (through `db.intercept.ack`, so a test can block or interrupt one mid-call),
 * and it records `replication: connected`, `replication: stream closed`,
 * `replication: ack <lsn>` and `replication: closed` in `db.events`.
 */
export const FakeReplication = {
  layer: (db: FakePostgres): Layer.Layer<ReplicationConnection, ReplicationError> =>
    Layer.scoped(
      ReplicationConnection,
      Effect.gen(function*() {
        yield* logWhenStopped("ReplicationConnection")
        yield* db.connectReplication
        yield* Effect.acquireRelease(
          Effect.sync(() => db.record("replication: connected")),
          () => Effect.sync(() => db.record("replication: closed"))
        )
        let acked: Lsn = 0n
        return ReplicationConnection.of({
          events: db.stream().pipe(Stream.ensuring(Effect.sync(() => db.record("replication: stream closed")))),
          ack: (endLsn) =>
            db.intercept.ack.around(
              endLsn,
              Effect.sync(() => {
                db.record(`replication: ack ${endLsn}`)
                if (endLsn <= acked) return
                acked = endLsn
                db.ack(endLsn)
              })
            ),
          acknowledged: Effect.sync(() => acked)
        })
      })
    )
} as const
