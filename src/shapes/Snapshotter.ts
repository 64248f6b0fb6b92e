import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { PostgresError, StorageError } from "../domain/errors.js"
import { Snapshot } from "../postgres/Snapshot.js"
import { columnSignature } from "../replication/ShapeLogCollector.js"
import type { ShapeLog } from "../storage/ShapeLogStorage.js"
import type { Shape } from "./Shape.js"
import type { SnapshotMark } from "./ShapeStatus.js"

/** How often a long snapshot says how far it got; one that took longer says how long it took. */
const PROGRESS_EVERY_MS = 5_000

/** The `snapshot-end` control message that closes every initial snapshot. */
export const snapshotEndMessage = (mark: SnapshotMark): string =>
  `{"headers":{"control":"snapshot-end","xmin":"${mark.xmin}","xmax":"${mark.xmax}","xip_list":[${mark.xip.map((x) => `"${x}"`).join(",")}]}}`

/**
 * Writes a new shape's initial snapshot into its log: the rows of a
 * REPEATABLE READ snapshot, then `snapshot-end`, then marks the snapshot
 * complete in storage. `changes_only` shapes take the snapshot for its
 * visibility information only.
 */
export class Snapshotter extends Context.Tag("syncline/Snapshotter")<Snapshotter, {
  readonly run: (shape: Shape, log: ShapeLog) => Effect.Effect<SnapshotMark, PostgresError | StorageError>
}>() {
  static readonly layer: Layer.Layer<Snapshotter, never, Snapshot> = Layer.effect(
    Snapshotter,
    Effect.map(Snapshot, (snapshot) =>
      Snapshotter.of({
        run: (shape, log) =>
          Effect.gen(function*() {
            const changesOnly = shape.definition.log === "changes_only"
            const what = `shape ${shape.handle}: snapshot of ${shape.table.schema}.${shape.table.name}`
            const started = yield* Clock.currentTimeMillis
            let rows = 0
            let reported = started
            const info = yield* snapshot.take(shape.table, {
              whereSql: changesOnly ? "false" : shape.where?.sql,
              columns: shape.columns,
              onRows: (batch) =>
                Effect.zipRight(
                  log.appendSnapshotRows(batch.bytes),
                  Effect.flatMap(Clock.currentTimeMillis, (now) => {
                    rows += batch.count
                    if (now - reported < PROGRESS_EVERY_MS) return Effect.void
                    reported = now
                    return Effect.logInfo(`${what}: ${rows} rows so far`)
                  })
                )
            })
            const took = (yield* Clock.currentTimeMillis) - started
            if (took >= PROGRESS_EVERY_MS) yield* Effect.logInfo(`${what}: ${rows} rows in ${(took / 1000).toFixed(1)} s`)
            const mark: SnapshotMark = {
              xmin: info.xmin,
              xmax: info.xmax,
              xip: info.xip,
              lsn: info.lsn,
              columns: columnSignature(shape.table.columns),
              tableOid: shape.table.oid
            }
            yield* log.appendSnapshot([snapshotEndMessage(mark)])
            yield* log.completeSnapshot
            return mark
          })
      })
    )
  )
}
