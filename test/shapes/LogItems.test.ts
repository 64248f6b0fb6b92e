import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import type { Change, Relation, Row } from "../../src/domain/Change.js"
import { LogOffset } from "../../src/domain/LogOffset.js"
import { rowKey } from "../../src/domain/RowKey.js"
import type { ShapeDefinition } from "../../src/domain/ShapeDefinition.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import { finishTransaction, makeShapeEncoder, type PendingEntry, transactionHeaders } from "../../src/shapes/LogItems.js"
import type { Shape } from "../../src/shapes/Shape.js"
import { selectedColumns } from "../../src/shapes/Shape.js"
import { LogLines } from "../../src/storage/LogLines.js"
import type { LogEntry } from "../../src/storage/ShapeLogStorage.js"
import { parseWhere } from "../../src/where/WhereClause.js"
import { tableInfo } from "../where/table.js"

const table = tableInfo("items", [["id", "int4"], ["title", "text"], ["n", "int4"]])

const relation: Relation = {
  oid: table.oid,
  schema: table.schema,
  name: table.name,
  replicaIdentity: "f",
  columns: table.columns.map((c) => ({ name: c.name, typeOid: 23, typeMod: -1, isKey: true }))
}

const makeShape = (options: {
  readonly where?: string
  readonly columns?: ReadonlyArray<string>
  readonly replica?: "default" | "full"
} = {}): Shape => {
  const where = options.where === undefined ? undefined : Either.getOrThrow(parseWhere(options.where, {}, table))
  const definition: ShapeDefinition = {
    table: { schema: table.schema, name: table.name },
    where: where?.sql,
    columns: options.columns,
    replica: options.replica ?? "default",
    log: "full"
  }
  return {
    handle: ShapeHandle("1-1"),
    definition,
    table,
    where,
    dependencies: [],
    columns: selectedColumns(table, options.columns)
  }
}

const XID = 4242
const LSN = 123456789n

const insert = (row: Row): Change => ({ kind: "insert", relation, new: row })
const update = (old: Row | undefined, row: Row): Change => ({ kind: "update", relation, old, new: row })
const del = (row: Row): Change => ({ kind: "delete", relation, old: row })

/** Encodes one transaction the way the consumer does (ops step by 2) and returns its log entries. */
const encodeTxn = (shape: Shape, changes: ReadonlyArray<Change>, xid = XID, lsn = LSN): Array<LogEntry> => {
  const encoder = makeShapeEncoder(shape)
  const headers = transactionHeaders(xid, lsn)
  const pending: Array<PendingEntry> = []
  changes.forEach((change, i) => encoder.encode(change, lsn, i * 2, headers, pending))
  const out = new LogLines()
  finishTransaction(pending, out)
  return entriesOf(out)
}

/** The lines as entries again, read back from their bytes. */
const entriesOf = (lines: LogLines): Array<LogEntry> => lines.textsFrom(0).map((json, i) => ({ offset: lines.offsetAt(i), json }))

/** Parses each stored line (each must be one valid JSON object). */
const messages = (entries: ReadonlyArray<LogEntry>): Array<unknown> => entries.map((e) => JSON.parse(e.json))

const headers = (operation: string, op: number, extra: Record<string, unknown> = {}) => ({
  operation,
  relation: ["public", "items"],
  txids: [XID],
  lsn: String(LSN),
  op_position: op,
  ...extra
})

const key = (id: string) => `"public"."items"/"${id}"`

describe("transactionHeaders", () => {
  it("carries txids as a number array and lsn as a decimal string", () => {
    const parsed = JSON.parse(`{${transactionHeaders(7, 18446744073709551615n)}}`)
    expect(parsed).toEqual({ txids: [7], lsn: "18446744073709551615" })
  })
})

describe("finishTransaction", () => {
  it("marks only the last entry with last: true", () => {
    const pending: Array<PendingEntry> = [
      { offset: LogOffset.make(5n, 0), open: `{"value":{},"headers":{"a":1` },
      { offset: LogOffset.make(5n, 2), open: `{"value":{},"headers":{"a":2` }
    ]
    const lines = new LogLines()
    finishTransaction(pending, lines)
    const out = entriesOf(lines)
    expect(out.map((e) => e.offset)).toEqual([LogOffset.make(5n, 0), LogOffset.make(5n, 2)])
    expect(messages(out)).toEqual([{ value: {}, headers: { a: 1 } }, { value: {}, headers: { a: 2, last: true } }])
  })

  it("appends nothing for an empty transaction", () => {
    const out = new LogLines()
    finishTransaction([], out)
    expect(out.count).toBe(0)
    expect(out.byteLength).toBe(0)
  })
})

describe("makeShapeEncoder", () => {
  it("encodes an insert with the full row", () => {
    const out = encodeTxn(makeShape(), [insert({ id: "1", title: "a", n: "10" })])
    expect(out.map((e) => e.offset)).toEqual([LogOffset.make(LSN, 0)])
    expect(messages(out)).toEqual([
      { key: key("1"), value: { id: "1", title: "a", n: "10" }, headers: headers("insert", 0, { last: true }) }
    ])
  })

  it("writes NULL as null and omits unchanged TOAST values", () => {
    const out = encodeTxn(makeShape(), [insert({ id: "1", title: null, n: undefined })])
    expect(messages(out)).toEqual([
      { key: key("1"), value: { id: "1", title: null }, headers: headers("insert", 0, { last: true }) }
    ])
  })

  it("keeps only the selected columns", () => {
    const shape = makeShape({ columns: ["id", "n"] })
    const out = encodeTxn(shape, [
      insert({ id: "1", title: "a", n: "10" }),
      update({ id: "1", title: "a", n: "10" }, { id: "1", title: "b", n: "10" }),
      update({ id: "1", title: "b", n: "10" }, { id: "1", title: "c", n: "11" })
    ])
    expect(messages(out)).toEqual([
      { key: key("1"), value: { id: "1", n: "10" }, headers: headers("insert", 0) },
      // The title-only update touched no selected column and was dropped.
      { key: key("1"), value: { id: "1", n: "11" }, headers: headers("update", 4, { last: true }) }
    ])
  })

  it("encodes an update (replica default) as the key plus the changed columns", () => {
    const out = encodeTxn(makeShape(), [update({ id: "1", title: "a", n: "10" }, { id: "1", title: "a", n: "11" })])
    expect(messages(out)).toEqual([
      { key: key("1"), value: { id: "1", n: "11" }, headers: headers("update", 0, { last: true }) }
    ])
  })

  it("drops an update that changes no selected column", () => {
    const row = { id: "1", title: "a", n: "10" }
    expect(encodeTxn(makeShape(), [update(row, { ...row })])).toEqual([])
    // An unchanged TOAST value is not a change either.
    expect(encodeTxn(makeShape(), [update(row, { ...row, title: undefined })])).toEqual([])
  })

  it("encodes an update (replica full) with the full new row and the old values of changed columns", () => {
    const shape = makeShape({ replica: "full" })
    const out = encodeTxn(shape, [update({ id: "1", title: "a", n: "10" }, { id: "1", title: "b", n: null })])
    expect(messages(out)).toEqual([
      {
        key: key("1"),
        value: { id: "1", title: "b", n: null },
        old_value: { title: "a", n: "10" },
        headers: headers("update", 0, { last: true })
      }
    ])
  })

  it("encodes a delete with the key only (default) or the whole old row (full)", () => {
    const row = { id: "3", title: "x", n: "1" }
    expect(messages(encodeTxn(makeShape(), [del(row)]))).toEqual([
      { key: key("3"), value: { id: "3" }, headers: headers("delete", 0, { last: true }) }
    ])
    expect(messages(encodeTxn(makeShape({ replica: "full" }), [del(row)]))).toEqual([
      { key: key("3"), value: { id: "3", title: "x", n: "1" }, headers: headers("delete", 0, { last: true }) }
    ])
  })

  it("filters inserts and deletes by the where clause", () => {
    const shape = makeShape({ where: "n > 5" })
    expect(encodeTxn(shape, [insert({ id: "1", title: "a", n: "1" }), del({ id: "2", title: "a", n: "2" })])).toEqual([])
    expect(messages(encodeTxn(shape, [insert({ id: "1", title: "a", n: "6" })]))).toEqual([
      { key: key("1"), value: { id: "1", title: "a", n: "6" }, headers: headers("insert", 0, { last: true }) }
    ])
  })

  it("turns an update moving a row into the where into an insert of the full row", () => {
    const shape = makeShape({ where: "n > 5" })
    const out = encodeTxn(shape, [update({ id: "1", title: "a", n: "1" }, { id: "1", title: "a", n: "9" })])
    expect(messages(out)).toEqual([
      { key: key("1"), value: { id: "1", title: "a", n: "9" }, headers: headers("insert", 0, { last: true }) }
    ])
  })

  it("turns an update moving a row out of the where into a delete", () => {
    const change = update({ id: "1", title: "a", n: "9" }, { id: "1", title: "a", n: "1" })
    expect(messages(encodeTxn(makeShape({ where: "n > 5" }), [change]))).toEqual([
      { key: key("1"), value: { id: "1" }, headers: headers("delete", 0, { last: true }) }
    ])
    expect(messages(encodeTxn(makeShape({ where: "n > 5", replica: "full" }), [change]))).toEqual([
      { key: key("1"), value: { id: "1", title: "a", n: "9" }, headers: headers("delete", 0, { last: true }) }
    ])
  })

  it("drops an update outside the where before and after", () => {
    const change = update({ id: "1", title: "a", n: "1" }, { id: "1", title: "b", n: "2" })
    expect(encodeTxn(makeShape({ where: "n > 5" }), [change])).toEqual([])
  })

  it("splits a primary-key change into a delete and an insert at consecutive ops", () => {
    const out = encodeTxn(makeShape(), [
      insert({ id: "9", title: "z", n: "0" }),
      update({ id: "1", title: "a", n: "10" }, { id: "2", title: "a", n: "10" })
    ])
    expect(out.map((e) => LogOffset.format(e.offset))).toEqual([`${LSN}_0`, `${LSN}_2`, `${LSN}_3`])
    expect(messages(out)).toEqual([
      { key: key("9"), value: { id: "9", title: "z", n: "0" }, headers: headers("insert", 0) },
      { key: key("1"), value: { id: "1" }, headers: headers("delete", 2, { key_change_to: key("2") }) },
      {
        key: key("2"),
        value: { id: "2", title: "a", n: "10" },
        headers: headers("insert", 3, { key_change_from: key("1"), last: true })
      }
    ])
  })

  it("puts last: true only on the final entry of the transaction", () => {
    const out = encodeTxn(makeShape(), [
      insert({ id: "1", title: "a", n: "1" }),
      insert({ id: "2", title: "b", n: "2" }),
      del({ id: "1", title: "a", n: "1" })
    ])
    const parsed = messages(out) as Array<{ headers: { last?: boolean; op_position: number } }>
    expect(parsed.map((m) => m.headers.last)).toEqual([undefined, undefined, true])
    expect(parsed.map((m) => m.headers.op_position)).toEqual([0, 2, 4])
    expect(out.map((e) => e.offset)).toEqual([LogOffset.make(LSN, 0), LogOffset.make(LSN, 2), LogOffset.make(LSN, 4)])
  })

  it("uses the same keys as rowKey, quoting and escaping included", () => {
    const rows: Array<Row> = [
      { id: "a/b", title: "t", n: "1" },
      { id: "x\"y\\z", title: "t", n: "1" },
      { id: null, title: "t", n: "1" }
    ]
    const out = encodeTxn(makeShape(), rows.map(insert))
    expect((messages(out) as Array<{ key: string }>).map((m) => m.key)).toEqual(rows.map((r) => rowKey(table, r)))
    expect(rowKey(table, rows[0]!)).toBe(`"public"."items"/"a//b"`)
  })

  it("reports whether a change concerns the shape", () => {
    const encoder = makeShapeEncoder(makeShape({ where: "n > 5" }))
    const pending: Array<PendingEntry> = []
    const h = transactionHeaders(XID, LSN)
    expect(encoder.encode(insert({ id: "1", title: "a", n: "1" }), LSN, 0, h, pending)).toBe(false)
    expect(encoder.encode(insert({ id: "1", title: "a", n: "7" }), LSN, 2, h, pending)).toBe(true)
    expect(encoder.encode({ kind: "truncate", relations: [relation] }, LSN, 4, h, pending)).toBe(false)
    expect(pending.length).toBe(1)
  })
})
