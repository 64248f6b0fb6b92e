import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import type { Lsn } from "../domain/Lsn.js"
import { RegistryError } from "../domain/errors.js"

/**
 * What the registry remembers of the replication source, beside the shapes
 * it makes durable (`replication_state` in the shape DB). Restoring the
 * storage dir from a backup restores these with it, which is the point: they
 * describe what this storage holds.
 */
export interface ReplicationPositions {
  /** Commit LSN of the last transaction durable in every shape: replays at or below it are dropped. */
  readonly lastProcessed: Lsn | undefined
  /** The highest end LSN ever acknowledged to the slot, written before the standby status that carries it. */
  readonly acknowledged: Lsn | undefined
  /** The source's `system_identifier` and timeline when the shapes were last served from it. */
  readonly systemId: string | undefined
  readonly timeline: number | undefined
  /** The oid of the publication the slot decoded with: one dropped and created again has another. */
  readonly publicationOid: number | undefined
}

const KEYS = {
  lastProcessed: "last_processed_lsn",
  acknowledged: "acknowledged_lsn",
  systemId: "system_identifier",
  timeline: "timeline",
  publicationOid: "publication_oid"
} as const

const fail = (operation: string) => (cause: unknown) => new RegistryError({ operation, cause })

const upsert = (sql: SqlClient.SqlClient, key: string, value: string) =>
  sql`INSERT INTO replication_state (key, value) VALUES (${key}, ${value})
      ON CONFLICT (key) DO UPDATE SET value = excluded.value`

export const ReplicationState = {
  read: Effect.fn("ReplicationState.read")(function*(sql: SqlClient.SqlClient) {
    const rows = yield* sql<{ key: string; value: string }>`SELECT key, value FROM replication_state`.pipe(
      Effect.mapError(fail("read replication_state"))
    )
    const get = (key: string) => rows.find((r) => r.key === key)?.value
    const lsn = (key: string) => {
      const v = get(key)
      return v === undefined ? undefined : BigInt(v)
    }
    const number = (key: string) => {
      const v = get(key)
      return v === undefined ? undefined : Number(v)
    }
    return {
      lastProcessed: lsn(KEYS.lastProcessed),
      acknowledged: lsn(KEYS.acknowledged),
      systemId: get(KEYS.systemId),
      timeline: number(KEYS.timeline),
      publicationOid: number(KEYS.publicationOid)
    } satisfies ReplicationPositions
  }),

  /** Persists both positions in one transaction. */
  writePositions: (sql: SqlClient.SqlClient, lastProcessed: Lsn, acknowledged: Lsn) =>
    Effect.zipRight(upsert(sql, KEYS.lastProcessed, String(lastProcessed)), upsert(sql, KEYS.acknowledged, String(acknowledged))).pipe(
      sql.withTransaction,
      Effect.asVoid,
      Effect.mapError(fail("write replication positions"))
    ),

  /** Records what the shapes are now served from: the database's identity and the publication's oid. */
  writeSource: (sql: SqlClient.SqlClient, source: { readonly systemId: string; readonly timeline: number; readonly publicationOid: number }) =>
    Effect.all([
      upsert(sql, KEYS.systemId, source.systemId),
      upsert(sql, KEYS.timeline, String(source.timeline)),
      upsert(sql, KEYS.publicationOid, String(source.publicationOid))
    ], { discard: true }).pipe(
      sql.withTransaction,
      Effect.mapError(fail("write the source identity"))
    ),

  /** Forgets both positions: they belong to a slot (or a database) that is gone. */
  clearPositions: (sql: SqlClient.SqlClient) =>
    sql`DELETE FROM replication_state WHERE key IN (${KEYS.lastProcessed}, ${KEYS.acknowledged})`.pipe(
      Effect.asVoid,
      Effect.mapError(fail("clear replication positions"))
    )
} as const
