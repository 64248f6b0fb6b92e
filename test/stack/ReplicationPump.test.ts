import * as fs from "node:fs/promises"
import * as path from "node:path"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Lsn } from "../../src/domain/Lsn.js"
import { type RunningPostgres, startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { startInProcess } from "../support/inProcess.js"
import { dropReplication, tempDir } from "../support/syncline.js"

/**
 * The slot's restart position across a graceful stop, on a Postgres of this file's own: where the slot's next
 * walsender starts decoding depends on every transaction open anywhere in the cluster, which the shared test
 * database always has.
 */

const STREAM = "pump_restart_position"
const SLOT = `electric_slot_${STREAM}`
const TABLE = "pump_items"

let postgres: RunningPostgres | undefined
let postgresDir: string
let storageDir: string
let pool: pg.Pool
let stopping = false
const stops: Array<() => Promise<void>> = []

beforeAll(async () => {
  postgresDir = await tempDir(`${STREAM}-pg`)
  // As root the embedded Postgres runs as another user, which must be able to enter the directory.
  await fs.chmod(postgresDir, 0o755)
  postgres = await startEmbeddedPostgres({
    dataDir: path.join(postgresDir, "data"),
    settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off", autovacuum: "off" }
  })
  pool = new pg.Pool({ connectionString: postgres.url, max: 4 })
  // Stopping this file's Postgres at the end terminates what the pool still closes; only that is expected.
  pool.on("error", (error) => {
    if (!stopping) throw error
  })
  await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, v text)`)
  await pool.query(`INSERT INTO ${TABLE} SELECT i, 'row ' || i FROM generate_series(1, 5) i`)
  storageDir = await tempDir(STREAM)
}, 120_000)

afterAll(async () => {
  for (const stop of stops) await stop().catch(() => undefined)
  await dropReplication(pool, STREAM).catch(() => undefined)
  stopping = true
  await pool?.end()
  await postgres?.stop()
  await fs.rm(postgresDir, { recursive: true, force: true })
  await fs.rm(storageDir, { recursive: true, force: true })
})

const start = async () => {
  const server = await startInProcess(postgres!.url, {
    storageDir,
    replicationStreamId: STREAM,
    enableIntegrationTesting: true,
    longPollTimeoutMs: 2_000
  })
  stops.push(server.stop)
  return server
}

const slot = async (): Promise<{ restart: Lsn; confirmed: Lsn; active: boolean }> => {
  const { rows } = await pool.query<{ restart_lsn: string; confirmed_flush_lsn: string; active: boolean }>(
    "SELECT restart_lsn::text, confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1",
    [SLOT]
  )
  const row = rows[0]
  if (row === undefined) throw new Error(`no slot ${SLOT}`)
  return { restart: Lsn.fromPg(row.restart_lsn), confirmed: Lsn.fromPg(row.confirmed_flush_lsn), active: row.active }
}

const currentLsn = async (): Promise<Lsn> => {
  const { rows } = await pool.query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")
  return Lsn.fromPg(rows[0]!.lsn)
}

const waitFor = async (what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** A client of the table's shape that keeps its handle and offset across restarts; fails on any status but 200. */
class ShapeClient {
  private handle: string | undefined
  private offset = "-1"
  readonly values = new Map<string, string | null>()

  async request(baseUrl: string, live: boolean): Promise<boolean> {
    const params = new URLSearchParams({ table: TABLE, offset: this.offset })
    if (this.handle !== undefined) params.set("handle", this.handle)
    if (live) params.set("live", "true")
    const res = await fetch(`${baseUrl}/v1/shape?${params}`)
    const text = await res.text()
    if (res.status !== 200) throw new Error(`GET ${params} answered ${res.status}: ${text}`)
    this.handle = res.headers.get("electric-handle") ?? this.handle
    this.offset = res.headers.get("electric-offset") ?? this.offset
    let upToDate = false
    for (const m of JSON.parse(text) as Array<{ value?: Record<string, string | null>; headers: Record<string, string> }>) {
      if (m.value?.["id"] !== undefined) this.values.set(m.value["id"]!, m.value["v"] ?? this.values.get(m.value["id"]!) ?? null)
      if (m.headers["control"] === "up-to-date") upToDate = true
    }
    return upToDate
  }

  async until(baseUrl: string, what: string, done: () => boolean): Promise<void> {
    const deadline = Date.now() + 20_000
    let live = false
    while (!done()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
      if (await this.request(baseUrl, live)) live = true
    }
  }
}

describe("the slot's restart position", () => {
  it("a graceful stop moves it up to the acknowledged position, and the next start still gets what was committed meanwhile", {
    timeout: 120_000
  }, async () => {
    const client = new ShapeClient()
    let server = await start()
    await client.until(server.baseUrl, "the snapshot", () => client.values.size === 5)
    for (let i = 0; i < 100; i++) await pool.query(`UPDATE ${TABLE} SET v = $1 WHERE id = $2`, [`update ${i}`, 1 + (i % 5)])
    const written = await currentLsn()
    await client.until(server.baseUrl, "the updates", () => client.values.get("5") === "update 99")
    await waitFor("the acknowledgement of the updates", async () => (await slot()).confirmed >= written)

    await server.stop()
    await waitFor("the slot to be released", async () => !(await slot()).active)
    const stopped = await slot()
    // Postgres alone moves it only every 15 s or at a checkpoint, to a log it wrote then.
    expect(stopped.restart).toBeGreaterThanOrEqual(written)
    expect(stopped.confirmed).toBeGreaterThanOrEqual(stopped.restart)

    await pool.query(`INSERT INTO ${TABLE} VALUES (6, 'while stopped')`)
    await pool.query(`UPDATE ${TABLE} SET v = 'also while stopped' WHERE id = 1`)
    server = await start()
    await client.until(server.baseUrl, "what was committed while stopped", () =>
      client.values.get("6") === "while stopped" && client.values.get("1") === "also while stopped")
    expect(client.values.get("2")).toBe("update 96")
  })
})
