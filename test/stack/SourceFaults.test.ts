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
    let server = await s.start()
    const f = followed(s.baseUrl, s.table)
    await f.equalsPostgres()
    await change(s.table, "before")
    await f.equalsPostgres()
    const first = f.handles.at(-1)

    await server.stop()
    await dropSlot(s.slot)
    await change(s.table, "while-stopped")
    server = await s.start()
    await expectResynced(f, s.table, first)
    await server.stop()
  })

  it("a slot dropped while the service runs invalidates every shape once the stream reconnects", async () => {
    const s = await scenario("slot_running")
    const server = await s.start()
    const f = followed(s.baseUrl, s.table)
    await f.equalsPostgres()
    const first = f.handles.at(-1)

    await dropSlot(s.slot)
    await change(s.table, "slot-gone")
    await expectResynced(f, s.table, first)
    await server.stop()
  })

  it("a publication dropped while the service is stopped: the slot is replaced, its tables put back and their shapes re-synced", async () => {
    const s = await scenario("pub_stopped")
    let server = await s.start()
    const f = followed(s.baseUrl, s.table)
    await f.equalsPostgres()
    const first = f.handles.at(-1)

    await server.stop()
    await pool.query(`DROP PUBLICATION ${s.publication}`)
    await change(s.table, "unpublished")
    server = await s.start()
    await f.equalsPostgres()
    // The table is back in the publication: later changes reach the client too.
    await change(s.table, "after")
    await f.equalsPostgres()
    expect(f.handles.at(-1)).not.toBe(first)
    const { rows } = await pool.query("SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2", [
      s.publication,
      s.table
    ])
    expect(rows).toHaveLength(1)
    await server.stop()
  })

  it("a publication dropped and created again while stopped: the slot, older than it, is replaced", async () => {
    const s = await scenario("pub_recreated")
    let server = await s.start()
    const f = followed(s.baseUrl, s.table)
    await f.equalsPostgres()
    const first = f.handles.at(-1)

    await server.stop()
    await pool.query(`DROP PUBLICATION ${s.publication}`)
    await change(s.table, "unpublished")
    await pool.query(`CREATE PUBLICATION ${s.publication} FOR TABLE ${s.table}`)
    server = await s.start()
    await expectResynced(f, s.table, first)
    await server.stop()
  })

  it("a publication dropped while the service runs: the stack restarts and every shape re-syncs", async () => {
    const s = await scenario("pub_running")
    const server = await s.start()
    const f = followed(s.baseUrl, s.table)
    await f.equalsPostgres()
    const first = f.handles.at(-1)

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
    let server = await s.start({ publicationCheckIntervalMs: 500 })
    const f = followed(s.baseUrl, s.table)
    await f.equalsPostgres()
    const handles = [f.handles.at(-1)]

    await recreate("while running")
    await f.equalsPostgres()
    handles.push(f.handles.at(-1))
    await server.stop()
    await recreate("while stopped")
    server = await s.start({ publicationCheckIntervalMs: 500 })
    await f.equalsPostgres()
    handles.push(f.handles.at(-1))
    await change(s.table, "after")
    await f.equalsPostgres()
    expect(new Set(handles).size).toBe(3)
    await server.stop()
  })

  it("a table removed from the publication while stopped, or while running, has its shapes invalidated", async () => {
    const s = await scenario("pub_table")
    let server = await s.start({ publicationCheckIntervalMs: 500 })
    const f = followed(s.baseUrl, s.table)
    await f.equalsPostgres()
    const handles = [f.handles.at(-1)]

    await server.stop()
    await pool.query(`ALTER PUBLICATION ${s.publication} DROP TABLE ${s.table}`)
    await change(s.table, "out-while-stopped")
    server = await s.start({ publicationCheckIntervalMs: 500 })
    await f.equalsPostgres()
    handles.push(f.handles.at(-1))

    // Running: taken out, written, and put back by the periodic check.
    await pool.query(`ALTER PUBLICATION ${s.publication} DROP TABLE ${s.table}`)
    await change(s.table, "out-while-running")
    await f.equalsPostgres()
    handles.push(f.handles.at(-1))
    await change(s.table, "after")
    await f.equalsPostgres()
    expect(new Set(handles).size).toBe(3)
    await server.stop()
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
    for (let i = 0; i < 200; i++) {
      const { rows } = await pool.query<{ relreplident: string }>("SELECT relreplident FROM pg_class WHERE relname = $1", [s.table])
      if (rows[0]!.relreplident === "f") break
      await new Promise((r) => setTimeout(r, 50))
    }
    await f.equalsPostgres()
    expect(f.handles.at(-1)).not.toBe(first)
    await pool.query(`UPDATE ${s.table} SET v = 'moved out too' WHERE id = 2`)
    await f.equalsPostgres()
    const { rows } = await pool.query<{ relreplident: string }>("SELECT relreplident FROM pg_class WHERE relname = $1", [s.table])
    expect(rows[0]!.relreplident).toBe("f")
    await server.stop()
  })

  it("a storage dir restored from an older copy than the slot invalidates every shape; a quiet restart does not", async () => {
    const s = await scenario("old_storage")
    let server = await s.start()
    const f = followed(s.baseUrl, s.table)
    await f.equalsPostgres()
    await server.stop()
    const backup = `${s.storageDir}.backup`
    await fs.cp(s.storageDir, backup, { recursive: true })

    // A quiet stop and start keeps the shape: the slot is not past what the storage acknowledged.
    server = await s.start()
    await change(s.table, "after-backup")
    await f.equalsPostgres()
    const kept = f.handles.at(-1)
    expect(f.handles).toHaveLength(1)
    await server.stop()

    await fs.rm(s.storageDir, { recursive: true, force: true })
    await fs.rename(backup, s.storageDir)
    server = await s.start()
    await change(s.table, "after-restore")
    await f.equalsPostgres()
    expect(f.handles.at(-1)).not.toBe(kept)
    expect(f.statuses).toContain(409)
    await server.stop()
  })
})
