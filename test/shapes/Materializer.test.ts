import * as fs from "node:fs/promises"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { LogOffset } from "../../src/domain/LogOffset.js"
import type { Lsn } from "../../src/domain/Lsn.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import {
  type IndexSpec,
  type LoggedTransaction,
  type LogOperation,
  Materializer,
  MaterializerInvariant
} from "../../src/shapes/Materializer.js"
import { readLog } from "../../src/shapes/Subqueries.js"
import { type LogEntry, type LogRead, make, type ShapeLog } from "../../src/storage/ShapeLogStorage.js"
import { valueKey } from "../../src/where/Evaluator.js"
import { tempDir } from "../storage/fixtures.js"

// The materializer of a dependency shape, built from the shape's own log on disk. Chunks of 10 bytes put
// every line in a chunk of its own, so the snapshot and the log each span many chunks: a rebuild that
// stopped after the first chunk (the reference's bug 1) or read a chunk twice (its bug 4) shows here.

type Values = Readonly<Record<string, string | null>>

const RELATION = `"relation":["public","projects"]`

/** A stored line as a dependency shape's consumer writes it; snapshot rows carry no `lsn`. */
const lineOf = (operation: LogOperation["operation"], key: string, value: Values, lsn?: Lsn, op = 0): string => {
  const tx = lsn === undefined ? "" : `,"txids":[${Number(lsn % 1000n)}],"lsn":"${lsn}","op_position":${op}`
  return `{"key":${JSON.stringify(key)},"value":${JSON.stringify(value)},"headers":{"operation":"${operation}",${RELATION}${tx}}}`
}

/** The log entries of one transaction at commit LSN `lsn`, with op positions stepping by 2. */
const entriesOf = (lsn: Lsn, operations: ReadonlyArray<LogOperation>): Array<LogEntry> =>
  operations.map((o, i) => ({ offset: LogOffset.make(lsn, i * 2), json: lineOf(o.operation, o.key, o.value ?? {}, lsn, i * 2) }))

const insert = (key: string, value: Values): LogOperation => ({ operation: "insert", key, value, op: 0 })
const update = (key: string, value: Values): LogOperation => ({ operation: "update", key, value, op: 0 })
const remove = (key: string, value: Values = {}): LogOperation => ({ operation: "delete", key, value, op: 0 })
/** A transaction as read from the log: its operations at op positions stepping by 2 (snapshot rows, at 0, have none). */
const txn = (lsn: Lsn, ...operations: ReadonlyArray<LogOperation>): LoggedTransaction => ({
  lsn,
  operations: operations.map((o, i) => ({ ...o, op: lsn === 0n ? 0 : i * 2 }))
})

const BY_ORG: IndexSpec = { columns: ["org_id"], types: ["int4"], domains: ["int4"] }

/** Opens file storage with 10-byte chunks in a scope of its own, so a test can close it and open the same directory again. */
const openStorage = (directory: string) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const storage = yield* Scope.extend(make({ directory, chunkBytesThreshold: 10 }), scope)
    return { storage, close: Scope.close(scope, Exit.void) }
  })

/** The log with its reads recorded. */
const counting = (log: ShapeLog) => {
  const reads: Array<{ readonly from: string; readonly read: LogRead }> = []
  const counted: ShapeLog = {
    ...log,
    read: (from) => Effect.tap(log.read(from), (read) => Effect.sync(() => reads.push({ from: LogOffset.format(from), read })))
  }
  return { counted, reads }
}

/** Applies transactions to a plain map of rows: what a materializer must hold after them. */
const model = (transactions: ReadonlyArray<LoggedTransaction>): Map<string, Values> => {
  const rows = new Map<string, Values>()
  for (const t of transactions) {
    for (const o of t.operations) {
      if (o.operation === "delete") rows.delete(o.key)
      else rows.set(o.key, { ...rows.get(o.key), ...o.value })
    }
  }
  return rows
}

/** Count per value key and the number of NULLs of `column` over `rows`, computed directly. */
const countsOf = (rows: Map<string, Values>, column: string) => {
  const counts = new Map<string, number>()
  let nulls = 0
  for (const row of rows.values()) {
    const v = row[column]
    if (v === null || v === undefined) nulls++
    else {
      const key = valueKey("int4", "int4", v)
      counts.set(key, (counts.get(key) ?? 0) + 1)
    }
  }
  return { counts, nulls }
}

const sortedEntries = (m: ReadonlyMap<string, number>) => [...m.entries()].sort(([a], [b]) => a.localeCompare(b))

/** A snapshot of 30 rows and 24 transactions of up to 4 changes: inserts, moves between orgs, NULLs, deletes. */
const history = (): { readonly snapshot: ReadonlyArray<LogOperation>; readonly transactions: ReadonlyArray<LoggedTransaction> } => {
  const snapshot = Array.from({ length: 30 }, (_, i) =>
    insert(`p${i}`, { id: String(i), org_id: i % 7 === 0 ? null : String(i % 5), name: `project ${i}` }))
  const transactions: Array<LoggedTransaction> = []
  const live = snapshot.map((o) => o.key)
  let next = 30
  for (let t = 0; t < 24; t++) {
    const ops: Array<LogOperation> = []
    ops.push(insert(`p${next}`, { id: String(next), org_id: String(t % 4), name: `new ${next}` }))
    live.push(`p${next++}`)
    if (t % 2 === 0) {
      const k = live[(t * 7) % live.length]!
      ops.push(update(k, { id: k.slice(1), org_id: t % 3 === 0 ? null : String(10 + t), name: `moved ${t}` }))
    }
    if (t % 3 === 1) {
      const [k] = live.splice((t * 11) % live.length, 1)
      ops.push(remove(k!, { id: k!.slice(1) }))
    }
    if (t % 5 === 2) {
      const k = live[live.length - 1]!
      ops.push(update(k, { id: k.slice(1), org_id: "1", name: "renamed" }))
    }
    transactions.push(txn(BigInt(1000 + t * 10), ...ops))
  }
  return { snapshot, transactions }
}

/** Writes a dependency shape's log: the snapshot, then each transaction, committed every few transactions. */
const writeLog = (log: ShapeLog, snapshot: ReadonlyArray<LogOperation>, transactions: ReadonlyArray<LoggedTransaction>) =>
  Effect.gen(function*() {
    yield* log.appendSnapshot(snapshot.slice(0, 10).map((o) => lineOf(o.operation, o.key, o.value!)))
    yield* log.appendSnapshot(snapshot.slice(10).map((o) => lineOf(o.operation, o.key, o.value!)))
    yield* log.completeSnapshot
    for (let i = 0; i < transactions.length; i++) {
      yield* log.append(entriesOf(transactions[i]!.lsn, transactions[i]!.operations))
      if (i % 3 === 2) yield* log.commit
    }
    yield* log.commit
  })

describe("Materializer: rebuilt from its shape's log", () => {
  it.scoped("reads every snapshot and log chunk exactly once and holds what the log says", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { storage } = yield* openStorage(dir)
      const log = yield* storage.create(ShapeHandle("dep-1"))
      const { snapshot, transactions } = history()
      yield* writeLog(log, snapshot, transactions)
      const files = yield* Effect.promise(() => fs.readdir(path.join(dir, "dep-1")))
      expect(files.filter((f) => f.startsWith("snapshot.")).length).toBe(snapshot.length)

      const { counted, reads } = counting(log)
      const logged = yield* readLog(counted)

      // Every line is a chunk of its own: each read served one line, none was asked for twice.
      const lines = snapshot.length + transactions.reduce((n, t) => n + t.operations.length, 0)
      expect(reads.filter((r) => r.read.count > 0).map((r) => r.read.count)).toEqual(Array(lines).fill(1))
      expect(new Set(reads.map((r) => r.from)).size).toBe(reads.length)
      expect(reads.at(-1)!.read.reachedEnd).toBe(true)
      // Transactions cut across chunks come back whole, in order, each once.
      expect(logged).toEqual([txn(0n, ...snapshot), ...transactions])

      const materializer = new Materializer("dep-1")
      const last = transactions.at(-1)!.lsn
      materializer.load(logged, last)
      expect(materializer.position).toBe(last)
      const rows = model(logged)
      expect(materializer.size).toBe(rows.size)
      const index = materializer.index(BY_ORG)
      const direct = countsOf(rows, "org_id")
      expect(sortedEntries(index.counts)).toEqual(sortedEntries(direct.counts))
      expect(index.nulls).toBe(direct.nulls)
      expect(direct.nulls).toBeGreaterThan(0)
    }))

  it.scoped("reads the same after the storage is closed and opened again", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const first = yield* openStorage(dir)
      const { snapshot, transactions } = history()
      yield* writeLog(yield* first.storage.create(ShapeHandle("dep-2")), snapshot, transactions)
      // Appended and never committed: not part of the log after a restart.
      const written = yield* first.storage.open(ShapeHandle("dep-2"))
      yield* written.append(entriesOf(9999n, [insert("p-lost", { id: "lost", org_id: "1" })]))
      const before = yield* readLog(written)
      yield* first.close

      const second = yield* openStorage(dir)
      const { counted, reads } = counting(yield* second.storage.open(ShapeHandle("dep-2")))
      const after = yield* readLog(counted)
      expect(after).toEqual(before)
      expect(after).toEqual([txn(0n, ...snapshot), ...transactions])
      expect(new Set(reads.map((r) => r.from)).size).toBe(reads.length)
      const materializer = new Materializer("dep-2")
      materializer.load(after, transactions.at(-1)!.lsn)
      expect(materializer.size).toBe(model(after).size)
      yield* second.close
    }))

  it.scoped("reads an empty snapshot as nothing and a snapshot without changes as one transaction at 0", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { storage } = yield* openStorage(dir)
      const empty = yield* storage.create(ShapeHandle("dep-empty"))
      yield* empty.completeSnapshot
      expect(yield* readLog(empty)).toEqual([])

      const only = yield* storage.create(ShapeHandle("dep-only"))
      const rows = [insert("a", { id: "a", org_id: "1" }), insert("b", { id: "b", org_id: null })]
      yield* writeLog(only, rows, [])
      expect(yield* readLog(only)).toEqual([txn(0n, ...rows)])

      const changesOnly = yield* storage.create(ShapeHandle("dep-changes"))
      yield* writeLog(changesOnly, [], [txn(5n, insert("a", { id: "a", org_id: "1" }))])
      expect(yield* readLog(changesOnly)).toEqual([txn(5n, insert("a", { id: "a", org_id: "1" }))])
    }))

  it.scoped("skips control messages between changes", () =>
    Effect.gen(function*() {
      const dir = yield* tempDir
      const { storage } = yield* openStorage(dir)
      const log = yield* storage.create(ShapeHandle("dep-control"))
      yield* log.completeSnapshot
      yield* log.append([
        ...entriesOf(7n, [insert("a", { id: "a", org_id: "1" })]),
        { offset: LogOffset.make(7n, 2), json: `{"headers":{"control":"snapshot-end"}}` }
      ])
      yield* log.append(entriesOf(8n, [update("a", { id: "a", org_id: "2" })]))
      yield* log.commit
      expect(yield* readLog(log)).toEqual([txn(7n, insert("a", { id: "a", org_id: "1" })), txn(8n, update("a", { id: "a", org_id: "2" }))])
    }))
})

describe("Materializer: transactions past the replay point", () => {
  const logged = [
    txn(0n, insert("a", { id: "a", org_id: "1" })),
    txn(100n, insert("b", { id: "b", org_id: "2" })),
    txn(200n, update("a", { id: "a", org_id: "3" })),
    txn(300n, remove("b")),
    txn(400n, insert("c", { id: "c", org_id: "4" }))
  ]
  const key = (v: string) => valueKey("int4", "int4", v)

  it("keeps them aside at load and applies each at its LSN, recording its moves", () => {
    const m = new Materializer("dep")
    m.load(logged, 100n)
    expect(m.position).toBe(100n)
    expect(m.size).toBe(2)
    const index = m.index(BY_ORG)
    expect([...index.counts.keys()].sort()).toEqual([key("1"), key("2")])
    expect(index.movesAt.size).toBe(0)

    // The slot resends 200 and the consumer skips writing it: the log's entry is applied now.
    m.catchUp(200n)
    expect(m.position).toBe(200n)
    expect(index.has(key("3"), 200n)).toBe(true)
    expect(index.has(key("1"), 200n)).toBe(false)
    expect(index.has(key("1"), 100n)).toBe(true)
    expect(index.movesAt.get(200n)).toEqual({ entered: [["3"]], left: [["1"]], touched: [], nullChanged: false, emptyChanged: false })
    expect(index.has(key("2"), 200n)).toBe(true)

    // A new transaction written past them: the ones kept aside before it come first.
    m.apply(txn(500n, insert("d", { id: "d", org_id: null })))
    expect(m.position).toBe(500n)
    expect(m.size).toBe(3)
    expect(index.movesAt.get(300n)).toEqual({ entered: [], left: [["2"]], touched: [], nullChanged: false, emptyChanged: false })
    expect(index.movesAt.get(400n)).toEqual({ entered: [["4"]], left: [], touched: [], nullChanged: false, emptyChanged: false })
    expect(index.movesAt.get(500n)).toEqual({ entered: [], left: [], touched: [], nullChanged: true, emptyChanged: false })
    expect(index.has(key("2"), 250n)).toBe(true)
    expect(index.has(key("2"), 300n)).toBe(false)
    expect(index.hasNull(450n)).toBe(false)
    expect(index.hasNull(500n)).toBe(true)

    // Nothing is applied twice: catching up again is a no-op.
    m.catchUp(500n)
    expect(m.size).toBe(3)
  })

  it("applies everything at load when the replay point is the last commit", () => {
    const m = new Materializer("dep")
    m.load(logged, 400n)
    expect(m.position).toBe(400n)
    expect(m.size).toBe(2)
    m.catchUp(400n)
    expect(m.size).toBe(2)
  })

  it("applies what was kept aside before the transaction that needs it even with no catch-up in between", () => {
    const m = new Materializer("dep")
    m.load(logged, 0n)
    const index = m.index(BY_ORG)
    m.apply(txn(401n, update("c", { id: "c", org_id: "5" })))
    expect(m.position).toBe(401n)
    expect([...index.movesAt.keys()]).toEqual([100n, 200n, 300n, 400n, 401n])
    expect([...index.counts.keys()].sort()).toEqual([key("3"), key("5")])
  })
})

describe("Materializer: strict about its rows", () => {
  const invariant = (f: () => void, message: RegExp) => {
    expect(f).toThrow(MaterializerInvariant)
    expect(f).toThrow(message)
  }

  it("refuses an insert of a row it holds, an update or a delete of one it does not, at load", () => {
    invariant(() => new Materializer("d").load([txn(0n, insert("a", {}), insert("a", {}))], 0n), /insert of row a/)
    invariant(() => new Materializer("d").load([txn(0n, insert("a", {})), txn(5n, insert("a", {}))], 5n), /insert of row a/)
    invariant(() => new Materializer("d").load([txn(0n, update("a", { org_id: "1" }))], 0n), /update of row a/)
    invariant(() => new Materializer("d").load([txn(3n, remove("a"))], 3n), /delete of row a/)
    invariant(() => new Materializer("d").load([txn(0n, insert("a", {})), txn(1n, remove("a")), txn(2n, remove("a"))], 2n), /delete of row a/)
  })

  it("refuses them when applying and when catching up", () => {
    const loaded = () => {
      const m = new Materializer("d")
      m.load([txn(0n, insert("a", { org_id: "1" }))], 0n)
      m.index(BY_ORG)
      return m
    }
    invariant(() => loaded().apply(txn(10n, insert("a", { org_id: "1" }))), /insert of row a/)
    invariant(() => loaded().apply(txn(10n, update("b", { org_id: "1" }))), /update of row b/)
    invariant(() => loaded().apply(txn(10n, remove("b"))), /delete of row b/)
    const withPending = new Materializer("d")
    withPending.load([txn(0n, insert("a", {})), txn(10n, insert("a", {}))], 0n)
    invariant(() => withPending.catchUp(10n), /insert of row a/)
  })
})

describe("Materializer: moves per transaction", () => {
  it("reports values entering and leaving, and changes of NULL and emptiness", () => {
    const m = new Materializer("dep")
    m.load([], 0n)
    const index = m.index(BY_ORG)
    expect(index.isEmpty(0n)).toBe(true)
    const movesOf = (t: LoggedTransaction) => {
      m.apply(t)
      return index.movesAt.get(t.lsn)
    }
    expect(movesOf(txn(10n, insert("p1", { org_id: "1" }))))
      .toEqual({ entered: [["1"]], left: [], touched: [], nullChanged: false, emptyChanged: true })
    // 1 is already in: only 2 enters.
    expect(movesOf(txn(20n, insert("p2", { org_id: "1" }), insert("p3", { org_id: "2" }))))
      .toEqual({ entered: [["2"]], left: [], touched: [], nullChanged: false, emptyChanged: false })
    // One of two rows with 1 moves to 3: 3 enters and 1 stays; the other row goes: 1 leaves.
    expect(movesOf(txn(30n, update("p1", { org_id: "3" })))).toEqual({ entered: [["3"]], left: [], touched: [], nullChanged: false, emptyChanged: false })
    expect(movesOf(txn(40n, remove("p2")))).toEqual({ entered: [], left: [["1"]], touched: [], nullChanged: false, emptyChanged: false })
    // In and out within one transaction: no move.
    expect(movesOf(txn(50n, insert("p4", { org_id: "5" }), remove("p4")))).toBeUndefined()
    expect(movesOf(txn(60n, update("p3", { org_id: "4" }), update("p3", { org_id: "2" })))).toBeUndefined()
    expect(movesOf(txn(65n, update("p1", { org_id: "4" }), insert("p5", { org_id: "3" }), update("p1", { org_id: "3" })))).toBeUndefined()
    // Changes of other columns: no move.
    expect(movesOf(txn(70n, update("p3", { name: "renamed" })))).toBeUndefined()
    expect(index.counts.get(valueKey("int4", "int4", "2"))).toBe(1)
    // A NULL enters, and another; one leaves by becoming a value already present, then the last one goes.
    expect(movesOf(txn(80n, insert("n1", { org_id: null })))).toEqual({ entered: [], left: [], touched: [], nullChanged: true, emptyChanged: false })
    expect(movesOf(txn(85n, insert("n2", { org_id: null })))).toBeUndefined()
    expect(movesOf(txn(90n, update("n1", { org_id: "2" })))).toBeUndefined()
    expect(movesOf(txn(95n, remove("n2")))).toEqual({ entered: [], left: [], touched: [], nullChanged: true, emptyChanged: false })
    // Everything leaves: the set becomes empty.
    expect(movesOf(txn(100n, remove("p1"), remove("p3"), remove("p5"), remove("n1"))))
      .toEqual({ entered: [], left: [["3"], ["2"]], touched: [], nullChanged: false, emptyChanged: true })
    expect(index.isEmpty(100n)).toBe(true)
    expect(index.isEmpty(99n)).toBe(false)
    // Only a NULL: not empty, holds a NULL.
    expect(movesOf(txn(110n, insert("n3", { org_id: null })))).toEqual({ entered: [], left: [], touched: [], nullChanged: true, emptyChanged: true })
  })

  it("keys values as the comparison domain does: equal numerics are one value", () => {
    const m = new Materializer("dep")
    m.load([txn(0n, insert("a", { n: "1.0" }), insert("b", { n: "2" }))], 0n)
    const index = m.index({ columns: ["n"], types: ["numeric"], domains: ["numeric"] })
    const key = (v: string) => valueKey("numeric", "numeric", v)
    expect(key("1.0")).toBe(key("1.00"))
    m.apply(txn(10n, insert("c", { n: "1.00" })))
    expect(index.movesAt.get(10n)).toBeUndefined()
    expect(index.counts.get(key("1"))).toBe(2)
    m.apply(txn(20n, remove("a")))
    expect(index.movesAt.get(20n)).toBeUndefined()
    m.apply(txn(30n, update("c", { n: "2.000" })))
    expect(index.movesAt.get(30n)).toEqual({ entered: [], left: [["1.00"]], touched: [], nullChanged: false, emptyChanged: false })
    expect(index.has(key("1"), 30n)).toBe(false)
    expect(index.has(key("2.0"), 30n)).toBe(true)
  })

  it("keeps one index per way of comparing, each fed every transaction", () => {
    const m = new Materializer("dep")
    m.load([txn(0n, insert("a", { x: "1", y: "a" }))], 0n)
    const single = m.index({ columns: ["x"], types: ["int4"], domains: ["numeric"] })
    const pair = m.index({ columns: ["x", "y"], types: ["int4", "text"], domains: ["int4", "text"] })
    expect(m.index({ columns: ["x"], types: ["int4"], domains: ["numeric"] })).toBe(single)
    m.apply(txn(10n, insert("b", { x: "1", y: "b" })))
    expect(single.movesAt.get(10n)).toBeUndefined()
    expect(pair.movesAt.get(10n)).toEqual({ entered: [["1", "b"]], left: [], touched: [], nullChanged: false, emptyChanged: false })
    expect(pair.counts.size).toBe(2)
    expect(single.counts.size).toBe(1)
  })
})

describe("Materializer: rows a move wrote ahead of a transaction", () => {
  const row = (id: string, org: string | null) => ({ id, org_id: org, name: `project ${id}` })

  it("reports the values of the sides in the shape of each change as moved at that transaction, without changing the set", () => {
    const m = new Materializer("dep")
    m.load([txn(0n, insert("p1", { org_id: "1" }), insert("p2", { org_id: "2" }), insert("p4", { org_id: "4" }))], 0n)
    const index = m.index(BY_ORG)
    const counts = [...index.counts.entries()]
    // Rows the log already shows changed: one coming in, one that stayed in with its compared value, one going.
    m.touch(10n, [[undefined, row("p3", "3")], [row("p1", "1"), row("p1", "1")], [row("p2", "2"), undefined]])
    expect(index.movesAt.get(10n)).toEqual({ entered: [], left: [], touched: [["3"], ["2"]], nullChanged: false, emptyChanged: false })
    expect([...index.counts.entries()]).toEqual(counts)
    expect(index.has(valueKey("int4", "int4", "3"), 10n)).toBe(false)
  })

  it("adds to the moves the transaction's own rows made", () => {
    const m = new Materializer("dep")
    m.load([txn(0n, insert("p1", { org_id: "1" }))], 0n)
    const index = m.index(BY_ORG)
    m.apply(txn(10n, insert("p2", { org_id: "2" })))
    m.touch(10n, [[row("p3", "3"), row("p3", "4")]])
    expect(index.movesAt.get(10n)).toEqual({ entered: [["2"]], left: [], touched: [["3"], ["4"]], nullChanged: false, emptyChanged: false })
  })

  it("counts a NULL among them as a change of the set's NULL, and a set holding nothing else as maybe emptied", () => {
    const m = new Materializer("dep")
    m.load([txn(0n, insert("p1", { org_id: "1" }))], 0n)
    const index = m.index(BY_ORG)
    m.touch(10n, [[row("p2", null), undefined]])
    expect(index.movesAt.get(10n)).toEqual({ entered: [], left: [], touched: [], nullChanged: true, emptyChanged: false })
    // Only 1 is in the set: with 1 touched, Postgres may have emptied it or filled it at this transaction.
    m.touch(20n, [[undefined, row("p1", "1")]])
    expect(index.movesAt.get(20n)).toEqual({ entered: [], left: [], touched: [["1"]], nullChanged: false, emptyChanged: true })
    m.apply(txn(30n, remove("p1")))
    m.touch(40n, [[undefined, row("p9", "9")]])
    expect(index.movesAt.get(40n)?.emptyChanged).toBe(true)
  })

  it("reports nothing for no rows, rows out of the shape on both sides, or a row that stayed in unchanged", () => {
    const m = new Materializer("dep")
    m.load([txn(0n, insert("p1", { org_id: "1" }))], 0n)
    const index = m.index(BY_ORG)
    m.touch(10n, [])
    m.touch(10n, [[undefined, undefined], [row("p1", "1"), row("p1", "1")], [row("p2", null), row("p2", null)]])
    expect(index.movesAt.has(10n)).toBe(false)
  })
})

describe("Materializer: history for dependents evaluating earlier commits", () => {
  const key = valueKey("int4", "int4", "1")

  /** 100: 1 enters; 200: it leaves; 300: it enters again. */
  const withHistory = (dependents: ReadonlyArray<readonly [string, Lsn]> = []) => {
    const m = new Materializer("dep")
    m.load([txn(0n, insert("other", { org_id: "9" }))], 0n)
    for (const [handle, lsn] of dependents) m.dependentAt(handle, lsn)
    const index = m.index(BY_ORG)
    m.apply(txn(100n, insert("a", { org_id: "1" })))
    m.apply(txn(200n, remove("a")))
    m.apply(txn(300n, insert("b", { org_id: "1" })))
    return { m, index }
  }
  /** Transactions that move nothing `key` depends on, `n` of them after `from`. */
  const filler = (m: Materializer, from: Lsn, n: number) => {
    for (let i = 1; i <= n; i++) m.apply(txn(from + BigInt(i), update("other", { org_id: String(10 + (i % 2)) })))
  }

  it("answers as of each commit", () => {
    const { index } = withHistory()
    expect([50n, 100n, 150n, 200n, 250n, 300n, 400n].map((at) => index.has(key, at))).toEqual([
      false, true, true, false, false, true, true
    ])
    expect([50n, 100n].map((at) => index.isEmpty(at))).toEqual([false, false])
  })

  it("keeps history a dependent may still ask about and forgets what every dependent is past", () => {
    const { m, index } = withHistory([["reader", 150n]])
    filler(m, 300n, 100)
    // Pruned up to 150: the answers from 150 on are unchanged, the moves after 150 are kept.
    expect([150n, 200n, 250n, 300n].map((at) => index.has(key, at))).toEqual([true, false, false, true])
    expect(index.movesAt.has(100n)).toBe(false)
    expect(index.movesAt.has(200n)).toBe(true)
    expect(index.movesAt.has(300n)).toBe(true)

    // The reader moves on: a later pruning forgets everything up to it.
    m.dependentAt("reader", 250n)
    filler(m, 400n, 100)
    expect(index.movesAt.has(200n)).toBe(false)
    expect(index.movesAt.has(300n)).toBe(true)
    expect([250n, 300n].map((at) => index.has(key, at))).toEqual([false, true])

    // The slowest dependent holds the floor; once it is gone, everything applied before the pruning is forgotten.
    m.dependentAt("slow", 260n)
    m.dependentAt("reader", 10_000n)
    filler(m, 500n, 100)
    expect(index.movesAt.has(300n)).toBe(true)
    m.dependentGone("slow")
    filler(m, 700n, 100)
    expect([...index.movesAt.keys()].every((lsn) => lsn > 700n)).toBe(true)
    // With its history gone, every question about key gets the current answer.
    expect(index.has(key, 250n)).toBe(true)
  })

  it("forgets history no dependent holds", () => {
    const { m, index } = withHistory()
    expect(index.has(key, 250n)).toBe(false)
    filler(m, 300n, 100)
    expect([...index.movesAt.keys()].every((lsn) => lsn > 300n)).toBe(true)
    expect(index.has(key, 250n)).toBe(true)
  })
})
