import { SqlClient } from "@effect/sql"
import { afterAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { registryFile, ShapeDb } from "../../src/storage/ShapeDb.js"

const root = fs.mkdtempSync(path.join(os.tmpdir(), "syncline-shape-db-"))
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))
let dirs = 0
const freshDir = () => path.join(root, String(++dirs))

const open = (storageDir: string) => Effect.map(Layer.build(ShapeDb.layer(storageDir)), Context.get(SqlClient.SqlClient))

const asideFiles = (storageDir: string) =>
  fs.readdirSync(path.dirname(registryFile(storageDir))).filter((name) => name.includes(".damaged-"))

describe("ShapeDb", () => {
  it.scoped("commits with synchronous = FULL: the acknowledged position is on disk before Postgres hears of it", () =>
    Effect.gen(function*() {
      const sql = yield* open(freshDir())
      expect(yield* sql<{ synchronous: number }>`PRAGMA synchronous`).toEqual([{ synchronous: 2 }])
    }))

  it.scoped("caps its page cache at 256 KiB: the pages of the shapes created since start-up are not kept in memory", () =>
    Effect.gen(function*() {
      const sql = yield* open(freshDir())
      expect(yield* sql<{ cache_size: number }>`PRAGMA cache_size`).toEqual([{ cache_size: -256 }])
    }))

  it.scoped("sets a file that is not a database aside, keeps it, and starts an empty registry", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      fs.mkdirSync(path.dirname(registryFile(dir)), { recursive: true })
      fs.writeFileSync(registryFile(dir), "not a database ".repeat(500))
      const sql = yield* open(dir)
      expect(yield* sql`SELECT handle FROM shapes`).toEqual([])
      const aside = asideFiles(dir)
      expect(aside).toHaveLength(1)
      expect(fs.readFileSync(path.join(path.dirname(registryFile(dir)), aside[0]!), "utf8")).toContain("not a database")
    }))

  it.scoped("keeps a registry it cannot open for another reason, and fails so that the stack tries again", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      // A directory where the file should be: SQLite cannot open it, and nothing says the registry is damaged.
      fs.mkdirSync(registryFile(dir), { recursive: true })
      const exit = yield* Effect.exit(Effect.scoped(open(dir)))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(asideFiles(dir)).toEqual([])
      expect(fs.statSync(registryFile(dir)).isDirectory()).toBe(true)
    }))

  it.scoped("reopens a healthy registry as it is", () =>
    Effect.gen(function*() {
      const dir = freshDir()
      yield* Effect.scoped(
        Effect.flatMap(open(dir), (sql) =>
          sql`INSERT INTO shapes (handle, identity, created_at) VALUES ('1-1', 'x', 0)`)
      )
      const sql = yield* open(dir)
      expect(yield* sql`SELECT handle FROM shapes`).toEqual([{ handle: "1-1" }])
      expect(asideFiles(dir)).toEqual([])
    }))
})
