import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import pg from "pg"
import { PostgresError } from "../domain/errors.js"
import { Lsn } from "../domain/Lsn.js"
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
const UNDEFINED_OBJECT = "42704"
const OBJECT_IN_USE = "55006"
const INSUFFICIENT_PRIVILEGE = "42501"
const UNDEFINED_FUNCTION = "42883"
/** What `pg_log_standby_snapshot()` fails with on a server in recovery (a standby), where it cannot write WAL. */
const NOT_IN_PREREQUISITE_STATE = "55000"
const LOCK_RETRY = "500 millis"
/** How long a slot still held by a walsender that is going away (a killed predecessor's) is waited for. */
const SLOT_IN_USE_ATTEMPTS = 40
const SLOT_IN_USE_RETRY = "250 millis"

/** The source database's identity, as `IDENTIFY_SYSTEM` reports it. */
export interface SystemIdentity {
  /** `system_identifier`: a database restored from another cluster's files, or another cluster, differs. */
  readonly systemId: string
  /** The timeline: a point-in-time restore or a promoted standby starts a new one. */
  readonly timeline: number
}

/** What the slot is now. */
export type SlotState =
  | { readonly _tag: "Missing" }
  /** It exists but can no longer stream: the WAL it needed is gone (`wal_status = lost`) or it was invalidated. */
  | { readonly _tag: "Invalidated"; readonly reason: string }
  | { readonly _tag: "Usable"; readonly confirmedFlushLsn: Lsn }

/** A table as the publication sees it. */
export interface PublicationState {
  /** The table is in the publication, so its changes are streamed. */
  readonly published: boolean
  /** `REPLICA IDENTITY FULL`: updates and deletes carry the old row. */
  readonly replicaFull: boolean
}

const PUBLISHED_SQL = `
SELECT c.oid, c.relreplident AS replident,
       EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                WHERE pt.pubname = $2 AND pt.schemaname = n.nspname AND pt.tablename = c.relname)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr
                    JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid
                   WHERE p.pubname = $2 AND pr.prrelid = c.oid) AS published
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = ANY($1::oid[])`

// Read as JSON so that columns of newer servers (invalidation_reason, 17) are seen where they exist.
const SLOT_SQL =
  "SELECT to_jsonb(s) AS slot, current_database() AS here FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1"

/** Why a slot can no longer stream, from its `pg_replication_slots` row; undefined when it can. */
const invalidation = (slot: Record<string, unknown>): string | undefined => {
  const reason = slot["invalidation_reason"]
  if (typeof reason === "string" && reason !== "") return reason
  if (slot["wal_status"] === "lost") return "wal_removed"
  if (slot["conflicting"] === true) return "conflict with recovery"
  return undefined
}

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
  /** The publication's oid, undefined when it does not exist: a publication dropped and created again has another. */
  readonly publicationOid: Effect.Effect<number | undefined, PostgresError>
  /** The source's system identifier and timeline (`IDENTIFY_SYSTEM` on a replication connection of its own). */
  readonly identifySystem: Effect.Effect<SystemIdentity, PostgresError>
  /** Whether the slot exists, and whether it can still stream; fails with "SlotTaken" if another database has it. */
  readonly slotState: Effect.Effect<SlotState, PostgresError>
  /** Creates the persistent pgoutput slot (nothing if it exists); fails with "SlotTaken" if another database has it. */
  readonly createSlot: Effect.Effect<void, PostgresError>
  /** Drops the slot (nothing if it is gone), waiting a while for a walsender that still holds it to end. */
  readonly dropSlot: Effect.Effect<void, PostgresError>
  /** The publication state of each table by oid; tables that no longer exist are left out. */
  readonly publicationStates: (oids: ReadonlyArray<number>) => Effect.Effect<ReadonlyMap<number, PublicationState>, PostgresError>
  /**
   * Sets `REPLICA IDENTITY FULL` and adds the table to the publication, each only when needed; idempotent.
   * Succeeds with true when it had to change either: changes made to the table until now may not have
   * been streamed whole.
   */
  readonly addTable: (table: TableInfo) => Effect.Effect<boolean, PostgresError>
  /**
   * Writes a log of the running transactions to the WAL now (`pg_log_standby_snapshot()`, Postgres 16 and later)
   * and returns the position after it. A slot's restart position moves only to such a log, once its walsender has
   * decoded it and a position past it is confirmed; Postgres writes one on its own every 15 s and at checkpoints.
   * Undefined when the server has no such function, the role may not call it (a superuser's by default, granted
   * with `GRANT EXECUTE`), or the server is a standby. Fails when the statement takes longer than `timeoutMs`; its
   * connection is then dropped, not returned to the pool.
   */
  readonly logRunningTransactions: (timeoutMs: number) => Effect.Effect<Lsn | undefined, PostgresError>
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

      const publicationOid = Effect.map(
        db.query<{ oid: number }>("SELECT oid FROM pg_catalog.pg_publication WHERE pubname = $1", [publicationName]),
        (rows) => (rows[0] === undefined ? undefined : Number(rows[0].oid))
      ).pipe(Effect.withSpan("PgAdmin.publicationOid"))

      const ensurePublication = Effect.gen(function*() {
        if ((yield* publicationOid) !== undefined) return
        yield* ignoreDuplicate(db.query(`CREATE PUBLICATION ${quoteIdent(publicationName)}`), [])
      }).pipe(Effect.asVoid, Effect.withSpan("PgAdmin.ensurePublication"))

      const identifySystem = Effect.tryPromise({
        try: async () => {
          const config: pg.ClientConfig & { replication: string } = {
            connectionString: db.connectionString,
            replication: "database",
            connectionTimeoutMillis: 30_000
          }
          const client = new pg.Client(config)
          client.on("error", () => {})
          await client.connect()
          try {
            const result = await client.query<{ systemid: string; timeline: number | string }>("IDENTIFY_SYSTEM")
            const row = result.rows[0]
            if (row === undefined) throw new Error("IDENTIFY_SYSTEM returned no row")
            return { systemId: String(row.systemid), timeline: Number(row.timeline) }
          } finally {
            await client.end().catch(() => undefined)
          }
        },
        catch: (cause) => toPostgresError(cause, "IDENTIFY_SYSTEM", db.connectionString)
      }).pipe(Effect.withSpan("PgAdmin.identifySystem"))

      const slotState = Effect.gen(function*() {
        const rows = yield* db.query<{ slot: Record<string, unknown>; here: string }>(SLOT_SQL, [slotName])
        const slot = rows[0]?.slot
        if (slot === undefined) return { _tag: "Missing" } as const
        const owner = slot["database"]
        if (owner !== rows[0]!.here) {
          return yield* new PostgresError({
            reason: "SlotTaken",
            message: `The replication slot ${slotName} belongs to database "${String(owner)}" of this Postgres cluster, ` +
              `not to "${rows[0]!.here}": slot names are shared by the whole cluster, so each source needs its own ` +
              "ELECTRIC_REPLICATION_STREAM_ID"
          })
        }
        const reason = invalidation(slot)
        if (reason !== undefined) return { _tag: "Invalidated", reason } as const
        const confirmed = slot["confirmed_flush_lsn"]
        return { _tag: "Usable", confirmedFlushLsn: typeof confirmed === "string" ? Lsn.fromPg(confirmed) : 0n } as const
      }).pipe(Effect.withSpan("PgAdmin.slotState"))

      // A slot of that name created meanwhile may be another database's: the state says whose it is.
      const createSlot = ignoreDuplicate(
        Effect.asVoid(db.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [slotName])),
        undefined
      ).pipe(Effect.zipLeft(slotState), Effect.withSpan("PgAdmin.createSlot"))

      const dropSlot = Effect.gen(function*() {
        for (let attempt = 1;; attempt++) {
          const dropped = yield* db.query("SELECT pg_drop_replication_slot($1)", [slotName]).pipe(
            Effect.as(true),
            Effect.catchIf((e) => sqlState(e.cause) === UNDEFINED_OBJECT, () => Effect.succeed(true)),
            Effect.catchIf(
              (e) => sqlState(e.cause) === OBJECT_IN_USE && attempt < SLOT_IN_USE_ATTEMPTS,
              () => Effect.succeed(false)
            )
          )
          if (dropped) return
          yield* Effect.sleep(SLOT_IN_USE_RETRY)
        }
      }).pipe(Effect.withSpan("PgAdmin.dropSlot"))

      const publicationStates = (oids: ReadonlyArray<number>) =>
        Effect.map(
          db.query<{ oid: number; replident: string; published: boolean }>(PUBLISHED_SQL, [oids, publicationName]),
          (rows) =>
            new Map(rows.map((r) => [Number(r.oid), { published: r.published, replicaFull: r.replident === "f" }] as const))
        ).pipe(Effect.withSpan("PgAdmin.publicationStates"))

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
        const rows = yield* db.query<{ replident: string; published: boolean }>(PUBLISHED_SQL, [[table.oid], publicationName])
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
        return row.replident !== "f" || !row.published
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

      // A walsender decodes only WAL already flushed, and Postgres flushes the log on its own within wal_writer_delay.
      // The statement's transaction gets an xid, so that its commit, after the log and flushed at once, flushes the
      // log too; `local`: a walsender reads what is flushed here, whatever synchronous standbys have confirmed.
      const logRunningTransactions = (timeoutMs: number) =>
        Effect.tryPromise({
          try: () =>
            db.pool.query<{ lsn: string }>({
              text: "SELECT set_config('synchronous_commit', 'local', true), pg_log_standby_snapshot()::text AS lsn, " +
                "pg_current_xact_id()",
              query_timeout: timeoutMs
            } as pg.QueryConfig),
          catch: (cause) => toPostgresError(cause, "Logging the running transactions", db.connectionString)
        }).pipe(
          Effect.map((result): Lsn | undefined => (result.rows[0] === undefined ? undefined : Lsn.fromPg(result.rows[0].lsn))),
          Effect.catchIf(
            (e) => {
              const state = sqlState(e.cause)
              return state === UNDEFINED_FUNCTION || state === INSUFFICIENT_PRIVILEGE || state === NOT_IN_PREREQUISITE_STATE
            },
            () => Effect.succeed(undefined)
          ),
          Effect.withSpan("PgAdmin.logRunningTransactions")
        )

      return {
        publicationName,
        slotName,
        checkPrerequisites,
        ensurePublication,
        publicationOid,
        identifySystem,
        slotState,
        createSlot,
        dropSlot,
        publicationStates,
        addTable,
        logRunningTransactions,
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
