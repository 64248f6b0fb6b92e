import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { ShapeHandle } from "../domain/ShapeHandle.js"
import { type InvalidRequest, type PostgresError, RegistryError, type StorageError } from "../domain/errors.js"
import { Inspector } from "../postgres/Inspector.js"
import { ShapeDb } from "../storage/ShapeDb.js"
import { openReader, type ShapeLogReader, type ShapeLogStorageOptions } from "../storage/ShapeLogStorage.js"
import { resolveSpec, type ResolvedSpec, type ShapeSpec } from "./ShapeResolver.js"

/**
 * Existing shapes served while another process owns the slot (a rolling
 * restart): every lookup asks SQLite and every read asks the files, because
 * the owner keeps creating shapes and committing logs. Nothing is written.
 */
export class ReadOnlyShapes extends Context.Tag("syncline/ReadOnlyShapes")<ReadOnlyShapes, {
  readonly resolve: (spec: ShapeSpec) => Effect.Effect<ResolvedSpec, InvalidRequest | PostgresError>
  /** The handle of a definition's shape whose snapshot is complete. */
  readonly byIdentity: (identity: string) => Effect.Effect<Option.Option<ShapeHandle>, RegistryError>
  /** The identity of a handle's shape, when it exists and its snapshot is complete. */
  readonly identityOf: (handle: string) => Effect.Effect<Option.Option<string>, RegistryError>
  readonly reader: (handle: ShapeHandle) => Effect.Effect<ShapeLogReader, StorageError>
}>() {
  /** Over the registry of `storageDir`, read through a read-only connection of its own, and the logs of `storage`. */
  static readonly layer = (
    storage: ShapeLogStorageOptions,
    storageDir: string
  ): Layer.Layer<ReadOnlyShapes, never, Inspector> =>
    Layer.scoped(
      ReadOnlyShapes,
      Effect.gen(function*() {
        const connection = yield* ShapeDb.reader(storageDir)
        const inspector = yield* Inspector
        const fail = (operation: string) => (cause: unknown) =>
          cause instanceof RegistryError ? cause : new RegistryError({ operation, cause })
        return ReadOnlyShapes.of({
          resolve: (spec) => resolveSpec(inspector, spec),
          byIdentity: (identity) =>
            Effect.flatMap(connection, (sql) =>
              sql<{ handle: string }>`SELECT handle FROM shapes
              WHERE identity = ${identity} AND snapshot_complete = 1 AND removing = 0`).pipe(
              Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), (r) => ShapeHandle(r.handle))),
              Effect.mapError(fail("byIdentity"))
            ),
          identityOf: (handle) =>
            Effect.flatMap(connection, (sql) =>
              sql<{ identity: string }>`SELECT identity FROM shapes
              WHERE handle = ${handle} AND snapshot_complete = 1 AND removing = 0`).pipe(
              Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), (r) => r.identity)),
              Effect.mapError(fail("identityOf"))
            ),
          reader: (handle) => openReader(storage, handle)
        })
      })
    )
}
