import * as Effect from "effect/Effect"
import type { Row } from "../domain/Change.js"
import { LogOffset } from "../domain/LogOffset.js"
import type { Lsn } from "../domain/Lsn.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { MaterializerGone, PostgresError, StorageError } from "../domain/errors.js"
import type { RowsRequest, Snapshot } from "../postgres/Snapshot.js"
import type { ShapeLog } from "../storage/ShapeLogStorage.js"
import type { InSubquery } from "../where/Ast.js"
import type { SubqueryViews } from "../where/Evaluator.js"
import type { SubqueryPosition } from "../where/WhereClause.js"
import type { PendingEntry, ShapeEncoder } from "./LogItems.js"
import { type LoggedTransaction, type Materializer, type Moves, parseLogBody, type ValueIndex } from "./Materializer.js"
import type { Shape } from "./Shape.js"
import type { RecordedMove } from "./ShapeStatus.js"
import { visibleInSnapshot, widenXid } from "./Visibility.js"

/** What the consumer of a shape with subqueries reaches of one of its dependency shapes. */
export interface DependencyLink {
  readonly handle: ShapeHandle
  /** The dependency's materializer, once its consumer has loaded it. */
  readonly materializer: Effect.Effect<Materializer, MaterializerGone>
  /** Waits until every transaction up to `lsn` routed to the dependency is durable in its log. */
  readonly awaitDurable: (lsn: Lsn) => Effect.Effect<void, MaterializerGone>
}

/** Every committed transaction of a shape's log (snapshot rows first, at LSN 0), read chunk by chunk, each once. */
export const readLog = (log: ShapeLog): Effect.Effect<Array<LoggedTransaction>, StorageError> =>
  Effect.gen(function*() {
    const out: Array<LoggedTransaction> = []
    const decoder = new TextDecoder()
    let from = LogOffset.beforeAll
    for (;;) {
      const read = yield* log.read(from)
      parseLogBody(decoder.decode(read.body), out)
      if (read.reachedEnd || LogOffset.equals(read.nextOffset, from)) return out
      from = read.nextOffset
    }
  })

/** A move whose rows were written from a snapshot that may hold later transactions, and the keys of those rows. */
export interface ReconciledMove extends RecordedMove {
  readonly keys: Set<string>
  /** Whether the registry has it: only then is there a record to forget. */
  readonly recorded: boolean
}

/**
 * Whether a recorded move still holds after a restart: its rows are in the log (at or below `durableLsn`), or it
 * wrote none and its transaction will not come again (at or below `replayFloor`). Any other record lost its rows
 * with a crash, and its transaction comes again and queries the move again.
 */
export const moveKept = (move: RecordedMove, durableLsn: Lsn, replayFloor: Lsn): boolean =>
  move.lsn <= durableLsn || (move.wrote === false && move.lsn <= replayFloor)

/**
 * The recorded moves that still hold (`moveKept`), each with the keys of the rows it concerns: those it wrote,
 * its transaction's rows in the log from its first op position on, and those its query found out of the shape
 * and left out. While a move's snapshot is ahead of the stream, the later changes of those rows are skipped
 * (they are in what it wrote, or in what it left out) and reported to the shapes reading this one.
 */
export const restoredMoves = (
  transactions: ReadonlyArray<LoggedTransaction>,
  moves: ReadonlyArray<RecordedMove>,
  durableLsn: Lsn,
  replayFloor: Lsn
): Array<ReconciledMove> => {
  const kept = moves.filter((m) => moveKept(m, durableLsn, replayFloor))
  if (kept.length === 0) return []
  const byLsn = new Map(transactions.map((t) => [t.lsn, t]))
  return kept.map((m) => {
    const written = m.wrote === false ? [] : (byLsn.get(m.lsn)?.operations ?? []).filter((o) => o.op >= m.op).map((o) => o.key)
    return { ...m, keys: new Set([...written, ...(m.leftOut ?? [])]), recorded: true }
  })
}

/** The row keys a shape holds after the transactions of its log. */
export const heldKeys = (transactions: ReadonlyArray<LoggedTransaction>): Set<string> => {
  const held = new Set<string>()
  for (const t of transactions) {
    for (const op of t.operations) {
      if (op.operation === "delete") held.delete(op.key)
      else held.add(op.key)
    }
  }
  return held
}

/** The moves one transaction made in the values a shape's subqueries read. */
export interface ShapeMoves {
  /** Per position whose set gained or lost values: those values (the dependency's texts). */
  readonly partial: ReadonlyArray<{ readonly position: SubqueryPosition; readonly values: ReadonlyArray<ReadonlyArray<string>> }>
  /** A NULL or the emptiness of a set changed where that matters for rows whose values did not move. */
  readonly full: boolean
}

/**
 * The state of the consumer of a shape with subqueries: the rows it holds
 * (rebuilt from its own log), its view of each dependency at the commit being
 * handled, and the queries that bring rows in and out when a dependency's
 * values move.
 *
 * A move is applied by asking Postgres for the rows whose values moved, with
 * the shape's whole clause (real subqueries) evaluated in one snapshot that
 * holds the moving transaction: each such row is written as it is in that
 * snapshot (insert, update or delete, by whether the shape holds it). Later
 * changes of those rows by transactions the snapshot already holds are
 * skipped (the rows were written with them); every other change is applied as
 * it comes, by the rows held. No row is ever inserted twice or deleted
 * unheld, and the shape equals Postgres once the stream has passed the
 * snapshot.
 */
export class SubqueryState {
  /** The commit LSN whose views the clause reads. */
  at: Lsn = 0n
  readonly matches: (row: Row) => boolean
  private readonly indexes: ReadonlyArray<ValueIndex>
  private readonly byNode: Map<InSubquery, ValueIndex>
  /**
   * Rows written as a move's snapshot had them, until no later transaction can be in that snapshot. They are
   * recorded with the log, so that after a restart the transactions such a snapshot holds are still not
   * applied again to those rows.
   */
  private reconciled: Array<ReconciledMove>
  /** Moves written in this batch, to record before its log commit. */
  private unrecorded: Array<RecordedMove> = []
  /**
   * Moves no transaction still to come can be in (`lsn`), since the transaction at `until` could not be. A
   * restart sends again every transaction past the acknowledgement, to this shape and to the shapes reading it,
   * so each is forgotten only once the acknowledgement has passed `until`: until then a transaction its snapshot
   * holds may still come again.
   */
  private obsolete: Array<{ readonly lsn: Lsn; readonly until: Lsn }> = []
  /** The reconciliations whose snapshot holds the transaction being encoded. */
  private holdingKeys: Array<Set<string>> = []

  constructor(
    readonly shape: Shape,
    readonly held: Set<string>,
    private readonly links: ReadonlyArray<DependencyLink>,
    private readonly materializers: ReadonlyArray<Materializer>,
    private readonly rows: Snapshot["Type"]["rows"],
    restored: ReadonlyArray<ReconciledMove> = []
  ) {
    this.reconciled = [...restored]
    const where = shape.where!
    this.byNode = new Map()
    this.indexes = where.positions.map((p) => {
      const dependency = where.dependencies[p.node.dependency]!
      const index = materializers[p.node.dependency]!.index({
        columns: dependency.select.map((c) => c.name),
        types: dependency.select.map((c) => c.type),
        domains: p.node.domains
      })
      this.byNode.set(p.node, index)
      return index
    })
    const views: SubqueryViews = {
      has: (node, key) => this.byNode.get(node)!.has(key, this.at),
      hasNull: (node) => this.byNode.get(node)!.hasNull(this.at),
      isEmpty: (node) => this.byNode.get(node)!.isEmpty(this.at)
    }
    this.matches = where.bind(views)
  }

  /** Waits until each dependency has made durable what was routed to it with the transaction (`needs`, per dependency). */
  awaitDependencies(needs: ReadonlyArray<Lsn> | undefined): Effect.Effect<void, MaterializerGone> {
    if (needs === undefined) return Effect.void
    return Effect.forEach(this.links, (link, i) => link.awaitDurable(needs[i] ?? 0n), { discard: true })
  }

  /** Starts the transaction at `at`: which rows written by earlier moves already hold its changes. */
  begin(xid: number): void {
    this.holdingKeys = []
    if (this.reconciled.length === 0) return
    this.reconciled = this.reconciled.filter((r) => {
      // A transaction the slot sends again after a restart can come before moves restored from the log.
      if (r.lsn >= this.at) return true
      if (widenXid(xid, r.snapshot) >= r.snapshot.xmax) {
        if (r.recorded) this.obsolete.push({ lsn: r.lsn, until: this.at })
        return false
      }
      if (visibleInSnapshot(xid, r.snapshot)) this.holdingKeys.push(r.keys)
      return true
    })
  }

  /** The moves written since the last `movesRecorded`: recorded before the log commit that holds their rows. */
  get unrecordedMoves(): ReadonlyArray<RecordedMove> {
    return this.unrecorded
  }

  /** The moves written so far are recorded. */
  movesRecorded(): void {
    this.unrecorded = []
  }

  /** The recorded moves that no longer matter once every shape has made durable up to `acknowledged`, each once. */
  takeObsolete(acknowledged: Lsn): ReadonlyArray<Lsn> {
    if (this.obsolete.length === 0) return []
    const taken = this.obsolete.filter((o) => o.until <= acknowledged).map((o) => o.lsn)
    if (taken.length > 0) this.obsolete = this.obsolete.filter((o) => o.until > acknowledged)
    return taken
  }

  /** Whether some rows written by a move already hold the current transaction's changes. */
  get holding(): boolean {
    return this.holdingKeys.length > 0
  }

  /** Whether a change of the row `key` in the current transaction is already in what a move wrote. */
  written(key: string): boolean {
    for (const keys of this.holdingKeys) if (keys.has(key)) return true
    return false
  }

  /** Tells the dependencies this shape has handled everything up to `lsn`: their history below it can go. */
  handled(lsn: Lsn): void {
    for (const m of this.materializers) m.dependentAt(this.shape.handle, lsn)
  }

  /** What the transaction at `lsn` moved, if anything. */
  movesAt(lsn: Lsn): ShapeMoves | undefined {
    const where = this.shape.where!
    let partial: Array<{ position: SubqueryPosition; values: ReadonlyArray<ReadonlyArray<string>> }> | undefined
    let full = false
    where.positions.forEach((position, i) => {
      const moves: Moves | undefined = this.indexes[i]!.movesAt.get(lsn)
      if (moves === undefined) return
      if (moves.entered.length > 0 || moves.left.length > 0 || moves.touched.length > 0) {
        ;(partial ??= []).push({ position, values: [...moves.entered, ...moves.left, ...moves.touched] })
      }
      if (position.nullSensitive && (moves.nullChanged || moves.emptyChanged)) full = true
    })
    return partial === undefined && !full ? undefined : { partial: partial ?? [], full }
  }

  /**
   * Applies the moves of the transaction just encoded: queries the rows they concern and writes each as the
   * query's snapshot has it, after the transaction's own entries (`op` onward). The snapshot must hold every
   * transaction handled so far (`xids`, the transaction's among them); if one is not visible yet, it asks again.
   * A row an earlier move already wrote from a snapshot holding this transaction (or left out as such) shows no
   * change here, though Postgres moved it now: its values go to `ahead`, for the shapes reading this one.
   */
  reconcile(
    moves: ShapeMoves,
    xids: ReadonlyArray<number>,
    encoder: ShapeEncoder,
    tx: Lsn,
    op: number,
    txHeaders: string,
    out: Array<PendingEntry>,
    ahead: Array<readonly [Row | undefined, Row | undefined]>
  ): Effect.Effect<void, PostgresError> {
    const self = this
    return Effect.gen(function*() {
      const request = self.request(moves)
      let result = yield* self.rows(request)
      while (!xids.every((xid) => visibleInSnapshot(xid, result))) {
        yield* Effect.sleep("20 millis")
        result = yield* self.rows(request)
      }
      const keys = new Set<string>()
      const leftOut: Array<string> = []
      const snapshot = { xmin: result.xmin, xmax: result.xmax, xip: result.xip }
      const first = op
      for (const { key, row: r, included } of result.rows) {
        if (self.written(key)) ahead.push([undefined, r])
        keys.add(key)
        if (self.held.has(key)) {
          if (included) encoder.row("update", key, r, tx, op, txHeaders, out)
          else {
            encoder.row("delete", key, r, tx, op, txHeaders, out)
            self.held.delete(key)
          }
        } else if (included) {
          encoder.row("insert", key, r, tx, op, txHeaders, out)
          self.held.add(key)
        } else {
          leftOut.push(key)
          continue
        }
        op += 2
      }
      // A query that returned no row holds back nothing. Any other move is recorded, with the rows it left out:
      // after a restart its snapshot still holds back their later changes and tells the readers of them.
      if (keys.size === 0) return
      self.reconciled.push({ lsn: tx, op: first, snapshot, keys, recorded: true })
      self.unrecorded.push({
        lsn: tx,
        op: first,
        snapshot,
        ...(leftOut.length > 0 ? { leftOut } : {}),
        ...(op > first ? {} : { wrote: false })
      })
    })
  }

  private request(moves: ShapeMoves): RowsRequest {
    const { shape } = this
    const where = shape.where!
    return {
      table: shape.table,
      columns: shape.columns,
      whereSql: where.sql,
      // A row failing a condition without subqueries is out. If the shape holds it, a transaction after the move
      // changed it, and that change, applied as it comes, takes it out.
      condition: where.plainConditionsSql,
      filters: moves.full ? undefined : moves.partial.map(({ position, values }) => {
        const node = position.node
        const dependency = where.dependencies[node.dependency]!
        return { columns: node.args.map((a) => a.name), types: dependency.select.map((c) => c.type), values }
      })
    }
  }
}
