import { Context, Deferred, Effect, Exit, FiberId, Layer, type Scope } from "effect"
import pg from "pg"
import { PostgresError } from "../domain/errors.js"
import type { TableInfo } from "../domain/Table.js"
import { PgPool, toPostgresError } from "./PgPool.js"

/** The names of the publication and slot this instance manages (`electric_publication_<id>`, `electric_slot_<id>`). */
export interface PgAdminOptions {
  readonly publicationName: string
  readonly slotName: string
}

const quoteIdent = (name: string): string => `"${name.replaceAll("\"", "\"\"")}"`

/** A role name as it must be written in SQL: bare when Postgres would not fold or reject it. */
const roleInSql = (name: string): string => (/^[a-z_][a-z0-9_$]*$/.test(name) ? name : quoteIdent(name))

const sqlState = (cause: unknown): string | undefined => {
  const code = typeof cause === "object" && cause !== null ? (cause as { code?: unknown }).code : undefined
  return typeof code === "string" ? code : undefined
}

const DUPLICATE_OBJECT = "42710"
const INSUFFICIENT_PRIVILEGE = "42501"
const LOCK_RETRY = "500 millis"

const PUBLISHED_SQL = `
SELECT c.relreplident AS replident,
       EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                WHERE pt.pubname = $2 AND pt.schemaname = n.nspname AND pt.tablename = c.relname)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr
                    JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                   WHERE p.pubname = $2 AND pr.prrelid = c.oid) AS published
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = $1`

/**
 * The administrative side of the source database: checks the server can
 * replicate, owns the publication and the slot, puts tables into the
 * publication with `REPLICA IDENTITY FULL`, and takes the slot's advisory
 * lock so that a single instance consumes a slot at a time.
 */
export class PgAdmin extends Context.Tag("syncline/PgAdmin")<PgAdmin, {
  readonly publicationName: string
  readonly slotName: string
  /** Fails with "WalLevel" unless `wal_level = logical`, and "Permission" unless the role may replicate. */
  readonly checkPrerequisites: Effect.Effect<void, PostgresError>
  /** Creates the (empty) publication if it does not exist. */
  readonly ensurePublication: Effect.Effect<void, PostgresError>
  /** Creates the persistent pgoutput slot if it does not exist; `created` tells whether this call made it. */
  readonly ensureSlot: Effect.Effect<{ readonly created: boolean }, PostgresError>
  /** Sets `REPLICA IDENTITY FULL` and adds the table to the publication, each only when needed; idempotent. */
  readonly addTable: (table: TableInfo) => Effect.Effect<void, PostgresError>
  /**
   * Waits (interruptibly) for `pg_advisory_lock(hashtext(<slot name>))` on a
   * connection of its own, held until the scope closes.
   */
  readonly acquireLock: Effect.Effect<void, PostgresError, Scope.Scope>
  /** True while a lock taken by `acquireLock` is held (its connection is alive and its scope open). */
  readonly isLockHeld: Effect.Effect<boolean>
  /**
   * Fails when the connection of the lock last taken by `acquireLock` ends or errors while the lock is
   * held (another instance may then take the slot); never completes otherwise, nor after the lock's
   * scope closed.
   */
  readonly lockLost: Effect.Effect<never, PostgresError>
}>() {
  /** The service over `PgPool`. */
  static make(options: PgAdminOptions): Effect.Effect<PgAdmin["Type"], never, PgPool> {
    const { publicationName, slotName } = options
    return Effect.gen(function*() {
      const db = yield* PgPool
      const addTableLock = yield* Effect.makeSemaphore(1)
      let locksHeld = 0
      // The latest lock's loss signal: a later stack built over this service waits on its own lock only.
      let current: Deferred.Deferred<never, PostgresError> | undefined = undefined

      const checkPrerequisites = Effect.gen(function*() {
        const rows = yield* db.query<{ wal_level: string; rolname: string; rolreplication: boolean; rolsuper: boolean }>(
          `SELECT current_setting('wal_level') AS wal_level, r.rolname, r.rolreplication, r.rolsuper
             FROM pg_catalog.pg_roles r WHERE r.rolname = current_user`
        )
        const row = rows[0]
        if (row === undefined) {
          return yield* new PostgresError({ reason: "Permission", message: "Cannot read the current role from pg_roles" })
        }
        if (row.wal_level !== "logical") {
          return yield* new PostgresError({
            reason: "WalLevel",
            message:
              `Postgres wal_level is "${row.wal_level}"; Syncline needs wal_level = logical (set it in postgresql.conf and restart Postgres)`
          })
        }
        if (!row.rolreplication && !row.rolsuper) {
          return yield* new PostgresError({
            reason: "Permission",
            message: `Role "${row.rolname}" may not use logical replication; grant it with ALTER ROLE ${
              roleInSql(row.rolname)
            } WITH REPLICATION`
          })
        }
      }).pipe(Effect.withSpan("PgAdmin.checkPrerequisites"))

      const ignoreDuplicate = <A>(effect: Effect.Effect<A, PostgresError>, orElse: A) =>
        Effect.catchIf(effect, (e) => sqlState(e.cause) === DUPLICATE_OBJECT, () => Effect.succeed(orElse))

      const ensurePublication = Effect.gen(function*() {
        const found = yield* db.query("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", [publicationName])
        if (found.length > 0) return
        yield* ignoreDuplicate(db.query(`CREATE PUBLICATION ${quoteIdent(publicationName)}`), [])
      }).pipe(Effect.asVoid, Effect.withSpan("PgAdmin.ensurePublication"))

      const ensureSlot = Effect.gen(function*() {
        const found = yield* db.query("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", [slotName])
        if (found.length > 0) return { created: false }
        return yield* ignoreDuplicate(
          Effect.as(db.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slotName]), { created: true }),
          { created: false }
        )
      }).pipe(Effect.withSpan("PgAdmin.ensureSlot"))

      const permissionDenied = (table: TableInfo) => (e: PostgresError) =>
        sqlState(e.cause) === INSUFFICIENT_PRIVILEGE
          ? new PostgresError({
            reason: "Permission",
            message: `Cannot publish table ${quoteIdent(table.schema)}.${quoteIdent(table.name)}: ${
              e.message.replace(/^Query failed: /, "")
            } (the role must own the table)`,
            cause: e.cause
          })
          : e

      const addTable = Effect.fn("PgAdmin.addTable")(function*(table: TableInfo) {
        const qualified = `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`
        const rows = yield* db.query<{ replident: string; published: boolean }>(PUBLISHED_SQL, [table.oid, publicationName])
        const row = rows[0]
        if (row === undefined) {
          return yield* new PostgresError({
            reason: "TableNotFound",
            message: `Table ${qualified} does not exist any more`
          })
        }
        if (row.replident !== "f") {
          yield* db.query(`ALTER TABLE ${qualified} REPLICA IDENTITY FULL`)
        }
        if (!row.published) {
          yield* ignoreDuplicate(db.query(`ALTER PUBLICATION ${quoteIdent(publicationName)} ADD TABLE ${qualified}`), [])
        }
      }, (effect, table) => Effect.mapError(addTableLock.withPermits(1)(effect), permissionDenied(table)))

      const acquireLock = Effect.gen(function*() {
        let held = false
        const lost = Deferred.unsafeMake<never, PostgresError>(FiberId.none)
        const loseLock = (message: string, cause?: unknown) => {
          if (!held) return
          held = false
          locksHeld--
          const error = new PostgresError({
            reason: "Connection",
            message: `${message}: the advisory lock of slot ${slotName} is lost`,
            cause
          })
          Deferred.unsafeDone(lost, Exit.fail(error))
        }
        const client = yield* Effect.acquireRelease(
          Effect.tryPromise({
            try: async () => {
              const client = new pg.Client({ connectionString: db.connectionString, application_name: "syncline", keepAlive: true })
              // A dropped connection emits "error"; unhandled, it would crash the process. The lock is gone with it.
              client.on("error", (cause) => loseLock("The advisory lock connection failed", cause))
              client.on("end", () => loseLock("The advisory lock connection ended"))
              await client.connect()
              return client
            },
            catch: (cause) => toPostgresError(cause, "Advisory lock connection", db.connectionString)
          }),
          (client) => Effect.promise(() => client.end().catch(() => undefined))
        )
        const tryLock = Effect.tryPromise({
          try: () => client.query<{ locked: boolean }>("SELECT pg_try_advisory_lock(hashtext($1)) AS locked", [slotName]),
          catch: (cause) => toPostgresError(cause, "Advisory lock", db.connectionString)
        }).pipe(Effect.map((result) => result.rows[0]?.locked === true))

        let logged = false
        // A lock granted by a query that was interrupted is released by closing the connection.
        yield* Effect.gen(function*() {
          while (!(yield* tryLock)) {
            if (!logged) {
              logged = true
              yield* Effect.logInfo(`waiting for the advisory lock of slot ${slotName} held by another instance`)
            }
            yield* Effect.sleep(LOCK_RETRY)
          }
          held = true
          locksHeld++
          current = lost
        }).pipe(Effect.onError(() => Effect.promise(() => client.end().catch(() => undefined))))
        // Runs before the connection is closed, so that closing it is not taken for a loss.
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            if (held) locksHeld--
            held = false
            if (current === lost) current = undefined
          })
        )
      }).pipe(Effect.withSpan("PgAdmin.acquireLock"))

      return {
        publicationName,
        slotName,
        checkPrerequisites,
        ensurePublication,
        ensureSlot,
        addTable,
        acquireLock,
        isLockHeld: Effect.sync(() => locksHeld > 0),
        lockLost: Effect.suspend(() => (current === undefined ? Effect.never : Deferred.await(current)))
      }
    })
  }

  /** The service as a layer over `PgPool`. */
  static layer(options: PgAdminOptions): Layer.Layer<PgAdmin, never, PgPool> {
    return Layer.effect(PgAdmin, PgAdmin.make(options))
  }
}
