import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Logger, TestClock } from "effect"
import { FakePostgres, textTable } from "../../src/testing/FakePostgres.js"
import { makeGate } from "../../src/testing/Intercept.js"
import { readToEnd, startServer, tempDirs } from "../../src/testing/TestHarness.js"

/**
 * The lines a long piece of work logs as it goes, on the in-memory Postgres with the test's clock: a snapshot
 * that takes long, and restoring the shapes when a stack starts.
 */

const ITEMS = textTable(16601, "items", ["id", "title"])

/** Runs `effect` with every log message also kept in `lines`. */
const recording = <A, E, R>(lines: Array<string>, effect: Effect.Effect<A, E, R>) =>
  effect.pipe(Effect.provide(Logger.add(Logger.make(({ message }) => {
    lines.push(Array.isArray(message) ? message.join(" ") : String(message))
  }))))

describe("progress lines", () => {
  it.scoped("a snapshot that takes long says how many rows it has so far, then how long it took", () => {
    const lines: Array<string> = []
    return recording(lines, Effect.gen(function*() {
      const db = new FakePostgres([ITEMS])
      yield* db.commit(Array.from({ length: 5 }, (_, i) => ({ kind: "insert", table: "items", row: { id: `${i}`, title: `row ${i}` } }) as const))
      const h = yield* startServer(db, yield* tempDirs)
      const gate = yield* makeGate
      db.intercept.snapshot.next(() => gate.hold, (table) => table.name === "items")
      // The request that starts the creation may give up while the snapshot is held; the creation goes on.
      const asking = yield* Effect.fork(Effect.exit(readToEnd(h, "table=items")))
      yield* Deferred.await(gate.reached)
      yield* TestClock.adjust("6 seconds")
      yield* Deferred.succeed(gate.release, undefined)
      yield* Fiber.await(asking)
      const read = yield* readToEnd(h, "table=items")
      expect(read.messages.filter((m) => m.headers.operation === "insert")).toHaveLength(5)
      const snapshot = lines.filter((l) => l.includes("snapshot of public.items"))
      expect(snapshot.map((l) => l.replace(/^shape \S+: /, ""))).toEqual([
        "snapshot of public.items: 5 rows so far",
        "snapshot of public.items: 5 rows in 6.0 s"
      ])
    }))
  })

  it.scoped("a stack that starts with shapes says it restores them, and how many it restored", () => {
    const lines: Array<string> = []
    return recording(lines, Effect.gen(function*() {
      const db = new FakePostgres([ITEMS])
      const h = yield* startServer(db, yield* tempDirs)
      yield* readToEnd(h, "table=items")
      yield* readToEnd(h, "table=items&where=title%20%3D%20'a'")
      expect(lines.filter((l) => l.startsWith("restor"))).toEqual([])
      yield* h.supervisor.restart
      yield* h.active
      expect(lines.filter((l) => l.startsWith("restor"))).toEqual(["restoring 2 shape(s)", "restored 2 of 2 shape(s) in 0 ms"])
    }))
  })
})
