import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import type { Change, Relation, Row } from "../../src/domain/Change.js"
import { LogOffset } from "../../src/domain/LogOffset.js"
import { ownTupleBytes, TransactionAssembler } from "../../src/postgres/PgOutput.js"
import { rowKey } from "../../src/domain/RowKey.js"
import type { ShapeDefinition } from "../../src/domain/ShapeDefinition.js"
import type { TableInfo } from "../../src/domain/Table.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import { closeTransaction, finishTransaction, makeShapeEncoder, type PendingEntry, transactionHeaders } from "../../src/shapes/LogItems.js"
import type { Shape } from "../../src/shapes/Shape.js"
import { selectedColumns } from "../../src/shapes/Shape.js"
import { LogLines } from "../../src/storage/LogLines.js"
import type { LogEntry } from "../../src/storage/ShapeLogStorage.js"
import { parseWhere } from "../../src/where/WhereClause.js"
import { tableInfo, wholeTableShape } from "../where/table.js"

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

describe("ShapeEncoder.append", () => {
  // A table whose key has two columns and whose name needs quoting, sent in another column order than the shape's.
  const wide: TableInfo = { ...tableInfo("it\"em/s", [["k1", "text"], ["k2", "text"], ["title", "text"], ["n", "int4"]], "sch ema"), pk: ["k1", "k2"] }
  const wireOrder = ["n", "k2", "title", "k1"]
  const RELATION_OID = 16_500
  const wideShape = (options: { columns?: ReadonlyArray<string>; where?: string; replica?: "default" | "full" } = {}): Shape => {
    const clause = options.where === undefined ? undefined : Either.getOrThrow(parseWhere(options.where, {}, wide))
    return {
      handle: ShapeHandle("1-2"),
      definition: {
        table: { schema: wide.schema, name: wide.name },
        where: clause?.sql,
        columns: options.columns,
        replica: options.replica ?? "default",
        log: "full"
      },
      table: wide,
      where: clause,
      dependencies: [],
      columns: selectedColumns(wide, options.columns)
    }
  }

  type WireValue = Buffer | null | undefined
  const int16 = (n: number) => Buffer.from([n >> 8, n & 0xff])
  const int32 = (n: number) => {
    const b = Buffer.alloc(4)
    b.writeInt32BE(n)
    return b
  }
  /** The bytes pgoutput sends for a tuple: text values, `n` for NULL, `u` for an unchanged TOASTed value. */
  const tupleBytes = (values: ReadonlyArray<WireValue>): Buffer =>
    Buffer.concat([
      int16(values.length),
      ...values.map((v) => (v === null ? Buffer.from("n") : v === undefined ? Buffer.from("u") : Buffer.concat([Buffer.from("t"), int32(v.length), v])))
    ])
  const relationMessage = Buffer.concat([
    Buffer.from("R"),
    int32(RELATION_OID),
    Buffer.from(`${wide.schema}\0${wide.name}\0f`),
    int16(wireOrder.length),
    ...wireOrder.map((name) => Buffer.concat([Buffer.from([name.startsWith("k") ? 1 : 0]), Buffer.from(`${name}\0`), int32(25), int32(-1)]))
  ])
  const lsn = Buffer.alloc(8)
  lsn.writeBigUInt64BE(LSN)
  const begin = Buffer.concat([Buffer.from("B"), lsn, Buffer.alloc(8), int32(XID)])
  const commit = Buffer.concat([Buffer.from("C"), Buffer.from([0]), lsn, lsn, Buffer.alloc(8)])
  type WireChange =
    | { readonly kind: "insert"; readonly values: ReadonlyArray<WireValue> }
    | { readonly kind: "update"; readonly old: ReadonlyArray<WireValue> | undefined; readonly values: ReadonlyArray<WireValue> }

  /** The changes as the assembler reads them from the wire, each message in a chunk with other bytes around it. */
  const fromWire = (changes: ReadonlyArray<WireChange>): ReadonlyArray<Change> => {
    const assembler = new TransactionAssembler()
    const feed = (message: Buffer) => {
      const chunk = Buffer.concat([Buffer.from("before"), message, Buffer.from("after")])
      return assembler.pushBuffer(chunk, 6, 6 + message.length)
    }
    feed(begin)
    feed(relationMessage)
    for (const change of changes) {
      const head = Buffer.concat([Buffer.from(change.kind === "insert" ? "I" : "U"), int32(RELATION_OID)])
      const old = change.kind === "update" && change.old !== undefined ? Buffer.concat([Buffer.from("O"), tupleBytes(change.old)]) : Buffer.alloc(0)
      feed(Buffer.concat([head, old, Buffer.from("N"), tupleBytes(change.values)]))
    }
    return feed(commit)!.changes
  }
  /** The same change as rows only, which `append` writes through `encode`. */
  const rowsOnly = (change: Change): Change =>
    change.kind === "insert"
      ? { kind: "insert", relation: change.relation, new: change.new }
      : change.kind === "update"
      ? { kind: "update", relation: change.relation, old: change.old, new: change.new }
      : change

  const finished = (shape: Shape, changes: ReadonlyArray<Change>): Buffer => {
    const pending: Array<PendingEntry> = []
    const encoder = makeShapeEncoder(shape)
    changes.forEach((change, i) => encoder.encode(change, LSN, i * 2, transactionHeaders(XID, LSN), pending))
    const out = new LogLines()
    finishTransaction(pending, out)
    return out.bytesFrom(0)
  }
  const appended = (shape: Shape, changes: ReadonlyArray<Change>): Buffer => {
    const encoder = makeShapeEncoder(shape)
    const out = new LogLines()
    changes.forEach((change, i) => encoder.append(change, LSN, i * 2, transactionHeaders(XID, LSN), out))
    closeTransaction(out, 0)
    return out.bytesFrom(0)
  }

  // Every ASCII byte, each escape JSON has, `/` and `"` in keys, multi-byte UTF-8, and bytes that are not UTF-8
  // (two of which decode to the same string).
  const awkward: ReadonlyArray<Buffer> = [
    Buffer.from(""),
    Buffer.from("plain"),
    Buffer.from("a/b//c"),
    Buffer.from("quote\" back\\slash"),
    Buffer.from(Array.from({ length: 128 }, (_, i) => i)),
    Buffer.from("\b\f\n\r\t\u0000\u001f\u007f"),
    Buffer.from("naïve ☃ 𝄞 \u2028"),
    Buffer.from([0x61, 0xff, 0x62]),
    Buffer.from([0x61, 0xfe, 0x62]),
    Buffer.from("12345678901234567890")
  ]

  it("writes, from the tuples' bytes, the lines encode writes from the rows", () => {
    const values: Array<WireValue> = [...awkward, null]
    let seed = 7
    const random = (n: number) => {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648
      // The high bits: an LCG's low bits repeat with a short period.
      return Math.floor(seed / 65_536) % n
    }
    const pick = () => values[random(values.length)]!
    /** A row in wire order (n, k2, title, k1); its key never NULL, its title and n now and then unsent. */
    const wireRow = (): Array<WireValue> => [pick(), pick() ?? Buffer.from("k"), pick(), pick() ?? Buffer.from("k")]
    /** The next row of an update: some columns changed, some the same, some unsent; the key kept or not. */
    const nextRow = (old: ReadonlyArray<WireValue>): Array<WireValue> =>
      old.map((v, i) => {
        const roll = random(4)
        if (i === 1 || i === 3) return roll === 0 ? pick() ?? Buffer.from("k2") : v
        return roll === 0 ? v : roll === 1 ? undefined : pick()
      })
    const shapes = [
      wideShape(),
      wideShape({ columns: ["k1", "k2", "n"] }),
      wideShape({ replica: "full" }),
      wideShape({ columns: ["k2", "k1", "title"], replica: "full" }),
      wideShape({ where: "n IS NULL" }),
      wideShape({ where: "title IS NOT NULL", replica: "full" })
    ]
    let written = 0
    let empty = 0
    for (let round = 0; round < 400; round++) {
      const wire: Array<WireChange> = []
      for (let i = 0; i <= round % 3; i++) {
        const kind = random(3)
        const old = wireRow()
        if (kind === 0) wire.push({ kind: "insert", values: old })
        else if (kind === 1) wire.push({ kind: "update", old: undefined, values: wireRow().map((v, c) => (c % 2 === 0 && random(3) === 0 ? undefined : v)) })
        else wire.push({ kind: "update", old, values: nextRow(old) })
      }
      const changes = fromWire(wire)
      // Half of them as a transaction handed to consumers has them: its tuples copied out of the chunk.
      if (round % 2 === 1) ownTupleBytes({ xid: XID, commitLsn: LSN, endLsn: LSN, commitTime: 0n, changes, relations: [] })
      for (const shape of shapes) {
        const expected = finished(shape, changes.map(rowsOnly))
        expect(appended(shape, changes).toString("latin1")).toBe(expected.toString("latin1"))
        if (expected.length > 0) written++
        else empty++
      }
    }
    // Both kinds of transaction were compared: some the shapes wrote lines for, some none.
    expect(written).toBeGreaterThan(500)
    expect(empty).toBeGreaterThan(100)
  })

  it("makes room for key columns its tuples lack, which an update's value names as null", () => {
    // The shape's table as it was when the shape was made; the relation sent now lacks its key columns.
    const keys = Array.from({ length: 30 }, (_, i) => `key_column_with_a_name_long_enough_to_need_room_of_its_own_${i}`)
    const table: TableInfo = { ...tableInfo("t", [...keys.map((k) => [k, "text"] as const), ["v", "text"]]), pk: keys }
    const shape = wholeTableShape("1-3", table)
    const relationMessage = Buffer.concat([
      Buffer.from("R"),
      int32(RELATION_OID),
      Buffer.from(`${table.schema}\0${table.name}\0f`),
      int16(1),
      Buffer.from([0]),
      Buffer.from("v\0"),
      int32(25),
      int32(-1)
    ])
    const assembler = new TransactionAssembler()
    assembler.pushBuffer(begin)
    assembler.pushBuffer(relationMessage)
    assembler.pushBuffer(Buffer.concat([Buffer.from("U"), int32(RELATION_OID), Buffer.from("O"), tupleBytes([Buffer.from("a")]), Buffer.from("N"), tupleBytes([Buffer.from("b")])]))
    const changes = assembler.pushBuffer(commit)!.changes
    expect(appended(shape, changes).toString("latin1")).toBe(finished(shape, changes.map(rowsOnly)).toString("latin1"))
  })

  it("writes a change from its tuples' bytes without making its rows, for a shape without a where", () => {
    const [insertChange, updateChange] = fromWire([
      { kind: "insert", values: [Buffer.from("1"), Buffer.from("a"), null, Buffer.from("b")] },
      { kind: "update", old: [Buffer.from("1"), Buffer.from("a"), null, Buffer.from("b")], values: [Buffer.from("2"), Buffer.from("a"), undefined, Buffer.from("b")] }
    ])
    const rowless = (change: Change): Change => {
      const refuse = (): Row => {
        throw new Error("a row was made")
      }
      if (change.kind === "insert") return { kind: "insert", relation: change.relation, tupleData: change.tupleData, tupleAt: change.tupleAt!, oldTupleAt: change.oldTupleAt!, get new() { return refuse() } }
      if (change.kind !== "update") throw new Error("not an insert or an update")
      return { kind: "update", relation: change.relation, tupleData: change.tupleData, tupleAt: change.tupleAt!, oldTupleAt: change.oldTupleAt!, get old() { return refuse() }, get new() { return refuse() } }
    }
    for (const shape of [wideShape(), wideShape({ replica: "full" })]) {
      const changes = [insertChange!, updateChange!]
      expect(appended(shape, changes.map(rowless)).toString("latin1")).toBe(finished(shape, changes.map(rowsOnly)).toString("latin1"))
    }
  })

  it("writes a change without its tuple's bytes as encode does, and marks only the transaction's last line", () => {
    const shape = makeShape()
    const changes = [
      insert({ id: "1", title: "a", n: "10" }),
      update({ id: "1", title: "a", n: "10" }, { id: "2", title: "a", n: "10" }),
      del({ id: "2", title: "a", n: "10" })
    ]
    const written = appended(shape, changes)
    expect(written.toString("utf8")).toBe(finished(shape, changes).toString("utf8"))
    const lines = written.toString("utf8").trimEnd().split("\n").map((l) => JSON.parse(l))
    // The key change is a delete and an insert.
    expect(lines.map((l) => l.headers.last === true)).toEqual([false, false, false, true])
  })

  it("appends nothing, and marks nothing, for a transaction with no change for the shape", () => {
    const out = new LogLines()
    const encoder = makeShapeEncoder(makeShape({ where: "n = 99" }))
    expect(encoder.append(insert({ id: "1", title: "a", n: "10" }), LSN, 0, transactionHeaders(XID, LSN), out)).toBe(false)
    closeTransaction(out, 0)
    expect(out.count).toBe(0)
  })
})
