import * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { Lsn } from "../domain/Lsn.js"
import { ShapeDefinition } from "../domain/ShapeDefinition.js"
import { ShapeHandle } from "../domain/ShapeHandle.js"
import type { TableRef } from "../domain/Table.js"
import { RegistryError, TableAbsent } from "../domain/errors.js"
import { logWhenStopped } from "../domain/Lifecycle.js"

/**
 * A move of a subquery shape's values, applied by writing rows as a snapshot
 * had them (`SubqueryState.reconcile`): the commit LSN of the transaction it
 * was written at, the op position of its first row, and the snapshot, which
 * may hold transactions after that one.
 */
export interface RecordedMove {
  readonly lsn: Lsn
  readonly op: number
  readonly snapshot: { readonly xmin: bigint; readonly xmax: bigint; readonly xip: ReadonlyArray<bigint> }
  /** Keys of rows its query found out of the shape and did not write (none when absent). */
  readonly leftOut?: ReadonlyArray<string>
  /** False when it wrote no row: its transaction may have left nothing in the log. */
  readonly wrote?: boolean
}

/** What the snapshot of a shape saw: decides which replicated transactions it already contains. */
export interface SnapshotMark {
  /**
   * The commit LSN of the first transaction the consumer met whose xid is at or above `xmax`: nothing from it on
   * can be in the snapshot, so visibility is no longer tested there. A transaction before it that comes again
   * after a restart is tested again: it may be one the snapshot holds, and the log shows nothing of it. Undefined
   * until met; 0 for marks that recorded only that it was met (nothing is tested again, as before).
   */
  readonly pastSnapshotAt?: Lsn | undefined
  readonly xmin: bigint
  readonly xmax: bigint
  readonly xip: ReadonlyArray<bigint>
  /** `pg_current_wal_lsn()` inside the snapshot (where the log stood when it was taken). */
  readonly lsn: Lsn
  /** The columns (names and type oids) the snapshot read: a table that changed since no longer fits the log. */
  readonly columns: string
  /** The oid of the table the snapshot read: a table of the same name created since is another table. Undefined for marks written before it was recorded. */
  readonly tableOid?: number | undefined
}

/**
 * What routing needs of a shape besides its table: the top-level `col = const` conjunct of its where that the
 * routing index finds it by (`WhereClause.equalities[0]`), or `null` when it has none (its where is evaluated per
 * row, or it has no where).
 */
export type ShapeRouting = { readonly column: string; readonly value: string } | null

const encodeRouting = (routing: ShapeRouting): string =>
  routing === null ? "" : JSON.stringify([routing.column, routing.value])

// The same column name for thousands of shapes is one string, not one per row read.
const columnNames = new Map<string, string>()
const decodeRouting = (text: string | null): ShapeRouting | undefined => {
  if (text === null) return undefined
  if (text === "") return null
  const [column, value] = JSON.parse(text) as [string, string]
  let name = columnNames.get(column)
  if (name === undefined) columnNames.set(column, name = column)
  return { column: name, value }
}

/** One registered shape. */
export interface ShapeRecord {
  readonly handle: ShapeHandle
  readonly identity: string
  readonly definition: ShapeDefinition
  readonly snapshot: SnapshotMark | undefined
  /** The dependency shapes its subqueries read, in order. */
  readonly dependencies: ReadonlyArray<ShapeHandle>
  /** A client asked for this shape itself; false for a shape made only for other shapes' subqueries. */
  readonly requested: boolean
  /** Undefined for a shape registered before it was recorded (`setRouting` records it). */
  readonly routing: ShapeRouting | undefined
}

const NO_DEPENDENCIES: ReadonlyArray<ShapeHandle> = []

interface Row {
  readonly handle: string
  readonly identity: string
  readonly snapshot_complete: number
  readonly snapshot: string | null
  readonly removing: number
  readonly requested: number
  readonly routing: string | null
}

const encodeMark = (m: SnapshotMark): string =>
  JSON.stringify({
    xmin: String(m.xmin),
    xmax: String(m.xmax),
    xip: m.xip.map(String),
    lsn: String(m.lsn),
    columns: m.columns,
    ...(m.pastSnapshotAt === undefined ? {} : { pastSnapshotAt: String(m.pastSnapshotAt) }),
    ...(m.tableOid === undefined ? {} : { tableOid: m.tableOid })
  })

const decodeMark = (text: string): SnapshotMark => {
  const o = JSON.parse(text) as {
    xmin: string
    xmax: string
    xip: Array<string>
    lsn: string
    columns: string
    pastSnapshotAt?: string
    pastSnapshot?: boolean
    tableOid?: number
  }
  // One literal, every key always present: the thousands of marks decoded at start-up share one object layout.
  return {
    xmin: BigInt(o.xmin),
    xmax: BigInt(o.xmax),
    xip: o.xip.length === 0 ? NO_XIP : o.xip.map(BigInt),
    lsn: BigInt(o.lsn),
    columns: o.columns,
    // A mark that recorded only that the snapshot was passed keeps that meaning: everything it is sent is past it.
    pastSnapshotAt: o.pastSnapshotAt !== undefined ? BigInt(o.pastSnapshotAt) : o.pastSnapshot === true ? 0n : undefined,
    tableOid: o.tableOid
  }
}

const NO_XIP: ReadonlyArray<bigint> = []

/**
 * The registry as the activation checks see it, before it is loaded
 * (DESIGN.md, invariant 8): which shapes exist, and marking some or all of
 * them for removal in one statement. A marked shape is no longer found, and
 * the boot clean-up of the shape cache finishes its removal, so the mark is
 * the whole decision: it is durable before anything that depends on it.
 */
export const RegistryRows = {
  /**
   * Every shape not being removed: its handle, its table, and the oid of the table its snapshot read (if known).
   * SQLite takes the table and the oid out of the stored JSON and groups the shapes by them, so a registry of
   * thousands of shapes is a few rows here, with nothing of each shape decoded but its handle.
   */
  list: (sql: SqlClient.SqlClient) =>
    sql<{ schema: string; name: string; table_oid: number | null; handles: string }>`SELECT
        json_extract(identity, '$[0]') AS schema, json_extract(identity, '$[1]') AS name,
        json_extract(snapshot, '$.tableOid') AS table_oid, json_group_array(handle) AS handles
      FROM shapes WHERE removing = 0 GROUP BY 1, 2, 3`.pipe(
      Effect.map((groups) => {
        const shapes: Array<{ handle: ShapeHandle; table: TableRef; tableOid: number | undefined }> = []
        for (const g of groups) {
          const table: TableRef = { schema: g.schema, name: g.name }
          const tableOid = g.table_oid ?? undefined
          for (const handle of JSON.parse(g.handles) as Array<string>) shapes.push({ handle: ShapeHandle(handle), table, tableOid })
        }
        return shapes
      }),
      Effect.mapError((cause) => new RegistryError({ operation: "list shapes", cause }))
    ),
  /**
   * Marks the shapes (every one with `"all"`) for removal. The identity is released with the mark, so the
   * definition can get a new shape (a row whose identity is still taken would make that insert fail) while
   * the old one's removal finishes.
   */
  markRemoving: (sql: SqlClient.SqlClient, handles: ReadonlyArray<ShapeHandle> | "all") =>
    (handles === "all"
      ? sql`UPDATE shapes SET removing = 1, identity = 'removing:' || handle WHERE removing = 0`
      : sql`UPDATE shapes SET removing = 1, identity = 'removing:' || handle
            WHERE removing = 0 AND ${sql.in("handle", handles)}`).pipe(
        Effect.asVoid,
        Effect.mapError((cause) => new RegistryError({ operation: "mark shapes for removal", cause }))
      )
} as const

/**
 * The shape registry: every shape in memory (identity -> handle, handle ->
 * record), written through to SQLite. Once its scope closes, every call fails
 * with `TableAbsent` instead of reading freed state.
 */
export class ShapeStatus extends Context.Tag("syncline/ShapeStatus")<ShapeStatus, {
  readonly byIdentity: (identity: string) => Effect.Effect<Option.Option<ShapeRecord>, TableAbsent>
  readonly get: (handle: string) => Effect.Effect<Option.Option<ShapeRecord>, TableAbsent>
  readonly all: Effect.Effect<ReadonlyArray<ShapeRecord>, TableAbsent>
  /** Registers a new shape with a fresh handle (its snapshot not complete yet), and the shapes its subqueries read. */
  readonly add: (
    definition: ShapeDefinition,
    dependencies?: ReadonlyArray<ShapeHandle>,
    requested?: boolean,
    routing?: ShapeRouting
  ) => Effect.Effect<ShapeRecord, RegistryError | TableAbsent>
  /** Records the routing of shapes registered before it was recorded, in one transaction. */
  readonly setRouting: (
    entries: ReadonlyArray<readonly [ShapeHandle, ShapeRouting]>
  ) => Effect.Effect<void, RegistryError | TableAbsent>
  /** Records that a client asked for the shape itself (it was made for a subquery). */
  readonly markRequested: (handle: ShapeHandle) => Effect.Effect<void, RegistryError | TableAbsent>
  readonly markSnapshotComplete: (handle: ShapeHandle, mark: SnapshotMark) => Effect.Effect<ShapeRecord, RegistryError | TableAbsent>
  /** Records where the shape's consumer stopped testing visibility in its snapshot (`SnapshotMark.pastSnapshotAt`). */
  readonly markPastSnapshot: (handle: ShapeHandle, at: Lsn) => Effect.Effect<void, RegistryError | TableAbsent>
  /** First step of a removal: durably marked, and no longer found. */
  readonly markRemoving: (handle: ShapeHandle) => Effect.Effect<void, RegistryError | TableAbsent>
  /** Last step of a removal: the row goes. */
  readonly delete: (handle: ShapeHandle) => Effect.Effect<void, RegistryError | TableAbsent>
  /** The moves recorded for a shape and not yet forgotten, in commit order. */
  readonly moves: (handle: ShapeHandle) => Effect.Effect<ReadonlyArray<RecordedMove>, RegistryError | TableAbsent>
  /** Records moves durably: before the log commit that holds their rows. */
  readonly recordMoves: (handle: ShapeHandle, moves: ReadonlyArray<RecordedMove>) => Effect.Effect<void, RegistryError | TableAbsent>
  /** Forgets the moves at these commit LSNs. */
  readonly forgetMoves: (handle: ShapeHandle, lsns: ReadonlyArray<Lsn>) => Effect.Effect<void, RegistryError | TableAbsent>
  /** Rows left by interrupted removals or snapshots that never completed (boot clean-up). */
  readonly unfinished: Effect.Effect<ReadonlyArray<ShapeHandle>, RegistryError>
}>() {
  static readonly layer: Layer.Layer<ShapeStatus, RegistryError, SqlClient.SqlClient> = Layer.scoped(
    ShapeStatus,
    Effect.gen(function*() {
      yield* logWhenStopped("ShapeStatus")
      const sql = yield* SqlClient.SqlClient
      const fail = (operation: string) => (cause: unknown) => new RegistryError({ operation, cause })

      const rows = yield* sql<Row>`SELECT handle, identity, snapshot_complete, snapshot, removing, requested, routing FROM shapes`.pipe(
        Effect.mapError(fail("load"))
      )
      const edges = yield* sql<{ handle: string; position: number; dependency: string }>`SELECT handle, position, dependency
        FROM shape_dependencies ORDER BY handle, position`.pipe(Effect.mapError(fail("load")))
      const dependenciesOf = new Map<string, Array<ShapeHandle>>()
      for (const e of edges) {
        let list = dependenciesOf.get(e.handle)
        if (list === undefined) dependenciesOf.set(e.handle, list = [])
        list[e.position] = ShapeHandle(e.dependency)
      }
      const byHandle = new Map<string, ShapeRecord>()
      const byIdentity = new Map<string, ShapeRecord>()
      let lastMicros = 0
      for (const r of rows) {
        const micros = Number(r.handle.slice(r.handle.indexOf("-") + 1))
        if (micros > lastMicros) lastMicros = micros
        if (r.removing !== 0 || r.snapshot_complete === 0 || r.snapshot === null) continue
        const record: ShapeRecord = {
          handle: ShapeHandle(r.handle),
          identity: r.identity,
          definition: ShapeDefinition.fromIdentity(r.identity),
          snapshot: decodeMark(r.snapshot),
          dependencies: dependenciesOf.get(r.handle) ?? NO_DEPENDENCIES,
          requested: r.requested !== 0,
          routing: decodeRouting(r.routing)
        }
        byHandle.set(record.handle, record)
        byIdentity.set(record.identity, record)
      }

      let open = true
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          open = false
          byHandle.clear()
          byIdentity.clear()
        })
      )
      const guard = <A>(operation: string, f: () => A): Effect.Effect<A, TableAbsent> =>
        Effect.suspend(() => (open ? Effect.succeed(f()) : Effect.fail(new TableAbsent({ operation }))))

      // Handles are never reused: the timestamp part only moves forward, even within one microsecond.
      const nextHandle = (def: ShapeDefinition): ShapeHandle => {
        const now = Date.now() * 1000
        lastMicros = now > lastMicros ? now : lastMicros + 1
        return ShapeHandle(`${ShapeDefinition.hash(def)}-${lastMicros}`)
      }

      return ShapeStatus.of({
        byIdentity: (identity) => guard("byIdentity", () => Option.fromNullable(byIdentity.get(identity))),
        get: (handle) => guard("get", () => Option.fromNullable(byHandle.get(handle))),
        all: guard("all", () => [...byHandle.values()]),
        add: (definition, dependencies = [], requested = true, routing = null) =>
          Effect.gen(function*() {
            yield* guard("add", () => undefined)
            const identity = ShapeDefinition.identity(definition)
            const existing = byIdentity.get(identity)
            if (existing !== undefined) return existing
            const record: ShapeRecord = {
              handle: nextHandle(definition),
              identity,
              definition,
              snapshot: undefined,
              dependencies,
              requested,
              routing
            }
            // A row from an earlier incarnation whose snapshot never completed gives way to the new one.
            yield* sql`DELETE FROM shape_moves WHERE handle IN
                (SELECT handle FROM shapes WHERE identity = ${identity} AND snapshot_complete = 0)`.pipe(
              Effect.zipRight(sql`DELETE FROM shape_dependencies WHERE handle IN
                (SELECT handle FROM shapes WHERE identity = ${identity} AND snapshot_complete = 0)`),
              Effect.zipRight(sql`DELETE FROM shapes WHERE identity = ${identity} AND snapshot_complete = 0`),
              Effect.zipRight(
                sql`INSERT INTO shapes (handle, identity, created_at, requested, routing)
                  VALUES (${record.handle}, ${identity}, ${Date.now()}, ${requested ? 1 : 0}, ${encodeRouting(routing)})`
              ),
              Effect.zipRight(Effect.forEach(dependencies, (dependency, position) =>
                sql`INSERT INTO shape_dependencies (handle, position, dependency)
                  VALUES (${record.handle}, ${position}, ${dependency})`, { discard: true })),
              sql.withTransaction,
              Effect.mapError(fail("add"))
            )
            return record
          }),
        markSnapshotComplete: (handle, mark) =>
          Effect.gen(function*() {
            yield* guard("markSnapshotComplete", () => undefined)
            const row = yield* sql<Row>`SELECT handle, identity, snapshot_complete, snapshot, removing, requested, routing
              FROM shapes WHERE handle = ${handle}`.pipe(
              Effect.mapError(fail("markSnapshotComplete"))
            )
            if (row.length === 0) return yield* new RegistryError({ operation: "markSnapshotComplete: no such shape" })
            yield* sql`UPDATE shapes SET snapshot_complete = 1, snapshot = ${encodeMark(mark)} WHERE handle = ${handle}`.pipe(
              Effect.mapError(fail("markSnapshotComplete"))
            )
            const deps = yield* sql<{ dependency: string }>`SELECT dependency FROM shape_dependencies
              WHERE handle = ${handle} ORDER BY position`.pipe(Effect.mapError(fail("markSnapshotComplete")))
            const record: ShapeRecord = {
              handle,
              identity: row[0]!.identity,
              definition: ShapeDefinition.fromIdentity(row[0]!.identity),
              snapshot: mark,
              dependencies: deps.length === 0 ? NO_DEPENDENCIES : deps.map((d) => ShapeHandle(d.dependency)),
              requested: row[0]!.requested !== 0,
              routing: decodeRouting(row[0]!.routing)
            }
            if (open) {
              byHandle.set(handle, record)
              byIdentity.set(record.identity, record)
            }
            return record
          }),
        setRouting: (entries) =>
          Effect.gen(function*() {
            yield* guard("setRouting", () => undefined)
            if (entries.length === 0) return
            yield* Effect.forEach(
              entries,
              ([handle, routing]) => sql`UPDATE shapes SET routing = ${encodeRouting(routing)} WHERE handle = ${handle}`,
              { discard: true }
            ).pipe(sql.withTransaction, Effect.mapError(fail("setRouting")))
            for (const [handle, routing] of entries) {
              const record = byHandle.get(handle)
              if (record === undefined) continue
              const updated: ShapeRecord = { ...record, routing }
              byHandle.set(handle, updated)
              if (byIdentity.get(record.identity) === record) byIdentity.set(record.identity, updated)
            }
          }),
        markPastSnapshot: (handle, at) =>
          Effect.gen(function*() {
            yield* guard("markPastSnapshot", () => undefined)
            const record = byHandle.get(handle)
            if (record?.snapshot === undefined || record.snapshot.pastSnapshotAt !== undefined) return
            const snapshot: SnapshotMark = { ...record.snapshot, pastSnapshotAt: at }
            yield* sql`UPDATE shapes SET snapshot = ${encodeMark(snapshot)} WHERE handle = ${handle}`.pipe(
              Effect.mapError(fail("markPastSnapshot"))
            )
            const updated: ShapeRecord = { ...record, snapshot }
            if (byHandle.get(handle) === record) byHandle.set(handle, updated)
            if (byIdentity.get(record.identity) === record) byIdentity.set(record.identity, updated)
          }),
        markRequested: (handle) =>
          Effect.gen(function*() {
            yield* guard("markRequested", () => undefined)
            const record = byHandle.get(handle)
            if (record === undefined || record.requested) return
            yield* sql`UPDATE shapes SET requested = 1 WHERE handle = ${handle}`.pipe(Effect.mapError(fail("markRequested")))
            const updated: ShapeRecord = { ...record, requested: true }
            if (byHandle.get(handle) === record) byHandle.set(handle, updated)
            if (byIdentity.get(record.identity) === record) byIdentity.set(record.identity, updated)
          }),
        markRemoving: (handle) =>
          Effect.gen(function*() {
            yield* guard("markRemoving", () => undefined)
            yield* RegistryRows.markRemoving(sql, [handle])
            const record = byHandle.get(handle)
            byHandle.delete(handle)
            if (record !== undefined && byIdentity.get(record.identity)?.handle === handle) byIdentity.delete(record.identity)
          }),
        moves: (handle) =>
          Effect.zipRight(
            guard("moves", () => undefined),
            sql<{ lsn: string; op: number; snapshot: string; left_out: string; wrote: number }>`SELECT lsn, op, snapshot,
              left_out, wrote FROM shape_moves WHERE handle = ${handle}`.pipe(
              Effect.map((rows) =>
                rows.map((r): RecordedMove => {
                  const snapshot = JSON.parse(r.snapshot) as { xmin: string; xmax: string; xip: Array<string> }
                  const leftOut = JSON.parse(r.left_out) as Array<string>
                  return {
                    lsn: BigInt(r.lsn),
                    op: r.op,
                    snapshot: { xmin: BigInt(snapshot.xmin), xmax: BigInt(snapshot.xmax), xip: snapshot.xip.map(BigInt) },
                    ...(leftOut.length > 0 ? { leftOut } : {}),
                    ...(r.wrote === 0 ? { wrote: false } : {})
                  }
                }).sort((a, b) => (a.lsn < b.lsn ? -1 : a.lsn > b.lsn ? 1 : 0))
              ),
              Effect.mapError(fail("moves"))
            )
          ),
        recordMoves: (handle, moves) =>
          Effect.zipRight(
            guard("recordMoves", () => undefined),
            Effect.forEach(moves, (m) => {
              const snapshot = JSON.stringify({ xmin: String(m.snapshot.xmin), xmax: String(m.snapshot.xmax), xip: m.snapshot.xip.map(String) })
              return sql`INSERT OR REPLACE INTO shape_moves (handle, lsn, op, snapshot, left_out, wrote)
                VALUES (${handle}, ${String(m.lsn)}, ${m.op}, ${snapshot}, ${JSON.stringify(m.leftOut ?? [])},
                ${m.wrote === false ? 0 : 1})`
            }, { discard: true }).pipe(sql.withTransaction, Effect.mapError(fail("recordMoves")))
          ),
        forgetMoves: (handle, lsns) =>
          Effect.zipRight(
            guard("forgetMoves", () => undefined),
            sql`DELETE FROM shape_moves WHERE handle = ${handle} AND ${sql.in("lsn", lsns.map(String))}`.pipe(
              Effect.asVoid,
              Effect.mapError(fail("forgetMoves"))
            )
          ),
        delete: (handle) =>
          sql`DELETE FROM shape_moves WHERE handle = ${handle}`.pipe(
            Effect.zipRight(sql`DELETE FROM shape_dependencies WHERE handle = ${handle}`),
            Effect.zipRight(sql`DELETE FROM shapes WHERE handle = ${handle}`),
            sql.withTransaction,
            Effect.asVoid,
            Effect.mapError(fail("delete"))
          ),
        unfinished: sql<{ handle: string }>`SELECT handle FROM shapes WHERE removing = 1 OR snapshot_complete = 0`.pipe(
          Effect.map((rs) => rs.map((r) => ShapeHandle(r.handle))),
          Effect.mapError(fail("unfinished"))
        )
      })
    })
  )
}
