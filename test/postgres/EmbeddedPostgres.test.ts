import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import pg from "pg"
import { inject } from "vitest"
import { PostgresError } from "../../src/domain/errors.js"
import { EmbeddedPostgres, startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"

const query = async (url: string, sql: string): Promise<Array<Record<string, unknown>>> => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query(sql)).rows
  } finally {
    await client.end()
  }
}

const childScript = fileURLToPath(new URL("../support/postgresChild.ts", import.meta.url))

/** Alive and not a zombie: an orphan's exit is reaped by init, which may never do it in a container. */
const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  if (os.platform() !== "linux") return true
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")
  } catch {
    return false
  }
}

/** A fresh directory the `postgres` OS user can enter when the tests run as root. */
const tempDir = (): string => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "syncline-embedded-"))
  fs.chmodSync(dir, 0o755)
  return dir
}

const withTempDir = async (body: (dir: string) => Promise<void>): Promise<void> => {
  const dir = tempDir()
  try {
    await body(dir)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

describe("EmbeddedPostgres", () => {
  it("the shared test database has logical replication and the test limits", async () => {
    const url = inject("databaseUrl")
    const rows = await query(
      url,
      "SELECT current_setting('wal_level') AS wal, current_setting('max_replication_slots') AS slots, " +
        "current_setting('max_connections') AS conns, current_setting('listen_addresses') AS listen"
    )
    expect(rows).toEqual([{ wal: "logical", slots: "100", conns: "300", listen: "127.0.0.1" }])
  })

  it("keeps its data across a stop and a start on the same directory", () =>
    withTempDir(async (dir) => {
      const dataDir = path.join(dir, "data")
      const first = await startEmbeddedPostgres({ dataDir, settings: { fsync: "off" } })
      try {
        expect(await query(first.url, "SHOW wal_level")).toEqual([{ wal_level: "logical" }])
        await query(first.url, "CREATE TABLE embedded_persist (id int PRIMARY KEY, label text)")
        await query(first.url, "INSERT INTO embedded_persist VALUES (1, 'kept')")
      } finally {
        await first.stop()
      }
      await expect(query(first.url, "SELECT 1")).rejects.toThrow()
      expect(fs.statSync(`${dataDir}.password`).mode & 0o777).toBe(0o600)

      const second = await startEmbeddedPostgres({ dataDir, settings: { fsync: "off" } })
      try {
        expect(await query(second.url, "SELECT id, label FROM embedded_persist")).toEqual([{ id: 1, label: "kept" }])
      } finally {
        await second.stop()
      }
    }))

  it("rejects connections without the generated password", () =>
    withTempDir(async (dir) => {
      const running = await startEmbeddedPostgres({ dataDir: path.join(dir, "data"), settings: { fsync: "off" } })
      try {
        await expect(query(`postgresql://postgres:wrong@127.0.0.1:${running.port}/postgres`, "SELECT 1")).rejects
          .toThrow(/password authentication failed/)
      } finally {
        await running.stop()
      }
    }))

  it("fails with the log's tail when Postgres refuses to start", () =>
    withTempDir(async (dir) => {
      const error = await startEmbeddedPostgres({ dataDir: path.join(dir, "data"), settings: { wal_level: "bogus" } })
        .then(() => undefined, (e: unknown) => e)
      expect(error).toBeInstanceOf(PostgresError)
      expect((error as PostgresError).message).toMatch(/exited during start-up[\s\S]*invalid value for parameter "wal_level"/)
    }))

  it("refuses a non-empty directory that holds no cluster", () =>
    withTempDir(async (dir) => {
      const dataDir = path.join(dir, "data")
      fs.mkdirSync(dataDir)
      fs.writeFileSync(path.join(dataDir, "precious.txt"), "keep me")
      await expect(startEmbeddedPostgres({ dataDir })).rejects.toThrow(/not empty and holds no Postgres cluster/)
      expect(fs.readFileSync(path.join(dataDir, "precious.txt"), "utf8")).toBe("keep me")
    }))

  it("starts in a data directory under a private (0700) directory", async () => {
    const privateDir = fs.mkdtempSync(path.join(os.tmpdir(), "syncline-private-"))
    try {
      expect(fs.statSync(privateDir).mode & 0o777).toBe(0o700)
      const running = await startEmbeddedPostgres({ dataDir: path.join(privateDir, "pg", "data"), settings: { fsync: "off" } })
      try {
        expect(await query(running.url, "SELECT 1 AS one")).toEqual([{ one: 1 }])
      } finally {
        await running.stop()
      }
    } finally {
      fs.rmSync(privateDir, { recursive: true, force: true })
    }
  })

  it("stops the Postgres orphaned by a SIGKILLed owner and starts on its data", () =>
    withTempDir(async (dir) => {
      const dataDir = path.join(dir, "data")
      const child = spawn(process.execPath, ["--import", "tsx", childScript, dataDir], { stdio: ["ignore", "pipe", "inherit"] })
      const childExit = new Promise<void>((resolve) => child.once("exit", () => resolve()))
      const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
      const first = await lines.next()
      expect(first.done).toBe(false)
      const { port } = JSON.parse(first.value as string) as { port: number }
      child.kill("SIGKILL")
      await childExit

      const orphanPid = Number.parseInt(fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")[0]!, 10)
      expect(isAlive(orphanPid)).toBe(true)
      const password = fs.readFileSync(`${dataDir}.password`, "utf8").trim()
      await query(`postgresql://postgres:${password}@127.0.0.1:${port}/postgres`, "CREATE TABLE embedded_orphan (id int)")

      const running = await startEmbeddedPostgres({ dataDir, settings: { fsync: "off" } })
      try {
        expect(isAlive(orphanPid)).toBe(false)
        expect(await query(running.url, "SELECT count(*)::int AS n FROM embedded_orphan")).toEqual([{ n: 0 }])
      } finally {
        await running.stop()
      }
    }))

  it.live("the layer starts Postgres for its scope and stops it when the scope closes", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const url = yield* Effect.gen(function*() {
        const running = yield* EmbeddedPostgres
        const rows = yield* Effect.promise(() => query(running.url, "SHOW wal_level"))
        expect(rows).toEqual([{ wal_level: "logical" }])
        return running.url
      }).pipe(Effect.provide(EmbeddedPostgres.layer({ dataDir: path.join(dir, "data"), settings: { fsync: "off" } })))
      const after = yield* Effect.promise(() => query(url, "SELECT 1").then(() => "connected", () => "refused"))
      expect(after).toBe("refused")
    }).pipe(Effect.scoped))

  it.live("the layer fails with a PostgresError when Postgres cannot start", () =>
    Effect.gen(function*() {
      const dir = tempDir()
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const dataDir = path.join(dir, "data")
      fs.mkdirSync(dataDir)
      fs.writeFileSync(path.join(dataDir, "other.txt"), "")
      const error = yield* EmbeddedPostgres.pipe(Effect.provide(EmbeddedPostgres.layer({ dataDir })), Effect.flip)
      expect(error).toBeInstanceOf(PostgresError)
      expect(error.reason).toBe("Connection")
    }).pipe(Effect.scoped))
})
