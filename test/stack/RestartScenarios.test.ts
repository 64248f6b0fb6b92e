import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Either, Exit, Fiber, Layer, Logger, LogLevel, Option, Scope, TestClock } from "effect"
import { ShapeLogCollector } from "../../src/replication/ShapeLogCollector.js"
import { ShapeCache } from "../../src/shapes/ShapeCache.js"
import { ShapeStatus } from "../../src/shapes/ShapeStatus.js"
import { ShapeDb } from "../../src/storage/ShapeDb.js"
import type { TableAbsent } from "../../src/domain/errors.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import { makeGate } from "../../src/testing/Intercept.js"
import { FakePostgres, textTable } from "../../src/testing/FakePostgres.js"
import {
  eventually,
  type Harness,
  hasFiles,
  insertedKeys,
  readToEnd,
  registryRows,
  startServer,
  tempDirs,
  untilInterrupted
} from "../../src/testing/TestHarness.js"

/**
 * The restart invariants of DESIGN.md on a stack over the in-memory Postgres
 * (real SQLite and shape storage), with the TestClock: each scenario arranges
 * a stack, restarts it at the hazardous moment, and checks what a client sees.
 */

const ITEMS = textTable(16401, "items", ["id", "title"])
const OTHER = textTable(16402, "other", ["id", "v"])
const QUERY = "table=items"
const LONG_POLL_MS = 20_000

const makeDb = () => new FakePostgres([ITEMS, OTHER])
const insert = (id: string, table = "items") => ({ kind: "insert", table, row: { id, [table === "items" ? "title" : "v"]: `row ${id}` } }) as const

/** Fibers sleeping on the TestClock: a held long-poll adds one. */
const sleepers = Effect.map(TestClock.sleeps(), (s) => s.length)

/** A request's answer; if the handler parks on the clock (a long-poll, an out-of-bounds wait), the clock moves past it. */
const answer = (h: Harness, pathAndQuery: string) =>
  Effect.gen(function*() {
    const base = yield* sleepers
    const request = yield* Effect.fork(h.get(pathAndQuery))
    yield* eventually(
      Effect.zipWith(Fiber.poll(request), sleepers, (done, n) => Option.isSome(done) || n > base)
    )
    if (Option.isNone(yield* Fiber.poll(request))) yield* TestClock.adjust(LONG_POLL_MS)
    return yield* Fiber.join(request)
  })

describe("restart scenarios", () => {
  it.scoped("a shape is created, fed and read back", () =>
    Effect.gen(function*() {
      const db = makeDb()
      yield* db.commit([insert("1")])
      const h = yield* startServer(db, yield* tempDirs)
      const first = yield* readToEnd(h, QUERY)
      expect(insertedKeys(first.messages)).toEqual([`"public"."items"/"1"`])
      const t = yield* db.commit([insert("2")])
      yield* db.awaitConfirmed(t.endLsn)
      const next = yield* readToEnd(h, QUERY, first)
      expect(insertedKeys(next.messages)).toEqual([`"public"."items"/"2"`])
      expect(next.handle).toBe(first.handle)
    }))

  it.scoped("a: a consumer whose ack is interrupted mid-call during teardown stops cleanly; its shape survives", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      const h = yield* startServer(db, dirs)
      const before = yield* readToEnd(h, QUERY)
      const inAck = yield* Deferred.make<void>()
      // The consumer's notification target (flush tracker -> replication ack) dies under it once teardown reaches it.
      db.intercept.ack.next(() =>
        Deferred.succeed(inAck, undefined).pipe(Effect.zipRight(untilInterrupted), Effect.zipRight(Effect.interrupt))
      )
      const t = yield* db.commit([insert("1")])
      yield* Deferred.await(inAck)
      yield* h.supervisor.restart
      yield* h.active

      const after = yield* readToEnd(h, QUERY, before)
      expect(after.handle).toBe(before.handle)
      expect(insertedKeys(after.messages)).toEqual([`"public"."items"/"1"`])
      expect((yield* registryRows(dirs)).shapes).toEqual([{ handle: before.handle, removing: 0 }])
      // The write was durable before the ack was cut: the teardown's final ack still reports it.
      expect(db.confirmedFlush).toBe(t.endLsn)
    }))

  it.scoped("b: a registry lookup after its scope closed is a typed TableAbsent", () =>
    Effect.gen(function*() {
      const dirs = yield* tempDirs
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(ShapeStatus.layer.pipe(Layer.provide(ShapeDb.layer(dirs.storageDir))), scope)
      const status = Context.get(context, ShapeStatus)
      expect(Option.isNone(yield* status.get("1-1"))).toBe(true)
      yield* Scope.close(scope, Exit.void)
      for (const lookup of [status.get("1-1"), status.byIdentity("x"), Effect.asVoid(status.all)]) {
        const result = yield* Effect.either(lookup as Effect.Effect<unknown, TableAbsent>)
        expect(Either.isLeft(result) && result.left._tag).toBe("TableAbsent")
      }
    }))

  it.scoped("b: a request whose stack closed under it gets 503 with retry-after, not 500 or 409", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs)
      const before = yield* readToEnd(h, QUERY)
      // Hold the request after it took the stack, before it asks the registry.
      const gate = yield* makeGate
      db.intercept.load.next(() => gate.hold)
      const request = yield* Effect.fork(h.get(`/v1/shape?${QUERY}&offset=${before.offset}&handle=${before.handle}`))
      yield* Deferred.await(gate.reached)
      yield* h.supervisor.restart
      yield* h.active
      yield* Deferred.succeed(gate.release, undefined)
      const res = yield* Fiber.join(request)
      expect(res.status).toBe(503)
      expect(res.headers["retry-after"]).toBeDefined()
    }))

  it.scoped("c: a long-poll held across a restart ends with 200 up-to-date at its offset (or 503)", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs, { longPollTimeoutMs: LONG_POLL_MS })
      const before = yield* readToEnd(h, QUERY)
      const base = yield* sleepers
      const request = yield* Effect.fork(
        h.get(`/v1/shape?${QUERY}&offset=${before.offset}&handle=${before.handle}&live=true`)
      )
      yield* eventually(Effect.map(sleepers, (n) => n > base))
      yield* h.supervisor.restart
      yield* h.active
      const res = yield* Fiber.join(request)
      expect([200, 503]).toContain(res.status)
      if (res.status === 200) {
        expect(res.headers["electric-offset"]).toBe(before.offset)
        expect(JSON.parse(res.text)).toMatchObject([{ headers: { control: "up-to-date" } }])
      } else {
        expect(res.headers["retry-after"]).toBeDefined()
      }
    }))

  it.scoped("d: a removal stopped between its storage delete and its row delete is finished at the next boot", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      yield* db.commit([insert("1")])
      const h = yield* startServer(db, dirs)
      const before = yield* readToEnd(h, QUERY)
      const handle = ShapeHandle(before.handle)
      // The removal runs uninterruptibly, so only the process dying stops it: hold its last step
      // (the row delete) and restart the stack under it, as a crash at that point would leave things.
      const gate = yield* makeGate
      // The held removal cannot be interrupted: let it go on whatever way the test ends.
      yield* Effect.addFinalizer(() => Deferred.succeed(gate.release, undefined))
      db.intercept.sql.next(() => gate.hold, (text) => text.startsWith("DELETE FROM shapes WHERE handle"))
      const cache = Context.get(yield* h.active, ShapeCache)
      const removal = yield* Effect.fork(cache.remove(handle, "deleted by the test"))
      yield* Deferred.await(gate.reached)
      expect(hasFiles(dirs, handle)).toBe(false)
      expect((yield* registryRows(dirs)).shapes).toEqual([{ handle, removing: 1 }])

      yield* h.supervisor.restart
      yield* h.active
      expect((yield* registryRows(dirs)).shapes).toEqual([])
      expect(hasFiles(dirs, handle)).toBe(false)
      const stale = yield* h.get(`/v1/shape?${QUERY}&offset=${before.offset}&handle=${handle}`)
      expect(stale.status).toBe(409)
      const fresh = yield* readToEnd(h, QUERY)
      expect(fresh.handle).not.toBe(handle)
      expect(stale.headers["electric-handle"]).toBe(fresh.handle)
      expect(insertedKeys(fresh.messages)).toEqual([`"public"."items"/"1"`])

      // The old removal's last step now runs against the closed stack; whatever it does, the new shape stays.
      yield* Deferred.succeed(gate.release, undefined)
      yield* Fiber.await(removal)
      expect((yield* registryRows(dirs)).shapes).toEqual([{ handle: fresh.handle, removing: 0 }])
    }))

  it.scoped("e: an offset issued before a restart is never out of bounds while replication catches up", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs, { longPollTimeoutMs: LONG_POLL_MS })
      const first = yield* readToEnd(h, QUERY)
      const t1 = yield* db.commit([insert("1")])
      yield* db.awaitConfirmed(t1.endLsn)
      const issued = yield* readToEnd(h, QUERY, first)
      expect(issued.offset.startsWith(`${t1.commitLsn}_`)).toBe(true)

      // The new stream delivers nothing: T2 is committed but the server has not seen it.
      yield* db.pause(true)
      const t2 = yield* db.commit([insert("2")])
      yield* h.supervisor.restart
      yield* h.active

      const shape = `/v1/shape?${QUERY}&offset=${issued.offset}&handle=${issued.handle}`
      const catchUp = yield* answer(h, shape)
      expect(catchUp.status).toBe(200)
      expect(catchUp.headers["electric-offset"]).toBe(issued.offset)

      const held = yield* answer(h, `${shape}&live=true`)
      expect(held.status).toBe(200)
      expect(held.headers["electric-offset"]).toBe(issued.offset)

      yield* db.pause(false)
      yield* db.awaitConfirmed(t2.endLsn)
      const caughtUp = yield* readToEnd(h, QUERY, issued)
      expect(insertedKeys(caughtUp.messages)).toEqual([`"public"."items"/"2"`])
    }))

  it.scoped("f: of two adjacent commits, the one not processed before the stop arrives after the restart, once", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      const h = yield* startServer(db, dirs)
      const first = yield* readToEnd(h, QUERY)
      const t1 = yield* db.commit([insert("1")])
      yield* db.awaitConfirmed(t1.endLsn)
      expect(db.confirmedFlush).toBe(t1.endLsn)

      yield* db.pause(true)
      const t2 = yield* db.commit([insert("2")], { adjacent: true })
      expect(t2.commitLsn).toBe(t1.endLsn)
      yield* h.supervisor.restart
      yield* h.active
      // The stack persisted T1's commit LSN, which T2's commit LSN is above (T1's end LSN is not).
      expect((yield* registryRows(dirs)).lastProcessed).toEqual(Option.some(t1.commitLsn))
      yield* db.pause(false)
      yield* db.awaitConfirmed(t2.endLsn)

      const log = yield* readToEnd(h, QUERY, first)
      expect(insertedKeys(log.messages)).toEqual([`"public"."items"/"1"`, `"public"."items"/"2"`])
      expect(log.handle).toBe(first.handle)
    }))

  it.scoped("f: a replayed transaction whose ack was lost is dropped; its adjacent successor is kept", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const h = yield* startServer(db, yield* tempDirs)
      const first = yield* readToEnd(h, QUERY)
      // Postgres never hears of these acks: on reconnection the slot sends T1 again.
      db.dropAcks = true
      const t1 = yield* db.commit([insert("1")])
      yield* db.awaitAck(t1.endLsn)
      yield* db.pause(true)
      const t2 = yield* db.commit([insert("2")], { adjacent: true })
      yield* h.supervisor.restart
      yield* h.active
      db.dropAcks = false
      yield* db.pause(false)
      yield* db.awaitConfirmed(t2.endLsn)

      const log = yield* readToEnd(h, QUERY, first)
      expect(insertedKeys(log.messages)).toEqual([`"public"."items"/"1"`, `"public"."items"/"2"`])
    }))

  it.scoped("g: teardown runs pump -> consumers -> final ack -> replication -> SQLite -> lock", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      const h = yield* startServer(db, dirs)
      yield* readToEnd(h, QUERY)
      // The consumer is inside its ack when the stack stops; it finishes once teardown reaches the consumers.
      const inAck = yield* Deferred.make<void>()
      db.intercept.ack.next(() => Effect.zipRight(Deferred.succeed(inAck, undefined), untilInterrupted))
      const t1 = yield* db.commit([insert("1")])
      yield* Deferred.await(inAck)
      // A transaction no shape receives: only the flush tracker's final ack reports it.
      const t2 = yield* db.commit([insert("9", "other")])
      const collector = Context.get(yield* h.active, ShapeLogCollector)
      yield* eventually(Effect.sync(() => collector.lastRoutedLsn() >= t2.commitLsn))

      const mark = db.events.length
      yield* h.supervisor.restart
      yield* h.active
      expect(db.events.slice(mark)).toEqual([
        "replication: stream closed",
        `replication: ack ${t1.endLsn}`,
        `replication: ack ${t2.endLsn}`,
        "replication: closed",
        "sqlite: closed",
        "lock: released",
        "lock: acquired",
        "replication: connected"
      ])
      expect(db.confirmedFlush).toBe(t2.endLsn)
      expect((yield* registryRows(dirs)).lastProcessed).toEqual(Option.some(t2.commitLsn))
    }))

  it.scoped("g: every stack service is released after those that depend on it, in DESIGN.md's order", () =>
    Effect.gen(function*() {
      const stopped: Array<string> = []
      const recorder = Logger.make(({ message }) => {
        const text = Array.isArray(message) ? message.join(" ") : String(message)
        if (text.endsWith(" stopped")) stopped.push(text.slice(0, -" stopped".length))
      })
      yield* Effect.gen(function*() {
        const db = makeDb()
        const dirs = yield* tempDirs
        const h = yield* startServer(db, dirs)
        yield* readToEnd(h, QUERY)
        const t1 = yield* db.commit([insert("1")])
        yield* db.awaitConfirmed(t1.endLsn)
        yield* h.supervisor.restart
        yield* h.active
      }).pipe(Effect.provide(Layer.merge(Logger.add(recorder), Logger.minimumLogLevel(LogLevel.Debug))))
      // Each service is released after everything that depends on it (DESIGN.md, "The layer graph is the
      // shutdown order"); services on unrelated branches may stop in either order.
      const chain = [
        "ReplicationPump",
        "ShapeCache",
        "ConsumerSupervisor",
        "ShapeLogCollector",
        "FlushTracker",
        "ReplicationConnection",
        "ShapeStatus",
        "ShapeDb",
        "slot lock"
      ]
      const firstStop = stopped.slice(0, stopped.indexOf("slot lock") + 1)
      expect(firstStop.filter((name) => chain.includes(name))).toEqual(chain)
      expect(firstStop.indexOf("ShapeLogStorage")).toBeGreaterThan(firstStop.indexOf("ConsumerSupervisor"))
      expect(firstStop.indexOf("ShapeLogStorage")).toBeLessThan(firstStop.indexOf("slot lock"))
    }))

  it.scoped("read-only: while another process holds the lock, existing shapes are served; then it takes over", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      const firstScope = yield* Scope.make()
      const first = yield* startServer(db, dirs).pipe(Scope.extend(firstScope))
      const created = yield* readToEnd(first, QUERY)
      const t1 = yield* db.commit([insert("1")])
      yield* db.awaitConfirmed(t1.endLsn)
      const issued = yield* readToEnd(first, QUERY, created)
      yield* Scope.close(firstScope, Exit.void)

      yield* db.lock("other process")
      const h = yield* startServer(db, dirs)
      yield* h.supervisor.current("1 hour")
      expect((yield* h.supervisor.status.get)._tag).toBe("ReadOnly")
      const health = yield* h.get("/v1/health")
      expect(health.status).toBe(202)
      expect(JSON.parse(health.text)).toEqual({ status: "waiting" })
      const fromFiles = yield* readToEnd(h, QUERY)
      expect(fromFiles.handle).toBe(created.handle)
      expect(fromFiles.offset).toBe(issued.offset)
      expect(insertedKeys(fromFiles.messages)).toEqual([`"public"."items"/"1"`])

      yield* db.unlock("other process")
      yield* h.active
      const active = yield* h.get("/v1/health")
      expect(active.status).toBe(200)
      expect(JSON.parse(active.text)).toEqual({ status: "active" })
      const resumed = yield* readToEnd(h, QUERY, issued)
      expect(resumed.handle).toBe(created.handle)
    }))
})
