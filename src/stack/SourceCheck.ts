import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import { Lsn } from "../domain/Lsn.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { TableInfo, TableRef } from "../domain/Table.js"
import { type PostgresError, RegistryError } from "../domain/errors.js"
import { logWhenStopped } from "../domain/Lifecycle.js"
import { Inspector } from "../postgres/Inspector.js"
import { PgAdmin, type SlotState } from "../postgres/PgAdmin.js"
import { RegistryRows } from "../shapes/ShapeStatus.js"
import { type ReplicationPositions, ReplicationState } from "../storage/ReplicationState.js"

/** The source as the activation check finds it. */
interface Found {
  readonly systemId: string
  readonly timeline: number
  /** Undefined when the publication does not exist. */
  readonly publicationOid: number | undefined
  readonly slot: SlotState
}

/**
 * Whether the slot can continue the shapes in this storage (DESIGN.md,
 * invariant 8); the reason it cannot, or undefined. Decided from what
 * Postgres and the registry hold, never from what this activation did, so a
 * crash half way through repeats the same decision.
 */
const sourceGap = (admin: PgAdmin["Type"], found: Found, stored: ReplicationPositions): string | undefined => {
  if (stored.systemId !== undefined && stored.systemId !== found.systemId) {
    return `the database is another one (system identifier ${found.systemId}; the shapes came from ${stored.systemId})`
  }
  if (stored.timeline !== undefined && stored.timeline !== found.timeline) {
    return `the database was restored or failed over (timeline ${found.timeline}; the shapes came from timeline ${stored.timeline})`
  }
  // Decoding looks publications up as of each change's place in the WAL: a slot older than its publication
  // fails on every change made before it, and nothing was published while it was gone.
  if (found.publicationOid === undefined && found.slot._tag !== "Missing") {
    return `the publication ${admin.publicationName} does not exist (dropped?), so nothing was streamed without it`
  }
  if (
    found.publicationOid !== undefined && stored.publicationOid !== undefined && found.publicationOid !== stored.publicationOid
  ) {
    return `the publication ${admin.publicationName} was dropped and created again, so nothing was streamed in between`
  }
  switch (found.slot._tag) {
    case "Missing":
      return `the replication slot ${admin.slotName} does not exist (dropped, or the database was replaced)`
    case "Invalidated":
      return `the replication slot ${admin.slotName} was invalidated (${found.slot.reason}): the WAL it held is gone`
    case "Usable":
      if (stored.acknowledged !== undefined && found.slot.confirmedFlushLsn > stored.acknowledged) {
        return `the slot was acknowledged up to ${Lsn.toPg(found.slot.confirmedFlushLsn)}, past ${
          Lsn.toPg(stored.acknowledged)
        }, the last position this storage acknowledged (the storage is older than the slot)`
      }
      return undefined
  }
}

/**
 * The source is the same source, or the shapes go (DESIGN.md, invariant 8).
 * Runs at every activation, once the slot's lock is held and the registry is
 * open, before the registry is loaded:
 *
 * - the slot (missing, invalidated, or acknowledged past what this storage
 *   acknowledged), the publication (missing, or dropped and created again:
 *   a slot older than it cannot decode) and the database (its system
 *   identifier and timeline). Any of these means WAL nobody can replay: every
 *   shape is marked for removal and the replication positions are forgotten,
 *   then the slot is dropped, then the publication and a new slot are
 *   created. Each step leaves something the next activation recognises, so a
 *   crash at any point ends the same way.
 * - every table with shapes in it: still the table the shapes were taken
 *   from, and published with `REPLICA IDENTITY FULL`. A table found
 *   otherwise may have changed unseen: its shapes are marked for removal,
 *   then it is put back (unless it is gone).
 *
 * Marked shapes are no longer found; the shape cache finishes their removal,
 * and clients get a 409 with a new handle and a fresh snapshot.
 */
export const SourceCheck = {
  layer: Layer.scopedDiscard(
    Effect.gen(function*() {
      yield* logWhenStopped("SourceCheck")
      const admin = yield* PgAdmin
      const sql = yield* SqlClient.SqlClient

      const identity = yield* admin.identifySystem
      const found: Found = { ...identity, publicationOid: yield* admin.publicationOid, slot: yield* admin.slotState }
      const stored = yield* ReplicationState.read(sql)
      const shapes = yield* RegistryRows.list(sql)

      const gap = sourceGap(admin, found, stored)
      if (gap !== undefined) {
        if (shapes.length > 0) {
          yield* Effect.logWarning(`invalidating all ${shapes.length} shapes: ${gap}; clients re-sync with new handles`)
        } else if (found.slot._tag !== "Missing") {
          yield* Effect.logInfo(`starting over: ${gap}`)
        }
        yield* Effect.zipRight(RegistryRows.markRemoving(sql, "all"), ReplicationState.clearPositions(sql)).pipe(
          sql.withTransaction,
          Effect.mapError((cause) => (cause instanceof RegistryError ? cause : new RegistryError({ operation: "invalidate", cause })))
        )
      }
      // A slot that cannot continue is replaced; a usable one is kept (where it stands is where a fresh start
      // begins anyway) unless its publication is not the one it was decoding with.
      const publicationReplaced = found.publicationOid === undefined ||
        (stored.publicationOid !== undefined && found.publicationOid !== stored.publicationOid)
      const replaceSlot = found.slot._tag === "Invalidated" || (found.slot._tag === "Usable" && publicationReplaced)
      if (replaceSlot) yield* admin.dropSlot
      if (found.publicationOid === undefined) yield* admin.ensurePublication
      if (found.slot._tag === "Missing" || replaceSlot) {
        yield* admin.createSlot
        yield* Effect.logInfo(`created the replication slot ${admin.slotName}`)
      }
      const publicationOid = found.publicationOid ?? (yield* admin.publicationOid)
      if (publicationOid !== undefined) yield* ReplicationState.writeSource(sql, { ...identity, publicationOid })
      if (gap !== undefined) return

      yield* checkTables(shapes, (handles, table, why, putBack) =>
        Effect.gen(function*() {
          yield* Effect.logWarning(
            `invalidating ${handles.length} shape(s) on ${table.schema}.${table.name}: the table ${why} while they ` +
              "existed, so changes may have been missed"
          )
          yield* RegistryRows.markRemoving(sql, handles)
          if (putBack !== undefined) yield* admin.addTable(putBack)
        }))
    })
  )
} as const

/** Shapes on one table, as the table checks see them. */
export interface ShapesOnTable {
  readonly handle: ShapeHandle
  readonly table: TableRef
  /** The oid of the table the shape was taken from; undefined when not recorded. */
  readonly tableOid: number | undefined
}

/**
 * Finds the tables of `shapes` whose changes may have been missed and hands
 * each, with its shapes, to `invalidate` (which must invalidate them before
 * putting the table back): a table dropped, or dropped and created again
 * (another oid), or no longer replicated (unlogged), or out of the
 * publication, or without `REPLICA IDENTITY FULL`. `putBack` is the table to
 * put back into the publication, when there is one to put back. The catalog
 * is read afresh, not from the inspector's cache.
 */
export const checkTables = <E>(
  shapes: ReadonlyArray<ShapesOnTable>,
  invalidate: (
    handles: ReadonlyArray<ShapeHandle>,
    table: TableRef,
    why: string,
    putBack: TableInfo | undefined
  ) => Effect.Effect<void, E>
): Effect.Effect<void, E | PostgresError, PgAdmin | Inspector> =>
  Effect.gen(function*() {
    const admin = yield* PgAdmin
    const inspector = yield* Inspector
    const byTable = new Map<string, { ref: TableRef; shapes: Array<ShapesOnTable> }>()
    for (const shape of shapes) {
      const key = JSON.stringify([shape.table.schema, shape.table.name])
      let entry = byTable.get(key)
      if (entry === undefined) {
        entry = { ref: shape.table, shapes: [] }
        byTable.set(key, entry)
      }
      entry.shapes.push(shape)
    }
    const published: Array<{ table: TableInfo; handles: Array<ShapeHandle> }> = []
    for (const { ref, shapes: onTable } of byTable.values()) {
      yield* inspector.invalidate(ref)
      const loaded = yield* Effect.either(inspector.load(ref))
      if (Either.isLeft(loaded)) {
        const reason = loaded.left.reason
        if (reason !== "TableNotFound" && reason !== "UnsupportedTable") return yield* loaded.left
        const why = reason === "TableNotFound" ? "was dropped" : "can no longer be replicated (unlogged?)"
        yield* invalidate(onTable.map((s) => s.handle), ref, why, undefined)
        continue
      }
      const table = loaded.right
      // Shapes of another table of the same name go; those of this one are checked against the publication.
      const stale = onTable.filter((s) => s.tableOid !== undefined && s.tableOid !== table.oid)
      if (stale.length > 0) yield* invalidate(stale.map((s) => s.handle), ref, "was dropped and created again", undefined)
      const current = onTable.filter((s) => s.tableOid === undefined || s.tableOid === table.oid).map((s) => s.handle)
      if (current.length > 0) published.push({ table, handles: current })
    }
    if (published.length === 0) return
    const states = yield* admin.publicationStates(published.map((t) => t.table.oid))
    for (const { handles, table } of published) {
      const why = publicationGap(states.get(table.oid))
      if (why !== undefined) yield* invalidate(handles, table, why, table)
    }
  })

/** Why a published table's changes may have been missed while shapes on it existed; undefined when they were not. */
const publicationGap = (state: { readonly published: boolean; readonly replicaFull: boolean } | undefined): string | undefined => {
  if (state === undefined) return "was dropped"
  if (!state.published) return "was not in the publication"
  if (!state.replicaFull) return "had lost REPLICA IDENTITY FULL"
  return undefined
}
