import * as HttpServer from "@effect/platform/HttpServer"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as path from "node:path"
import { StackConfig, type StackSettings } from "../src/config/StackConfig.js"
import { ShapeApi } from "../src/http/ShapeApi.js"
import { ShutdownSignal } from "../src/http/ShutdownSignal.js"
import { StatusHistory } from "../src/observability/StatusHistory.js"
import type { StorageError } from "../src/domain/errors.js"
import { type RestartPolicy, StackSupervisor } from "../src/stack/StackSupervisor.js"
import { type ShapeLog, ShapeLogStorage } from "../src/storage/ShapeLogStorage.js"
import { FakeInspector } from "../src/testing/FakeInspector.js"
import { FakePgAdmin } from "../src/testing/FakePgAdmin.js"
import type { FakePostgres } from "../src/testing/FakePostgres.js"
import { FakeReplication } from "../src/testing/FakeReplication.js"
import { FakeSnapshot } from "../src/testing/FakeSnapshot.js"
import { RecordedShapeDb } from "../src/testing/RecordedShapeDb.js"
import { makeStack } from "./Stack.js"
import type { SynclineServices } from "./Syncline.js"

/**
 * Real file storage whose log commits and openings pass through `db.intercept.commit` and `db.intercept.open`, so
 * a test can hold one shape's write, or the opening of its log.
 */
const interceptedStorage = (db: FakePostgres, storage: Layer.Layer<ShapeLogStorage, StorageError>) =>
  Layer.effect(
    ShapeLogStorage,
    Effect.map(ShapeLogStorage, (inner) => {
      const wrap = (log: ShapeLog): ShapeLog => ({ ...log, commit: db.intercept.commit.around(log.handle, log.commit) })
      return ShapeLogStorage.of({
        ...inner,
        create: (handle) => Effect.map(inner.create(handle), wrap),
        open: (handle) => Effect.map(db.intercept.open.around(handle, inner.open(handle)), wrap)
      })
    })
  ).pipe(Layer.provide(storage))

/** Where a test stack keeps its durable state: SQLite and shape logs, real files that outlive each stack. */
export interface TestDirs {
  readonly storageDir: string
}

/**
 * A stack on the in-memory Postgres: real SQLite and shape storage under
 * `dirs`, fakes for the catalog, the admin side (advisory lock included), the
 * snapshot and the replication connection. `holder` names this process for
 * the advisory lock.
 */
export const TestStack = (
  db: FakePostgres,
  dirs: TestDirs,
  holder = "syncline",
  maxInFlight?: number,
  chunkBytesThreshold = 10_485_760
) =>
  makeStack({
    infrastructure: Layer.mergeAll(
      FakeInspector.layer(db),
      FakePgAdmin.layer(db, holder),
      FakeSnapshot.layer(db)
    ),
    registryDb: RecordedShapeDb.layer(db, dirs.storageDir),
    replication: FakeReplication.layer(db),
    storageDir: dirs.storageDir,
    storage: { directory: path.join(dirs.storageDir, "shapes"), chunkBytesThreshold },
    storageLayer: (options) => interceptedStorage(db, ShapeLogStorage.layer(options)),
    publicationCheckInterval: "1 minute",
    ...(maxInFlight === undefined ? {} : { maxInFlight })
  })

/**
 * `Syncline` on a test stack: what `ShapeApi` needs (`SynclineServices`) over
 * the in-memory Postgres, in place of `Syncline.layer` under a host app's
 * routes, or under `TestServer`.
 */
export const TestSyncline = (
  db: FakePostgres,
  dirs: TestDirs,
  settings: Partial<StackSettings> = {},
  holder = "syncline",
  options: {
    readonly policy?: RestartPolicy
    readonly maxInFlight?: number
    /** Where shape log chunks close; a tiny one gives every shape a log of many chunks. */
    readonly chunkBytesThreshold?: number
  } = {}
): Layer.Layer<SynclineServices> =>
  StatusHistory.layer.pipe(
    Layer.provideMerge(
      StackSupervisor.layer(TestStack(db, dirs, holder, options.maxInFlight, options.chunkBytesThreshold), options.policy)
    ),
    Layer.provideMerge(ShutdownSignal.layer),
    Layer.provideMerge(
      StackConfig.layerWith({ storageDir: dirs.storageDir, enableIntegrationTesting: true, ...settings })
    )
  )

/**
 * The HTTP API on a test stack, as `layers/Server.ts` wires it: a test server
 * on port 0 with an `HttpClient` aimed at it, the stack supervisor, the
 * shutdown signal and the settings. Request handlers share the test's clock.
 */
export const TestServer = (
  db: FakePostgres,
  dirs: TestDirs,
  settings: Partial<StackSettings> = {},
  holder = "syncline",
  options: Parameters<typeof TestSyncline>[4] = {}
) =>
  Layer.merge(HttpServer.serve(ShapeApi), ShutdownSignal.drain).pipe(
    Layer.provideMerge(NodeHttpServer.layerTest),
    Layer.provideMerge(TestSyncline(db, dirs, settings, holder, options))
  )
