import * as fs from "node:fs/promises"
import * as path from "node:path"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest"
import { type RunningPostgres, startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { type Follower, follow } from "../support/follow.js"
import { startInProcess } from "../support/inProcess.js"
import { cleanEnv, freePort, spawnSyncline, stopAllChildren, waitHealthy } from "../support/process.js"
import { tempDir } from "../support/syncline.js"

/**
 * Faults of the server itself, on a Postgres of this file's own (it is stopped, reconfigured and
 * made to drop WAL): a walsender terminated again and again, Postgres stopped for 20 s under a
 * write load, the service started while Postgres is down, a slot invalidated for lack of WAL, and
 * WAL retained while only unsynced tables are written. The official client follows each shape and
 * ends equal to Postgres.
 */

let postgres: RunningPostgres | undefined
let postgresDir: string
let pgPort: number
let databaseUrl: string
let pool: pg.Pool
let stoppingPostgres = false
const dirs: Array<string> = []
const stops: Array<() => Promise<void>> = []
const followers: Array<Follower> = []

const PG_SETTINGS = { fsync: "off", synchronous_commit: "off", full_page_writes: "off", max_wal_size: "64MB" }

const startPostgres = async () => {
  postgres = await startEmbeddedPostgres({ dataDir: path.join(postgresDir, "data"), port: pgPort, settings: PG_SETTINGS })
  databaseUrl = postgres.url
}

const stopPostgres = async () => {
  stoppingPostgres = true
  await postgres?.stop()
  postgres = undefined
}

beforeAll(async () => {
  postgresDir = await tempDir("pgfaults-pg")
  // As root the embedded Postgres runs as another user, which must be able to enter the directory.
  await fs.chmod(postgresDir, 0o755)
  pgPort = await freePort()
  await startPostgres()
  pool = new pg.Pool({ connectionString: databaseUrl, max: 4 })
  // Connections die when this file stops its Postgres: expected then, and the pool reconnects after.
  pool.on("error", (error) => {
    if (!stoppingPostgres) throw error
  })
})

afterAll(async () => {
  for (const f of followers) f.stop()
  for (const stop of stops) await stop().catch(() => undefined)
  await stopAllChildren()
  await pool?.end().catch(() => undefined)
  await stopPostgres()
  await fs.rm(postgresDir, { recursive: true, force: true })
  for (const dir of dirs) await fs.rm(dir, { recursive: true, force: true })
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Retries `query` while Postgres is (re)starting. */
const query = async <R extends pg.QueryResultRow>(text: string, params: Array<unknown> = []): Promise<pg.QueryResult<R>> => {
  for (let attempt = 0;; attempt++) {
    try {
      return await pool.query<R>(text, params)
    } catch (error) {
      if (attempt >= 100) throw error
      await sleep(100)
    }
  }
}

const table = async (name: string) => {
  await query(`DROP TABLE IF EXISTS ${name}`)
  await query(`CREATE TABLE ${name} (id int PRIMARY KEY, v text)`)
  await query(`INSERT INTO ${name} SELECT i, 'row ' || i FROM generate_series(1, 20) i`)
}

/** A service in this process on a fixed port, against this file's Postgres. */
const service = async (stream: string, previous?: { readonly storageDir: string; readonly port: number }) => {
  const port = previous?.port ?? (await freePort())
  const dir = previous?.storageDir ?? (await tempDir(stream))
  dirs.push(dir)
  const server = await startInProcess(databaseUrl, {
    port,
    storageDir: dir,
    replicationStreamId: stream,
    enableIntegrationTesting: true,
    longPollTimeoutMs: 2_000
  })
  stops.push(server.stop)
  return { ...server, storageDir: dir, port }
}

const followed = (baseUrl: string, name: string) => {
  const f = follow(pool, baseUrl, name)
  followers.push(f)
  return f
}

const health = async (baseUrl: string): Promise<number | undefined> => {
  const res = await fetch(`${baseUrl}/v1/health`, { signal: AbortSignal.timeout(1_000) }).catch(() => undefined)
  await res?.body?.cancel()
  return res?.status
}

const walsenderPid = async (slot: string): Promise<number | undefined> => {
  const { rows } = await query<{ active_pid: number | null }>(
    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
    [slot]
  )
  return rows[0]?.active_pid ?? undefined
}

describe("faults of the source server", () => {
  it("a walsender terminated again and again is reconnected within a second or two each time", { timeout: 90_000 }, async () => {
    await table("pf_walsender")
    const stream = "pf_walsender"
    const server = await service(stream)
    const f = followed(server.baseUrl, "pf_walsender")
    await f.equalsPostgres()
    const outages: Array<number> = []
    for (let round = 0; round < 4; round++) {
      // Healthy for longer than the restart backoff takes to forget earlier failures (3 s).
      await sleep(4_000)
      const pid = await walsenderPid(`electric_slot_${stream}`)
      expect(pid).toBeDefined()
      const killed = Date.now()
      await query("SELECT pg_terminate_backend($1)", [pid])
      await query(`UPDATE pf_walsender SET v = 'round ${round}' WHERE id = $1`, [round + 1])
      for (;;) {
        const now = await walsenderPid(`electric_slot_${stream}`)
        if (now !== undefined && now !== pid && (await health(server.baseUrl)) === 200) break
        if (Date.now() - killed > 30_000) throw new Error("the replication connection never came back")
        await sleep(20)
      }
      outages.push(Date.now() - killed)
      await f.equalsPostgres()
    }
    onTestFailed(() => console.error(`outages: ${outages.join(", ")} ms`))
    for (const outage of outages) expect(outage).toBeLessThan(2_500)
    expect(f.statuses).not.toContain(409)
    expect(f.handles).toHaveLength(1)
  })

  it("Postgres stopped for 20 s under a write load: nothing is lost, no 409", { timeout: 120_000 }, async () => {
    await table("pf_outage")
    const server = await service("pf_outage")
    const f = followed(server.baseUrl, "pf_outage")
    await f.equalsPostgres()
    let writing = true
    let written = 0
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        try {
          await pool.query(`INSERT INTO pf_outage VALUES ($1, 'w') ON CONFLICT (id) DO UPDATE SET v = excluded.v || $1`, [100 + (i % 300)])
          written++
        } catch {
          await sleep(100)
        }
      }
    })()
    await sleep(1_000)
    await stopPostgres()
    await sleep(20_000)
    await startPostgres()
    stoppingPostgres = false
    await sleep(1_000)
    writing = false
    await writer
    expect(written).toBeGreaterThan(50)
    await f.equalsPostgres(60_000)
    expect(f.statuses).not.toContain(409)
    expect(f.handles).toHaveLength(1)
  })

  it("a service started while Postgres is down answers database_unreachable, then syncs once it is up", { timeout: 120_000 }, async () => {
    await table("pf_down")
    await stopPostgres()
    const port = await freePort()
    const storageDir = await tempDir("pf_down")
    dirs.push(storageDir)
    const child = spawnSyncline({
      env: cleanEnv({
        DATABASE_URL: databaseUrl,
        ELECTRIC_INSECURE: "true",
        ELECTRIC_PORT: String(port),
        ELECTRIC_REPLICATION_STREAM_ID: "pf_down",
        ELECTRIC_STORAGE_DIR: storageDir
      })
    })
    onTestFailed(() => console.error(child.output()))
    const baseUrl = `http://127.0.0.1:${port}`
    let answer: Response | undefined
    for (let i = 0; i < 300 && answer === undefined; i++) {
      answer = await fetch(`${baseUrl}/v1/shape?table=pf_down&offset=-1`).catch(() => undefined)
      if (answer === undefined) await sleep(100)
    }
    try {
      expect(answer?.status).toBe(503)
      expect(answer?.headers.get("retry-after")).toBe("10")
      expect(await answer?.json()).toEqual({ code: "database_unreachable", error: "Database is unreachable" })
    } finally {
      await startPostgres()
      stoppingPostgres = false
    }
    await waitHealthy(baseUrl, 60_000, child)
    const f = followed(baseUrl, "pf_down")
    await f.equalsPostgres()
    await query("UPDATE pf_down SET v = 'after' WHERE id < 5")
    await f.equalsPostgres()
    child.kill("SIGTERM")
    expect(await child.exited).toEqual({ code: 0, signal: null })
  })

  it("a slot invalidated for lack of WAL is replaced and its shapes re-synced, not retried forever", { timeout: 120_000 }, async () => {
    await table("pf_lost")
    const stream = "pf_lost"
    const slot = `electric_slot_${stream}`
    let server = await service(stream)
    const f = followed(server.baseUrl, "pf_lost")
    await f.equalsPostgres()
    const first = f.handles.at(-1)
    await server.stop()

    await query("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    await query("SELECT pg_reload_conf()")
    try {
      for (let i = 0; i < 50; i++) {
        await query("UPDATE pf_lost SET v = v || '.' WHERE id = 1")
        await query("SELECT pg_switch_wal()")
        await query("CHECKPOINT")
        const { rows } = await query<{ wal_status: string }>("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", [slot])
        if (rows[0]?.wal_status === "lost") break
      }
      const { rows } = await query<{ wal_status: string }>("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", [slot])
      expect(rows[0]?.wal_status).toBe("lost")
    } finally {
      await query("ALTER SYSTEM RESET max_slot_wal_keep_size")
      await query("SELECT pg_reload_conf()")
    }

    server = await service(stream, server)
    await f.equalsPostgres()
    expect(f.handles.at(-1)).not.toBe(first)
    await query("UPDATE pf_lost SET v = 'after' WHERE id = 2")
    await f.equalsPostgres()
    const { rows } = await query<{ wal_status: string }>("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", [slot])
    expect(rows[0]?.wal_status).not.toBe("lost")
  })

  it("writes to unsynced tables do not pin WAL: the slot follows keepalives", { timeout: 90_000 }, async () => {
    await table("pf_quiet")
    await query("DROP TABLE IF EXISTS pf_busy")
    await query("CREATE TABLE pf_busy (id serial PRIMARY KEY, pad text)")
    await query("ALTER SYSTEM SET wal_sender_timeout = '2s'")
    await query("SELECT pg_reload_conf()")
    const stream = "pf_quiet"
    const slot = `electric_slot_${stream}`
    try {
      const server = await service(stream)
      const f = followed(server.baseUrl, "pf_quiet")
      await f.equalsPostgres()
      const walAt = async () => (await query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")).rows[0]!.lsn
      const start = await walAt()
      for (let i = 0; i < 20; i++) await query("INSERT INTO pf_busy (pad) SELECT repeat('x', 1000) FROM generate_series(1, 2000)")
      const { rows: written } = await query<{ bytes: string }>("SELECT pg_current_wal_lsn() - $1::pg_lsn AS bytes", [start])
      expect(Number(written[0]!.bytes)).toBeGreaterThan(20_000_000)
      const lag = async () => {
        const { rows } = await query<{ lag: string }>(
          "SELECT pg_current_wal_lsn() - confirmed_flush_lsn AS lag FROM pg_replication_slots WHERE slot_name = $1",
          [slot]
        )
        return Number(rows[0]!.lag)
      }
      let now = await lag()
      for (let i = 0; i < 200 && now > 4_000_000; i++) {
        await sleep(100)
        now = await lag()
      }
      expect(now).toBeLessThan(4_000_000)
      // The synced table still syncs.
      await query("UPDATE pf_quiet SET v = 'after' WHERE id = 1")
      await f.equalsPostgres()
    } finally {
      await query("ALTER SYSTEM RESET wal_sender_timeout")
      await query("SELECT pg_reload_conf()")
    }
  })
})
