import { describe, expect, it } from "@effect/vitest"
import type { Change, Relation, Row, Transaction } from "../../src/domain/Change.js"
import type { Lsn } from "../../src/domain/Lsn.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import { TransactionAssembler } from "../../src/postgres/PgOutput.js"
import { columnSignature, type Delivery, makeRouter, type RoutedShape } from "../../src/replication/ShapeLogCollector.js"
import { begin, Bytes, commit } from "../support/pgoutput.js"

const rel = (oid: number, name: string): Relation => ({
  oid,
  schema: "public",
  name,
  replicaIdentity: "f",
  columns: [
    { name: "id", typeOid: 23, typeMod: -1, isKey: true },
    { name: "owner", typeOid: 25, typeMod: -1, isKey: true }
  ]
})

const ITEMS = rel(100, "items")
const OTHER = rel(200, "other")

const insert = (row: Row, relation = ITEMS): Change => ({ kind: "insert", relation, new: row })
const update = (old: Row | undefined, row: Row, relation = ITEMS): Change => ({ kind: "update", relation, old, new: row })
const del = (row: Row, relation = ITEMS): Change => ({ kind: "delete", relation, old: row })

let nextLsn = 1000n
const txn = (changes: ReadonlyArray<Change>, commitLsn?: Lsn): Transaction => {
  const lsn = commitLsn ?? (nextLsn += 100n)
  return { xid: 1, commitLsn: lsn, endLsn: lsn + 8n, commitTime: 0n, changes, relations: [] }
}

const h = (s: string) => ShapeHandle(s)
const COLUMNS = columnSignature(ITEMS.columns)

const byOwner = (handle: string, owner: string, tableOid = ITEMS.oid): RoutedShape => ({
  handle: h(handle),
  tableOid,
  equality: { column: "owner", value: owner },
  matches: (row) => row["owner"] === owner,
  columns: COLUMNS
})

const everything = (handle: string, tableOid = ITEMS.oid): RoutedShape => ({
  handle: h(handle),
  tableOid,
  equality: undefined,
  matches: undefined,
  columns: COLUMNS
})

/** Deliveries as `handle -> positions` (and why the shape is invalidated, when it is). */
const summary = (deliveries: ReadonlyArray<Delivery> | undefined) => {
  expect(deliveries).toBeDefined()
  const out: Record<string, Array<number> | { changes: Array<number>; invalidated: string }> = {}
  for (const d of deliveries!) {
    out[d.handle] = d.invalidated !== undefined ? { changes: d.changes, invalidated: d.invalidated } : d.changes
  }
  return out
}

describe("makeRouter", () => {
  it("finds equality shapes only for rows whose value matches", () => {
    const router = makeRouter(0n)
    router.addShape(byOwner("alice", "alice"))
    router.addShape(byOwner("bob", "bob"))
    router.addShape(byOwner("alice2", "alice"))
    const deliveries = router.route(txn([
      insert({ id: "1", owner: "alice" }), // 0
      insert({ id: "2", owner: "carol" }), // 1
      del({ id: "3", owner: "bob" }), // 2
      update({ id: "4", owner: "bob" }, { id: "4", owner: "alice" }), // 3: old bob, new alice
      update({ id: "5", owner: "carol" }, { id: "5", owner: "carol" }), // 4
      insert({ id: "6", owner: null }) // 5
    ]))
    expect(summary(deliveries)).toEqual({ alice: [0, 3], alice2: [0, 3], bob: [2, 3] })
  })

  it("routes changes read from the wire by one value of their tuples, making a new row only for an unchanged TOASTed value", () => {
    const router = makeRouter(0n)
    router.addShape(byOwner("alice", "alice"))
    router.addShape(byOwner("bob", "bob"))
    router.addShape(byOwner("accented", "é"))
    const lsn = (nextLsn += 100n)
    const assembler = new TransactionAssembler()
    const relation = new Bytes().char("R").u32(ITEMS.oid).cstr("public").cstr("items").char("f").i16(2)
      .u8(1).cstr("id").u32(23).i32(-1)
      .u8(1).cstr("owner").u32(25).i32(-1)
      .build()
    const ins = (values: ReadonlyArray<string | null>) => new Bytes().char("I").u32(ITEMS.oid).char("N").tuple(values).build()
    const upd = (old: ReadonlyArray<string>, values: ReadonlyArray<string | undefined>) =>
      new Bytes().char("U").u32(ITEMS.oid).char("O").tuple(old).char("N").tuple(values).build()
    for (const message of [begin(lsn, 1), relation]) assembler.pushBuffer(message)
    for (
      const message of [
        ins(["1", "alice"]), // 0
        ins(["2", "carol"]), // 1
        ins(["3", null]), // 2
        ins(["4", "é"]), // 3
        upd(["5", "bob"], ["5", undefined]), // 4: its owner left out, the old row's
        upd(["6", "carol"], ["6", "alice"]) // 5
      ]
    ) assembler.pushBuffer(message)
    const wire = assembler.pushBuffer(commit(lsn, lsn + 8n))!
    // Which changes had their new row asked for.
    const rowsMade = new Set<number>()
    const changes = wire.changes.map((change, i) =>
      new Proxy(change, {
        get: (target, key) => {
          if (key === "new") rowsMade.add(i)
          return Reflect.get(target, key, target)
        }
      })
    )
    expect(summary(router.route({ ...wire, changes }))).toEqual({ alice: [0, 5], bob: [4], accented: [3] })
    expect([...rowsMade]).toEqual([4])
    // The same changes as rows route the same.
    const plain = txn(wire.changes.map((c) =>
      c.kind === "insert" ? insert({ ...c.new }) : c.kind === "update" ? update({ ...c.old }, { ...c.new }) : c
    ))
    expect(summary(router.route(plain))).toEqual({ alice: [0, 5], bob: [4], accented: [3] })
  })

  it("evaluates scanned shapes with their matches function", () => {
    const router = makeRouter(0n)
    router.addShape({ handle: h("big"), tableOid: ITEMS.oid, equality: undefined, matches: (row) => Number(row["id"]) > 10, columns: COLUMNS })
    const deliveries = router.route(txn([
      insert({ id: "5", owner: "a" }),
      insert({ id: "11", owner: "a" }),
      update({ id: "20", owner: "a" }, { id: "2", owner: "a" }),
      update({ id: "3", owner: "a" }, { id: "4", owner: "a" }),
      del({ id: "12", owner: "a" })
    ]))
    expect(summary(deliveries)).toEqual({ big: [1, 2, 4] })
  })

  it("delivers an update without an old row to every shape of the table", () => {
    const router = makeRouter(0n)
    router.addShape(byOwner("alice", "alice"))
    router.addShape({ handle: h("none"), tableOid: ITEMS.oid, equality: undefined, matches: () => false, columns: COLUMNS })
    const deliveries = router.route(txn([update(undefined, { id: "1", owner: "bob" })]))
    expect(summary(deliveries)).toEqual({ alice: [0], none: [0] })
  })

  it("gives every change of its table to a shape without a where, and nothing of other tables", () => {
    const router = makeRouter(0n)
    router.addShape(everything("all-items"))
    router.addShape(everything("all-other", OTHER.oid))
    const deliveries = router.route(txn([
      insert({ id: "1", owner: "x" }),
      insert({ id: "1", owner: "x" }, OTHER),
      update({ id: "1", owner: "x" }, { id: "1", owner: "y" }),
      del({ id: "1", owner: "y" }),
      del({ id: "1", owner: "x" }, OTHER)
    ]))
    expect(summary(deliveries)).toEqual({ "all-items": [0, 2, 3], "all-other": [1, 4] })
  })

  it("routes a table whose shapes have no where without making its rows, and looks at them once one has", () => {
    let looked = 0
    /** A change whose rows count how often they are asked for, as rows read from the wire are made when asked. */
    const counted = (kind: "insert" | "update" | "delete", row: Row): Change => {
      const get = () => {
        looked++
        return row
      }
      if (kind === "insert") return { kind, relation: ITEMS, get new() { return get() } }
      if (kind === "update") return { kind, relation: ITEMS, get old() { return get() }, get new() { return get() } }
      return { kind, relation: ITEMS, get old() { return get() } }
    }
    const changes = () => [counted("insert", { id: "1", owner: "x" }), counted("update", { id: "1", owner: "x" }), counted("delete", { id: "1", owner: "x" })]
    const router = makeRouter(0n)
    router.addShape(everything("a"))
    router.addShape(everything("b"))
    expect(summary(router.route(txn(changes())))).toEqual({ a: [0, 1, 2], b: [0, 1, 2] })
    expect(looked).toBe(0)
    router.addShape(byOwner("x", "x"))
    expect(summary(router.route(txn(changes())))).toEqual({ a: [0, 1, 2], b: [0, 1, 2], x: [0, 1, 2] })
    expect(looked).toBeGreaterThan(0)
  })

  it("returns no deliveries for changes of tables without shapes", () => {
    const router = makeRouter(0n)
    router.addShape(everything("all-items"))
    expect(router.route(txn([insert({ id: "1", owner: "x" }, OTHER)]))).toEqual([])
    const empty = makeRouter(0n)
    expect(empty.route(txn([insert({ id: "1", owner: "x" })]))).toEqual([])
  })

  it("delivers a truncate to every shape of the table, marked invalidated", () => {
    const router = makeRouter(0n)
    router.addShape(byOwner("alice", "alice"))
    router.addShape({ handle: h("never"), tableOid: ITEMS.oid, equality: undefined, matches: () => false, columns: COLUMNS })
    router.addShape(everything("other", OTHER.oid))
    const deliveries = router.route(txn([
      insert({ id: "1", owner: "alice" }),
      { kind: "truncate", relations: [ITEMS] }
    ]))
    expect(summary(deliveries)).toEqual({
      alice: { changes: [0, 1], invalidated: "its table was truncated" },
      never: { changes: [1], invalidated: "its table was truncated" }
    })
  })

  it("invalidates a table's shapes when a Relation message brings other columns, and only then", () => {
    const router = makeRouter(0n)
    router.addShape(byOwner("alice", "alice"))
    router.addShape(everything("other", OTHER.oid))
    // Sent again on every connection: the same columns change nothing.
    const same = { ...txn([insert({ id: "1", owner: "bob" })]), relations: [ITEMS, OTHER] }
    expect(summary(router.route(same))).toEqual({})
    const added: Relation = { ...ITEMS, columns: [...ITEMS.columns, { name: "note", typeOid: 25, typeMod: -1, isKey: true }] }
    const retyped: Relation = { ...OTHER, columns: [ITEMS.columns[0]!, { name: "owner", typeOid: 1043, typeMod: 14, isKey: true }] }
    const changed = { ...txn([insert({ id: "2", owner: "alice", note: "n" }, added)]), relations: [added, retyped] }
    expect(summary(router.route(changed))).toEqual({
      alice: { changes: [0], invalidated: "its table's columns changed" },
      other: { changes: [], invalidated: "its table's columns changed" }
    })
  })

  it("drops replays: transactions at or below the last routed commit LSN", () => {
    const router = makeRouter(0n)
    router.addShape(everything("all"))
    const t1 = txn([insert({ id: "1", owner: "x" })], 5000n)
    const t2 = txn([insert({ id: "2", owner: "x" })], 6000n)
    expect(summary(router.route(t1))).toEqual({ all: [0] })
    expect(router.lastRoutedLsn()).toBe(5000n)
    expect(router.route(t1)).toBeUndefined()
    expect(router.route(txn([insert({ id: "0", owner: "x" })], 4000n))).toBeUndefined()
    expect(summary(router.route(t2))).toEqual({ all: [0] })
    expect(router.route(t2)).toBeUndefined()
    expect(router.lastRoutedLsn()).toBe(6000n)
  })

  it("drops transactions at or below the initial boundary", () => {
    const router = makeRouter(7000n)
    router.addShape(everything("all"))
    expect(router.lastRoutedLsn()).toBe(7000n)
    expect(router.route(txn([insert({ id: "1", owner: "x" })], 6999n))).toBeUndefined()
    expect(router.route(txn([insert({ id: "1", owner: "x" })], 7000n))).toBeUndefined()
    // An adjacent commit whose LSN equals the previous end LSN is not a replay.
    expect(summary(router.route(txn([insert({ id: "1", owner: "x" })], 7001n)))).toEqual({ all: [0] })
  })

  it("stops delivering to a removed shape and forgets its index entries", () => {
    const router = makeRouter(0n)
    router.addShape(byOwner("alice", "alice"))
    router.addShape(byOwner("alice2", "alice"))
    router.addShape(everything("all"))
    expect(router.size()).toBe(3)

    router.removeShape(h("alice"))
    expect(router.has(h("alice"))).toBe(false)
    expect(router.size()).toBe(2)
    expect(summary(router.route(txn([insert({ id: "1", owner: "alice" })])))).toEqual({ alice2: [0], all: [0] })

    router.removeShape(h("alice2"))
    router.removeShape(h("all"))
    expect(router.size()).toBe(0)
    // With its table's entry gone, the router short-cuts to no deliveries at all.
    expect(router.route(txn([insert({ id: "1", owner: "alice" })]))).toEqual([])
    // Removing twice, or a shape never added, is harmless.
    router.removeShape(h("alice"))
    router.removeShape(h("unknown"))

    // Re-adding with another value uses a fresh index: the old value no longer routes to it.
    router.addShape(byOwner("alice", "bob"))
    expect(summary(router.route(txn([insert({ id: "1", owner: "alice" }), insert({ id: "2", owner: "bob" })]))))
      .toEqual({ alice: [1] })
  })

  it("keeps every shape of a value as shapes of that value come and go", () => {
    const router = makeRouter(0n)
    const route = () => summary(router.route(txn([insert({ id: "1", owner: "alice" }), insert({ id: "2", owner: "bob" })])))
    router.addShape(byOwner("a", "alice"))
    router.addShape(byOwner("b", "alice"))
    router.addShape(byOwner("c", "alice"))
    router.addShape(byOwner("z", "bob"))
    expect(route()).toEqual({ a: [0], b: [0], c: [0], z: [1] })
    router.removeShape(h("b"))
    expect(route()).toEqual({ a: [0], c: [0], z: [1] })
    router.removeShape(h("a"))
    expect(route()).toEqual({ c: [0], z: [1] })
    router.addShape(byOwner("d", "alice"))
    expect(route()).toEqual({ c: [0], d: [0], z: [1] })
    router.removeShape(h("c"))
    router.removeShape(h("d"))
    expect(route()).toEqual({ z: [1] })
    router.addShape(byOwner("e", "alice"))
    expect(route()).toEqual({ e: [0], z: [1] })
  })

  it("replaces a shape added again under the same handle", () => {
    const router = makeRouter(0n)
    router.addShape(byOwner("s", "alice"))
    router.addShape(everything("s"))
    expect(router.size()).toBe(1)
    expect(summary(router.route(txn([insert({ id: "1", owner: "zed" })])))).toEqual({ s: [0] })
    router.addShape(byOwner("s", "bob"))
    expect(summary(router.route(txn([insert({ id: "1", owner: "alice" }), insert({ id: "1", owner: "bob" })]))))
      .toEqual({ s: [1] })
  })
})
