import { describe, expect, it } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Context, Deferred, Effect, Layer, TestServices } from "effect"
import { whereCompiled } from "../../src/shapes/ShapeResolver.js"
import { ShapeDb } from "../../src/storage/ShapeDb.js"
import { makeGate } from "../../src/testing/Intercept.js"
import { FakePostgres, textTable } from "../../src/testing/FakePostgres.js"
import { type Harness, readToEnd, startServer, tempDirs, type TestDirs } from "../../src/testing/index.js"
import { insert, KINDS, type Position, QUERIES, readAll, shapeOf } from "../support/threeShapes.js"

/**
 * Shapes restored at start-up without parsing their where (their routing read from the registry): they are
 * served under their handles, receive every transaction that reaches them, and hold the ack until it is durable
 * in their logs, before and after something first parses their where.
 */

const ITEMS = textTable(16401, "items", ["id", "title"])

const registry = <A>(dirs: TestDirs, use: (sql: SqlClient.SqlClient) => Effect.Effect<A, unknown>) =>
  Effect.scoped(
    Effect.flatMap(Layer.build(ShapeDb.layer(dirs.storageDir)), (context) => use(Context.get(context, SqlClient.SqlClient)))
  ).pipe(Effect.orDie)

/** The update of row 1 to "one" is in the log of the shape found by equality, under the handle it had. */
const expectUpdateOfRowOne = (h: Harness, from: Position) =>
  Effect.gen(function*() {
    const updated = yield* readToEnd(h, QUERIES.equality, from)
    expect(updated.handle).toBe(from.handle)
    expect(updated.messages.filter((m) => m.headers.operation === "update").map((m) => m.value)).toEqual([
      { id: "1", title: "one" }
    ])
  })

/** Three shapes over two rows, then a restart: the shapes are restored, none of their where parsed yet. */
const restoredThreeShapes = Effect.gen(function*() {
  const db = new FakePostgres([ITEMS])
  yield* db.commit([insert("1"), insert("2")])
  const h = yield* startServer(db, yield* tempDirs)
  const first = yield* readAll(h, undefined)
  yield* h.supervisor.restart
  yield* h.active
  return { db, first, h }
})

describe("shapes restored with their where parsed on first use", () => {
  it.scoped("receive every transaction that reaches them and hold the ack until it is durable in their logs", () =>
    Effect.gen(function*() {
      const { db, first, h } = yield* restoredThreeShapes
      expect(first.inserted).toEqual({ equality: ["1"], scanned: ["1"], all: ["1", "2"] })
      for (const kind of KINDS) {
        const shape = yield* shapeOf(h, first.positions[kind].handle)
        if (kind !== "all") expect(whereCompiled(shape)).toBe(false)
      }

      // The log commit of the shape found by equality is held: the ack may not pass the transaction meanwhile.
      const gate = yield* makeGate
      yield* Effect.addFinalizer(() => Deferred.succeed(gate.release, undefined))
      db.intercept.commit.next(() => gate.hold, (handle) => handle === first.positions.equality.handle)
      const t1 = yield* db.commit([insert("3"), { kind: "update", table: "items", row: { id: "1", title: "one" } } as const])
      yield* Deferred.await(gate.reached)
      // The other shapes make it durable meanwhile; the ack still waits for the held one.
      let meanwhile = yield* readAll(h, first.positions, ["scanned", "all"])
      while (meanwhile.inserted.scanned!.length === 0 || meanwhile.inserted.all!.length === 0) {
        yield* TestServices.provideLive(Effect.sleep("5 millis"))
        meanwhile = yield* readAll(h, first.positions, ["scanned", "all"])
      }
      expect(meanwhile.inserted).toEqual({ scanned: ["3"], all: ["3"] })
      expect(db.confirmedFlush < t1.endLsn).toBe(true)
      yield* Deferred.succeed(gate.release, undefined)
      yield* db.awaitConfirmed(t1.endLsn)

      const t2 = yield* db.commit([insert("4"), insert("22")])
      yield* db.awaitConfirmed(t2.endLsn)
      const after = yield* readAll(h, meanwhile.positions)
      for (const kind of KINDS) expect(after.positions[kind].handle).toBe(first.positions[kind].handle)
      expect(after.inserted).toEqual({ equality: [], scanned: ["4", "22"], all: ["4", "22"] })
      expect(whereCompiled(yield* shapeOf(h, first.positions.scanned.handle))).toBe(true)
      expect(whereCompiled(yield* shapeOf(h, first.positions.equality.handle))).toBe(true)
      // The update reached the shape found by equality once it was let through.
      yield* expectUpdateOfRowOne(h, first.positions.equality)
    }))

  it.scoped("go on receiving transactions while the log of one of them is slow to open", () =>
    Effect.gen(function*() {
      const { db, first, h } = yield* restoredThreeShapes
      // The consumer of the shape found by equality starts with the next transaction; its log's opening is held.
      const gate = yield* makeGate
      yield* Effect.addFinalizer(() => Deferred.succeed(gate.release, undefined))
      db.intercept.open.next(() => gate.hold, (handle) => handle === first.positions.equality.handle)
      const t1 = yield* db.commit([insert("3"), { kind: "update", table: "items", row: { id: "1", title: "one" } } as const])
      yield* Deferred.await(gate.reached)
      // A later transaction, for the other shapes only, reaches them while the opening is still held: the pump
      // waits for an opening only briefly.
      const t2 = yield* db.commit([insert("22")])
      let meanwhile = yield* readAll(h, first.positions, ["scanned", "all"])
      for (let polls = 0; !meanwhile.inserted.all!.includes("22") || !meanwhile.inserted.scanned!.includes("22"); polls++) {
        if (polls === 1_000) return yield* Effect.die(new Error("row 22 did not reach the other shapes while one log's opening was held"))
        yield* TestServices.provideLive(Effect.sleep("5 millis"))
        meanwhile = yield* readAll(h, first.positions, ["scanned", "all"])
      }
      expect(meanwhile.inserted).toEqual({ scanned: ["3", "22"], all: ["3", "22"] })
      expect(db.confirmedFlush < t1.endLsn).toBe(true)

      yield* Deferred.succeed(gate.release, undefined)
      yield* db.awaitConfirmed(t2.endLsn)
      yield* expectUpdateOfRowOne(h, first.positions.equality)
    }))

  it.scoped("are served under their handles before and after their where is parsed, and across further restarts", () =>
    Effect.gen(function*() {
      const { db, first, h } = yield* restoredThreeShapes
      // Read from the start and from where the client stood, before anything parsed the where.
      const again = yield* readAll(h, undefined)
      expect(again.positions).toEqual(first.positions)
      expect(again.inserted).toEqual(first.inserted)
      const caughtUp = yield* readAll(h, first.positions)
      expect(caughtUp.inserted).toEqual({ equality: [], scanned: [], all: [] })

      const t = yield* db.commit([insert("5")])
      yield* db.awaitConfirmed(t.endLsn)
      const fed = yield* readAll(h, caughtUp.positions)
      expect(fed.inserted).toEqual({ equality: [], scanned: ["5"], all: ["5"] })
      expect(whereCompiled(yield* shapeOf(h, first.positions.scanned.handle))).toBe(true)

      yield* h.supervisor.restart
      yield* h.active
      const later = yield* readAll(h, fed.positions)
      for (const kind of KINDS) expect(later.positions[kind].handle).toBe(first.positions[kind].handle)
      expect(later.inserted).toEqual({ equality: [], scanned: [], all: [] })
    }))

  it.scoped("shapes registered before their routing was recorded get it at the next start, under the same handles", () =>
    Effect.gen(function*() {
      const db = new FakePostgres([ITEMS])
      const dirs = yield* tempDirs
      yield* db.commit([insert("1"), insert("2")])
      const first = yield* Effect.scoped(Effect.flatMap(startServer(db, dirs), (h) => readAll(h, undefined)))
      yield* registry(dirs, (sql) => sql`UPDATE shapes SET routing = NULL`)

      const h = yield* startServer(db, dirs)
      yield* h.active
      const routing = yield* registry(dirs, (sql) => sql<{ handle: string; routing: string | null }>`SELECT handle, routing FROM shapes`)
      const byHandle = new Map(routing.map((r) => [r.handle, r.routing]))
      expect(byHandle.get(first.positions.equality.handle)).toBe(JSON.stringify(["id", "1"]))
      expect(byHandle.get(first.positions.scanned.handle)).toBe("")
      expect(byHandle.get(first.positions.all.handle)).toBe("")

      const t = yield* db.commit([insert("3")])
      yield* db.awaitConfirmed(t.endLsn)
      const after = yield* readAll(h, first.positions)
      for (const kind of KINDS) expect(after.positions[kind].handle).toBe(first.positions[kind].handle)
      expect(after.inserted).toEqual({ equality: [], scanned: ["3"], all: ["3"] })
    }))
})
