import { describe, expect, it } from "@effect/vitest"
import type { Change } from "../../src/domain/Change.js"
import {
  decode,
  encodeStandbyStatus,
  ownTupleBytes,
  pgClockNow,
  PgOutputDecodeError,
  TransactionAssembler,
  TransactionAssemblyError,
  tupleValue
} from "../../src/postgres/PgOutput.js"
import { begin, Bytes, commit } from "../support/pgoutput.js"

const HIGH_LSN = 0x1_2345_6789_abcdn // above 2^32: both halves matter
const END_LSN = HIGH_LSN + 0x38n

const relationMsg = (oid: number, replicaIdentity: string, schema = "public") =>
  new Bytes().char("R").u32(oid).cstr(schema).cstr("items").char(replicaIdentity).i16(3)
    .u8(1).cstr("id").u32(23).i32(-1)
    .u8(0).cstr("title").u32(25).i32(-1)
    .u8(0).cstr("body").u32(25).i32(-1)
    .build()
const insert = (oid: number, values: ReadonlyArray<string | null | undefined>) =>
  new Bytes().char("I").u32(oid).char("N").tuple(values).build()

/** A change's fields as values, its rows included: an assembler makes the rows of a change read from the wire when asked. */
const plain = (c: Change) =>
  c.kind === "truncate"
    ? c
    : c.kind === "insert"
    ? { kind: c.kind, relation: c.relation, new: c.new }
    : c.kind === "update"
    ? { kind: c.kind, relation: c.relation, old: c.old, new: c.new }
    : { kind: c.kind, relation: c.relation, old: c.old }

describe("PgOutput.decode", () => {
  it("decodes Begin and Commit with 64-bit LSNs", () => {
    expect(decode(begin(HIGH_LSN, 4_000_000_001))).toEqual({
      tag: "begin",
      finalLsn: HIGH_LSN,
      commitTime: 757_000_000_123_456n,
      xid: 4_000_000_001
    })
    expect(decode(commit(HIGH_LSN, END_LSN))).toEqual({
      tag: "commit",
      flags: 0,
      commitLsn: HIGH_LSN,
      endLsn: END_LSN,
      commitTime: 757_000_000_123_999n
    })
  })

  it("decodes at an offset (the XLogData payload)", () => {
    const header = Buffer.alloc(25, 0xff)
    const msg = Buffer.concat([header, begin(0xffff_ffff_ffff_fff0n, 7)])
    expect(decode(msg, 25)).toMatchObject({ tag: "begin", finalLsn: 0xffff_ffff_ffff_fff0n, xid: 7 })
  })

  it("decodes Origin and Type", () => {
    expect(decode(new Bytes().char("O").u64(HIGH_LSN).cstr("node_a").build())).toEqual({
      tag: "origin",
      originLsn: HIGH_LSN,
      name: "node_a"
    })
    expect(decode(new Bytes().char("Y").u32(16_400).cstr("app").cstr("mood").build())).toEqual({
      tag: "type",
      oid: 16_400,
      schema: "app",
      name: "mood"
    })
  })

  it("decodes Relation columns, key flags and typmods", () => {
    const msg = new Bytes().char("R").u32(3_000_000_000).cstr("").cstr("t").char("f").i16(2)
      .u8(1).cstr("id").u32(20).i32(-1)
      .u8(0).cstr("price").u32(1700).i32(655_366)
      .build()
    expect(decode(msg)).toEqual({
      tag: "relation",
      relation: {
        oid: 3_000_000_000,
        schema: "pg_catalog",
        name: "t",
        replicaIdentity: "f",
        columns: [
          { name: "id", typeOid: 20, typeMod: -1, isKey: true },
          { name: "price", typeOid: 1700, typeMod: 655_366, isKey: false }
        ]
      }
    })
  })

  it("decodes Insert with text, NULL, unchanged TOAST and multi-byte text", () => {
    expect(decode(insert(16_384, ["1", null, undefined]))).toEqual({
      tag: "insert",
      relationOid: 16_384,
      new: ["1", null, undefined]
    })
    expect(decode(insert(1, ["", "zß€😀", "a\nb"]))).toMatchObject({ new: ["", "zß€😀", "a\nb"] })
  })

  it("decodes Update without, with key and with full old tuple", () => {
    const plain = new Bytes().char("U").u32(9).char("N").tuple(["1", "x", undefined]).build()
    expect(decode(plain)).toEqual({ tag: "update", relationOid: 9, oldKind: undefined, old: undefined, new: ["1", "x", undefined] })
    const keyed = new Bytes().char("U").u32(9).char("K").tuple(["1", null, null]).char("N").tuple(["2", "y", "z"]).build()
    expect(decode(keyed)).toEqual({ tag: "update", relationOid: 9, oldKind: "K", old: ["1", null, null], new: ["2", "y", "z"] })
    const full = new Bytes().char("U").u32(9).char("O").tuple(["1", "x", "b"]).char("N").tuple(["1", "y", undefined]).build()
    expect(decode(full)).toEqual({ tag: "update", relationOid: 9, oldKind: "O", old: ["1", "x", "b"], new: ["1", "y", undefined] })
  })

  it("decodes Delete with key and with full old tuple", () => {
    expect(decode(new Bytes().char("D").u32(9).char("K").tuple(["5", null, null]).build())).toEqual({
      tag: "delete",
      relationOid: 9,
      oldKind: "K",
      old: ["5", null, null]
    })
    expect(decode(new Bytes().char("D").u32(9).char("O").tuple(["5", "t", null]).build())).toMatchObject({
      oldKind: "O",
      old: ["5", "t", null]
    })
  })

  it("decodes Truncate and Message", () => {
    expect(decode(new Bytes().char("T").i32(2).u8(3).u32(10).u32(4_000_000_000).build())).toEqual({
      tag: "truncate",
      options: 3,
      relationOids: [10, 4_000_000_000]
    })
    const m = decode(new Bytes().char("M").u8(1).u64(HIGH_LSN).cstr("syncline").i32(3).char("abc").build())
    expect(m).toMatchObject({ tag: "message", transactional: true, lsn: HIGH_LSN, prefix: "syncline" })
    expect(m.tag === "message" && m.content.toString()).toBe("abc")
  })

  it("rejects unknown messages, binary values and truncated input", () => {
    expect(() => decode(Buffer.from("Z"))).toThrow(PgOutputDecodeError)
    const binary = new Bytes().char("I").u32(1).char("N").i16(1).char("b").i32(1).u8(1).build()
    expect(() => decode(binary)).toThrow(PgOutputDecodeError)
    // Cut at each byte of an insert: inside its relation oid, before its tuple marker, inside its column count, before
    // a column's kind, inside its length word (the bytes past the end read as nothing), inside its value.
    const whole = insert(1, ["hello"])
    for (let end = 1; end < whole.length; end++) expect(() => decode(whole.subarray(0, end))).toThrow(PgOutputDecodeError)
    const negativeValue = new Bytes().char("I").u32(1).char("N").i16(1).char("t").i32(-3).char("abc").build()
    expect(() => decode(negativeValue)).toThrow(PgOutputDecodeError)
    const negativeCount = new Bytes().char("I").u32(1).char("N").i16(-1).build()
    expect(() => decode(negativeCount)).toThrow(PgOutputDecodeError)
    const negativeContent = new Bytes().char("M").u8(1).u64(HIGH_LSN).cstr("syncline").i32(-2).char("abc").build()
    expect(() => decode(negativeContent)).toThrow(PgOutputDecodeError)
    // A Truncate claiming more relations than it holds is refused before it reads (or allocates) for them.
    const overCount = new Bytes().char("T").i32(1_000_000_000).u8(0).u32(16384).build()
    expect(() => decode(overCount)).toThrow(PgOutputDecodeError)
    expect(() => decode(new Bytes().char("T").i32(-1).u8(0).build())).toThrow(PgOutputDecodeError)
  })
})

describe("encodeStandbyStatus", () => {
  it("writes exactly the given LSN as write, flush and apply", () => {
    const clock = pgClockNow(Date.UTC(2000, 0, 1, 0, 0, 1))
    expect(clock).toBe(1_000_000n)
    const b = encodeStandbyStatus(HIGH_LSN, clock)
    expect(b.length).toBe(34)
    expect(String.fromCharCode(b[0]!)).toBe("r")
    expect(b.readBigUInt64BE(1)).toBe(HIGH_LSN)
    expect(b.readBigUInt64BE(9)).toBe(HIGH_LSN)
    expect(b.readBigUInt64BE(17)).toBe(HIGH_LSN)
    expect(b.readBigInt64BE(25)).toBe(1_000_000n)
    expect(b[33]).toBe(0)
  })
})

describe("TransactionAssembler", () => {
  it("groups Begin..Commit into a transaction with rows by column name", () => {
    const a = new TransactionAssembler()
    expect(a.pushBuffer(begin(HIGH_LSN, 42))).toBeUndefined()
    expect(a.pushBuffer(relationMsg(100, "f"))).toBeUndefined()
    expect(a.pushBuffer(insert(100, ["1", "hi", null]))).toBeUndefined()
    const tx = a.pushBuffer(commit(HIGH_LSN, END_LSN))
    expect(tx).toBeDefined()
    expect(tx!.xid).toBe(42)
    expect(tx!.commitLsn).toBe(HIGH_LSN)
    expect(tx!.endLsn).toBe(END_LSN)
    expect(tx!.commitTime).toBe(757_000_000_123_999n)
    expect(tx!.relations.map((r) => r.oid)).toEqual([100])
    expect(tx!.changes).toHaveLength(1)
    const change = tx!.changes[0]!
    expect(change.kind).toBe("insert")
    if (change.kind !== "insert") return
    expect(change.new).toEqual({ id: "1", title: "hi", body: null })
    expect(change.relation).toBe(a.relation(100))
  })

  it("reads each message where it lies in a chunk holding others, and refuses one cut short before the next", () => {
    const messages = [begin(HIGH_LSN, 42), relationMsg(100, "f"), insert(100, ["1", "hi", null]), commit(HIGH_LSN, END_LSN)]
    const chunk = Buffer.concat(messages)
    const a = new TransactionAssembler()
    let at = 0
    let tx: ReturnType<TransactionAssembler["pushBuffer"]>
    for (const m of messages) {
      tx = a.pushBuffer(chunk, at, at + m.length)
      at += m.length
    }
    expect(tx!.changes.map((c) => c.kind === "insert" && c.new)).toEqual([{ id: "1", title: "hi", body: null }])
    // A Commit given fewer bytes than it has, followed by other bytes: its fields would run into them.
    const b = new TransactionAssembler()
    b.pushBuffer(begin(HIGH_LSN, 43))
    const cut = Buffer.concat([commit(HIGH_LSN, END_LSN), Buffer.alloc(32, 0x7f)])
    expect(() => b.pushBuffer(cut, 0, 20)).toThrow(PgOutputDecodeError)
    expect(() => decode(Buffer.concat([insert(100, ["1"]), Buffer.alloc(8)]), 0, 10)).toThrow(PgOutputDecodeError)
    // Read where it lies, as a transaction's changes are: a negative length, a cut at each byte.
    const c = new TransactionAssembler()
    c.pushBuffer(begin(HIGH_LSN, 44))
    c.pushBuffer(relationMsg(100, "f"))
    const negativeKey = new Bytes().char("D").u32(100).char("O").i16(3).char("t").i32(-3).char("abc").char("n").char("n").build()
    expect(() => c.pushBuffer(negativeKey)).toThrow(PgOutputDecodeError)
    const update = new Bytes().char("U").u32(100).char("O").tuple(["1", "a", null]).char("N").tuple(["1", "b", null]).build()
    for (let end = 1; end < update.length; end++) {
      // The bytes end there, or other bytes follow that the message must not run into.
      for (const [data, limit] of [[update.subarray(0, end), end], [update, end]] as const) {
        const d = new TransactionAssembler()
        d.pushBuffer(begin(HIGH_LSN, 45))
        d.pushBuffer(relationMsg(100, "f"))
        expect(() => d.pushBuffer(data, 0, limit)).toThrow(PgOutputDecodeError)
      }
    }
  })

  it("reads one value of a change's tuple as its row has it, an unchanged TOASTed one as undefined (tupleValue)", () => {
    const a = new TransactionAssembler()
    a.pushBuffer(begin(1n, 1))
    a.pushBuffer(relationMsg(100, "f"))
    // Past the length read byte by byte, and not ASCII.
    const long = "é ".repeat(40)
    a.pushBuffer(insert(100, ["7", long, null]))
    a.pushBuffer(new Bytes().char("U").u32(100).char("O").tuple(["7", long, "long body"]).char("N").tuple(["8", "", undefined]).build())
    // A value after a null and an unchanged one.
    a.pushBuffer(new Bytes().char("U").u32(100).char("O").tuple(["9", "a", "b"]).char("N").tuple([null, undefined, "é"]).build())
    const tx = a.pushBuffer(commit(1n, 2n))!
    const values = tx.changes.map((c) =>
      c.kind === "insert" || c.kind === "update" ? [0, 1, 2].map((j) => tupleValue(c.tupleData!, c.tupleAt!, j)) : []
    )
    expect(values).toEqual([["7", long, null], ["8", "", undefined], [null, undefined, "é"]])
    // The rows, made afterwards, agree; an update's row fills in what its tuple left out.
    expect(tx.changes.map((c) => c.kind === "insert" || c.kind === "update" ? c.new : undefined)).toEqual([
      { id: "7", title: long, body: null },
      { id: "8", title: "", body: "long body" },
      { id: null, title: "a", body: "é" }
    ])
  })

  it("fills unchanged TOAST from the full old row, and keeps key-only old rows to the key", () => {
    const a = new TransactionAssembler()
    a.pushBuffer(begin(1n, 1))
    a.pushBuffer(relationMsg(100, "f"))
    a.pushBuffer(new Bytes().char("U").u32(100).char("O").tuple(["1", "a", "long body"]).char("N").tuple(["1", "b", undefined]).build())
    a.pushBuffer(new Bytes().char("U").u32(100).char("N").tuple(["1", "c", undefined]).build())
    a.pushBuffer(new Bytes().char("D").u32(100).char("O").tuple(["1", "c", "long body"]).build())
    const tx1 = a.pushBuffer(commit(1n, 2n))!
    expect(tx1.changes.map(plain)).toEqual([
      {
        kind: "update",
        relation: a.relation(100),
        old: { id: "1", title: "a", body: "long body" },
        new: { id: "1", title: "b", body: "long body" }
      },
      { kind: "update", relation: a.relation(100), old: undefined, new: { id: "1", title: "c", body: undefined } },
      { kind: "delete", relation: a.relation(100), old: { id: "1", title: "c", body: "long body" } }
    ])

    // A later transaction reuses the relation without a new Relation message.
    a.pushBuffer(begin(3n, 2))
    a.pushBuffer(relationMsg(200, "d"))
    a.pushBuffer(new Bytes().char("U").u32(200).char("K").tuple(["7", null, null]).char("N").tuple(["8", "x", "y"]).build())
    a.pushBuffer(new Bytes().char("D").u32(200).char("K").tuple(["8", null, null]).build())
    a.pushBuffer(insert(100, ["2", null, null]))
    a.pushBuffer(new Bytes().char("T").i32(2).u8(0).u32(100).u32(200).build())
    const tx2 = a.pushBuffer(commit(3n, 4n))!
    expect(tx2.relations.map((r) => r.oid)).toEqual([200])
    expect(tx2.changes.map(plain)).toEqual([
      { kind: "update", relation: a.relation(200), old: { id: "7" }, new: { id: "8", title: "x", body: "y" } },
      { kind: "delete", relation: a.relation(200), old: { id: "8" } },
      { kind: "insert", relation: a.relation(100), new: { id: "2", title: null, body: null } },
      { kind: "truncate", relations: [a.relation(100), a.relation(200)] }
    ])
  })

  it("reads each message straight from its bytes exactly as decoding it first does", () => {
    // Fed as a buffer (read in place) and as a decoded message: the same transactions, value for value.
    const messages = [
      begin(HIGH_LSN, 0xffff_fffe),
      relationMsg(100, "f"),
      relationMsg(200, "d"),
      insert(100, ["1", "héllo ✓", null]),
      new Bytes().char("U").u32(100).char("O").tuple(["1", "a", "long body"]).char("N").tuple(["1", "b", undefined]).build(),
      new Bytes().char("U").u32(100).char("N").tuple(["1", undefined, ""]).build(),
      new Bytes().char("U").u32(200).char("K").tuple(["7", null, null]).char("N").tuple(["8", "x", undefined]).build(),
      new Bytes().char("D").u32(100).char("O").tuple(["1", "c", "long body"]).build(),
      new Bytes().char("D").u32(200).char("K").tuple(["8", null, null]).build(),
      commit(HIGH_LSN, END_LSN)
    ]
    const inPlace = new TransactionAssembler()
    const decoded = new TransactionAssembler()
    let fromBytes, fromMessages
    for (const m of messages) {
      fromBytes = inPlace.pushBuffer(m)
      fromMessages = decoded.push(decode(m))
    }
    expect(fromBytes).toBeDefined()
    expect(fromBytes!.changes.map((c) => c.kind === "truncate" ? c : { ...plain(c), relation: c.relation.oid })).toStrictEqual(
      fromMessages!.changes.map((c) => c.kind === "truncate" ? c : { ...plain(c), relation: c.relation.oid })
    )
    expect({ ...fromBytes!, changes: [], relations: [] }).toStrictEqual({ ...fromMessages!, changes: [], relations: [] })
    expect(fromBytes!.xid).toBe(0xffff_fffe)
    // A tuple whose width is not the relation's is refused either way.
    inPlace.pushBuffer(begin(1n, 1))
    expect(() => inPlace.pushBuffer(insert(100, ["1", "2"]))).toThrow(TransactionAssemblyError)
    expect(() => inPlace.pushBuffer(new Bytes().char("I").u32(100).char("N").i16(3).char("b").build())).toThrow(PgOutputDecodeError)
  })

  it("makes the rows of a change read from the wire when they are asked for, from the bytes it was read from", () => {
    const a = new TransactionAssembler()
    const chunk = Buffer.concat([
      begin(1n, 1),
      relationMsg(100, "f"),
      insert(100, ["1", "héllo", null]),
      new Bytes().char("U").u32(100).char("O").tuple(["2", "a", "long body"]).char("N").tuple(["2", "b", undefined]).build()
    ])
    let at = 0
    for (const m of [begin(1n, 1), relationMsg(100, "f"), insert(100, ["1", "héllo", null])]) {
      a.pushBuffer(chunk, at, at + m.length)
      at += m.length
    }
    a.pushBuffer(chunk, at, chunk.length)
    const tx = a.pushBuffer(commit(1n, 2n))!
    expect(tx.changes.map(plain)).toEqual([
      { kind: "insert", relation: a.relation(100), new: { id: "1", title: "héllo", body: null } },
      {
        kind: "update",
        relation: a.relation(100),
        old: { id: "2", title: "a", body: "long body" },
        new: { id: "2", title: "b", body: "long body" }
      }
    ])
    // The same rows each time they are asked for.
    expect(tx.changes[0]!.kind === "insert" && tx.changes[0]!.new).toBe(tx.changes[0]!.kind === "insert" && tx.changes[0]!.new)
    // A tuple cut short is refused as it is read, not when its row is asked for.
    const b = new TransactionAssembler()
    b.pushBuffer(begin(1n, 1))
    b.pushBuffer(relationMsg(100, "f"))
    const whole = insert(100, ["1", "hi", "there"])
    expect(() => b.pushBuffer(Buffer.concat([whole, Buffer.alloc(16)]), 0, whole.length - 2)).toThrow(PgOutputDecodeError)
  })

  it("copies a transaction's tuples out of the chunks they were read from, rows and all", () => {
    const a = new TransactionAssembler()
    const messages = [
      begin(1n, 1),
      relationMsg(100, "f"),
      insert(100, ["1", "héllo", null]),
      new Bytes().char("U").u32(100).char("O").tuple(["2", "a", "long body"]).char("N").tuple(["2", "b", undefined]).build(),
      new Bytes().char("U").u32(100).char("N").tuple(["3", "c", undefined]).build(),
      insert(100, ["4", "x".repeat(5_000), "y"]),
      commit(1n, 2n)
    ]
    const chunk = Buffer.concat(messages)
    let at = 0
    let tx: ReturnType<TransactionAssembler["pushBuffer"]>
    for (const m of messages) {
      tx = a.pushBuffer(chunk, at, at + m.length)
      at += m.length
    }
    const expected = tx!.changes.map(plain)
    const rowsAsked = tx!.changes[1]!.kind === "update" && tx!.changes[1]!.new
    ownTupleBytes(tx!)
    // The chunk goes on to hold other bytes: the transaction no longer reads it.
    chunk.fill(0x7a)
    expect(tx!.changes.map((c) => c.kind === "insert" || c.kind === "update" ? c.tupleData : undefined)).not.toContain(chunk)
    expect(tx!.changes.map(plain)).toEqual(expected)
    expect(tx!.changes[1]!.kind === "update" && tx!.changes[1]!.new).toBe(rowsAsked)
  })

  it("ignores Origin, Type and Message inside a transaction", () => {
    const a = new TransactionAssembler()
    a.pushBuffer(begin(1n, 1))
    a.pushBuffer(new Bytes().char("O").u64(1n).cstr("x").build())
    a.pushBuffer(new Bytes().char("Y").u32(1).cstr("s").cstr("t").build())
    a.pushBuffer(new Bytes().char("M").u8(1).u64(1n).cstr("p").i32(0).build())
    expect(a.pushBuffer(commit(1n, 2n))!.changes).toEqual([])
  })

  it("rejects changes for unknown relations and out-of-order boundaries", () => {
    const a = new TransactionAssembler()
    expect(() => a.pushBuffer(commit(1n, 2n))).toThrow(TransactionAssemblyError)
    expect(() => a.pushBuffer(insert(100, ["1"]))).toThrow(TransactionAssemblyError)
    a.pushBuffer(begin(1n, 1))
    expect(() => a.pushBuffer(insert(100, ["1"]))).toThrow(TransactionAssemblyError)
    expect(() => a.pushBuffer(begin(1n, 1))).toThrow(TransactionAssemblyError)
  })
})
