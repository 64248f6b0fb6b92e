import type { Change, Relation, Row } from "../domain/Change.js"
import type { LogLines } from "../storage/LogLines.js"
import { LogOffset } from "../domain/LogOffset.js"
import { rowKey, rowKeyPrefix } from "../domain/RowKey.js"
import { MAX_TUPLE_COLUMNS, readTupleSlots, type TupleSlots, UNCHANGED_VALUE } from "../postgres/PgOutput.js"
import { MAX_BYTES_PER_BYTE, writeAscii, writeBytes, writeInteger, writeJsonKeyPart, writeJsonText } from "./JsonBytes.js"
import type { Shape } from "./Shape.js"

/**
 * Turns the changes of one transaction into the log lines of one shape.
 *
 * The JSON is written by hand: every value is already Postgres text. A change
 * read from the wire is written straight from its tuples' bytes (`append`);
 * otherwise a line is a handful of string concatenations with `JSON.stringify`
 * only for the values themselves.
 */
export interface ShapeEncoder {
  readonly shape: Shape
  /**
   * Appends the entries for `change` (its position `op` in the transaction,
   * stepping by 2) to `out`. Returns false when the change does not concern the shape.
   */
  readonly encode: (change: Change, tx: bigint, op: number, txHeaders: string, out: Array<PendingEntry>) => boolean
  /**
   * Appends the lines for `change` to `lines`, as `encode` makes them but each closed as if not the last (`}}`):
   * `closeTransaction` then marks the transaction's last. An insert or an update is written straight from the bytes
   * pgoutput sent when it has them (`TupleSource`), unless its key changed, its old row is the key's alone, or it
   * moves the row into or out of the shape's where. Returns false when the change does not concern the shape.
   */
  readonly append: (change: Change, tx: bigint, op: number, txHeaders: string, lines: LogLines) => boolean
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

const LAST_CLOSE = Buffer.from(`,"last":true}}`, "latin1")

/** Marks the last of the lines a transaction appended to `lines` (`append`), the first of which was line `from`. */
export const closeTransaction = (lines: LogLines, from: number): void => {
  if (lines.count > from) lines.replaceLastTail(2, LAST_CLOSE)
}

/** `append` as lines `encode` makes, each closed as if not the last. */
const appendThrough = (encode: ShapeEncoder["encode"]): ShapeEncoder["append"] => {
  const encoded: Array<PendingEntry> = []
  return (change, tx, op, txHeaders, lines) => {
    if (!encode(change, tx, op, txHeaders, encoded)) return false
    for (let i = 0; i < encoded.length; i++) {
      const entry = encoded[i]!
      lines.push(entry.offset.tx, entry.offset.op, `${entry.open}}}`)
    }
    encoded.length = 0
    return true
  }
}

// One change's tuples at a time: encoding is synchronous.
const NEW_SLOTS: TupleSlots = { starts: new Int32Array(MAX_TUPLE_COLUMNS), ends: new Int32Array(MAX_TUPLE_COLUMNS) }
const OLD_SLOTS: TupleSlots = { starts: new Int32Array(MAX_TUPLE_COLUMNS), ends: new Int32Array(MAX_TUPLE_COLUMNS) }

/** The new row's unchanged TOASTed values, from the old row (as the assembler fills the new row in). */
const fillUnchanged = (columns: number): void => {
  const { starts, ends } = NEW_SLOTS
  for (let j = 0; j < columns; j++) {
    if (ends[j] !== UNCHANGED_VALUE) continue
    starts[j] = OLD_SLOTS.starts[j]!
    ends[j] = OLD_SLOTS.ends[j]!
  }
}

/**
 * Whether column `j` has the same value in the new and the old row (`NEW_SLOTS`, `OLD_SLOTS`), as their strings
 * compare: NULL equals only NULL, an unsent value only another, text its own bytes (bytes that differ outside ASCII
 * are compared as the strings they decode to, which may be the same).
 */
const sameValue = (data: Buffer, j: number): boolean => {
  const newEnd = NEW_SLOTS.ends[j]!
  const oldEnd = OLD_SLOTS.ends[j]!
  if (newEnd < 0 || oldEnd < 0) return newEnd === oldEnd
  const newStart = NEW_SLOTS.starts[j]!
  const oldStart = OLD_SLOTS.starts[j]!
  const length = newEnd - newStart
  let ascii = true
  let same = length === oldEnd - oldStart
  for (let k = 0; same && k < length; k++) {
    const c = data[newStart + k]!
    if (c !== data[oldStart + k]) same = false
    else if (c >= 0x80) ascii = false
  }
  if (same) return true
  for (let k = newStart; ascii && k < newEnd; k++) if (data[k]! >= 0x80) ascii = false
  for (let k = oldStart; ascii && k < oldEnd; k++) if (data[k]! >= 0x80) ascii = false
  return ascii ? false : data.toString("utf8", newStart, newEnd) === data.toString("utf8", oldStart, oldEnd)
}

const NULL_BYTES = Buffer.from("null", "latin1")
const VALUE_OPEN = Buffer.from(`,"value":{`, "latin1")
const OLD_VALUE_OPEN = Buffer.from(`,"old_value":{`, "latin1")
const OP_POSITION = Buffer.from(`,"op_position":`, "latin1")
const QUOTE = 0x22
const COMMA = 0x2c
const SLASH = 0x2f
const UNDERSCORE = 0x5f
const BRACE_CLOSE = 0x7d

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

  // Written from bytes: the parts known in advance, and where the shape's columns are in a relation's tuples.
  const keyOpen = Buffer.from(`{"key":${JSON.stringify(rowKeyPrefix(table)).slice(0, -1)}`, "utf8")
  /** Where the key's JSON string starts in `keyOpen`, after `{"key":`. */
  const keyQuoteAt = `{"key":`.length
  const colKeyBytes = colKeys.map((k) => Buffer.from(k, "utf8"))
  const isKey = Uint8Array.from(cols, (c) => (pkSet.has(c) ? 1 : 0))
  const headersOf = (operation: string) => Buffer.from(`,"headers":{"operation":"${operation}","relation":${relationJson},`, "utf8")
  const insertHeaders = headersOf("insert")
  const updateHeaders = headersOf("update")
  let mapped: Relation | undefined
  /** For each selected column, and each primary-key column: its place in `mapped`'s tuples, or -1. */
  let valueIndex = new Int32Array(0)
  let keyIndex = new Int32Array(0)
  const mapRelation = (relation: Relation): void => {
    if (relation === mapped) return
    const at = new Map(relation.columns.map((c, i) => [c.name, i]))
    valueIndex = Int32Array.from(cols, (c) => at.get(c) ?? -1)
    keyIndex = Int32Array.from(table.pk, (c) => at.get(c) ?? -1)
    mapped = relation
  }
  /** For an update with its old row: whether selected column `i` changed, and so goes in its value (`changedColumns`). */
  const changed = new Uint8Array(cols.length)

  /** The longest a value can be once written: its name, its JSON (`null` for a column the tuple lacks), a comma. */
  const valueBytes = (i: number, slots: TupleSlots): number => {
    const j = valueIndex[i]!
    const end = j < 0 ? UNCHANGED_VALUE : slots.ends[j]!
    return colKeyBytes[i]!.length + 5 + (end < 0 ? 0 : (end - slots.starts[j]!) * MAX_BYTES_PER_BYTE)
  }

  /** Selected column `i` as `"name":value` (after a comma unless `first`), from `slots` in `data`. */
  const writeValue = (out: Buffer, p: number, i: number, data: Buffer, slots: TupleSlots, first: boolean): number => {
    const j = valueIndex[i]!
    if (!first) out[p++] = COMMA
    p = writeBytes(out, p, colKeyBytes[i]!)
    const end = j < 0 ? UNCHANGED_VALUE : slots.ends[j]!
    if (end < 0) return writeBytes(out, p, NULL_BYTES)
    const start = slots.starts[j]!
    const written = writeJsonText(out, p, data, start, end)
    return written >= 0 ? written : p + out.write(JSON.stringify(data.toString("utf8", start, end)), p, "utf8")
  }

  /**
   * The line of a row from its tuple's bytes (`NEW_SLOTS`, unchanged TOASTed values already taken from the old
   * tuple), as `line` writes it: its key, `value` (the row whole, or for an update without `replica=full` its key
   * columns and the `changed` ones), `old_value` for an update with `replica=full` (the `changed` columns as they
   * were, from `OLD_SLOTS`). A key holding other bytes than ASCII is written from its string instead (`JsonBytes`).
   */
  const appendRow = (
    headers: Buffer,
    change: Change & { readonly kind: "insert" | "update" },
    onlyChanged: boolean,
    data: Buffer,
    tx: bigint,
    op: number,
    txHeaders: string,
    lines: LogLines
  ): void => {
    const { starts, ends } = NEW_SLOTS
    let most = keyOpen.length + 1 + VALUE_OPEN.length + OLD_VALUE_OPEN.length + headers.length + txHeaders.length + OP_POSITION.length + 24
    for (let k = 0; k < keyIndex.length; k++) {
      const j = keyIndex[k]!
      most += 5 + (j < 0 || ends[j]! < 0 ? 0 : (ends[j]! - starts[j]!) * MAX_BYTES_PER_BYTE)
    }
    for (let i = 0; i < valueIndex.length; i++) most += valueBytes(i, NEW_SLOTS) + (onlyChanged && full ? valueBytes(i, OLD_SLOTS) : 0)
    let p = lines.reserve(most)
    const out = lines.buffer
    const keyStart = p + keyQuoteAt
    p = writeBytes(out, p, keyOpen)
    for (let k = 0; k < keyIndex.length; k++) {
      const j = keyIndex[k]!
      if (j < 0 || ends[j]! < 0) {
        out[p++] = SLASH
        out[p++] = UNDERSCORE
        continue
      }
      p = writeJsonKeyPart(out, p, data, starts[j]!, ends[j]!)
      if (p < 0) break
    }
    if (p < 0) p = keyStart + out.write(JSON.stringify(rowKey(table, change.new)), keyStart, "utf8")
    else out[p++] = QUOTE
    p = writeBytes(out, p, VALUE_OPEN)
    let first = true
    if (onlyChanged && !full) {
      for (let i = 0; i < valueIndex.length; i++) {
        if (isKey[i] === 0) continue
        p = writeValue(out, p, i, data, NEW_SLOTS, first)
        first = false
      }
      for (let i = 0; i < valueIndex.length; i++) {
        if (changed[i] === 0) continue
        p = writeValue(out, p, i, data, NEW_SLOTS, first)
        first = false
      }
    } else {
      for (let i = 0; i < valueIndex.length; i++) {
        const j = valueIndex[i]!
        if (j < 0 || ends[j] === UNCHANGED_VALUE) continue
        p = writeValue(out, p, i, data, NEW_SLOTS, first)
        first = false
      }
    }
    out[p++] = BRACE_CLOSE
    if (onlyChanged && full) {
      p = writeBytes(out, p, OLD_VALUE_OPEN)
      first = true
      for (let i = 0; i < valueIndex.length; i++) {
        if (changed[i] === 0) continue
        p = writeValue(out, p, i, data, OLD_SLOTS, first)
        first = false
      }
      out[p++] = BRACE_CLOSE
    }
    p = writeBytes(out, p, headers)
    p = writeAscii(out, p, txHeaders)
    p = writeBytes(out, p, OP_POSITION)
    p = writeInteger(out, p, op)
    out[p++] = BRACE_CLOSE
    out[p++] = BRACE_CLOSE
    lines.endLine(tx, op, p)
  }

  /**
   * An update whose old row was sent whole, from the bytes: which selected columns changed (`changed`), as `encode`
   * decides it; undefined when its key changed (a delete and an insert, which `encode` writes), false when nothing
   * selected changed.
   */
  const changedColumns = (data: Buffer): boolean | undefined => {
    for (let k = 0; k < keyIndex.length; k++) {
      const j = keyIndex[k]!
      if (j >= 0 && !sameValue(data, j)) return undefined
    }
    let any = false
    for (let i = 0; i < valueIndex.length; i++) {
      const j = valueIndex[i]!
      const differs = j >= 0 && isKey[i] === 0 && NEW_SLOTS.ends[j] !== UNCHANGED_VALUE && !sameValue(data, j)
      changed[i] = differs ? 1 : 0
      if (differs) any = true
    }
    return any
  }

  const appendEncoded = appendThrough(encode)
  const append = (change: Change, tx: bigint, op: number, txHeaders: string, lines: LogLines): boolean => {
    if (change.kind !== "insert" && change.kind !== "update") return appendEncoded(change, tx, op, txHeaders, lines)
    const data = change.tupleData
    const oldAt = change.oldTupleAt ?? -1
    // The old row is looked at here only when its tuple is not there: a row read from the wire is made when asked for.
    if (data === undefined || (change.kind === "update" && oldAt < 0 && change.old !== undefined)) {
      return appendEncoded(change, tx, op, txHeaders, lines)
    }
    if (where !== undefined && !(where.matches(change.new) && (change.kind === "insert" || change.old === undefined || where.matches(change.old)))) {
      // Into or out of the shape (an insert or a delete, as `encode` writes them), or not in it at all.
      return appendEncoded(change, tx, op, txHeaders, lines)
    }
    mapRelation(change.relation)
    const columns = readTupleSlots(data, change.tupleAt!, NEW_SLOTS)
    if (oldAt < 0) {
      appendRow(change.kind === "insert" ? insertHeaders : updateHeaders, change, false, data, tx, op, txHeaders, lines)
      return true
    }
    readTupleSlots(data, oldAt, OLD_SLOTS)
    fillUnchanged(columns)
    const any = changedColumns(data)
    if (any === undefined) return appendEncoded(change, tx, op, txHeaders, lines)
    if (!any) return false
    appendRow(updateHeaders, change, true, data, tx, op, txHeaders, lines)
    return true
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

  if (heldRows === undefined) return { shape, encode, append, row }
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
  return { shape, encode: encodeHeld, append: appendThrough(encodeHeld), row }
}
