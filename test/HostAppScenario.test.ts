import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { advanceUntil, FakePostgres, insertedKeys, readToEnd, startApp, tempDirs, textTable } from "syncline/testing"
import { HostRoutes } from "../scratchpad/host-app/HostApp.js"

/**
 * A restart scenario a user writes for their own app with `syncline/testing` only (the README's example): the
 * host app's routes over the in-memory Postgres, a crash of the stack, and the stack's restart backoff passed on
 * the test's clock.
 */

const TODOS = textTable(16501, "todos", ["id", "title"])

describe("the host app across a crash of its stack", () => {
  it.scoped("restarts the stack after its backoff; the client keeps its shape and gets every row", () =>
    Effect.gen(function*() {
      const db = new FakePostgres([TODOS])
      const app = yield* startApp(HostRoutes, db, yield* tempDirs, { mount: "/sync" })
      const before = yield* readToEnd(app, "table=todos")

      // The next transaction crashes the stack; it starts again after a backoff, in the test's time.
      yield* db.poison()
      const todo = yield* db.commit([{ kind: "insert", table: "todos", row: { id: "1", title: "write the docs" } }])
      yield* advanceUntil(Effect.sync(() => db.confirmedFlush >= todo.endLsn))

      const after = yield* readToEnd(app, "table=todos", before)
      expect(after.handle).toBe(before.handle)
      expect(insertedKeys(after.messages)).toEqual([`"public"."todos"/"1"`])
    }))
})
