import { SqlError } from "@effect/sql/SqlError"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Exit, Fiber, Logger, Option, Scope, TestClock } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { StorageError } from "../../src/domain/errors.js"
import { defaultRestartPolicy, restartDelay } from "../../src/stack/StackSupervisor.js"
import { FakePostgres, textTable } from "../../src/testing/FakePostgres.js"
import { makeGate } from "../../src/testing/Intercept.js"
import {
  advanceUntil,
  eventually,
  type Harness,
  insertedKeys,
  readToEnd,
  registryRows,
  startServer,
  storedMark,
  tempDirs,
  untilInterrupted
} from "../../src/testing/TestHarness.js"
import { ShapeLogCollector } from "../../src/replication/ShapeLogCollector.js"

/**
 * Faults that are about ordering or time, on the in-memory Postgres (real SQLite and shape storage)
 * with the TestClock: the snapshot filter, a defect in the pump, the restart backoff and its reset, a
 * removal that fails, keepalive acknowledgements.
 */

const ITEMS = textTable(16401, "items", ["id", "title"])
const OTHER = textTable(16402, "other", ["id", "v"])
const QUERY = "table=items"

const makeDb = () => new FakePostgres([ITEMS, OTHER])
const insert = (id: string) => ({ kind: "insert", table: "items", row: { id, title: `row ${id}` } }) as const
const key = (id: string) => `"public"."items"/"${id}"`

const isActive = (h: Harness) => Effect.map(h.supervisor.status.get, (s) => s._tag === "Active")

describe("the snapshot filter", () => {
  it.scoped("tests visibility until the first xid at or above xmax: a visible transaction after an invisible one is skipped", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs)
      yield* db.pause(true)
      // T_a's commit record is in the WAL before T_b's, but T_a is still in progress for snapshots (a
      // synchronous-replication wait); T_b is visible.
      const xa = db.begin()
      yield* db.commit([insert("a")], { xid: xa, hidden: true })
      const tb = yield* db.commit([insert("b")])
      const created = yield* readToEnd(h, QUERY)
      expect(insertedKeys(created.messages)).toEqual([key("b")])
      yield* db.reveal(xa)
      yield* db.pause(false)
      yield* db.awaitConfirmed(tb.endLsn)
      const tc = yield* db.commit([insert("c")])
      yield* db.awaitConfirmed(tc.endLsn)

      const all = yield* readToEnd(h, QUERY)
      expect(insertedKeys(all.messages)).toEqual([key("b"), key("a"), key("c")])
    }))

  it.scoped("keeps testing across a restart until it met an xid at or above xmax", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs)
      yield* db.pause(true)
      const xa = db.begin()
      const ta = yield* db.commit([insert("a")], { xid: xa, hidden: true })
      const tb = yield* db.commit([insert("b")])
      const created = yield* readToEnd(h, QUERY)
      expect(insertedKeys(created.messages)).toEqual([key("b")])
      yield* db.reveal(xa)
      // T_a reaches the log and is acknowledged; T_b arrives only after a restart.
      yield* db.pause(true, { after: ta.commitLsn })
      yield* db.awaitConfirmed(ta.endLsn)
      yield* h.supervisor.restart
      yield* h.active
      yield* db.pause(false)
      yield* db.awaitConfirmed(tb.endLsn)
      const tc = yield* db.commit([insert("c")])
      yield* db.awaitConfirmed(tc.endLsn)

      const all = yield* readToEnd(h, QUERY)
      expect(all.handle).toBe(created.handle)
      expect(insertedKeys(all.messages)).toEqual([key("b"), key("a"), key("c")])

      // Past the snapshot now, and recorded: a transaction far from xmax is not taken for a visible one.
      yield* h.supervisor.restart
      yield* h.active
      const td = yield* db.commit([insert("d")])
      yield* db.awaitConfirmed(td.endLsn)
      const resumed = yield* readToEnd(h, QUERY, all)
      expect(insertedKeys(resumed.messages)).toEqual([key("d")])
    }))
})

describe("the snapshot filter across a restart that sends again what it holds", () => {
  it.scoped("a transaction the snapshot holds is skipped again, also once a later one passed it without writing anything", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      const h = yield* startServer(db, dirs)
      const other = yield* readToEnd(h, "table=other")
      // Another shape's write is held and lost with the stack, as a crash loses it: the slot sends everything
      // after it again.
      const reached = yield* Deferred.make<void>()
      const lost = new StorageError({ reason: "Closed", handle: other.handle, message: "the stack stopped before the batch was durable" })
      db.intercept.commit.next(
        () => Effect.zipRight(Deferred.succeed(reached, undefined), Effect.zipRight(untilInterrupted, Effect.fail(lost))),
        (handle) => handle === other.handle
      )
      yield* db.commit([{ kind: "insert", table: "other", row: { id: "o1", v: "1" } }])
      yield* Deferred.await(reached)

      // The new shape's snapshot holds T1, which reaches its consumer after it: skipped, nothing written.
      yield* db.pause(true)
      yield* db.commit([insert("a")])
      const ids = "table=items&columns=id"
      const created = yield* readToEnd(h, ids)
      yield* db.pause(false)
      // T2 is past the snapshot and changes no column the shape has: still nothing written, and the consumer records
      // that it is past its snapshot.
      yield* db.commit([{ kind: "update", table: "items", row: { id: "a", title: "renamed" } }])
      yield* eventually(Effect.map(storedMark(dirs, created.handle), (mark) => Option.isSome(mark) && mark.value["pastSnapshotAt"] !== undefined))

      yield* h.supervisor.restart
      yield* h.active
      const t3 = yield* db.commit([insert("b")])
      yield* db.awaitConfirmed(t3.endLsn)
      const all = yield* readToEnd(h, ids)
      expect(all.handle).toBe(created.handle)
      expect(insertedKeys(all.messages)).toEqual([key("a"), key("b")])
    }))
})

describe("the replication pump", () => {
  it.scoped("a defect in the pump restarts the stack instead of leaving it active and frozen", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs)
      const first = yield* readToEnd(h, QUERY)
      yield* db.poison()
      const t = yield* db.commit([insert("1")])
      yield* advanceUntil(Effect.sync(() => db.confirmedFlush >= t.endLsn))
      const after = yield* readToEnd(h, QUERY, first)
      expect(after.handle).toBe(first.handle)
      expect(insertedKeys(after.messages)).toEqual([key("1")])
    }))

  it.scoped("acknowledges a keepalive's position when nothing before it is pending", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs)
      yield* readToEnd(h, QUERY)
      const position = yield* db.keepalive()
      yield* db.awaitConfirmed(position)
      expect(db.confirmedFlush).toBe(position)
    }))
})

describe("the in-flight window", () => {
  it.scoped("one long snapshot holding a transaction does not stall the shapes of other tables", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs, {}, "syncline", { maxInFlight: 10 })
      const other = yield* readToEnd(h, "table=other")
      // The snapshot of a new shape on items is held; a change to items waits in its consumer meanwhile.
      const gate = yield* makeGate
      db.intercept.snapshot.next(() => gate.hold, (table) => table.name === "items")
      const creating = yield* Effect.fork(h.get(`/v1/shape?${QUERY}&offset=-1`))
      yield* Deferred.await(gate.reached)
      yield* db.commit([insert("held")])
      let last = 0n
      for (let i = 0; i < 30; i++) {
        const t = yield* db.commit([{ kind: "insert", table: "other", row: { id: String(i), v: "x" } }])
        last = t.commitLsn
      }
      // Thirty transactions past the window reach the other shape while the snapshot is still held.
      const collector = Context.get(yield* h.active, ShapeLogCollector)
      yield* eventually(Effect.sync(() => collector.lastRoutedLsn() >= last))
      yield* eventually(Effect.map(readToEnd(h, "table=other", other), (after) => insertedKeys(after.messages).length === 30))

      yield* Deferred.succeed(gate.release, undefined)
      expect((yield* Fiber.join(creating)).status).toBe(200)
      yield* db.awaitConfirmed(last)
    }))
})

describe("the restart backoff", () => {
  it("doubles from 0.5 s up to 10 s", () => {
    const delays = Array.from({ length: 8 }, (_, i) => Duration.toMillis(restartDelay(defaultRestartPolicy, i + 1)))
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000])
  })

  it.scoped("grows while starts fail, and starts over after a healthy run", () =>
    Effect.gen(function*() {
      const announced: Array<string> = []
      const recorder = Logger.make(({ message }) => {
        const text = Array.isArray(message) ? message.join(" ") : String(message)
        const m = /starting it again in (.+)$/.exec(text)
        if (m !== null) announced.push(m[1]!)
      })
      yield* Effect.gen(function*() {
        const db = makeDb()
        db.refuseConnections = 5
        const h = yield* startServer(db, yield* tempDirs)
        yield* advanceUntil(isActive(h))
        expect(announced).toEqual(["500ms", "1s", "2s", "4s", "8s"])
        expect(db.connectionAttempts).toHaveLength(6)
        const times = db.connectionAttempts
        expect(times.slice(1).map((t, i) => t - times[i]!)).toEqual([500, 1000, 2000, 4000, 8000])

        // Healthy for longer than 3 s: a dropped stream is retried after 0.5 s again.
        yield* TestClock.adjust("4 seconds")
        yield* db.breakStreams()
        yield* advanceUntil(Effect.zipWith(isActive(h), Effect.sync(() => db.connectionAttempts.length), (a, n) => a && n === 7))
        // Dropped again at once: not healthy in between, so the wait grows.
        yield* db.breakStreams()
        yield* advanceUntil(Effect.zipWith(isActive(h), Effect.sync(() => db.connectionAttempts.length), (a, n) => a && n === 8))
        expect(announced.slice(5)).toEqual(["500ms", "1s"])
      }).pipe(Effect.provide(Logger.add(recorder)))
    }))
})

describe("removals", () => {
  it.scoped("a failed removal of an invalidated shape is retried, so the acknowledgement moves without a restart", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs)
      const first = yield* readToEnd(h, QUERY)
      db.intercept.sql.next(
        () => Effect.fail(new SqlError({ message: "disk I/O error" })),
        (text) => text.startsWith("UPDATE shapes SET removing = 1")
      )
      const t = yield* db.commit([{ kind: "truncate", table: "items" }])
      yield* advanceUntil(Effect.sync(() => db.confirmedFlush >= t.endLsn))
      expect(db.events.filter((e) => e === "replication: connected")).toHaveLength(1)
      const stale = yield* h.get(`/v1/shape?${QUERY}&offset=${first.offset}&handle=${first.handle}`)
      expect(stale.status).toBe(409)
      expect(stale.headers["electric-handle"]).not.toBe(first.handle)
    }))
})

describe("the source's identity", () => {
  it.scoped("a database with another system identifier, or on another timeline, invalidates every shape", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      yield* db.commit([insert("1")])
      const run = (change: () => void) =>
        Effect.gen(function*() {
          const scope = yield* Scope.make()
          const before = yield* startServer(db, dirs).pipe(Scope.extend(scope))
          const created = yield* readToEnd(before, QUERY)
          yield* Scope.close(scope, Exit.void)
          change()
          const h = yield* startServer(db, dirs)
          yield* h.active
          const stale = yield* h.get(`/v1/shape?${QUERY}&offset=${created.offset}&handle=${created.handle}`)
          expect(stale.status).toBe(409)
          const fresh = yield* readToEnd(h, QUERY)
          expect(fresh.handle).not.toBe(created.handle)
          expect(stale.headers["electric-handle"]).toBe(fresh.handle)
          expect(insertedKeys(fresh.messages)).toEqual([key("1")])
        }).pipe(Effect.scoped)
      // A database restored from another cluster's files, or another cluster on the same address.
      yield* run(() => void (db.systemId = "7000000000000000002"))
      // A point-in-time restore, or a promoted standby.
      yield* run(() => void (db.timeline = 2))
    }))
})

describe("a rolling start", () => {
  it.scoped("neither creates nor migrates the registry before it holds the slot's lock", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      const registry = path.join(dirs.storageDir, "meta", "shapes.sqlite")
      yield* db.lock("other process")
      const h = yield* startServer(db, dirs)
      yield* h.supervisor.current("1 hour")
      expect((yield* h.supervisor.status.get)._tag).toBe("ReadOnly")
      const health = yield* h.get("/v1/health")
      expect(JSON.parse(health.text)).toEqual({ status: "waiting" })
      expect(fs.existsSync(registry)).toBe(false)

      yield* db.unlock("other process")
      yield* h.active
      expect(fs.existsSync(registry)).toBe(true)
      expect((yield* registryRows(dirs)).shapes).toEqual([])
    }))
})
