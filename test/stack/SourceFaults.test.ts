import * as fs from "node:fs/promises"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Follower, follow } from "../support/follow.js"
import { freePort } from "../support/process.js"
import { dropReplication, itemsTable, type RunningSyncline, startSyncline, tempDir, testPool } from "../support/syncline.js"

/**
 * DESIGN.md invariant 8 against a real Postgres, with the official client following each shape: a
 * slot dropped (while stopped or running), a publication dropped or a table taken out of it (while
 * stopped or running), a storage dir restored from an older copy. Each ends with the client equal to
 * Postgres — through a 409 and a fresh snapshot, never a handle that stays valid over a hole.
 */

let pool: pg.Pool
const running: Array<RunningSyncline> = []
const streams: Array<string> = []
const followers: Array<{ stop: () => void }> = []

beforeAll(() => {
  pool = testPool()
})

afterAll(async () => {
  for (const f of followers) f.stop()
  for (const s of running) await s.stop().catch(() => undefined)
  for (const stream of streams) await dropReplication(pool, stream)
  await pool.end()
})

/** A fresh table `id int PRIMARY KEY, v text` with rows 1..5, and a stream id of its own. */
const scenario = async (name: string) => {
  const table = `sf_${name}`
  const stream = `sf_${name}`
  streams.push(stream)
  await itemsTable(pool, table, `SELECT i, 'row ' || i FROM generate_series(1, 5) i`)
  const port = await freePort()
  const storageDir = await tempDir(stream)
  const start = async (settings: { readonly publicationCheckIntervalMs?: number } = {}) => {
    const server = await startSyncline({ streamId: stream, storageDir, settings: { port, ...settings } })
    running.push(server)
    return server
  }
  return {
    table,
    slot: `electric_slot_${stream}`,
    publication: `electric_publication_${stream}`,
    storageDir,
    start,
    baseUrl: `http://127.0.0.1:${port}`
  }
}

const followed = (baseUrl: string, table: string) => {
  const f = follow(pool, baseUrl, table)
  followers.push(f)
  return f
}

/** Drops a slot, terminating the walsender that holds it first, as an operator would have to. */
const dropSlot = async (slot: string) => {
  for (let attempt = 0; attempt < 100; attempt++) {
    const { rows } = await pool.query<{ active_pid: number | null }>(
      "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
      [slot]
    )
    if (rows.length === 0) return
    if (rows[0]!.active_pid !== null) {
      await pool.query("SELECT pg_terminate_backend($1)", [rows[0]!.active_pid])
    } else {
      try {
        await pool.query("SELECT pg_drop_replication_slot($1)", [slot])
        return
      } catch (error) {
        // Taken again in between by the service reconnecting: terminate and try again.
        if ((error as { code?: string }).code !== "55006") throw error
      }
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  throw new Error(`could not drop ${slot}`)
}

const change = async (table: string, round: string) => {
  await pool.query(`UPDATE ${table} SET v = v || ' ${round}' WHERE id <= 3`)
  await pool.query(`DELETE FROM ${table} WHERE id = (SELECT max(id) FROM ${table})`)
  await pool.query(`INSERT INTO ${table} SELECT max(id) + 10, '${round}' FROM ${table}`)
}

type Scenario = Awaited<ReturnType<typeof scenario>>
type Settings = { readonly publicationCheckIntervalMs?: number }

/** A service on the scenario, with the official client following its table up to date; `first` is its handle. */
const following = async (s: Scenario, settings: Settings = {}) => {
  const server = await s.start(settings)
  const f = followed(s.baseUrl, s.table)
  await f.equalsPostgres()
  return { server, f, first: f.handles.at(-1) }
}

/** Stops the service, applies `fault` while it is down, and starts it again on the same storage and port. */
const whileStopped = async (s: Scenario, server: RunningSyncline, fault: () => Promise<void>, settings: Settings = {}) => {
  await server.stop()
  await fault()
  return s.start(settings)
}

/** After the fault: the client re-synced with a new handle, through a 409, and later changes reach it too. */
const expectResynced = async (f: Follower, table: string, before: string | undefined) => {
  await f.equalsPostgres()
  await change(table, "after")
  await f.equalsPostgres()
  expect(f.handles.at(-1)).not.toBe(before)
  expect(f.statuses).toContain(409)
}

describe("the source is the same source, or the shapes go", () => {
  it("a slot dropped while the service is stopped invalidates every shape: the client re-syncs and equals Postgres", async () => {
    const s = await scenario("slot_stopped")
    const { f, first, server } = await following(s)
    const restarted = await whileStopped(s, server, async () => {
      await dropSlot(s.slot)
      await change(s.table, "while-stopped")
    })
    await expectResynced(f, s.table, first)
    await restarted.stop()
  })

  it("a slot dropped while the service runs invalidates every shape once the stream reconnects", async () => {
    const s = await scenario("slot_running")
    const { f, first, server } = await following(s)
    await dropSlot(s.slot)
    await change(s.table, "slot-gone")
    await expectResynced(f, s.table, first)
    await server.stop()
  })

  it("a publication dropped while the service is stopped: the slot is replaced, its tables put back and their shapes re-synced", async () => {
    const s = await scenario("pub_stopped")
    const { f, first, server } = await following(s)
    const restarted = await whileStopped(s, server, async () => {
      await pool.query(`DROP PUBLICATION ${s.publication}`)
      await change(s.table, "unpublished")
    })
    // The table is back in the publication: later changes reach the client too.
    await expectResynced(f, s.table, first)
    const { rows } = await pool.query("SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2", [
      s.publication,
      s.table
    ])
    expect(rows).toHaveLength(1)
    await restarted.stop()
  })

  it("a publication dropped and created again while stopped: the slot, older than it, is replaced", async () => {
    const s = await scenario("pub_recreated")
    const { f, first, server } = await following(s)
    const restarted = await whileStopped(s, server, async () => {
      await pool.query(`DROP PUBLICATION ${s.publication}`)
      await change(s.table, "unpublished")
      await pool.query(`CREATE PUBLICATION ${s.publication} FOR TABLE ${s.table}`)
    })
    await expectResynced(f, s.table, first)
    await restarted.stop()
  })

  it("a publication dropped while the service runs: the stack restarts and every shape re-syncs", async () => {
    const s = await scenario("pub_running")
    const { f, first, server } = await following(s)
    await pool.query(`DROP PUBLICATION ${s.publication}`)
    await change(s.table, "unpublished")
    await expectResynced(f, s.table, first)
    await server.stop()
  })

  it("a table dropped and created again, while running or while stopped, has its shapes invalidated", async () => {
    const s = await scenario("recreated")
    const recreate = async (round: string) => {
      await pool.query(`DROP TABLE ${s.table}`)
      await pool.query(`CREATE TABLE ${s.table} (id int PRIMARY KEY, v text)`)
      await pool.query(`INSERT INTO ${s.table} SELECT i, '${round} ' || i FROM generate_series(3, 7) i`)
    }
    const checked = { publicationCheckIntervalMs: 500 }
    const { f, first, server } = await following(s, checked)
    await recreate("while running")
    await f.equalsPostgres()
    const second = f.handles.at(-1)
    const restarted = await whileStopped(s, server, () => recreate("while stopped"), checked)
    await expectResynced(f, s.table, second)
    expect(new Set([first, second, f.handles.at(-1)]).size).toBe(3)
    await restarted.stop()
  })

  it("a table removed from the publication while stopped, or while running, has its shapes invalidated", async () => {
    const s = await scenario("pub_table")
    const checked = { publicationCheckIntervalMs: 500 }
    const { f, first, server } = await following(s, checked)
    const restarted = await whileStopped(s, server, async () => {
      await pool.query(`ALTER PUBLICATION ${s.publication} DROP TABLE ${s.table}`)
      await change(s.table, "out-while-stopped")
    }, checked)
    await f.equalsPostgres()
    const second = f.handles.at(-1)

    // Running: taken out, written, and put back by the periodic check.
    await pool.query(`ALTER PUBLICATION ${s.publication} DROP TABLE ${s.table}`)
    await change(s.table, "out-while-running")
    await expectResynced(f, s.table, second)
    expect(new Set([first, second, f.handles.at(-1)]).size).toBe(3)
    await restarted.stop()
  })

  it("a table whose replica identity was changed has its shapes invalidated and gets REPLICA IDENTITY FULL back", async () => {
    const s = await scenario("replident")
    const server = await s.start({ publicationCheckIntervalMs: 500 })
    // Without the old row, an update cannot tell that a row left a filtered shape.
    const f = follow(pool, s.baseUrl, s.table, { where: "v LIKE 'row%'" })
    followers.push(f)
    await f.equalsPostgres()
    const first = f.handles.at(-1)

    await pool.query(`ALTER TABLE ${s.table} REPLICA IDENTITY DEFAULT`)
    await pool.query(`UPDATE ${s.table} SET v = 'moved out' WHERE id = 1`)
    const identity = async () =>
      (await pool.query<{ relreplident: string }>("SELECT relreplident FROM pg_class WHERE relname = $1", [s.table]))
        .rows[0]!.relreplident
    for (let i = 0; i < 200 && (await identity()) !== "f"; i++) await new Promise((r) => setTimeout(r, 50))
    await f.equalsPostgres()
    expect(f.handles.at(-1)).not.toBe(first)
    await pool.query(`UPDATE ${s.table} SET v = 'moved out too' WHERE id = 2`)
    await f.equalsPostgres()
    expect(await identity()).toBe("f")
    await server.stop()
  })

  it("a storage dir restored from an older copy than the slot invalidates every shape; a quiet restart does not", async () => {
    const s = await scenario("old_storage")
    const { f, first, server } = await following(s)
    const backup = `${s.storageDir}.backup`
    // A quiet stop and start keeps the shape: the slot is not past what the storage acknowledged.
    const quiet = await whileStopped(s, server, () => fs.cp(s.storageDir, backup, { recursive: true }))
    await change(s.table, "after-backup")
    await f.equalsPostgres()
    expect(f.handles).toEqual([first])

    const restored = await whileStopped(s, quiet, async () => {
      await fs.rm(s.storageDir, { recursive: true, force: true })
      await fs.rename(backup, s.storageDir)
    })
    await expectResynced(f, s.table, first)
    await restored.stop()
  })
})
