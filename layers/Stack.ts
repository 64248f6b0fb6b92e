import type * as SqlClient from "@effect/sql/SqlClient"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as path from "node:path"
import { publicationName, slotName, type StackSettings } from "../src/config/StackConfig.js"
import { logWhenStopped } from "../src/domain/Lifecycle.js"
import { Inspector } from "../src/postgres/Inspector.js"
import { PgAdmin } from "../src/postgres/PgAdmin.js"
import { PgPool } from "../src/postgres/PgPool.js"
import { ReplicationConnection } from "../src/postgres/ReplicationConnection.js"
import { Snapshot } from "../src/postgres/Snapshot.js"
import { FlushTracker } from "../src/replication/FlushTracker.js"
import { ShapeLogCollector } from "../src/replication/ShapeLogCollector.js"
import { ConsumerSupervisor } from "../src/shapes/ConsumerSupervisor.js"
import { ReadOnlyShapes } from "../src/shapes/ReadOnlyShapes.js"
import { ShapeCache } from "../src/shapes/ShapeCache.js"
import { ShapeStatus } from "../src/shapes/ShapeStatus.js"
import { Snapshotter } from "../src/shapes/Snapshotter.js"
import { PublicationWatch } from "../src/stack/PublicationWatch.js"
import { ReplicationPump } from "../src/stack/ReplicationPump.js"
import { SourceCheck } from "../src/stack/SourceCheck.js"
import type { Infrastructure } from "../src/stack/StackSupervisor.js"
import { ShapeDb } from "../src/storage/ShapeDb.js"
import { ShapeLogStorage, type ShapeLogStorageOptions } from "../src/storage/ShapeLogStorage.js"
import type { StorageError } from "../src/domain/errors.js"

/** What a stack is made of: Postgres and files in production, fakes in `layers/Test.ts`. */
export interface StackParts<E> {
  /** Built first, without the slot's lock: what serving existing shapes read-only needs. */
  readonly infrastructure: Layer.Layer<Infrastructure, E>
  /** The shape registry's database, opened for writing (and migrated) once the slot's lock is held. */
  readonly registryDb: Layer.Layer<SqlClient.SqlClient, E>
  /** The replication stream; built once the slot is ours. */
  readonly replication: Layer.Layer<ReplicationConnection, E>
  /** The storage dir: the read-only phase reads its registry through a read-only connection. */
  readonly storageDir: string
  readonly storage: ShapeLogStorageOptions
  /** The shape log storage over `storage`; `ShapeLogStorage.layer` when absent (tests wrap it to hold a write). */
  readonly storageLayer?: ((options: ShapeLogStorageOptions) => Layer.Layer<ShapeLogStorage, StorageError>) | undefined
  /** How often the active stack checks that every table with shapes is still published. */
  readonly publicationCheckInterval: Duration.DurationInput
  /** How many routed transactions consumers may hold before the pump waits; the pump's default when absent. */
  readonly maxInFlight?: number
}

/**
 * One stack, in two phases. Read-only: the infrastructure and the read-only
 * view of existing shapes. Active, once the advisory lock is held: everything
 * else. Each `provide` is a dependency edge, and Effect releases a layer
 * before what it depends on, so this graph is the teardown order (DESIGN.md):
 *
 *   publication watch, pump -> shape cache -> consumers -> collector
 *   -> flush tracker (final ack) -> replication connection -> registry, storage
 *   -> SQLite -> slot lock -> (read-only phase) pools.
 */
export const makeStack = <E>(parts: StackParts<E>) => {
  const readOnly = ReadOnlyShapes.layer(parts.storage, parts.storageDir).pipe(
    Layer.provideMerge(parts.infrastructure)
  )
  // Owning the slot: the prerequisites, then the advisory lock, held for the stack's life.
  const lock = Layer.scopedDiscard(
    Effect.gen(function*() {
      yield* logWhenStopped("slot lock")
      const admin = yield* PgAdmin
      yield* admin.checkPrerequisites
      yield* admin.acquireLock
    })
  )
  // Everything shared with another instance (SQLite, its migrations, the files, the slot, the publication) is
  // touched only under the lock, and SQLite closes before the lock is released.
  const registryDb = parts.registryDb.pipe(Layer.provide(lock))
  // Invariant 8: the slot, the database and the publication are checked before the registry is loaded. The
  // `source` edges order start-up only: what the check marks for removal, the registry must not load.
  const source = SourceCheck.layer.pipe(Layer.provide(registryDb))
  const registry = ShapeStatus.layer.pipe(Layer.provide(source), Layer.provide(registryDb))
  const storage = (parts.storageLayer ?? ShapeLogStorage.layer)(parts.storage).pipe(Layer.provide(source))
  // The connection closes before the registry: an edge that orders teardown (and starts it after the lock).
  const replication = parts.replication.pipe(Layer.provide(registry))
  const tracker = FlushTracker.layer.pipe(Layer.provide(replication), Layer.provide(registryDb))
  const collector = ShapeLogCollector.layer.pipe(Layer.provide(tracker))
  // Consumers stop before the collector, which stops before the flush tracker's final ack.
  const consumers = ConsumerSupervisor.layer.pipe(
    Layer.provide(tracker),
    Layer.provide(collector),
    Layer.provide(storage),
    Layer.provide(registry)
  )
  const snapshotter = Snapshotter.layer
  const shapeCache = ShapeCache.layer.pipe(
    Layer.provide(consumers),
    Layer.provide(collector),
    Layer.provide(snapshotter),
    Layer.provide(Layer.mergeAll(registry, storage, tracker))
  )
  // The pump starts after the shape cache has seeded the routing index, and stops before it.
  const pump = ReplicationPump.layer(parts.maxInFlight).pipe(
    Layer.provide(shapeCache),
    Layer.provide(Layer.mergeAll(replication, collector, consumers, tracker))
  )
  // Invalidates through the shape cache, so it stops first.
  const watch = PublicationWatch.layer(parts.publicationCheckInterval).pipe(Layer.provide(shapeCache))
  return { readOnly, active: Layer.mergeAll(pump, watch, shapeCache, storage, collector, tracker, consumers) }
}

/** The production stack: Postgres at `databaseUrl`, files under the storage dir. */
export const Stack = (settings: StackSettings, databaseUrl: string) => {
  const pool = PgPool.layer({ connectionString: databaseUrl })
  const infrastructure = Layer.mergeAll(
    Inspector.layer,
    PgAdmin.layer({ publicationName: publicationName(settings), slotName: slotName(settings) }),
    Snapshot.layer
  ).pipe(Layer.provide(pool))
  return makeStack({
    infrastructure,
    registryDb: ShapeDb.layer(settings.storageDir),
    replication: ReplicationConnection.layer({
      connectionString: databaseUrl,
      slotName: slotName(settings),
      publicationName: publicationName(settings)
    }),
    storageDir: settings.storageDir,
    storage: {
      directory: path.join(settings.storageDir, "shapes"),
      chunkBytesThreshold: settings.chunkBytesThreshold
    },
    publicationCheckInterval: settings.publicationCheckIntervalMs
  })
}
