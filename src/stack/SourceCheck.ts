import { SqlClient } from "@effect/sql"
import { Effect, Either, Layer } from "effect"
import { Lsn } from "../domain/Lsn.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { TableInfo, TableRef } from "../domain/Table.js"
import { type PostgresError, RegistryError } from "../domain/errors.js"
import { logWhenStopped } from "../domain/Lifecycle.js"
import { Inspector } from "../postgres/Inspector.js"
import { PgAdmin, type PublicationState } from "../postgres/PgAdmin.js"
import { RegistryRows } from "../shapes/ShapeStatus.js"
import { type ReplicationPositions, ReplicationState } from "../storage/ReplicationState.js"

/** Why a table's changes may have been missed while shapes on it existed; undefined when they were not. */
export const publicationGap = (state: PublicationState | undefined): string | undefined => {
  if (state === undefined) return undefined
  if (!state.published) return "was not in the publication"
  if (!state.replicaFull) return "had lost REPLICA IDENTITY FULL"
  return undefined
}

/**
 * Whether the slot can continue the shapes in this storage (DESIGN.md,
 * invariant 8); the reason it cannot, or undefined.
 */
const sourceGap = (
  admin: PgAdmin["Type"],
  identity: { readonly systemId: string; readonly timeline: number },
  stored: ReplicationPositions,
  slot: Effect.Effect.Success<PgAdmin["Type"]["slotState"]>,
  publicationCreated: boolean
): string | undefined => {
  // Decoding looks publications up as of each change's place in the WAL: a slot older than the publication
  // fails on every change made before it, and nothing was published while it was gone.
  if (publicationCreated && slot._tag !== "Missing") {
    return `the publication ${admin.publicationName} did not exist (dropped?), so nothing was streamed while it was gone`
  }
  if (stored.systemId !== undefined && stored.systemId !== identity.systemId) {
    return `the database is another one (system identifier ${identity.systemId}; the shapes came from ${stored.systemId})`
  }
  if (stored.timeline !== undefined && stored.timeline !== identity.timeline) {
    return `the database was restored or failed over (timeline ${identity.timeline}; the shapes came from timeline ${stored.timeline})`
  }
  switch (slot._tag) {
    case "Missing":
      return `the replication slot ${admin.slotName} does not exist (dropped, or the database was replaced)`
    case "Invalidated":
      return `the replication slot ${admin.slotName} was invalidated (${slot.reason}): the WAL it held is gone`
    case "Usable":
      if (stored.acknowledged !== undefined && slot.confirmedFlushLsn > stored.acknowledged) {
        return `the slot was acknowledged up to ${Lsn.toPg(slot.confirmedFlushLsn)}, past ${
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
 * - the slot: created now, invalidated, or acknowledged past what this
 *   storage acknowledged; the publication: created now (a slot older than it
 *   cannot decode, and nothing was streamed while it was gone); and the
 *   database's system identifier and timeline.
 *   Any of these means WAL nobody can replay: every shape is marked for
 *   removal (and the replication positions forgotten) before a new slot is
 *   created, so a crash in between cannot leave a shape over a hole.
 * - the publication (created if missing): every table with shapes in it must
 *   be published with `REPLICA IDENTITY FULL`. A table found otherwise may
 *   have changed unseen: its shapes are marked for removal, then it is put
 *   back.
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

      const publicationCreated = yield* admin.ensurePublication
      const identity = yield* admin.identifySystem
      const stored = yield* ReplicationState.read(sql)
      const shapes = yield* RegistryRows.list(sql)
      const slot = yield* admin.slotState

      const gap = sourceGap(admin, identity, stored, slot, publicationCreated)
      if (gap !== undefined) {
        if (shapes.length > 0) {
          yield* Effect.logWarning(`invalidating all ${shapes.length} shapes: ${gap}; clients re-sync with new handles`)
        } else if (slot._tag !== "Missing") {
          yield* Effect.logInfo(`starting over: ${gap}`)
        }
        yield* Effect.zipRight(RegistryRows.markRemoving(sql, "all"), ReplicationState.clearPositions(sql)).pipe(
          sql.withTransaction,
          Effect.mapError((cause) => (cause instanceof RegistryError ? cause : new RegistryError({ operation: "invalidate", cause })))
        )
      }
      // A slot that cannot continue is replaced; one that is usable is kept (its position is where a new start
      // begins anyway) unless it is older than the publication.
      const replaceSlot = slot._tag === "Invalidated" || (slot._tag === "Usable" && publicationCreated)
      if (replaceSlot) yield* admin.dropSlot
      if (slot._tag === "Missing" || replaceSlot) {
        yield* admin.createSlot
        yield* Effect.logInfo(`created the replication slot ${admin.slotName}`)
      }
      yield* ReplicationState.writeSource(sql, identity.systemId, identity.timeline)
      if (gap !== undefined) return

      const onTables = shapes.map((s) => ({ handle: s.handle, table: s.definition.table }))
      yield* checkPublication(onTables, (handles, table, why) =>
        Effect.gen(function*() {
          yield* Effect.logWarning(
            `invalidating ${handles.length} shape(s) on ${table.schema}.${table.name}: the table ${why} while they ` +
              "existed, so changes may have been missed"
          )
          yield* RegistryRows.markRemoving(sql, handles)
          yield* admin.addTable(table)
        }))
    })
  )
} as const

/**
 * Finds the tables of `shapes` whose publication state leaves a gap and hands
 * each, with its shapes, to `invalidate` (which must invalidate them before
 * putting the table back). Tables that no longer exist, or can no longer be
 * replicated, are left to the shape cache, which removes their shapes when it
 * restores them.
 */
export const checkPublication = <E>(
  shapes: ReadonlyArray<{ readonly handle: ShapeHandle; readonly table: TableRef }>,
  invalidate: (handles: ReadonlyArray<ShapeHandle>, table: TableInfo, why: string) => Effect.Effect<void, E>
): Effect.Effect<void, E | PostgresError, PgAdmin | Inspector> =>
  Effect.gen(function*() {
    const admin = yield* PgAdmin
    const inspector = yield* Inspector
    const byTable = new Map<string, { ref: TableRef; handles: Array<ShapeHandle> }>()
    for (const shape of shapes) {
      const ref = shape.table
      const key = JSON.stringify([ref.schema, ref.name])
      let entry = byTable.get(key)
      if (entry === undefined) {
        entry = { ref, handles: [] }
        byTable.set(key, entry)
      }
      entry.handles.push(shape.handle)
    }
    const tables: Array<{ table: TableInfo; handles: Array<ShapeHandle> }> = []
    for (const { handles, ref } of byTable.values()) {
      const loaded = yield* Effect.either(inspector.load(ref))
      if (Either.isLeft(loaded)) {
        if (loaded.left.reason === "TableNotFound" || loaded.left.reason === "UnsupportedTable") continue
        return yield* loaded.left
      }
      tables.push({ table: loaded.right, handles })
    }
    if (tables.length === 0) return
    const states = yield* admin.publicationStates(tables.map((t) => t.table.oid))
    for (const { handles, table } of tables) {
      const why = publicationGap(states.get(table.oid))
      if (why !== undefined) yield* invalidate(handles, table, why)
    }
  })
