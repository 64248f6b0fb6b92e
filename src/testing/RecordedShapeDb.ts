import * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { ShapeDb } from "../storage/ShapeDb.js"
import type { FakePostgres } from "./FakePostgres.js"

/**
 * The real SQLite registry database (`ShapeDb.layer`), observed: its release
 * is recorded as `sqlite: closed` in `db.events` once the database has closed,
 * and every statement passes through `db.intercept.sql` (keyed by its SQL
 * text), so a test can stop a registry write mid-way, e.g. a removal between
 * its storage delete and its row delete.
 */
export const RecordedShapeDb = {
  layer: (db: FakePostgres, storageDir: string): Layer.Layer<SqlClient.SqlClient, unknown> =>
    Layer.scopedContext(
      Effect.gen(function*() {
        // Registered before the database is opened, so it runs after the database has closed.
        yield* Effect.addFinalizer(() => Effect.sync(() => db.record("sqlite: closed")))
        const context = yield* Layer.build(ShapeDb.layer(storageDir))
        const sql = Context.get(context, SqlClient.SqlClient)
        const call = sql as unknown as (...args: Array<unknown>) => Effect.Effect<unknown>
        // Calls nobody intercepts get the real statement back, with all its methods.
        const intercepted = (strings: unknown, ...args: Array<unknown>) => {
          const text = Array.isArray(strings) ? strings.join("?") : String(strings)
          return db.intercept.sql.matches(text) ? db.intercept.sql.around(text, call(strings, ...args)) : call(strings, ...args)
        }
        const wrapped = Object.assign(intercepted, sql) as unknown as SqlClient.SqlClient
        return Context.add(context, SqlClient.SqlClient, wrapped)
      })
    )
} as const
