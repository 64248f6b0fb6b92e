import type { Row } from "../domain/Change.js"
import { MaterializerInvariant } from "../domain/errors.js"
import type { Lsn } from "../domain/Lsn.js"
import type { Domain, PgType } from "../where/Ast.js"
import { valuesKey } from "../where/Evaluator.js"

/**
 * One committed operation of a dependency shape's log, as the materializer
 * reads it: the row key and, for inserts and updates, the row's values (a
 * dependency shape is `replica=full`, so they are whole).
 */
export interface LogOperation {
  readonly operation: "insert" | "update" | "delete"
  readonly key: string
  /** Its place in its transaction (`op_position`; 0 for snapshot rows). */
  readonly op: number
  readonly value: Readonly<Record<string, string | null>> | undefined
}

/** The operations of one transaction of a shape's log, at its commit LSN (snapshot rows at 0). */
export interface LoggedTransaction {
  readonly lsn: Lsn
  readonly operations: ReadonlyArray<LogOperation>
}

/**
 * Reads stored log lines (complete JSON messages) into transactions, in
 * order. Control messages are skipped; lines without an `lsn` header are
 * snapshot rows.
 */
export const parseLogLines = (lines: ReadonlyArray<string>, into: Array<LoggedTransaction>): void => {
  for (const line of lines) addMessage(JSON.parse(line) as Message, into)
}

/** As `parseLogLines`, for a read body (stored lines joined by `,`). */
export const parseLogBody = (body: string, into: Array<LoggedTransaction>): void => {
  if (body.length === 0) return
  for (const message of JSON.parse(`[${body}]`) as Array<Message>) addMessage(message, into)
}

interface Message {
  readonly key?: string
  readonly value?: Record<string, string | null>
  readonly headers: { readonly operation?: "insert" | "update" | "delete"; readonly lsn?: string; readonly op_position?: number }
}

const addMessage = (m: Message, into: Array<LoggedTransaction>): void => {
  const operation = m.headers.operation
  if (operation === undefined || m.key === undefined) return
  const lsn = m.headers.lsn === undefined ? 0n : BigInt(m.headers.lsn)
  let last = into[into.length - 1]
  if (last === undefined || last.lsn !== lsn) {
    last = { lsn, operations: [] }
    into.push(last)
  }
  ;(last.operations as Array<LogOperation>).push({ operation, key: m.key, value: m.value, op: m.headers.op_position ?? 0 })
}

/** Which values of a dependency's rows an `IN (SELECT …)` compares, and how. */
export interface IndexSpec {
  readonly columns: ReadonlyArray<string>
  readonly types: ReadonlyArray<PgType>
  readonly domains: ReadonlyArray<Domain>
}

const specKey = (spec: IndexSpec): string => JSON.stringify([spec.columns, spec.domains])

/** The values of one row of a dependency's rows: `null` when any of them is NULL. */
type RowValues = ReadonlyArray<string> | null

/** What changed in a value set with one transaction. */
export interface Moves {
  /** Values that entered, as the dependency's texts (one per compared column). */
  readonly entered: ReadonlyArray<ReadonlyArray<string>>
  readonly left: ReadonlyArray<ReadonlyArray<string>>
  /**
   * Values whose presence Postgres changed with the transaction though the rows do not show it here: a move wrote
   * those rows earlier, as a later snapshot had them (`Materializer.touch`).
   */
  readonly touched: ReadonlyArray<ReadonlyArray<string>>
  /** The set started or stopped holding a NULL. */
  readonly nullChanged: boolean
  /** The set became empty or stopped being empty. */
  readonly emptyChanged: boolean
}

/** A change of one key's presence, or of the NULL / empty state, after a commit LSN. */
interface Toggle {
  readonly lsn: Lsn
  readonly present: boolean
}

/**
 * The value set of one dependency shape as one `IN (SELECT …)` compares it:
 * a count per value key (rows holding it), the rows holding a NULL, and the
 * recent history of each change, so that a dependent shape evaluating an
 * older transaction sees the set as it was at that commit.
 */
class ValueIndex {
  readonly counts = new Map<string, number>()
  nulls = 0
  /** Changes after the oldest position a dependent may still ask about, per key. */
  private readonly history = new Map<string, Array<Toggle>>()
  private readonly nullHistory: Array<Toggle> = []
  private readonly emptyHistory: Array<Toggle> = []
  /** The moves of each transaction after that position. */
  readonly movesAt = new Map<Lsn, Moves>()

  constructor(readonly spec: IndexSpec) {}

  valuesOf(row: Readonly<Record<string, string | null | undefined>>): RowValues {
    const out: Array<string> = []
    for (const c of this.spec.columns) {
      const v = row[c]
      if (v === null || v === undefined) return null
      out.push(v)
    }
    return out
  }

  keyOf(values: ReadonlyArray<string>): string {
    return valuesKey(this.spec.domains, this.spec.types, values)
  }

  has(key: string, at: Lsn): boolean {
    const h = this.history.get(key)
    return h === undefined ? this.counts.has(key) : stateAt(h, at)
  }

  hasNull(at: Lsn): boolean {
    return this.nullHistory.length === 0 ? this.nulls > 0 : stateAt(this.nullHistory, at)
  }

  isEmpty(at: Lsn): boolean {
    return this.emptyHistory.length === 0 ? this.counts.size === 0 && this.nulls === 0 : stateAt(this.emptyHistory, at)
  }

  /** Applies one transaction's row changes (values before and after, per row) and records its moves. */
  applyTransaction(lsn: Lsn, changes: ReadonlyArray<readonly [RowValues | undefined, RowValues | undefined]>, record: boolean) {
    const wasNull = this.nulls > 0
    const wasEmpty = this.counts.size === 0 && this.nulls === 0
    const touched = new Map<string, { readonly before: boolean; readonly values: ReadonlyArray<string> }>()
    const add = (values: RowValues, delta: 1 | -1) => {
      if (values === null) {
        this.nulls += delta
        return
      }
      const key = this.keyOf(values)
      const n = this.counts.get(key) ?? 0
      if (!touched.has(key)) touched.set(key, { before: n > 0, values })
      if (n + delta === 0) this.counts.delete(key)
      else this.counts.set(key, n + delta)
    }
    for (const [before, after] of changes) {
      if (before !== undefined) add(before, -1)
      if (after !== undefined) add(after, 1)
    }
    const entered: Array<ReadonlyArray<string>> = []
    const left: Array<ReadonlyArray<string>> = []
    for (const [key, { before, values }] of touched) {
      const now = this.counts.has(key)
      if (now === before) continue
      ;(now ? entered : left).push(values)
      if (record) push(this.history, key, { lsn, present: now })
    }
    const isNull = this.nulls > 0
    const isEmpty = this.counts.size === 0 && this.nulls === 0
    const nullChanged = isNull !== wasNull
    const emptyChanged = isEmpty !== wasEmpty
    if (record) {
      if (nullChanged) this.nullHistory.push({ lsn, present: isNull })
      if (emptyChanged) this.emptyHistory.push({ lsn, present: isEmpty })
      if (entered.length > 0 || left.length > 0 || nullChanged || emptyChanged) {
        this.movesAt.set(lsn, { entered, left, touched: [], nullChanged, emptyChanged })
      }
    }
  }

  /**
   * Records as moved at `lsn` the values of rows Postgres changed then (per row, before and after; undefined for a
   * side out of the shape) that the set already holds as changed. A NULL among them counts as a change of the
   * set's NULL; and the set may have become empty or not with them when it holds nothing else.
   */
  touch(lsn: Lsn, changes: ReadonlyArray<readonly [RowValues | undefined, RowValues | undefined]>) {
    const touched: Array<ReadonlyArray<string>> = []
    const keys = new Set<string>()
    let nullTouched = false
    const add = (values: RowValues | undefined) => {
      if (values === undefined) return
      if (values === null) {
        nullTouched = true
        return
      }
      const key = this.keyOf(values)
      if (keys.has(key)) return
      keys.add(key)
      touched.push(values)
    }
    for (const [before, after] of changes) {
      // A row in the shape before and after with the values compared unchanged moved nothing.
      if (before !== undefined && after !== undefined) {
        if (before === null && after === null) continue
        if (before !== null && after !== null && this.keyOf(before) === this.keyOf(after)) continue
      }
      add(before)
      add(after)
    }
    if (touched.length === 0 && !nullTouched) return
    let onlyThese = this.nulls === 0 || nullTouched
    if (onlyThese) {
      for (const key of this.counts.keys()) {
        if (keys.has(key)) continue
        onlyThese = false
        break
      }
    }
    const seen = this.movesAt.get(lsn)
    this.movesAt.set(lsn, {
      entered: seen?.entered ?? [],
      left: seen?.left ?? [],
      touched: [...(seen?.touched ?? []), ...touched],
      nullChanged: (seen?.nullChanged ?? false) || nullTouched,
      emptyChanged: (seen?.emptyChanged ?? false) || onlyThese
    })
  }

  /** Forgets history no dependent can ask about any more: every dependent is past `floor`. */
  prune(floor: Lsn) {
    for (const [key, h] of this.history) {
      let n = 0
      while (n < h.length && h[n]!.lsn <= floor) n++
      if (n === h.length) this.history.delete(key)
      else if (n > 0) h.splice(0, n)
    }
    dropUpTo(this.nullHistory, floor)
    dropUpTo(this.emptyHistory, floor)
    for (const lsn of this.movesAt.keys()) if (lsn <= floor) this.movesAt.delete(lsn)
  }
}

const push = (map: Map<string, Array<Toggle>>, key: string, t: Toggle) => {
  const list = map.get(key)
  if (list === undefined) map.set(key, [t])
  else list.push(t)
}

const dropUpTo = (list: Array<Toggle>, floor: Lsn) => {
  let n = 0
  while (n < list.length && list[n]!.lsn <= floor) n++
  if (n > 0) list.splice(0, n)
}

/** The state at `at` of something whose changes after some point are `toggles` (each flips it). */
const stateAt = (toggles: ReadonlyArray<Toggle>, at: Lsn): boolean => {
  let state = !toggles[0]!.present
  for (const t of toggles) {
    if (t.lsn > at) break
    state = t.present
  }
  return state
}

export { MaterializerInvariant }

/**
 * The current rows of one dependency shape, reduced to what its dependents
 * compare (DESIGN.md, "Subquery shapes"), built from the shape's own log and
 * then fed, in commit order, every transaction its consumer writes. Strict: an
 * insert of a key it holds, or an update or delete of a key it does not,
 * throws `MaterializerInvariant`, which its consumer turns into the shape's
 * invalidation — never skipped.
 *
 * After a restart, log entries past the replay point (what the slot will send
 * again) are kept aside and applied when their transaction comes again (the
 * consumer skips writing it): every dependent then sees each transaction's
 * moves at that transaction, whichever of the two logs was further ahead when
 * the process stopped.
 */
export class Materializer {
  private readonly rows = new Map<string, Readonly<Record<string, string | null>>>()
  private readonly indexes = new Map<string, ValueIndex>()
  /** Logged transactions not applied yet: the slot sends them again. */
  private pending: Array<LoggedTransaction> = []
  /** The commit LSN of the last transaction applied. */
  position: Lsn = 0n
  /** Loaded from the shape's log (by its consumer): dependents may read it. */
  loaded = false
  /** Where each dependent stands: history at or below the lowest is forgotten. */
  private readonly dependents = new Map<string, Lsn>()
  private sincePrune = 0

  constructor(readonly handle: string) {}

  /** Loads the log; transactions above `replayFrom` wait for `catchUp`. */
  load(transactions: ReadonlyArray<LoggedTransaction>, replayFrom: Lsn): void {
    for (const t of transactions) {
      if (t.lsn > replayFrom) this.pending.push(t)
      else this.applyLogged(t, false)
    }
  }

  /** The index for one way of comparing the rows, built from the rows when first asked for. */
  index(spec: IndexSpec): ValueIndex {
    const key = specKey(spec)
    let index = this.indexes.get(key)
    if (index === undefined) {
      index = new ValueIndex(spec)
      const changes: Array<readonly [RowValues | undefined, RowValues | undefined]> = []
      for (const row of this.rows.values()) changes.push([undefined, index.valuesOf(row)])
      index.applyTransaction(this.position, changes, false)
      this.indexes.set(key, index)
    }
    return index
  }

  /** Applies the transactions kept aside up to `lsn` (the consumer met a transaction it already holds). */
  catchUp(lsn: Lsn): void {
    let n = 0
    while (n < this.pending.length && this.pending[n]!.lsn <= lsn) this.applyLogged(this.pending[n++]!, true)
    if (n > 0) this.pending = this.pending.slice(n)
  }

  /** Applies a transaction the consumer just wrote. */
  apply(t: LoggedTransaction): void {
    this.catchUp(t.lsn - 1n)
    this.applyLogged(t, true)
  }

  /**
   * Tells the dependents that rows Postgres changed at `lsn` moved there (each change as the shape's row before
   * and after it, undefined for a side out of the shape), though the log has them changed already: a move wrote
   * them earlier, from a snapshot holding this transaction. A reader whose snapshot holds that move but not this
   * transaction would otherwise never see them move.
   */
  touch(lsn: Lsn, changes: ReadonlyArray<readonly [Row | undefined, Row | undefined]>): void {
    for (const ix of this.indexes.values()) {
      ix.touch(lsn, changes.map(([before, after]) => [
        before === undefined ? undefined : ix.valuesOf(before),
        after === undefined ? undefined : ix.valuesOf(after)
      ] as const))
    }
  }

  /** Records that a dependent has handled everything up to `lsn` (or registers it there). */
  dependentAt(handle: string, lsn: Lsn): void {
    this.dependents.set(handle, lsn)
  }

  dependentGone(handle: string): void {
    this.dependents.delete(handle)
  }

  get size(): number {
    return this.rows.size
  }

  private applyLogged(t: LoggedTransaction, record: boolean): void {
    const indexes = [...this.indexes.values()]
    const perIndex = indexes.map(() => [] as Array<readonly [RowValues | undefined, RowValues | undefined]>)
    for (const op of t.operations) {
      const before = this.rows.get(op.key)
      switch (op.operation) {
        case "insert":
          if (before !== undefined) throw new MaterializerInvariant({ handle: this.handle, message: `insert of row ${op.key}, which it already holds` })
          this.rows.set(op.key, op.value ?? {})
          indexes.forEach((ix, i) => perIndex[i]!.push([undefined, ix.valuesOf(op.value ?? {})]))
          break
        case "update": {
          if (before === undefined) throw new MaterializerInvariant({ handle: this.handle, message: `update of row ${op.key}, which it does not hold` })
          const after = { ...before, ...op.value }
          this.rows.set(op.key, after)
          indexes.forEach((ix, i) => perIndex[i]!.push([ix.valuesOf(before), ix.valuesOf(after)]))
          break
        }
        case "delete":
          if (before === undefined) throw new MaterializerInvariant({ handle: this.handle, message: `delete of row ${op.key}, which it does not hold` })
          this.rows.delete(op.key)
          indexes.forEach((ix, i) => perIndex[i]!.push([ix.valuesOf(before), undefined]))
          break
      }
    }
    indexes.forEach((ix, i) => ix.applyTransaction(t.lsn, perIndex[i]!, record))
    if (t.lsn > this.position) this.position = t.lsn
    if (record && ++this.sincePrune >= 64) this.prune()
  }

  private prune(): void {
    this.sincePrune = 0
    let floor = this.position
    for (const lsn of this.dependents.values()) if (lsn < floor) floor = lsn
    for (const ix of this.indexes.values()) ix.prune(floor)
  }
}

export type { ValueIndex }
