import * as PgClient from "@effect/sql-pg/PgClient"
import type { SqlClient } from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import pg from "pg"
import { PostgresError } from "../domain/errors.js"

/** Options of the ordinary (non-replication) connection pool. */
export interface PgPoolOptions {
  readonly connectionString: string
  /** Most connections open at once; 10 by default. */
  readonly max?: number
}

/** A row as `pg` returns it with its default type parsers. */
export type PgRow = Record<string, unknown>

const CONNECTION_ERRNOS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EPIPE"
])

/**
 * Where a connection string points, as `host:port`, for error messages: never
 * the user or password.
 */
export const describeTarget = (connectionString: string): string => {
  try {
    const url = new URL(connectionString)
    const host = decodeURIComponent(url.hostname) || url.searchParams.get("host") || "localhost"
    return `${host}:${url.port || "5432"}`
  } catch {
    return "the configured database"
  }
}

/**
 * True when `cause` says the server could not be reached or refused the
 * session (network errors, SQLSTATE classes 08 and 28, a missing database,
 * a server shutting down), as opposed to a statement that failed.
 */
export const isConnectionError = (cause: unknown): boolean => {
  if (typeof cause !== "object" || cause === null) return false
  const code = (cause as { code?: unknown }).code
  if (typeof code === "string") {
    if (CONNECTION_ERRNOS.has(code)) return true
    if (/^(08|28)/.test(code) || code === "3D000" || code.startsWith("57P")) return true
  }
  const message = (cause as { message?: unknown }).message
  return typeof message === "string" &&
    (message.includes("Connection terminated") || message.includes("timeout exceeded when trying to connect"))
}

const messageOf = (cause: unknown): string => {
  const message = cause instanceof Error ? cause.message : String(cause)
  return message.split("\n")[0] ?? message
}

/**
 * Turns a `pg` failure into a `PostgresError`: reason "Connection" with the
 * target and the driver's message when the server was unreachable, else
 * `reason` (default "Query") with `operation` and the message.
 */
export const toPostgresError = (
  cause: unknown,
  operation: string,
  connectionString: string,
  reason: "Query" | "Snapshot" = "Query"
): PostgresError =>
  isConnectionError(cause)
    ? new PostgresError({
      reason: "Connection",
      message: `Cannot connect to Postgres at ${describeTarget(connectionString)}: ${messageOf(cause)}`,
      cause
    })
    : new PostgresError({ reason, message: `${operation} failed: ${messageOf(cause)}`, cause })

/**
 * The pool of ordinary connections to the source database (catalog queries,
 * publication management, snapshots). `query` runs one statement on any
 * pooled connection and maps failures to `PostgresError`.
 */
export class PgPool extends Context.Tag("syncline/PgPool")<PgPool, {
  readonly pool: pg.Pool
  readonly connectionString: string
  readonly query: <A extends PgRow = PgRow>(
    text: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<A>, PostgresError>
}>() {
  /**
   * Opens the pool and checks that the database answers; the pool is ended
   * when the scope closes.
   */
  static make(options: PgPoolOptions): Effect.Effect<PgPool["Type"], PostgresError, import("effect").Scope.Scope> {
    const { connectionString } = options
    return Effect.gen(function*() {
      const pool = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const pool = new pg.Pool({
            connectionString,
            max: options.max ?? 10,
            application_name: "syncline",
            connectionTimeoutMillis: 30_000,
            keepAlive: true
          })
          // An idle pooled connection that dies emits on the pool; unhandled, it would crash the process.
          pool.on("error", () => {})
          return pool
        }),
        (pool) => Effect.promise(() => pool.end().catch(() => undefined))
      )
      const query = <A extends PgRow = PgRow>(text: string, params?: ReadonlyArray<unknown>) =>
        Effect.tryPromise({
          try: () => pool.query<A>(text, params === undefined ? undefined : [...params]),
          catch: (cause) => toPostgresError(cause, "Query", connectionString)
        }).pipe(Effect.map((result) => result.rows))
      yield* query("SELECT 1")
      return { pool, connectionString, query }
    })
  }

  /** The pool as a layer. */
  static layer(options: PgPoolOptions): Layer.Layer<PgPool, PostgresError> {
    return Layer.scoped(PgPool, PgPool.make(options))
  }

  /**
   * `@effect/sql`'s `SqlClient` (and `PgClient`) over this pool, for services
   * that prefer the tagged-template client; the pool stays owned by `PgPool`.
   */
  static readonly SqlLive: Layer.Layer<PgClient.PgClient | SqlClient, SqlError, PgPool> = Layer.unwrapEffect(
    Effect.map(PgPool, ({ pool }) => PgClient.layerFromPool({ acquire: Effect.succeed(pool) }))
  )
}

/**
 * Whether Postgres refused a query for good (SQLSTATE classes 42, syntax or access rule violations such as a column
 * dropped since; 22, data exceptions; 0A, feature not supported), as opposed to being unreachable or busy.
 */
export const refused = (error: PostgresError): boolean => {
  const code = (error.cause as { readonly code?: unknown } | undefined)?.code
  return typeof code === "string" && /^(42|22|0A)/.test(code)
}
