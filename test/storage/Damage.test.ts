import * as fs from "node:fs/promises"
import * as path from "node:path"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest"
import { type Follower, follow } from "../support/follow.js"
import {
  type ChildService,
  cleanEnv,
  freePort,
  spawnCommand,
  spawnSyncline,
  stopAllChildren,
  synclineNodeArgs,
  waitHealthy
} from "../support/process.js"
import { dropReplication, itemsTable, tempDir, testPool } from "../support/syncline.js"
import { inject } from "vitest"

/**
 * Damaged and full storage against a real Postgres, the service running as a child process (its log
 * is read): each kind of damaged shape file invalidates that shape alone (409, a new handle, a fresh
 * snapshot, a log line saying why) while the others continue; a damaged registry is set aside and
 * rebuilt; a full disk invalidates nothing and restarts nothing, and everything catches up once
 * there is room again.
 */

let pool: pg.Pool
const streams: Array<string> = []
const dirs: Array<string> = []
const followers: Array<Follower> = []

beforeAll(() => {
  pool = testPool()
})

afterAll(async () => {
  for (const f of followers) f.stop()
  await stopAllChildren()
  for (const stream of streams) await dropReplication(pool, stream)
  await pool.end()
  for (const dir of dirs) await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined)
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const env = (stream: string, port: number, storageDir: string) =>
  cleanEnv({
    DATABASE_URL: inject("databaseUrl"),
    ELECTRIC_INSECURE: "true",
    ELECTRIC_PORT: String(port),
    ELECTRIC_REPLICATION_STREAM_ID: stream,
    ELECTRIC_STORAGE_DIR: storageDir,
    ELECTRIC_LONG_POLL_TIMEOUT: "1000"
  })

const followed = (baseUrl: string, table: string, where?: string) => {
  const f = follow(pool, baseUrl, table, where === undefined ? {} : { where })
  followers.push(f)
  return f
}

/** The handle of a shape the server already has (a GET from -1 does not create another). */
const handleOf = async (baseUrl: string, table: string, where: string) => {
  const res = await fetch(`${baseUrl}/v1/shape?${new URLSearchParams({ table, where, offset: "-1" })}`)
  await res.body?.cancel()
  return res.headers.get("electric-handle")!
}

const shapeDir = (storageDir: string, handle: string) => path.join(storageDir, "shapes", handle)

/** A stream id of its own, a storage dir and a port for one service, and its base URL. */
const serviceSetup = async (stream: string) => {
  streams.push(stream)
  const port = await freePort()
  const storageDir = await tempDir(stream)
  dirs.push(storageDir)
  return { port, storageDir, baseUrl: `http://127.0.0.1:${port}` }
}

describe("damaged files", () => {
  it("each kind of damaged shape file invalidates that shape alone, found by a request or a write; the stack goes on", {
    timeout: 120_000
  }, async () => {
    const stream = "dmg_files"
    // Shapes on `read` are only read after the restart: a request finds the damage. Those on `written` get a
    // change at once: their consumers may find it first.
    const tables = ["dmg_read", "dmg_written"] as const
    for (const table of tables) {
      await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 40) i`)
    }
    const { baseUrl, port, storageDir } = await serviceSetup(stream)
    const start = async () => {
      const child = spawnSyncline({ env: env(stream, port, storageDir) })
      onTestFailed(() => console.error(child.output()))
      await waitHealthy(baseUrl, 60_000, child)
      return child
    }

    // One shape per kind of damage and table, and one left alone per table; each has snapshot rows and log entries.
    const damages = {
      "log cut short": async (dir: string) => {
        const file = path.join(dir, "log.jsonl")
        await fs.truncate(file, (await fs.stat(file)).size - 10)
      },
      "commit pointer missing": (dir: string) => fs.rm(path.join(dir, "commit.json")),
      "commit pointer garbage": (dir: string) => fs.writeFile(path.join(dir, "commit.json"), "{not json"),
      "snapshot chunk cut short": async (dir: string) => {
        const file = path.join(dir, "snapshot.0.jsonl")
        await fs.truncate(file, (await fs.stat(file)).size - 10)
      },
      "offset index cut short": async (dir: string) => {
        const file = path.join(dir, "log.idx")
        await fs.truncate(file, (await fs.stat(file)).size - 24)
      },
      "directory missing": (dir: string) => fs.rm(dir, { recursive: true })
    } as const
    const kinds = Object.keys(damages) as Array<keyof typeof damages>
    let child = await start()
    const damaged = tables.flatMap((table) =>
      kinds.map((kind, i) => ({ table, kind, where: `id > ${i}`, follower: followed(baseUrl, table, `id > ${i}`) }))
    )
    const intact = tables.map((table) => ({ table, follower: followed(baseUrl, table, "id > 100") }))
    const all = [...damaged, ...intact]
    const allEqual = async () => {
      for (const { follower } of all) await follower.equalsPostgres()
    }
    // Every shape has its snapshot before the changes, so that they land in the logs.
    await allEqual()
    for (const table of tables) {
      await pool.query(`UPDATE ${table} SET v = v || ' changed' WHERE id % 3 = 0`)
      await pool.query(`INSERT INTO ${table} SELECT i, 'new ' || i FROM generate_series(101, 110) i`)
    }
    await allEqual()
    const handles = new Map<(typeof damaged)[number], string>()
    for (const d of damaged) handles.set(d, await handleOf(baseUrl, d.table, d.where))
    const intactHandles = intact.map((i) => i.follower.handles.at(-1))
    child.kill("SIGTERM")
    await child.exited

    for (const d of damaged) {
      const dir = shapeDir(storageDir, handles.get(d)!)
      expect((await fs.stat(path.join(dir, "log.jsonl"))).size).toBeGreaterThan(100)
      await damages[d.kind](dir)
    }
    child = await start()
    await pool.query(`UPDATE dmg_written SET v = 'after' WHERE id IN (1, 2, 105)`)
    await allEqual()
    for (const table of tables) await pool.query(`UPDATE ${table} SET v = 'later' WHERE id IN (3, 106)`)
    await allEqual()

    for (const d of damaged) {
      const seen = { table: d.table, kind: d.kind, handle: d.follower.handles.at(-1), refetched: d.follower.statuses.includes(409) }
      expect(seen).toEqual({ ...seen, refetched: true })
      expect(seen.handle).not.toBe(handles.get(d))
    }
    expect(intact.map((i) => i.follower.handles)).toEqual(intactHandles.map((h) => [h]))
    for (const i of intact) expect(i.follower.statuses).not.toContain(409)
    const output = child.output()
    for (const d of damaged) expect(output).toMatch(new RegExp(`removing shape ${handles.get(d)}: its files are (damaged|missing)`))
    expect(output).not.toContain("stack stopped")
    child.kill("SIGTERM")
    expect(await child.exited).toEqual({ code: 0, signal: null })
  })

  it("a damaged registry is set aside with one log line and rebuilt; every shape re-syncs", { timeout: 60_000 }, async () => {
    const stream = "dmg_registry"
    const table = "dmg_registry_items"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 10) i`)
    const { baseUrl, port, storageDir } = await serviceSetup(stream)
    let child = spawnSyncline({ env: env(stream, port, storageDir) })
    await waitHealthy(baseUrl, 60_000, child)
    const f = followed(baseUrl, table)
    await f.equalsPostgres()
    const first = f.handles.at(-1)
    child.kill("SIGTERM")
    await child.exited

    const registry = path.join(storageDir, "meta", "shapes.sqlite")
    await fs.writeFile(registry, "this is not a database".repeat(100))
    await pool.query(`UPDATE ${table} SET v = 'while stopped' WHERE id = 1`)
    child = spawnSyncline({ env: env(stream, port, storageDir) })
    onTestFailed(() => console.error(child.output()))
    await waitHealthy(baseUrl, 60_000, child)
    await f.equalsPostgres()
    expect(f.handles.at(-1)).not.toBe(first)
    const lines = child.output().split("\n").filter((l) => l.includes("shape registry") && l.includes("damaged"))
    expect(lines).toHaveLength(1)
    expect((await fs.readdir(path.dirname(registry))).some((name) => name.startsWith("shapes.sqlite.damaged-"))).toBe(true)
    child.kill("SIGTERM")
    expect(await child.exited).toEqual({ code: 0, signal: null })
  })
})

describe("a full disk", () => {
  it("invalidates nothing and restarts nothing: writes wait, holding the ack, and catch up once there is room", { timeout: 120_000 }, async () => {
    const stream = "dmg_full"
    const table = "dmg_full_items"
    await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 50) i`)
    const { baseUrl, port, storageDir } = await serviceSetup(stream)
    // The service in a mount namespace of its own, its storage dir a 4 MB tmpfs that only it sees; the test
    // reaches the files through /proc/<pid>/root.
    const script = `mount -t tmpfs -o size=4m tmpfs "$ELECTRIC_STORAGE_DIR" && exec "$0" "$@"`
    const unshare = process.getuid?.() === 0 ? ["-m"] : ["-r", "-m"]
    const child: ChildService = spawnCommand(
      "unshare",
      [...unshare, "sh", "-c", script, process.execPath, ...synclineNodeArgs()],
      { env: env(stream, port, storageDir) }
    )
    onTestFailed(() => console.error(child.output()))
    await waitHealthy(baseUrl, 60_000, child)
    const seen = path.join(`/proc/${child.pid}/root`, storageDir)
    const filler = path.join(seen, "filler")

    const a = followed(baseUrl, table, "id <= 25")
    const b = followed(baseUrl, table, "id > 25")
    await a.equalsPostgres()
    await b.equalsPostgres()
    const handles = [a.handles.at(-1), b.handles.at(-1)]

    // Fill the disk.
    const block = Buffer.alloc(64 * 1024, 1)
    const fh = await fs.open(filler, "w")
    try {
      for (;;) await fh.write(block)
    } catch (error) {
      expect((error as NodeJS.ErrnoException).code).toBe("ENOSPC")
    } finally {
      await fh.close()
    }
    const slotLsn = async () =>
      (await pool.query<{ lsn: string }>(
        "SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1",
        [`electric_slot_${stream}`]
      )).rows[0]!.lsn
    const before = await slotLsn()
    // Changes that take far more than the slack of the pages the files already have.
    await pool.query(`UPDATE ${table} SET v = repeat('full ', 400) || id`)
    // The insert position: the test cluster commits asynchronously, so the write position may not include it yet.
    const { rows: wal } = await pool.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn")
    // Long enough for several failed attempts: the ack stays below the writes, the stack stays up.
    await sleep(3_000)
    const { rows: held } = await pool.query<{ behind: boolean }>("SELECT $1::pg_lsn < $2::pg_lsn AS behind", [await slotLsn(), wal[0]!.lsn])
    expect(held[0]!.behind).toBe(true)
    expect(child.output()).toContain("cannot write its log")
    expect((await fetch(`${baseUrl}/v1/health`)).status).toBe(200)

    await fs.rm(filler)
    await a.equalsPostgres()
    await b.equalsPostgres()
    await pool.query(`UPDATE ${table} SET v = 'after' WHERE id IN (3, 40)`)
    await a.equalsPostgres()
    await b.equalsPostgres()
    expect([a.handles.at(-1), b.handles.at(-1)]).toEqual(handles)
    expect([...a.statuses, ...b.statuses]).not.toContain(409)
    const output = child.output()
    expect(output).not.toContain("stack stopped")
    expect(output).not.toContain("removing shape")
    // Acknowledged once durable, a moment after the clients could read it.
    for (let i = 0; i < 200 && (await slotLsn()) === before; i++) await sleep(50)
    expect(await slotLsn()).not.toBe(before)
    child.kill("SIGTERM")
    expect(await child.exited).toEqual({ code: 0, signal: null })
  })
})
