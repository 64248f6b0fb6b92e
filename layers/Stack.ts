import { Effect, Layer } from "effect"
import * as path from "node:path"
import { publicationName, slotName, type StackSettings } from "../src/config/StackConfig.js"
import { Inspector } from "../src/postgres/Inspector.js"
import { PgAdmin } from "../src/postgres/PgAdmin.js"
import { PgPool } from "../src/postgres/PgPool.js"
import { ReplicationConnection } from "../src/postgres/ReplicationConnection.js"
import { Snapshot } from "../src/postgres/Snapshot.js"
import { FlushTracker } from "../src/replication/FlushTracker.js"
import { ShapeLogCollector } from "../src/replication/ShapeLogCollector.js"
import { ConsumerSupervisor } from "../src/shapes/ConsumerSupervisor.js"
import { ShapeCache } from "../src/shapes/ShapeCache.js"
import { ShapeStatus } from "../src/shapes/ShapeStatus.js"
import { Snapshotter } from "../src/shapes/Snapshotter.js"
import { ReplicationPump } from "../src/stack/ReplicationPump.js"
import { ShapeDb } from "../src/storage/ShapeDb.js"
import { ShapeLogStorage } from "../src/storage/ShapeLogStorage.js"

/**
 * One stack: everything that serves one source database. Each `provide` is a
 * dependency edge, and Effect releases a layer before what it depends on, so
 * this graph is the teardown order (DESIGN.md):
 *
 *   pump, shape cache -> consumers -> collector -> flush tracker (final ack)
 *   -> replication connection -> slot lock -> registry -> SQLite, pools.
 */
export const Stack = (settings: StackSettings, databaseUrl: string) => {
  const sqlite = ShapeDb.layer(settings.storageDir)
  const pool = PgPool.layer({ connectionString: databaseUrl })
  const admin = PgAdmin.layer({ publicationName: publicationName(settings), slotName: slotName(settings) }).pipe(
    Layer.provide(pool)
  )
  // Owning the slot: prerequisites, publication, the advisory lock (held for the stack's life), the slot.
  const slot = Layer.scopedDiscard(
    Effect.gen(function*() {
      const pg = yield* PgAdmin
      yield* pg.checkPrerequisites
      yield* pg.ensurePublication
      yield* pg.acquireLock
      yield* pg.ensureSlot
    })
  ).pipe(Layer.provide(admin))
  const replication = ReplicationConnection.layer({
    connectionString: databaseUrl,
    slotName: slotName(settings),
    publicationName: publicationName(settings)
  }).pipe(Layer.provide(slot))
  const tracker = FlushTracker.layer.pipe(Layer.provide(replication), Layer.provide(sqlite))
  const collector = ShapeLogCollector.layer.pipe(Layer.provide(tracker))
  const storage = ShapeLogStorage.layer({
    directory: path.join(settings.storageDir, "shapes"),
    chunkBytesThreshold: settings.chunkBytesThreshold
  })
  const registry = ShapeStatus.layer.pipe(Layer.provide(sqlite))
  const consumers = ConsumerSupervisor.layer.pipe(Layer.provide(tracker), Layer.provide(storage), Layer.provide(registry))
  const snapshotter = Snapshotter.layer.pipe(Layer.provide(Snapshot.layer), Layer.provide(pool))
  const inspector = Inspector.layer.pipe(Layer.provide(pool))
  const shapeCache = ShapeCache.layer.pipe(
    Layer.provide(consumers),
    Layer.provide(collector),
    Layer.provide(snapshotter),
    Layer.provide(Layer.mergeAll(registry, storage, tracker, inspector, admin))
  )
  // The pump starts after the shape cache has seeded the routing index, and stops before it.
  const pump = ReplicationPump.layer.pipe(
    Layer.provide(shapeCache),
    Layer.provide(Layer.mergeAll(replication, collector, consumers, tracker))
  )
  return Layer.mergeAll(pump, shapeCache, storage, collector, tracker)
}
