import { Effect, Layer } from "effect"
import { PostgresError } from "../../../src/domain/errors.js"
import { rowKey } from "../../../src/domain/RowKey.js"
import { Snapshot } from "../../../src/postgres/Snapshot.js"
import type { FakePostgres } from "./FakePostgres.js"

/**
 * Snapshots of the fake database: a table's current rows as the shape log's
 * insert messages, and visibility information in which every committed fake
 * transaction is visible (commits are atomic, so nothing is ever in progress).
 * Supports whole-table shapes and `changes_only` (`whereSql = "false"`). Each
 * snapshot passes through `db.intercept.snapshot`, so a test can hold one.
 */
export const FakeSnapshot = {
  layer: (db: FakePostgres): Layer.Layer<Snapshot> =>
    Layer.succeed(
      Snapshot,
      Snapshot.of({
        take: (table, options) =>
          db.intercept.snapshot.around({ schema: table.schema, name: table.name }, Effect.gen(function*() {
            if (options.whereSql !== undefined && options.whereSql !== "false") {
              return yield* new PostgresError({ reason: "Snapshot", message: "the fake snapshot reads whole tables only" })
            }
            const rows = options.whereSql === "false" ? [] : db.rows(table.name)
            const relation = [table.schema, table.name]
            const lines = rows.map((row) => {
              const value: Record<string, string | null> = {}
              for (const c of options.columns) value[c] = row[c] ?? null
              return JSON.stringify({ key: rowKey(table, row), value, headers: { operation: "insert", relation } })
            })
            const info = db.snapshotInfo(lines.length)
            if (lines.length > 0) yield* options.onLines(lines)
            return info
          })),
        rows: () => Effect.fail(new PostgresError({ reason: "Query", message: "the fake database answers no queries" }))
      })
    )
} as const
