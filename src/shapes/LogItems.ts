import type { Change, Row } from "../domain/Change.js"
import type { LogLines } from "../storage/LogLines.js"
import { LogOffset } from "../domain/LogOffset.js"
import { rowKey } from "../domain/RowKey.js"
import type { Shape } from "./Shape.js"

/**
 * Turns the changes of one transaction into the log lines of one shape.
 *
 * The JSON is written by hand: every value is already Postgres text, so a line
 * is a handful of string concatenations with `JSON.stringify` only for the
 * values themselves.
 */
export interface ShapeEncoder {
  readonly shape: Shape
  /**
   * Appends the entries for `change` (its position `op` in the transaction,
   * stepping by 2) to `out`. Returns false when the change does not concern the shape.
   */
  readonly encode: (change: Change, tx: bigint, op: number, txHeaders: string, out: Array<PendingEntry>) => boolean
  /**
   * Appends one row as a whole: an `insert`, an `update` carrying every selected column, or a `delete`. What a
   * move of a subquery's values writes.
   */
  readonly row: (
    operation: "insert" | "update" | "delete",
    key: string,
    row: Row,
    tx: bigint,
    op: number,
    txHeaders: string,
    out: Array<PendingEntry>
  ) => void
}

/**
 * How a shape with subqueries decides what a change means: by the rows it
 * holds (`held`, row keys) rather than by evaluating the old row, whose
 * inclusion depended on the dependencies' values at some earlier commit. A
 * change is thus never an insert of a row the shape holds, nor an update or
 * delete of one it does not, whatever came before it.
 */
export interface HeldRows {
  readonly held: Set<string>
  readonly matches: (row: Row) => boolean
}

/** An entry whose `last` header is decided once the whole transaction is encoded. */
export interface PendingEntry {
  readonly offset: LogOffset
  /** The line without its closing `}}`, so `,"last":true}}` can be added to the last one. */
  readonly open: string
}

/**
 * Closes the entries of one transaction, marking the last with `"last":true`, and adds them to `out` as lines; and
 * to `texts` as messages, when given (for a reader of what is written, which would otherwise decode the bytes
 * again). It empties `pending`: once bytes, its strings are garbage, and a consumer waiting for work keeps none.
 */
export const finishTransaction = (pending: Array<PendingEntry>, out: LogLines, texts?: Array<string>): void => {
  const n = pending.length
  for (let i = 0; i < n; i++) {
    const p = pending[i]!
    const json = i === n - 1 ? `${p.open},"last":true}}` : `${p.open}}}`
    out.push(p.offset.tx, p.offset.op, json)
    texts?.push(json)
  }
  pending.length = 0
}

/** The transaction-wide headers every change of the transaction shares (`txids`, `lsn`). */
export const transactionHeaders = (xid: number, tx: bigint): string => `"txids":[${xid}],"lsn":"${tx}"`

const jsonValue = (v: string | null | undefined): string => (v === null || v === undefined ? "null" : JSON.stringify(v))

export const makeShapeEncoder = (shape: Shape, heldRows?: HeldRows): ShapeEncoder => {
  const { table } = shape
  const relationJson = `[${JSON.stringify(table.schema)},${JSON.stringify(table.name)}]`
  const cols = shape.columns
  const colKeys = cols.map((c) => `${JSON.stringify(c)}:`)
  const pkSet = new Set(table.pk)
  const pkIdx: Array<number> = []
  cols.forEach((c, i) => {
    if (pkSet.has(c)) pkIdx.push(i)
  })
  const full = shape.definition.replica === "full"
  const where = shape.where
  const matches = where === undefined ? (_: Row) => true : where.matches

  const fullValue = (row: Row): string => {
    let s = "{"
    let first = true
    for (let i = 0; i < cols.length; i++) {
      const v = row[cols[i]!]
      if (v === undefined) continue
      s += (first ? "" : ",") + colKeys[i] + jsonValue(v)
      first = false
    }
    return s + "}"
  }
  const pkValue = (row: Row): string => {
    let s = "{"
    for (let j = 0; j < pkIdx.length; j++) {
      const i = pkIdx[j]!
      s += (j === 0 ? "" : ",") + colKeys[i] + jsonValue(row[cols[i]!])
    }
    return s + "}"
  }
  const line = (key: string, value: string, oldValue: string | undefined, operation: string, extraHeaders: string, txHeaders: string, op: number): string =>
    `{"key":${JSON.stringify(key)},"value":${value}${oldValue === undefined ? "" : `,"old_value":${oldValue}`},"headers":{"operation":"${operation}","relation":${relationJson},${txHeaders},"op_position":${op}${extraHeaders}`

  const encode = (change: Change, tx: bigint, op: number, txHeaders: string, out: Array<PendingEntry>): boolean => {
    switch (change.kind) {
      case "insert": {
        if (!matches(change.new)) return false
        out.push({ offset: LogOffset.make(tx, op), open: line(rowKey(table, change.new), fullValue(change.new), undefined, "insert", "", txHeaders, op) })
        return true
      }
      case "delete": {
        if (!matches(change.old)) return false
        const value = full ? fullValue(change.old) : pkValue(change.old)
        out.push({ offset: LogOffset.make(tx, op), open: line(rowKey(table, change.old), value, undefined, "delete", "", txHeaders, op) })
        return true
      }
      case "update": {
        const oldRow = change.old
        const newRow = change.new
        const newMatches = matches(newRow)
        const oldMatches = oldRow === undefined ? newMatches : matches(oldRow)
        if (!oldMatches && !newMatches) return false
        const newKey = rowKey(table, newRow)
        if (!oldMatches) {
          out.push({ offset: LogOffset.make(tx, op), open: line(newKey, fullValue(newRow), undefined, "insert", "", txHeaders, op) })
          return true
        }
        const oldKey = oldRow === undefined ? newKey : rowKey(table, oldRow)
        if (!newMatches) {
          const value = full ? fullValue(oldRow!) : pkValue(oldRow!)
          out.push({ offset: LogOffset.make(tx, op), open: line(oldKey, value, undefined, "delete", "", txHeaders, op) })
          return true
        }
        if (oldKey !== newKey) {
          const delValue = full ? fullValue(oldRow!) : pkValue(oldRow!)
          out.push({
            offset: LogOffset.make(tx, op),
            open: line(oldKey, delValue, undefined, "delete", `,"key_change_to":${JSON.stringify(newKey)}`, txHeaders, op)
          })
          out.push({
            offset: LogOffset.make(tx, op + 1),
            open: line(newKey, fullValue(newRow), undefined, "insert", `,"key_change_from":${JSON.stringify(oldKey)}`, txHeaders, op + 1)
          })
          return true
        }
        if (oldRow === undefined) {
          out.push({ offset: LogOffset.make(tx, op), open: line(newKey, fullValue(newRow), undefined, "update", "", txHeaders, op) })
          return true
        }
        // Only the changed selected columns travel (plus the key); an update that changes none is dropped.
        let changed = ""
        let oldChanged = ""
        for (let i = 0; i < cols.length; i++) {
          const c = cols[i]!
          const nv = newRow[c]
          if (nv === undefined) continue
          const ov = oldRow[c]
          if (nv !== ov && !pkSet.has(c)) {
            changed += `,${colKeys[i]}${jsonValue(nv)}`
            oldChanged += `${oldChanged === "" ? "" : ","}${colKeys[i]}${jsonValue(ov)}`
          }
        }
        if (changed === "") return false
        let value: string
        if (full) {
          value = fullValue(newRow)
        } else {
          const pk = pkValue(newRow)
          value = pk.length === 2 ? `{${changed.slice(1)}}` : `${pk.slice(0, -1)}${changed}}`
        }
        out.push({ offset: LogOffset.make(tx, op), open: line(newKey, value, full ? `{${oldChanged}}` : undefined, "update", "", txHeaders, op) })
        return true
      }
      case "truncate":
        return false
    }
  }

  const row = (
    operation: "insert" | "update" | "delete",
    key: string,
    r: Row,
    tx: bigint,
    op: number,
    txHeaders: string,
    out: Array<PendingEntry>
  ): void => {
    const value = operation === "delete" && !full ? pkValue(r) : fullValue(r)
    out.push({ offset: LogOffset.make(tx, op), open: line(key, value, undefined, operation, "", txHeaders, op) })
  }
  const rowOf = (operation: "insert" | "update" | "delete", r: Row, tx: bigint, op: number, txHeaders: string, out: Array<PendingEntry>) =>
    row(operation, rowKey(table, r), r, tx, op, txHeaders, out)

  if (heldRows === undefined) return { shape, encode, row }
  const { held } = heldRows
  const inShape = heldRows.matches

  // An update of a held row that still belongs: the changed columns, as `encode` writes them (for a clause with
  // subqueries, `matches` holds every row, so `encode` writes it as an update).
  const updateHeld = (change: Change & { readonly kind: "update" }, tx: bigint, op: number, txHeaders: string, out: Array<PendingEntry>) => {
    if (change.old === undefined) rowOf("update", change.new, tx, op, txHeaders, out)
    else encode(change, tx, op, txHeaders, out)
  }

  const encodeHeld = (change: Change, tx: bigint, op: number, txHeaders: string, out: Array<PendingEntry>): boolean => {
    const before = out.length
    switch (change.kind) {
      case "insert": {
        const key = rowKey(table, change.new)
        const belongs = inShape(change.new)
        if (held.has(key)) {
          if (belongs) rowOf("update", change.new, tx, op, txHeaders, out)
          else {
            rowOf("delete", change.new, tx, op, txHeaders, out)
            held.delete(key)
          }
        } else if (belongs) {
          rowOf("insert", change.new, tx, op, txHeaders, out)
          held.add(key)
        }
        break
      }
      case "delete": {
        const key = rowKey(table, change.old)
        if (held.delete(key)) rowOf("delete", change.old, tx, op, txHeaders, out)
        break
      }
      case "update": {
        const newRow = change.new
        const newKey = rowKey(table, newRow)
        const oldKey = change.old === undefined ? newKey : rowKey(table, change.old)
        const belongs = inShape(newRow)
        const wasHeld = held.has(oldKey)
        if (oldKey !== newKey) {
          if (wasHeld) {
            out.push({
              offset: LogOffset.make(tx, op),
              open: line(
                oldKey,
                full ? fullValue(change.old!) : pkValue(change.old!),
                undefined,
                "delete",
                belongs ? `,"key_change_to":${JSON.stringify(newKey)}` : "",
                txHeaders,
                op
              )
            })
            held.delete(oldKey)
          }
          if (belongs) {
            if (held.has(newKey)) rowOf("update", newRow, tx, op + 1, txHeaders, out)
            else {
              out.push({
                offset: LogOffset.make(tx, op + 1),
                open: line(
                  newKey,
                  fullValue(newRow),
                  undefined,
                  "insert",
                  wasHeld ? `,"key_change_from":${JSON.stringify(oldKey)}` : "",
                  txHeaders,
                  op + 1
                )
              })
              held.add(newKey)
            }
          }
        } else if (wasHeld && belongs) {
          updateHeld(change, tx, op, txHeaders, out)
        } else if (wasHeld) {
          rowOf("delete", change.old ?? newRow, tx, op, txHeaders, out)
          held.delete(oldKey)
        } else if (belongs) {
          rowOf("insert", newRow, tx, op, txHeaders, out)
          held.add(newKey)
        }
        break
      }
      case "truncate":
        break
    }
    return out.length > before
  }
  return { shape, encode: encodeHeld, row }
}
