import { SqlClient } from "@effect/sql"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Option, Scope, Stream, TestClock } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { Lsn } from "../../src/domain/Lsn.js"
import { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import { ReplicationConnection } from "../../src/postgres/ReplicationConnection.js"
import { FlushTracker } from "../../src/replication/FlushTracker.js"
import { ShapeDb } from "../../src/storage/ShapeDb.js"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "syncline-flush-tracker-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
let dirs = 0
const freshDir = () => path.join(root, String(++dirs))

const A = ShapeHandle("1-1")
const B = ShapeHandle("2-2")

/** A replication connection that only records what it was acknowledged with. */
const fakeConnection = () => {
  const acks: Array<Lsn> = []
  const layer = Layer.succeed(ReplicationConnection, {
    transactions: Stream.empty,
    ack: (lsn) => Effect.sync(() => void acks.push(lsn)),
    acknowledged: Effect.sync(() => acks.at(-1) ?? 0n)
  })
  return { acks, layer }
}

/** Builds the tracker on SQLite in `dir`, in the current scope; returns it with the acks it sent and the raw client. */
const startTracker = (dir: string) =>
  Effect.gen(function*() {
    const fake = fakeConnection()
    const db = yield* Layer.build(ShapeDb.layer(dir))
    const ctx = yield* Layer.build(FlushTracker.layer).pipe(Effect.provide(Context.merge(db, yield* Layer.build(fake.layer))))
    return { tracker: Context.get(ctx, FlushTracker), acks: fake.acks, sql: Context.get(db, SqlClient.SqlClient) }
  })

const persistedLsn = (sql: SqlClient.SqlClient) =>
  Effect.map(
    sql<{ value: string }>`SELECT value FROM replication_state WHERE key = 'last_processed_lsn'`,
    (rows) => rows[0]?.value
  )

describe("FlushTracker", () => {
  it.scoped("acknowledges the end LSN of the highest transaction below which everything is durable", () =>
    Effect.gen(function*() {
      const { acks, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A])
      tracker.track(200n, 208n, [A])
      tracker.track(300n, 308n, [A])
      expect(tracker.inFlight()).toBe(3)
      expect(acks).toEqual([])

      yield* tracker.durable(A, 200n)
      expect(acks).toEqual([208n])
      expect(tracker.acknowledgedLsn()).toBe(208n)
      expect(tracker.lastProcessedLsn()).toBe(200n)
      expect(tracker.inFlight()).toBe(1)

      // Reporting again what is already durable changes nothing.
      yield* tracker.durable(A, 200n)
      expect(acks).toEqual([208n])

      yield* tracker.durable(A, 300n)
      expect(acks).toEqual([208n, 308n])
      expect(tracker.inFlight()).toBe(0)

      // The periodic tick does not resend an ack already sent.
      yield* TestClock.adjust("3 seconds")
      expect(acks).toEqual([208n, 308n])
    }))

  it.scoped("acknowledges a transaction no shape received once everything before it is durable", () =>
    Effect.gen(function*() {
      const { acks, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A])
      tracker.track(200n, 208n, [])
      expect(tracker.inFlight()).toBe(2)
      yield* TestClock.adjust("2 seconds")
      expect(acks).toEqual([])

      yield* tracker.durable(A, 100n)
      expect(acks).toEqual([208n])
      expect(tracker.lastProcessedLsn()).toBe(200n)

      // With nothing in flight it is durable at once; the tick sends the ack.
      tracker.track(300n, 308n, [])
      expect(tracker.inFlight()).toBe(0)
      expect(tracker.acknowledgedLsn()).toBe(308n)
      expect(tracker.lastProcessedLsn()).toBe(300n)
      yield* TestClock.adjust("1 second")
      expect(acks).toEqual([208n, 308n])
    }))

  it.scoped("waits for the slower of two shapes", () =>
    Effect.gen(function*() {
      const { acks, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A, B])
      tracker.track(200n, 208n, [B])
      tracker.track(300n, 308n, [A])

      yield* tracker.durable(A, 300n)
      expect(acks).toEqual([])
      expect(tracker.lastProcessedLsn()).toBe(0n)

      yield* tracker.durable(B, 100n)
      expect(acks).toEqual([108n])

      yield* tracker.durable(B, 200n)
      expect(acks).toEqual([108n, 308n])
      expect(tracker.lastProcessedLsn()).toBe(300n)
    }))

  it.scoped("releases a forgotten shape's hold", () =>
    Effect.gen(function*() {
      const { acks, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A, B])
      tracker.track(200n, 208n, [B])
      yield* tracker.durable(A, 100n)
      expect(acks).toEqual([])

      yield* tracker.forget(B)
      expect(acks).toEqual([208n])
      expect(tracker.inFlight()).toBe(0)
      // A later report from the forgotten shape is ignored.
      yield* tracker.durable(B, 200n)
      yield* tracker.forget(B)
      expect(acks).toEqual([208n])
    }))

  it.scoped("acknowledges exactly T1's end LSN when T2 commits where T1 ends", () =>
    Effect.gen(function*() {
      const { acks, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 150n, [A])
      tracker.track(150n, 200n, [A])

      yield* tracker.durable(A, 100n)
      expect(acks).toEqual([150n])
      expect(tracker.acknowledgedLsn()).toBe(150n)
      expect(tracker.lastProcessedLsn()).toBe(100n)
      expect(tracker.inFlight()).toBe(1)

      yield* TestClock.adjust("5 seconds")
      expect(acks).toEqual([150n])

      yield* tracker.durable(A, 150n)
      expect(acks).toEqual([150n, 200n])
      expect(tracker.lastProcessedLsn()).toBe(150n)
    }))

  it.scoped("persists the last processed LSN, on the tick and at shutdown, for the next instance", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      const first = yield* Scope.make()
      const { sql, tracker } = yield* startTracker(dir).pipe(Scope.extend(first))
      expect(tracker.lastProcessedLsn()).toBe(0n)
      tracker.track(100n, 150n, [A])
      tracker.track(150n, 200n, [A])
      yield* tracker.durable(A, 100n)

      yield* TestClock.adjust("1 second")
      expect(yield* persistedLsn(sql)).toBe("100")

      yield* tracker.durable(A, 150n)
      yield* Scope.close(first, Exit.void)

      const second = yield* startTracker(dir)
      expect(second.tracker.lastProcessedLsn()).toBe(150n)
      expect(yield* persistedLsn(second.sql)).toBe("150")
      // Nothing is in flight after a restart, and nothing has been acknowledged yet.
      expect(second.tracker.inFlight()).toBe(0)
      expect(second.tracker.acknowledgedLsn()).toBe(0n)
    }))

  it.scoped("awaitInFlightBelow waits until enough transactions are durable", () =>
    Effect.gen(function*() {
      const { tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A])
      tracker.track(200n, 208n, [A])
      tracker.track(300n, 308n, [B])

      // Already below the limit: returns at once.
      yield* tracker.awaitInFlightBelow(4)

      const waiter = yield* Effect.fork(tracker.awaitInFlightBelow(2))
      yield* Effect.yieldNow()
      expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)

      // One transaction durable: 2 in flight, still not below 2.
      yield* tracker.durable(A, 100n)
      yield* Effect.yieldNow()
      expect(Option.isNone(yield* Fiber.poll(waiter))).toBe(true)

      yield* tracker.durable(A, 200n)
      yield* Fiber.join(waiter)
      expect(tracker.inFlight()).toBe(1)
    }))
})
