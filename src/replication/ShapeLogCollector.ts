import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { Change, ColumnValue, Row, Transaction } from "../domain/Change.js"
import type { Lsn } from "../domain/Lsn.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import { logWhenStopped } from "../domain/Lifecycle.js"
import { tupleValue } from "../postgres/PgOutput.js"
import { FlushTracker } from "./FlushTracker.js"

/** What routing needs to know of a shape. */
export interface RoutedShape {
  readonly handle: ShapeHandle
  readonly tableOid: number
  /** A top-level `col = const` conjunct of the where (the constant in the column's text form). */
  readonly equality: { readonly column: string; readonly value: string } | undefined
  /** The where clause; `undefined` matches every row. */
  readonly matches: ((row: Row) => boolean) | undefined
  /** The table's columns (names and type oids) the shape was built on: see `columnSignature`. */
  readonly columns: string
  /** The shapes its subqueries read: whatever reaches one of them reaches this shape too. */
  readonly dependencies?: ReadonlyArray<ShapeHandle> | undefined
}

/**
 * Names and type oids of a table's columns, in order. pgoutput sends a
 * Relation message before a table's first change on every connection and
 * after every schema change; one whose signature differs from a shape's means
 * the shape no longer describes the table.
 */
export const columnSignature = (columns: ReadonlyArray<{ readonly name: string; readonly typeOid: number }>): string =>
  columns.map((c) => `${c.name}:${c.typeOid}`).join(",")

/** The part of a transaction one shape must see: the positions of its candidate changes. */
export interface Delivery {
  readonly handle: ShapeHandle
  readonly changes: Array<number>
  /** Why the shape must be invalidated (its table was truncated or its columns changed), if it must. */
  invalidated: string | undefined
}

/** A routed transaction and the shapes it goes to, dependencies first. */
export interface Routed {
  readonly txn: Transaction
  readonly deliveries: ReadonlyArray<Delivery>
}

interface EqualityIndex {
  readonly column: string
  /**
   * The shapes of each value: the handle itself while it is the value's only shape (most `col = const` shapes have
   * a value of their own, and a Set would cost each about 150 bytes more), a Set from the second one on.
   */
  readonly byValue: Map<string, ShapeHandle | Set<ShapeHandle>>
}

/** The shapes of one table, split by how a change finds them. */
interface TableShapes {
  /** One index per column that some shape constrains with `col = const`. */
  readonly indexes: Map<string, EqualityIndex>
  /** Shapes whose where cannot use an index (or that have none): evaluated per row. */
  readonly scanned: Map<ShapeHandle, (row: Row) => boolean>
  readonly all: Set<ShapeHandle>
  /**
   * `indexes` and `scanned` as arrays, which a row walks without an iterator or an entry per step; made again on
   * the first row after a shape of the table came or went.
   */
  lists: {
    readonly indexes: ReadonlyArray<EqualityIndex>
    readonly scanned: ReadonlyArray<ScannedShape>
    /** No shape of the table looks at a row's values: each has every change of it, without its rows being made. */
    readonly rowFree: boolean
  } | undefined
}

/**
 * A column of a change's new row, read from its tuple's bytes alone when it came from the wire: routing by an
 * equality index then never makes the change's row (most changes, past shapes of one value each, match none).
 */
const newValueOf = (change: Change & { readonly kind: "insert" | "update" }, column: string): ColumnValue => {
  const data = change.tupleData
  if (data !== undefined) {
    const columns = change.relation.columns
    for (let j = 0; j < columns.length; j++) {
      if (columns[j]!.name !== column) continue
      const value = tupleValue(data, change.tupleAt!, j)
      // An unchanged TOASTed value: the row has it from the old row when that was sent whole.
      if (value !== undefined) return value
      break
    }
  }
  return change.new[column]
}

/** The where of a shape that has none. */
const everyRow = (_: Row): boolean => true

interface ScannedShape {
  readonly handle: ShapeHandle
  readonly matches: (row: Row) => boolean
}

/**
 * The routing index: which shapes a change touches. Shapes are found through
 * an equality index on `col = const` conjuncts, others by evaluating their
 * where per row. Over-delivery is harmless (the consumer filters exactly);
 * missing a shape is not, so anything doubtful is delivered.
 *
 * It also holds the replay boundary: transactions at or below the last commit
 * LSN known processed are dropped (DESIGN.md, invariant 2).
 *
 * A transaction that reaches a dependency shape (the shape of a subquery) also
 * reaches every shape that reads it, at any depth, even with none of its own
 * rows: the move of a value may move rows in or out of them. Deliveries come
 * out dependencies first (layers by depth), so that each consumer is handed a
 * transaction after the shapes it reads.
 */
export interface Router {
  readonly addShape: (shape: RoutedShape) => void
  readonly removeShape: (handle: ShapeHandle) => void
  readonly has: (handle: ShapeHandle) => boolean
  readonly size: () => number
  /** Routes a transaction; `undefined` when it was already processed (a replay). */
  readonly route: (txn: Transaction) => ReadonlyArray<Delivery> | undefined
  /** The commit LSN of the last transaction routed (or known processed at start). */
  readonly lastRoutedLsn: () => Lsn
}

const NO_DELIVERIES: ReadonlyArray<Delivery> = []

export const makeRouter = (lastProcessed: Lsn): Router => {
  const tables = new Map<number, TableShapes>()
  const shapeTable = new Map<
    ShapeHandle,
    {
      oid: number
      equality: { column: string; value: string } | undefined
      columns: string
      dependencies: ReadonlyArray<ShapeHandle>
      depth: number
    }
  >()
  /** Who reads each dependency shape. */
  const dependents = new Map<ShapeHandle, Set<ShapeHandle>>()
  let lastRouted = lastProcessed

  const tableFor = (oid: number): TableShapes => {
    let t = tables.get(oid)
    if (t === undefined) {
      t = { indexes: new Map(), scanned: new Map(), all: new Set(), lists: undefined }
      tables.set(oid, t)
    }
    return t
  }

  const addShape = (shape: RoutedShape): void => {
    removeShape(shape.handle)
    const t = tableFor(shape.tableOid)
    t.all.add(shape.handle)
    t.lists = undefined
    const eq = shape.equality
    if (eq !== undefined) {
      let index = t.indexes.get(eq.column)
      if (index === undefined) {
        index = { column: eq.column, byValue: new Map() }
        t.indexes.set(eq.column, index)
      }
      const present = index.byValue.get(eq.value)
      if (present === undefined) index.byValue.set(eq.value, shape.handle)
      else if (typeof present === "string") index.byValue.set(eq.value, new Set([present, shape.handle]))
      else present.add(shape.handle)
    } else {
      t.scanned.set(shape.handle, shape.matches ?? everyRow)
    }
    const dependencies = shape.dependencies ?? []
    let depth = 0
    for (const d of dependencies) {
      depth = Math.max(depth, (shapeTable.get(d)?.depth ?? 0) + 1)
      let set = dependents.get(d)
      if (set === undefined) dependents.set(d, set = new Set())
      set.add(shape.handle)
    }
    shapeTable.set(shape.handle, { oid: shape.tableOid, equality: eq, columns: shape.columns, dependencies, depth })
  }

  const removeShape = (handle: ShapeHandle): void => {
    const entry = shapeTable.get(handle)
    if (entry === undefined) return
    shapeTable.delete(handle)
    for (const d of entry.dependencies) {
      const set = dependents.get(d)
      set?.delete(handle)
      if (set !== undefined && set.size === 0) dependents.delete(d)
    }
    const t = tables.get(entry.oid)
    if (t === undefined) return
    t.all.delete(handle)
    t.scanned.delete(handle)
    t.lists = undefined
    if (entry.equality !== undefined) {
      const index = t.indexes.get(entry.equality.column)
      const present = index?.byValue.get(entry.equality.value)
      if (present === handle) index!.byValue.delete(entry.equality.value)
      else if (typeof present === "object") {
        present.delete(handle)
        if (present.size === 1) index!.byValue.set(entry.equality.value, present.values().next().value!)
      }
      if (index !== undefined && index.byValue.size === 0) t.indexes.delete(entry.equality.column)
    }
    if (t.all.size === 0) tables.delete(entry.oid)
  }

  // The deliveries of the transaction being routed, made on its first match: most transactions match no shape,
  // and most of the others one. The map is made for a second shape.
  let first: Delivery | undefined
  let deliveries: Map<ShapeHandle, Delivery> | undefined
  const deliveryOf = (handle: ShapeHandle): Delivery => {
    if (deliveries === undefined) {
      if (first === undefined) return first = { handle, changes: [], invalidated: undefined }
      if (first.handle === handle) return first
      deliveries = new Map([[first.handle, first]])
    }
    let d = deliveries.get(handle)
    if (d === undefined) deliveries.set(handle, d = { handle, changes: [], invalidated: undefined })
    return d
  }
  /** Every delivery made for the transaction so far, by shape; undefined when there is none. */
  const allDeliveries = (): Map<ShapeHandle, Delivery> | undefined => {
    if (deliveries === undefined && first !== undefined) deliveries = new Map([[first.handle, first]])
    return deliveries
  }
  const deliver = (handle: ShapeHandle, i: number) => {
    const d = deliveryOf(handle)
    const last = d.changes.length - 1
    if (last < 0 || d.changes[last] !== i) d.changes.push(i)
  }
  const listsOf = (t: TableShapes): NonNullable<TableShapes["lists"]> =>
    t.lists ??= {
      indexes: [...t.indexes.values()],
      scanned: Array.from(t.scanned, ([handle, matches]) => ({ handle, matches })),
      rowFree: t.indexes.size === 0 && Array.from(t.scanned.values()).every((matches) => matches === everyRow)
    }
  const deliverByValue = (index: EqualityIndex, v: ColumnValue, i: number) => {
    if (v === null || v === undefined) return
    const shapes = index.byValue.get(v)
    if (typeof shapes === "string") deliver(shapes, i)
    else if (shapes !== undefined) for (const h of shapes) deliver(h, i)
  }
  const visitScanned = (scanned: ReadonlyArray<ScannedShape>, row: Row, i: number) => {
    for (let k = 0; k < scanned.length; k++) {
      const shape = scanned[k]!
      if (shape.matches(row)) deliver(shape.handle, i)
    }
  }
  const visitRow = (t: TableShapes, row: Row, i: number) => {
    const { indexes, scanned } = listsOf(t)
    for (let k = 0; k < indexes.length; k++) deliverByValue(indexes[k]!, row[indexes[k]!.column], i)
    visitScanned(scanned, row, i)
  }
  /** `visitRow` of a change's new row, made only when a shape of the table evaluates its where on it (or see `newValueOf`). */
  const visitNewRow = (t: TableShapes, change: Change & { readonly kind: "insert" | "update" }, i: number) => {
    const { indexes, scanned } = listsOf(t)
    if (scanned.length > 0) return visitRow(t, change.new, i)
    for (let k = 0; k < indexes.length; k++) deliverByValue(indexes[k]!, newValueOf(change, indexes[k]!.column), i)
  }

  const route = (txn: Transaction): ReadonlyArray<Delivery> | undefined => {
    if (txn.commitLsn <= lastRouted) return undefined
    lastRouted = txn.commitLsn
    if (tables.size === 0) return NO_DELIVERIES
    first = undefined
    deliveries = undefined
    try {
      return routeChanges(txn)
    } finally {
      first = undefined
      deliveries = undefined
    }
  }

  const routeChanges = (txn: Transaction): ReadonlyArray<Delivery> => {
    for (const rel of txn.relations) {
      const t = tables.get(rel.oid)
      if (t === undefined) continue
      const signature = columnSignature(rel.columns)
      for (const h of t.all) {
        if (shapeTable.get(h)!.columns === signature) continue
        deliveryOf(h).invalidated = "its table's columns changed"
      }
    }
    const changes: ReadonlyArray<Change> = txn.changes
    for (let i = 0; i < changes.length; i++) {
      const change = changes[i]!
      if (change.kind === "truncate") {
        for (const rel of change.relations) {
          const t = tables.get(rel.oid)
          if (t === undefined) continue
          for (const h of t.all) {
            deliver(h, i)
            deliveryOf(h).invalidated = "its table was truncated"
          }
        }
        continue
      }
      const t = tables.get(change.relation.oid)
      if (t === undefined) continue
      const lists = listsOf(t)
      if (lists.rowFree) {
        for (let k = 0; k < lists.scanned.length; k++) deliver(lists.scanned[k]!.handle, i)
        continue
      }
      switch (change.kind) {
        case "insert":
          visitNewRow(t, change, i)
          break
        case "delete":
          visitRow(t, change.old, i)
          break
        case "update":
          visitNewRow(t, change, i)
          if (change.old !== undefined) visitRow(t, change.old, i)
          else for (const h of t.all) deliver(h, i)
          break
      }
    }
    if (first === undefined) return NO_DELIVERIES
    if (deliveries === undefined && !dependents.has(first.handle)) return [first]
    const all = allDeliveries()!
    if (dependents.size === 0) return [...all.values()]
    // Whatever reaches a dependency reaches its readers; then dependencies first. A transaction that reaches no
    // dependency needs neither.
    const pending: Array<ShapeHandle> = []
    for (const h of all.keys()) if (dependents.has(h)) pending.push(h)
    if (pending.length === 0) return [...all.values()]
    while (pending.length > 0) {
      const h = pending.pop()!
      const readers = dependents.get(h)
      if (readers === undefined) continue
      for (const r of readers) {
        if (all.has(r)) continue
        all.set(r, { handle: r, changes: [], invalidated: undefined })
        pending.push(r)
      }
    }
    const depthOf = (d: Delivery) => shapeTable.get(d.handle)?.depth ?? 0
    return [...all.values()].sort((a, b) => depthOf(a) - depthOf(b))
  }

  return {
    addShape,
    removeShape,
    has: (handle) => shapeTable.has(handle),
    size: () => shapeTable.size,
    route,
    lastRoutedLsn: () => lastRouted
  }
}

/**
 * The stack's routing index, as a service; `ShapeCache` seeds it at start. Its
 * replay boundary starts at the last commit LSN the flush tracker made durable.
 */
export class ShapeLogCollector extends Context.Tag("syncline/ShapeLogCollector")<ShapeLogCollector, Router>() {
  static readonly layer: Layer.Layer<ShapeLogCollector, never, FlushTracker> = Layer.scoped(
    ShapeLogCollector,
    Effect.gen(function*() {
      yield* logWhenStopped("ShapeLogCollector")
      const tracker = yield* FlushTracker
      return makeRouter(tracker.lastProcessedLsn())
    })
  )
}
