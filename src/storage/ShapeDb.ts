import { NodeContext } from "@effect/platform-node"
import { SqlClient } from "@effect/sql"
import { SqliteClient, SqliteMigrator } from "@effect/sql-sqlite-node"
import { Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { logWhenStopped } from "../domain/Lifecycle.js"

/**
 * The SQLite database that makes the shape registry durable:
 * `<storage dir>/meta/shapes.sqlite`, migrated at open.
 */
const migrations = SqliteMigrator.fromRecord({
  "0001_shapes": Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.all([
      sql`CREATE TABLE shapes (
        handle TEXT PRIMARY KEY,
        identity TEXT NOT NULL UNIQUE,
        snapshot_complete INTEGER NOT NULL DEFAULT 0,
        snapshot TEXT,
        removing INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
      ) STRICT`,
      sql`CREATE TABLE replication_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT`
    ], { discard: true })
  )
})

export const ShapeDb = {
  /** SQLite at `<storageDir>/meta/shapes.sqlite`, migrated; provides `SqlClient`. */
  layer: (storageDir: string): Layer.Layer<SqlClient.SqlClient, unknown> => {
    const dir = path.join(storageDir, "meta")
    return SqliteMigrator.layer({ loader: migrations }).pipe(
      Layer.provideMerge(
        Layer.unwrapEffect(
          Effect.sync(() => {
            fs.mkdirSync(dir, { recursive: true })
            // The marker is a dependency of the client, so it is released (and logs) after the database closed.
            return SqliteClient.layer({ filename: path.join(dir, "shapes.sqlite") }).pipe(
              Layer.provide(Layer.scopedDiscard(logWhenStopped("ShapeDb")))
            )
          })
        )
      ),
      Layer.provide(NodeContext.layer)
    )
  }
} as const
