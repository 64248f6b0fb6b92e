import { afterAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Option, Scope } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { TableAbsent } from "../../src/domain/errors.js"
import { ShapeDefinition } from "../../src/domain/ShapeDefinition.js"
import type { ShapeHandle } from "../../src/domain/ShapeHandle.js"
import { type SnapshotMark, ShapeStatus } from "../../src/shapes/ShapeStatus.js"
import { ShapeDb } from "../../src/storage/ShapeDb.js"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "syncline-shape-status-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
let dirs = 0
const freshDir = () => path.join(root, String(++dirs))

/** Builds a registry on SQLite in `dir`, in the current scope. */
const openStatus = (dir: string) =>
  Effect.map(Layer.build(ShapeStatus.layer.pipe(Layer.provide(ShapeDb.layer(dir)))), Context.get(ShapeStatus))

const def = (name: string, where?: string): ShapeDefinition => ({
  table: { schema: "public", name },
  where,
  columns: undefined,
  replica: "default",
  log: "full"
})

const mark: SnapshotMark = { xmin: 10n, xmax: 20n, xip: [12n, 15n], lsn: 123456n, columns: "id:23,title:25" }

const timestampOf = (handle: ShapeHandle) => Number(handle.split("-")[1])

describe("ShapeStatus", () => {
  it.scoped("gives handles of the form <hash>-<timestamp>", () =>
    Effect.gen(function*() {
      const status = yield* openStatus(freshDir())
      const record = yield* status.add(def("items"))
      expect(record.handle).toMatch(/^\d+-\d+$/)
      expect(record.handle.split("-")[0]).toBe(ShapeDefinition.hash(def("items")))
      expect(record.identity).toBe(ShapeDefinition.identity(def("items")))
      expect(record.definition).toEqual(def("items"))
      expect(record.snapshot).toBeUndefined()
    }))

  it.scoped("finds a shape only once its snapshot is complete", () =>
    Effect.gen(function*() {
      const status = yield* openStatus(freshDir())
      const record = yield* status.add(def("items"))
      expect(yield* status.get(record.handle)).toEqual(Option.none())
      expect(yield* status.byIdentity(record.identity)).toEqual(Option.none())
      expect(yield* status.all).toEqual([])
      expect(yield* status.unfinished).toEqual([record.handle])

      const complete = yield* status.markSnapshotComplete(record.handle, mark)
      expect(complete).toEqual({ ...record, snapshot: mark })
      expect(yield* status.get(record.handle)).toEqual(Option.some(complete))
      expect(yield* status.byIdentity(record.identity)).toEqual(Option.some(complete))
      expect(yield* status.all).toEqual([complete])
      expect(yield* status.unfinished).toEqual([])
    }))

  it.scoped("returns the existing record when the same definition is added again", () =>
    Effect.gen(function*() {
      const status = yield* openStatus(freshDir())
      const first = yield* status.add(def("items", "id > 1"))
      const complete = yield* status.markSnapshotComplete(first.handle, mark)
      const again = yield* status.add(def("items", "id > 1"))
      expect(again).toEqual(complete)
      // A different definition is a different shape.
      const other = yield* status.add(def("items", "id > 2"))
      expect(other.handle).not.toBe(first.handle)
    }))

  it.scoped("replaces an incarnation whose snapshot never completed", () =>
    Effect.gen(function*() {
      const status = yield* openStatus(freshDir())
      const first = yield* status.add(def("items"))
      const second = yield* status.add(def("items"))
      expect(second.handle).not.toBe(first.handle)
      expect(yield* status.unfinished).toEqual([second.handle])
    }))

  it.scoped("hides a shape as soon as it is marked for removal, and lists it as unfinished", () =>
    Effect.gen(function*() {
      const status = yield* openStatus(freshDir())
      const record = yield* status.add(def("items"))
      yield* status.markSnapshotComplete(record.handle, mark)
      yield* status.markRemoving(record.handle)
      expect(yield* status.get(record.handle)).toEqual(Option.none())
      expect(yield* status.byIdentity(record.identity)).toEqual(Option.none())
      expect(yield* status.all).toEqual([])
      expect(yield* status.unfinished).toEqual([record.handle])
      yield* status.delete(record.handle)
      expect(yield* status.unfinished).toEqual([])
    }))

  it.scoped("lets the same definition be added again while its old incarnation is being removed", () =>
    Effect.gen(function*() {
      const status = yield* openStatus(freshDir())
      const old = yield* status.add(def("items"))
      yield* status.markSnapshotComplete(old.handle, mark)
      yield* status.markRemoving(old.handle)

      const fresh = yield* status.add(def("items"))
      expect(fresh.handle).not.toBe(old.handle)
      expect([...(yield* status.unfinished)].sort()).toEqual([old.handle, fresh.handle].sort())
      yield* status.markSnapshotComplete(fresh.handle, mark)
      yield* status.delete(old.handle)
      expect(yield* status.unfinished).toEqual([])
      expect(Option.map(yield* status.byIdentity(fresh.identity), (r) => r.handle)).toEqual(Option.some(fresh.handle))
    }))

  it.scoped("restores complete shapes in a new instance on the same directory", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      const first = yield* Scope.make()
      const before = yield* openStatus(dir).pipe(Scope.extend(first))
      const kept = yield* before.markSnapshotComplete((yield* before.add(def("kept"))).handle, mark)
      const incomplete = yield* before.add(def("incomplete"))
      const removing = yield* before.add(def("removing"))
      yield* before.markSnapshotComplete(removing.handle, mark)
      yield* before.markRemoving(removing.handle)
      yield* Scope.close(first, Exit.void)

      const after = yield* openStatus(dir)
      expect(yield* after.get(kept.handle)).toEqual(Option.some(kept))
      expect(yield* after.byIdentity(kept.identity)).toEqual(Option.some(kept))
      expect(yield* after.all).toEqual([kept])
      expect(yield* after.get(incomplete.handle)).toEqual(Option.none())
      expect(yield* after.get(removing.handle)).toEqual(Option.none())
      expect([...(yield* after.unfinished)].sort()).toEqual([incomplete.handle, removing.handle].sort())

      // Handles keep moving forward across the restart.
      const next = yield* after.add(def("next"))
      const latest = Math.max(...[kept, incomplete, removing].map((r) => timestampOf(r.handle)))
      expect(timestampOf(next.handle)).toBeGreaterThan(latest)
    }))

  it.scoped("records where a shape passed its snapshot once, and keeps it across instances", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      const scope = yield* Scope.make()
      const first = yield* Scope.extend(openStatus(dir), scope)
      const record = yield* first.markSnapshotComplete((yield* first.add(def("items"))).handle, mark)
      expect(record.snapshot?.pastSnapshotAt).toBeUndefined()
      // A number of digits that a lossy round trip would not keep.
      yield* first.markPastSnapshot(record.handle, 12_345_678_901_234_567n)
      // The first transaction met past it is the point: a later one does not move it.
      yield* first.markPastSnapshot(record.handle, 12_345_678_901_234_999n)
      const passed = { ...record, snapshot: { ...mark, pastSnapshotAt: 12_345_678_901_234_567n } }
      expect(yield* first.get(record.handle)).toEqual(Option.some(passed))
      yield* Scope.close(scope, Exit.void)

      const second = yield* openStatus(dir)
      expect(yield* second.get(record.handle)).toEqual(Option.some(passed))
    }))

  it.scoped("keeps a shape's recorded moves across instances until they are forgotten or the shape is deleted", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      const scope = yield* Scope.make()
      const first = yield* Scope.extend(openStatus(dir), scope)
      const a = yield* first.add(def("items"))
      const b = yield* first.add(def("orders"))
      const move = (lsn: bigint, op: number, xip: ReadonlyArray<bigint>) => ({ lsn, op, snapshot: { xmin: 90n, xmax: 100n, xip } })
      // Out of commit order, and a number of digits that text order would sort wrongly.
      yield* first.recordMoves(a.handle, [move(1000n, 4, [95n]), move(999n, 2, [])])
      yield* first.recordMoves(b.handle, [move(5n, 0, [91n, 97n])])
      // A move that wrote nothing, with the rows it left out.
      const leftOut = { ...move(7n, 6, []), leftOut: [`"public"."items"/"3"`, `"public"."items"/"4"`], wrote: false }
      yield* first.recordMoves(b.handle, [leftOut])
      yield* Scope.close(scope, Exit.void)

      const second = yield* openStatus(dir)
      expect(yield* second.moves(b.handle)).toEqual([move(5n, 0, [91n, 97n]), leftOut])
      expect(yield* second.moves(a.handle)).toEqual([move(999n, 2, []), move(1000n, 4, [95n])])
      yield* second.forgetMoves(a.handle, [999n])
      expect(yield* second.moves(a.handle)).toEqual([move(1000n, 4, [95n])])
      yield* second.delete(a.handle)
      expect(yield* second.moves(a.handle)).toEqual([])
      expect(yield* second.moves(b.handle)).toEqual([move(5n, 0, [91n, 97n]), leftOut])
    }))

  it.scoped("never reuses a handle, even within the same millisecond", () =>
    Effect.gen(function*() {
      const status = yield* openStatus(freshDir())
      const handles: Array<ShapeHandle> = []
      for (let round = 0; round < 3; round++) {
        const record = yield* status.add(def("items"))
        yield* status.markSnapshotComplete(record.handle, mark)
        yield* status.markRemoving(record.handle)
        yield* status.delete(record.handle)
        handles.push(record.handle)
      }
      // Many adds in a tight loop: certainly several within one millisecond.
      for (let i = 0; i < 50; i++) handles.push((yield* status.add(def(`t${i}`))).handle)
      expect(new Set(handles).size).toBe(handles.length)
      const stamps = handles.map(timestampOf)
      for (let i = 1; i < stamps.length; i++) expect(stamps[i]!).toBeGreaterThan(stamps[i - 1]!)
    }))

  it.scoped("fails with TableAbsent once its scope has closed", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const status = yield* openStatus(freshDir()).pipe(Scope.extend(scope))
      const record = yield* status.add(def("items"))
      yield* status.markSnapshotComplete(record.handle, mark)
      yield* Scope.close(scope, Exit.void)

      const calls: ReadonlyArray<Effect.Effect<unknown, unknown>> = [
        status.get(record.handle),
        status.byIdentity(record.identity),
        status.all,
        status.add(def("other")),
        status.markSnapshotComplete(record.handle, mark),
        status.markRemoving(record.handle)
      ]
      for (const call of calls) {
        const exit = yield* Effect.exit(call)
        expect(exit).toEqual(Exit.fail(expect.any(TableAbsent)))
      }
    }))
})
