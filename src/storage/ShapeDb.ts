import * as NodeContext from "@effect/platform-node/NodeContext"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as SqliteMigrator from "@effect/sql-sqlite-node/SqliteMigrator"
import * as Reactivity from "@effect/experimental/Reactivity"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as path from "node:path"
import { logWhenStopped } from "../domain/Lifecycle.js"
import { RegistryError } from "../domain/errors.js"

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
  ),
  // The dependency graph of subquery shapes: which shape each `IN (SELECT …)` of a shape reads; and whether a
  // client asked for a shape itself (a shape made only for a subquery goes with its last reader).
  "0002_shape_dependencies": Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.all([
      sql`CREATE TABLE shape_dependencies (
        handle TEXT NOT NULL,
        position INTEGER NOT NULL,
        dependency TEXT NOT NULL,
        PRIMARY KEY (handle, position)
      ) STRICT`,
      sql`ALTER TABLE shapes ADD COLUMN requested INTEGER NOT NULL DEFAULT 1`
    ], { discard: true })),
  // The moves of a subquery shape whose rows were written from a snapshot that may hold later transactions
  // (`SubqueryState`): kept until no later transaction can be in that snapshot.
  "0003_shape_moves": Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql`CREATE TABLE shape_moves (
      handle TEXT NOT NULL,
      lsn TEXT NOT NULL,
      op INTEGER NOT NULL,
      snapshot TEXT NOT NULL,
      PRIMARY KEY (handle, lsn)
    ) STRICT`),
  // A move also tells the shapes reading its shape about rows its query found and left out (`left_out`), and may
  // have written nothing (`wrote` 0): such a record is kept though the log has nothing at its LSN.
  "0004_shape_moves_left_out": Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.all([
      sql`ALTER TABLE shape_moves ADD COLUMN left_out TEXT NOT NULL DEFAULT '[]'`,
      sql`ALTER TABLE shape_moves ADD COLUMN wrote INTEGER NOT NULL DEFAULT 1`
    ], { discard: true })),
  // What routing needs of a shape (`ShapeRouting`), so that a restart routes to it without parsing its where.
  // NULL for rows written before it was recorded: derived and stored at the next start.
  "0005_shape_routing": Effect.flatMap(SqlClient.SqlClient, (sql) => sql`ALTER TABLE shapes ADD COLUMN routing TEXT`)
})

/** Where the registry of a storage dir lives. */
export const registryFile = (storageDir: string): string => path.join(storageDir, "meta", "shapes.sqlite")

const describeCause = (cause: Cause.Cause<unknown>): string => {
  const error = Cause.squash(cause)
  const message = error instanceof Error ? error.message : String(error)
  return message.split("\n")[0] ?? message
}

/** The SQLite result code (`SQLITE_CORRUPT`, …) somewhere in a failure's chain of causes. */
const sqliteCode = (cause: Cause.Cause<unknown>): string | undefined => {
  let error: unknown = Cause.squash(cause)
  for (let depth = 0; depth < 5 && typeof error === "object" && error !== null; depth++) {
    const code = (error as { code?: unknown }).code
    if (typeof code === "string" && code.startsWith("SQLITE_")) return code
    error = (error as { cause?: unknown }).cause
  }
  return undefined
}

/** What SQLite says when a file is not a database, or its pages are broken. */
const DAMAGE_CODES = /^SQLITE_(CORRUPT|NOTADB)/

/**
 * Opens the file on a throw-away connection and runs `PRAGMA quick_check`:
 * the damage found (not a database, broken pages), or undefined when it can be
 * used (or does not exist yet). Any other failure (a full disk, permissions, a
 * file busy) fails: the file may be fine, and the stack is started again.
 */
const probe = (filename: string): Effect.Effect<string | undefined, RegistryError> =>
  Effect.scoped(
    Effect.gen(function*() {
      if (!fs.existsSync(filename)) return undefined
      const sql = yield* SqliteClient.make({ filename }).pipe(Effect.provide(Reactivity.layer))
      const rows = yield* sql<{ quick_check: string }>`PRAGMA quick_check`
      const verdict = rows.map((r) => r.quick_check).join("; ")
      return verdict === "ok" ? undefined : verdict
    })
  ).pipe(
    Effect.catchAllCause((cause) =>
      DAMAGE_CODES.test(sqliteCode(cause) ?? "")
        ? Effect.succeed(describeCause(cause))
        : Effect.fail(new RegistryError({ operation: `open ${filename}: ${describeCause(cause)}` }))
    )
  )

/**
 * Moves a damaged registry aside (kept for inspection, never deleted), so a
 * fresh one takes its place. Every shape is then unknown: their files are
 * orphans that the shape cache removes, and clients re-sync with new handles.
 */
const setAside = (filename: string, reason: string): Effect.Effect<void, RegistryError> =>
  Effect.gen(function*() {
    const now = new Date(yield* Clock.currentTimeMillis)
    const aside = `${filename}.damaged-${now.toISOString().replaceAll(":", "-")}`
    yield* Effect.try({
      try: () => {
        fs.renameSync(filename, aside)
        for (const suffix of ["-wal", "-shm"]) fs.rmSync(filename + suffix, { force: true })
      },
      catch: (cause) => new RegistryError({ operation: `move the damaged ${filename} aside`, cause })
    })
    yield* Effect.logError(
      `the shape registry ${filename} is damaged (${reason}); moved it to ${path.basename(aside)} and started an ` +
        "empty one: every shape will be created anew"
    )
  })

/**
 * The SQLite database that makes the shape registry durable,
 * `<storage dir>/meta/shapes.sqlite`.
 */
export const ShapeDb = {
  /**
   * The registry opened for writing and migrated; provides `SqlClient`. Only
   * the process that holds the slot's lock builds it (a rolling successor
   * must not change what the running instance owns). A file that is not a
   * database or fails its integrity check is set aside and replaced by an
   * empty one, with one log line saying so.
   */
  layer: (storageDir: string): Layer.Layer<SqlClient.SqlClient, unknown> => {
    const filename = registryFile(storageDir)
    return SqliteMigrator.layer({ loader: migrations }).pipe(
      Layer.provideMerge(
        Layer.unwrapEffect(
          Effect.gen(function*() {
            yield* Effect.try({
              try: () => fs.mkdirSync(path.dirname(filename), { recursive: true }),
              catch: (cause) => new RegistryError({ operation: `create ${path.dirname(filename)}`, cause })
            })
            const damaged = yield* probe(filename)
            if (damaged !== undefined) yield* setAside(filename, damaged)
            // The marker is a dependency of the client, so it is released (and logs) after the database closed.
            const client = SqliteClient.layer({ filename }).pipe(Layer.provide(Layer.scopedDiscard(logWhenStopped("ShapeDb"))))
            const pragmas = Layer.effectDiscard(
              Effect.flatMap(SqlClient.SqlClient, (sql) =>
                Effect.zipRight(
                  // Every commit fsync'd: the acknowledged position must be on disk before Postgres hears of it, or
                  // a power loss would leave the slot ahead of the registry and invalidate every shape for nothing.
                  sql`PRAGMA synchronous = FULL`,
                  // 256 KiB of page cache (SQLite's default is 2 MB): the registry is read whole once, at start-up,
                  // then a row at a time, so a larger cache only kept the pages of every shape created since (about
                  // 0.4 kB each); a page it drops comes back from the OS's cache in microseconds.
                  sql`PRAGMA cache_size = -256`
                ))
            )
            return pragmas.pipe(Layer.provideMerge(client))
          })
        )
      ),
      Layer.provide(NodeContext.layer)
    )
  },

  /**
   * A read-only connection to the registry for a process that does not own it
   * (a rolling restart's read-only phase), opened on first use and again after
   * a failed attempt: the owner may create the file later. Nothing is created,
   * migrated or written. Closed with the scope.
   */
  reader: (storageDir: string): Effect.Effect<Effect.Effect<SqlClient.SqlClient, RegistryError>, never, Scope.Scope> =>
    Effect.gen(function*() {
      const filename = registryFile(storageDir)
      const scope = yield* Effect.scope
      let client: SqlClient.SqlClient | undefined
      const lock = yield* Effect.makeSemaphore(1)
      const connect = Effect.gen(function*() {
        if (client !== undefined) return client
        const attempt = yield* Scope.fork(scope, ExecutionStrategy.sequential)
        const opened = yield* SqliteClient.make({ filename, readonly: true }).pipe(
          Effect.tap((sql) => sql`SELECT 1 FROM shapes LIMIT 1`),
          Effect.provide(Reactivity.layer),
          Scope.extend(attempt),
          Effect.catchAllCause((cause) =>
            Effect.zipRight(
              Scope.close(attempt, Exit.void),
              Effect.fail(new RegistryError({ operation: `open ${filename} read-only: ${describeCause(cause)}` }))
            )
          )
        )
        client = opened
        return opened
      })
      return lock.withPermits(1)(connect)
    })
} as const
