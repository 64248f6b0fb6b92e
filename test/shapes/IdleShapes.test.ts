import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { whereCompiled } from "../../src/shapes/ShapeResolver.js"
import { FakePostgres, textTable } from "../../src/testing/FakePostgres.js"
import { readToEnd, startServer, tempDirs } from "../../src/testing/index.js"
import { insert, KINDS, QUERIES, readAll, shapeOf } from "../support/threeShapes.js"

/**
 * A created shape, once its snapshot is complete, is kept as a restart restores it: its where is parsed again
 * when a transaction or a request first needs it. Until then and after, it is served under its handle and
 * receives every transaction that reaches it.
 */

const ITEMS = textTable(16402, "items", ["id", "title"])

describe("created shapes", () => {
  it.scoped("keep their where unparsed once their snapshot is complete, and receive every transaction that reaches them", () =>
    Effect.gen(function*() {
      const db = new FakePostgres([ITEMS])
      yield* db.commit([insert("1"), insert("2")])
      const h = yield* startServer(db, yield* tempDirs)
      const first = yield* readAll(h, undefined)
      expect(first.inserted).toEqual({ equality: ["1"], scanned: ["1"], all: ["1", "2"] })
      for (const kind of KINDS) {
        if (kind !== "all") expect(whereCompiled(yield* shapeOf(h, first.positions[kind].handle))).toBe(false)
      }
      // Asked for again, from the start and from where the client stood: the same shapes.
      const again = yield* readAll(h, undefined)
      expect(again.positions).toEqual(first.positions)
      expect(again.inserted).toEqual(first.inserted)

      const t = yield* db.commit([insert("3"), { kind: "update", table: "items", row: { id: "1", title: "one" } } as const])
      yield* db.awaitConfirmed(t.endLsn)
      const after = yield* readAll(h, first.positions)
      for (const kind of KINDS) expect(after.positions[kind].handle).toBe(first.positions[kind].handle)
      expect(after.inserted).toEqual({ equality: [], scanned: ["3"], all: ["3"] })
      expect(whereCompiled(yield* shapeOf(h, first.positions.scanned.handle))).toBe(true)
      expect(whereCompiled(yield* shapeOf(h, first.positions.equality.handle))).toBe(true)
      const updated = yield* readToEnd(h, QUERIES.equality, first.positions.equality)
      expect(updated.messages.filter((m) => m.headers.operation === "update").map((m) => m.value)).toEqual([
        { id: "1", title: "one" }
      ])
    }))
})
