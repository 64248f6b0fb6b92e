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
import { ReplicationState } from "../../src/storage/ReplicationState.js"
import { eventually } from "../../src/testing/TestHarness.js"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "syncline-flush-tracker-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
let dirs = 0
const freshDir = () => path.join(root, String(++dirs))

const A = ShapeHandle("1-1")
const B = ShapeHandle("2-2")

/** A small deterministic generator (mulberry32), so that a failing sequence is the same on every run. */
const random = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

/**
 * What the tracker must say, computed the plain way from everything tracked: a transaction is durable everywhere
 * once each shape it went to has reported its commit LSN durable or has been forgotten (a shape that went away, whose
 * handle never comes again); the acknowledged position is the end LSN of the last entry of the longest prefix durable
 * everywhere, the last processed LSN the commit LSN of the last transaction in it.
 */
class TrackerModel {
  readonly entries: Array<{ readonly commitLsn: Lsn | undefined; readonly endLsn: Lsn; readonly handles: ReadonlyArray<ShapeHandle> }> = []
  readonly durableAt = new Map<ShapeHandle, Lsn>()
  readonly forgotten = new Set<ShapeHandle>()

  private durableIn(i: number, handle: ShapeHandle): boolean {
    return this.forgotten.has(handle) || this.entries[i]!.commitLsn! <= (this.durableAt.get(handle) ?? -1n)
  }

  private durableEverywhere(i: number): boolean {
    return this.entries[i]!.handles.every((h) => this.durableIn(i, h))
  }

  expected() {
    let acknowledged = 0n
    let lastProcessed = 0n
    for (let i = 0; i < this.entries.length && this.durableEverywhere(i); i++) {
      const entry = this.entries[i]!
      acknowledged = entry.endLsn
      if (entry.commitLsn !== undefined) lastProcessed = entry.commitLsn
    }
    let inFlight = 0
    for (let i = 0; i < this.entries.length; i++) if (this.entries[i]!.handles.length > 0 && !this.durableEverywhere(i)) inFlight++
    return { acknowledged, lastProcessed, inFlight }
  }
}

/**
 * A replication connection that records what it was acknowledged with, and what the registry held as the
 * acknowledged position at the moment each ack was sent.
 */
const fakeConnection = (persisted: () => Effect.Effect<Lsn | undefined>) => {
  const acks: Array<Lsn> = []
  const persistedAtAck: Array<Lsn | undefined> = []
  const layer = Layer.succeed(ReplicationConnection, {
    events: Stream.empty,
    ack: (lsn) =>
      Effect.flatMap(persisted(), (value) =>
        Effect.sync(() => {
          persistedAtAck.push(value)
          acks.push(lsn)
        })),
    acknowledged: Effect.sync(() => acks.at(-1) ?? 0n)
  })
  return { acks, persistedAtAck, layer }
}

/** Builds the tracker on SQLite in `dir`, in the current scope; returns it with the acks it sent and the raw client. */
const startTracker = (dir: string) =>
  Effect.gen(function*() {
    const db = yield* Layer.build(ShapeDb.layer(dir))
    const sql = Context.get(db, SqlClient.SqlClient)
    const fake = fakeConnection(() => Effect.map(Effect.orDie(ReplicationState.read(sql)), (s) => s.acknowledged))
    const ctx = yield* Layer.build(FlushTracker.layer).pipe(Effect.provide(Context.merge(db, yield* Layer.build(fake.layer))))
    const tracker = Context.get(ctx, FlushTracker)
    // The ack is persisted and sent by a fiber of the tracker's: wait until it has caught up.
    const settled = eventually(Effect.sync(() => tracker.sentLsn() === tracker.acknowledgedLsn()))
    return { tracker, acks: fake.acks, persistedAtAck: fake.persistedAtAck, sql, settled }
  })

const persisted = (sql: SqlClient.SqlClient) => Effect.orDie(ReplicationState.read(sql))

describe("FlushTracker", () => {
  it.scoped("acknowledges the end LSN of the highest transaction below which everything is durable", () =>
    Effect.gen(function*() {
      const { acks, settled, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A])
      tracker.track(200n, 208n, [A])
      tracker.track(300n, 308n, [A])
      expect(tracker.inFlight()).toBe(3)
      yield* settled
      expect(acks).toEqual([])

      yield* tracker.durable(A, 200n)
      yield* settled
      expect(acks).toEqual([208n])
      expect(tracker.acknowledgedLsn()).toBe(208n)
      expect(tracker.lastProcessedLsn()).toBe(200n)
      expect(tracker.inFlight()).toBe(1)

      // Reporting again what is already durable changes nothing.
      yield* tracker.durable(A, 200n)
      yield* settled
      expect(acks).toEqual([208n])

      yield* tracker.durable(A, 300n)
      yield* settled
      expect(acks).toEqual([208n, 308n])
      expect(tracker.inFlight()).toBe(0)

      // The periodic tick does not resend an ack already sent.
      yield* TestClock.adjust("3 seconds")
      yield* settled
      expect(acks).toEqual([208n, 308n])
    }))

  it.scoped("persists each acknowledged position before the standby status that carries it", () =>
    Effect.gen(function*() {
      const { acks, persistedAtAck, settled, sql, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A])
      tracker.track(200n, 208n, [B])
      yield* tracker.durable(A, 100n)
      yield* settled
      yield* tracker.durable(B, 200n)
      yield* settled
      expect(acks).toEqual([108n, 208n])
      expect(persistedAtAck).toEqual([108n, 208n])
      expect(yield* persisted(sql)).toMatchObject({ lastProcessed: 200n, acknowledged: 208n })
    }))

  it.scoped("acknowledges a transaction no shape received once everything before it is durable", () =>
    Effect.gen(function*() {
      const { acks, settled, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A])
      tracker.track(200n, 208n, [])
      expect(tracker.inFlight()).toBe(1)
      yield* TestClock.adjust("2 seconds")
      yield* settled
      expect(acks).toEqual([])

      yield* tracker.durable(A, 100n)
      yield* settled
      expect(acks).toEqual([208n])
      expect(tracker.lastProcessedLsn()).toBe(200n)

      // With nothing in flight it is durable at once.
      tracker.track(300n, 308n, [])
      expect(tracker.inFlight()).toBe(0)
      expect(tracker.acknowledgedLsn()).toBe(308n)
      expect(tracker.lastProcessedLsn()).toBe(300n)
      yield* settled
      expect(acks).toEqual([208n, 308n])
    }))

  it.scoped("acknowledges a keepalive's position once everything sent before it is durable", () =>
    Effect.gen(function*() {
      const { acks, settled, tracker } = yield* startTracker(freshDir())
      // Quiet synced tables, other tables written: the slot moves on.
      tracker.trackPosition(1000n)
      yield* settled
      expect(acks).toEqual([1000n])
      expect(tracker.lastProcessedLsn()).toBe(0n)

      tracker.track(2000n, 2008n, [A])
      tracker.trackPosition(3000n)
      tracker.trackPosition(4000n)
      yield* settled
      expect(acks).toEqual([1000n])
      yield* tracker.durable(A, 2000n)
      yield* settled
      expect(acks).toEqual([1000n, 4000n])
      expect(tracker.lastProcessedLsn()).toBe(2000n)
      // A position at or below what is acknowledged changes nothing.
      tracker.trackPosition(3500n)
      yield* settled
      expect(acks).toEqual([1000n, 4000n])
    }))

  it.scoped("waits for the slower of two shapes", () =>
    Effect.gen(function*() {
      const { acks, settled, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A, B])
      tracker.track(200n, 208n, [B])
      tracker.track(300n, 308n, [A])

      yield* tracker.durable(A, 300n)
      yield* settled
      expect(acks).toEqual([])
      expect(tracker.lastProcessedLsn()).toBe(0n)

      yield* tracker.durable(B, 100n)
      yield* settled
      expect(acks).toEqual([108n])

      yield* tracker.durable(B, 200n)
      yield* settled
      expect(acks).toEqual([108n, 308n])
      expect(tracker.lastProcessedLsn()).toBe(300n)
    }))

  it.scoped("releases a forgotten shape's hold", () =>
    Effect.gen(function*() {
      const { acks, settled, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 108n, [A, B])
      tracker.track(200n, 208n, [B])
      yield* tracker.durable(A, 100n)
      yield* settled
      expect(acks).toEqual([])

      yield* tracker.forget(B)
      yield* settled
      expect(acks).toEqual([208n])
      expect(tracker.inFlight()).toBe(0)
      // A later report from the forgotten shape is ignored.
      yield* tracker.durable(B, 200n)
      yield* tracker.forget(B)
      yield* settled
      expect(acks).toEqual([208n])
    }))

  it.scoped("acknowledges exactly T1's end LSN when T2 commits where T1 ends", () =>
    Effect.gen(function*() {
      const { acks, settled, tracker } = yield* startTracker(freshDir())
      tracker.track(100n, 150n, [A])
      tracker.track(150n, 200n, [A])

      yield* tracker.durable(A, 100n)
      yield* settled
      expect(acks).toEqual([150n])
      expect(tracker.acknowledgedLsn()).toBe(150n)
      expect(tracker.lastProcessedLsn()).toBe(100n)
      expect(tracker.inFlight()).toBe(1)

      yield* TestClock.adjust("5 seconds")
      yield* settled
      expect(acks).toEqual([150n])

      yield* tracker.durable(A, 150n)
      yield* settled
      expect(acks).toEqual([150n, 200n])
      expect(tracker.lastProcessedLsn()).toBe(150n)
    }))

  it.scoped("persists the positions for the next instance, the last ones at shutdown", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      const first = yield* Scope.make()
      const { settled, sql, tracker } = yield* startTracker(dir).pipe(Scope.extend(first))
      expect(tracker.lastProcessedLsn()).toBe(0n)
      tracker.track(100n, 150n, [A])
      tracker.track(150n, 200n, [A])
      yield* tracker.durable(A, 100n)
      yield* settled
      expect(yield* persisted(sql)).toMatchObject({ lastProcessed: 100n, acknowledged: 150n })

      yield* tracker.durable(A, 150n)
      yield* Scope.close(first, Exit.void)

      const second = yield* startTracker(dir)
      expect(second.tracker.lastProcessedLsn()).toBe(150n)
      expect(yield* persisted(second.sql)).toMatchObject({ lastProcessed: 150n, acknowledged: 200n })
      // Nothing is in flight after a restart, and nothing has been acknowledged yet.
      expect(second.tracker.inFlight()).toBe(0)
      expect(second.tracker.acknowledgedLsn()).toBe(0n)
    }))

  it.scoped("counts in flight only what some shape still holds: one slow shape does not fill the window", () =>
    Effect.gen(function*() {
      const { acks, settled, tracker } = yield* startTracker(freshDir())
      // A shape whose snapshot is still running holds one transaction; 30,000 more reach no shape or are durable.
      tracker.track(100n, 108n, [A])
      for (let i = 1; i <= 30_000; i++) {
        const lsn = 100n + BigInt(i) * 100n
        if (i % 2 === 0) tracker.track(lsn, lsn + 8n, [])
        else {
          tracker.track(lsn, lsn + 8n, [B])
          yield* tracker.durable(B, lsn)
        }
      }
      expect(tracker.inFlight()).toBe(1)
      yield* tracker.awaitInFlightBelow(2)
      yield* settled
      expect(acks).toEqual([])
      yield* tracker.durable(A, 100n)
      yield* settled
      expect(acks).toEqual([100n + 30_000n * 100n + 8n])
      expect(tracker.inFlight()).toBe(0)
    }))

  it.scoped("acknowledges exactly what is durable, whatever the order and the steps in which shapes report it", () =>
    Effect.gen(function*() {
      // Long runs to one shape (a catch-up's), broken by other shapes, by two, by none and by stream positions (an
      // idle keepalive's repeated); shapes report what they made durable in steps of any size, some far behind, and
      // now and then one goes away (forgotten) and another takes its place. After every step the tracker says what
      // the plain computation says.
      for (const seed of [1, 2, 3, 4]) {
        const next = random(seed)
        const pick = <T>(xs: ReadonlyArray<T>): T => xs[Math.floor(next() * xs.length)]!
        /** The shapes there are now: the first stays, the other two are replaced when they go away. */
        const shapes = [A, B, ShapeHandle("3-3")]
        let created = 3
        const { tracker } = yield* startTracker(freshDir())
        const model = new TrackerModel()
        const check = (step: string) => {
          const expected = model.expected()
          const actual = { acknowledged: tracker.acknowledgedLsn(), lastProcessed: tracker.lastProcessedLsn(), inFlight: tracker.inFlight() }
          expect({ seed, step, ...actual }).toEqual({ seed, step, ...expected })
        }
        let lsn = 1_000n
        for (let step = 0; step < 400; step++) {
          const kind = next()
          if (kind < 0.45) {
            // A run of transactions to the same shapes; adjacent ones may commit where the last one ends.
            const [first, second, third] = shapes as [ShapeHandle, ShapeHandle, ShapeHandle]
            const handles = pick([[first], [first], [second], [first, second], [], [third], [second, third]])
            const length = 1 + Math.floor(next() * (next() < 0.2 ? 700 : 40))
            for (let k = 0; k < length; k++) {
              const commitLsn = lsn + BigInt(Math.floor(next() * 3) * 8)
              const endLsn = commitLsn + 8n + BigInt(Math.floor(next() * 16))
              lsn = endLsn
              tracker.track(commitLsn, endLsn, handles)
              model.entries.push({ commitLsn, endLsn, handles })
            }
            check(`track ${length} to [${handles.join(",")}]`)
          } else if (kind < 0.5) {
            if (next() < 0.7) lsn += 8n
            tracker.trackPosition(lsn)
            // A position at or below what is acknowledged already says nothing new.
            if (lsn > model.expected().acknowledged) model.entries.push({ commitLsn: undefined, endLsn: lsn, handles: [] })
            check("position")
          } else if (kind < 0.97) {
            // A shape reports a commit of its own as durable, at or past what it reported last.
            const handle = pick([shapes[0]!, ...shapes])
            const at = model.durableAt.get(handle) ?? 0n
            const own = model.entries.filter((e) => e.commitLsn !== undefined && e.commitLsn >= at && e.handles.includes(handle))
            if (own.length === 0) continue
            const commitLsn = own[Math.floor(Math.pow(next(), 2) * own.length)]!.commitLsn!
            yield* tracker.durable(handle, commitLsn)
            model.durableAt.set(handle, commitLsn)
            check(`durable ${handle} at ${commitLsn}`)
          } else {
            const replaced = 1 + Math.floor(next() * 2)
            const handle = shapes[replaced]!
            yield* tracker.forget(handle)
            model.forgotten.add(handle)
            created++
            shapes[replaced] = ShapeHandle(`${created}-${created}`)
            check(`forget ${handle}`)
          }
        }
        // Everything made durable in the end: nothing is held.
        for (const handle of shapes) {
          const own = model.entries.filter((e) => e.commitLsn !== undefined && e.handles.includes(handle))
          if (own.length === 0) continue
          yield* tracker.durable(handle, own[own.length - 1]!.commitLsn!)
          model.durableAt.set(handle, own[own.length - 1]!.commitLsn!)
        }
        check("all durable")
        expect(tracker.inFlight()).toBe(0)
      }
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

      // The last one's shape is durable first: the count goes down although the ack cannot move.
      yield* tracker.durable(B, 300n)
      yield* Fiber.join(waiter)
      expect(tracker.inFlight()).toBe(1)
    }))
})
