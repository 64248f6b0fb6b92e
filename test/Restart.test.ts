import * as fs from "node:fs/promises"
import pg from "pg"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest"
import { Lsn } from "../src/domain/Lsn.js"
import { decode, type PgOutputMessage } from "../src/postgres/PgOutput.js"
import { type ChildService, cleanEnv, freePort, spawnSyncline, stopAllChildren, waitHealthy } from "./support/process.js"
import { type RunningPostgres, startEmbeddedPostgres } from "../src/postgres/EmbeddedPostgres.js"
import { dropReplication, tempDir } from "./support/syncline.js"

/**
 * DESIGN.md invariant 3 and replication.md "Ack warning": Postgres skips, on restart, every
 * transaction whose commit record starts before the slot's confirmed_flush_lsn. When T2's commit
 * record starts exactly where T1's ends, acknowledging T1's end_lsn + 1 would lose T2. The service
 * runs as a child process so it can be killed with SIGKILL (no final ack, no clean shutdown).
 */

const STREAM = "restart_adjacent"
const SLOT = `electric_slot_${STREAM}`
const PUBLICATION = `electric_publication_${STREAM}`
const TABLE = "adj_items"
const MAX_ATTEMPTS = 15

interface Message {
  readonly key?: string
  readonly value?: Record<string, string | null>
  readonly headers: Record<string, string | undefined>
}

let pool: pg.Pool
let storageDir: string | undefined
const services: Array<ChildService> = []
// A Postgres of its own: other test files write WAL to the shared one all the time, and any record
// landing between T1's commit and T2's makes the two commits not adjacent.
let postgres: RunningPostgres | undefined
let postgresDir: string | undefined
let databaseUrl: string
let stopping = false

beforeAll(async () => {
  postgresDir = await tempDir(`${STREAM}-pg`)
  // As root the embedded Postgres runs as another user, which must be able to enter the directory.
  await fs.chmod(postgresDir, 0o755)
  postgres = await startEmbeddedPostgres({
    dataDir: path.join(postgresDir, "data"),
    settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off", autovacuum: "off" }
  })
  databaseUrl = postgres.url
  pool = new pg.Pool({ connectionString: databaseUrl, max: 4 })
  // Stopping this test's own Postgres at the end terminates the pool's connections; only that is expected.
  pool.on("error", (error) => {
    if (!stopping) throw error
  })
  await pool.query(`DROP TABLE IF EXISTS ${TABLE}`)
  await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, v text)`)
  await pool.query(`INSERT INTO ${TABLE} SELECT i, 'row ' || i FROM generate_series(1, 5) i`)
  // pg_walinspect gives T1's end LSN independently of anything the service reported.
  await pool.query(`CREATE EXTENSION IF NOT EXISTS pg_walinspect`)
  storageDir = await tempDir(STREAM)
})

afterAll(async () => {
  stopping = true
  await stopAllChildren()
  await dropReplication(pool, STREAM)
  await pool.end()
  await postgres?.stop()
  if (postgresDir !== undefined) await fs.rm(postgresDir, { recursive: true, force: true })
  if (storageDir !== undefined) await fs.rm(storageDir, { recursive: true, force: true })
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const waitFor = async <A>(what: string, check: () => Promise<A | undefined>, timeoutMs = 20_000): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const result = await check()
    if (result !== undefined) return result
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

const startService = async (): Promise<{ child: ChildService; baseUrl: string }> => {
  const port = await freePort()
  const child = spawnSyncline({
    env: cleanEnv({
      DATABASE_URL: databaseUrl,
      ELECTRIC_INSECURE: "true",
      ELECTRIC_PORT: String(port),
      ELECTRIC_REPLICATION_STREAM_ID: STREAM,
      ELECTRIC_STORAGE_DIR: storageDir!,
      ELECTRIC_LONG_POLL_TIMEOUT: "2000"
    })
  })
  services.push(child)
  const baseUrl = `http://127.0.0.1:${port}`
  await waitHealthy(baseUrl, 60_000, child)
  return { child, baseUrl }
}

/** A raw-HTTP shape client that remembers every message it was sent. */
class RawClient {
  handle: string | undefined
  offset = "-1"
  readonly received: Array<Message> = []
  readonly rows = new Map<string, Record<string, string | null>>()

  /** One request; resolves whether the response ended up-to-date. Any status but 200 fails the test. */
  async request(baseUrl: string, live: boolean): Promise<boolean> {
    const params = new URLSearchParams({ table: TABLE, offset: this.offset })
    if (this.handle !== undefined) params.set("handle", this.handle)
    if (live) params.set("live", "true")
    const res = await fetch(`${baseUrl}/v1/shape?${params}`)
    const text = await res.text()
    if (res.status !== 200) throw new Error(`GET ${params} answered ${res.status}: ${text}`)
    this.handle = res.headers.get("electric-handle") ?? this.handle
    this.offset = res.headers.get("electric-offset") ?? this.offset
    const messages = JSON.parse(text) as Array<Message>
    let upToDate = false
    for (const m of messages) {
      this.received.push(m)
      const op = m.headers["operation"]
      if (op === "insert") this.rows.set(m.key!, { ...m.value })
      else if (op === "update") this.rows.set(m.key!, { ...this.rows.get(m.key!), ...m.value })
      else if (op === "delete") this.rows.delete(m.key!)
      else if (m.headers["control"] === "up-to-date") upToDate = true
    }
    return upToDate
  }

  async syncUpToDate(baseUrl: string): Promise<void> {
    for (let i = 0; i < 1000; i++) if (await this.request(baseUrl, false)) return
    throw new Error("never up-to-date")
  }

  /** Long-polls until `done()` holds (bounded). */
  async awaitLive(baseUrl: string, what: string, done: () => boolean, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!done()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
      await this.request(baseUrl, true)
    }
  }

  /** Long-polls until a message inserting row `id` arrives; resolves with it. */
  async awaitInsert(baseUrl: string, id: number): Promise<Message> {
    await this.awaitLive(baseUrl, `row ${id}`, () => this.inserts(id).length > 0)
    return this.inserts(id)[0]!
  }

  inserts(id: number): Array<Message> {
    return this.received.filter((m) => m.headers["operation"] === "insert" && m.value?.["id"] === String(id))
  }
}

const slotState = async (): Promise<{ active: boolean; confirmedFlush: Lsn } | undefined> => {
  const { rows } = await pool.query<{ active: boolean; confirmed_flush_lsn: string }>(
    `SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`,
    [SLOT]
  )
  const row = rows[0]
  return row === undefined ? undefined : { active: row.active, confirmedFlush: Lsn.fromPg(row.confirmed_flush_lsn) }
}

/** What the slot would deliver next, decoded, without consuming it (the slot must be inactive). */
const peek = async (): Promise<Array<PgOutputMessage>> => {
  const { rows } = await pool.query<{ data: Buffer }>(
    `SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`,
    [SLOT, PUBLICATION]
  )
  return rows.map((r) => decode(r.data))
}

describe("kill -9 between two adjacent commits", () => {
  it("Two adjacent commits with the process killed between them: the second still arrives after the restart, exactly once", {
    timeout: 240_000
  }, async () => {
    const client = new RawClient()
    let service = await startService()
    onTestFailed(() => {
      for (const s of services) console.error(`service ${s.pid} output:\n${s.output()}`)
    })
    await client.syncUpToDate(service.baseUrl)
    expect(client.rows.size).toBe(5)
    // The first decoded change after the shape's DDL makes Postgres prune catalog pages, which
    // writes WAL; a warm-up change moves that out of the first round's window.
    await pool.query(`UPDATE ${TABLE} SET v = 'warm' WHERE id = 1`)
    await client.awaitLive(service.baseUrl, "the warm-up update", () =>
      [...client.rows.values()].some((r) => r["id"] === "1" && r["v"] === "warm"))
    // The first pg_walinspect lookups can prune catalog pages (WAL) as well: do them before the rounds.
    const warmUp = client.received.find((m) => m.headers["operation"] === "update")!
    await pool.query(`SELECT end_lsn FROM pg_get_wal_record_info($1::pg_lsn)`, [Lsn.toPg(BigInt(warmUp.headers["lsn"]!))])

    let adjacent: { t1: number; t2: number } | undefined
    const attempts: Array<string> = []
    for (let round = 0; round < MAX_ATTEMPTS && adjacent === undefined; round++) {
      if (!service.child.isRunning()) {
        service = await startService()
        // Catch up with what the previous round committed while the service was down.
        await client.syncUpToDate(service.baseUrl)
      }
      const t1 = 1001 + 2 * round
      const t2 = t1 + 1

      // W2 opens T2 and writes its insert; W1 then commits T1 on its own.
      let t1End: Lsn = 0n
      const w2 = new pg.Client({ connectionString: databaseUrl })
      await w2.connect()
      try {
        // The test cluster runs with synchronous_commit off; decoding reads only flushed WAL,
        // so T2's commit must be flushed when it returns for the peek below to see it.
        await w2.query("SET synchronous_commit = on")
        await w2.query("BEGIN")
        await w2.query(`INSERT INTO ${TABLE} VALUES ($1, 't2')`, [t2])
        await pool.query(`INSERT INTO ${TABLE} VALUES ($1, 't1')`, [t1])

        const t1Message = await client.awaitInsert(service.baseUrl, t1)
        const t1Commit = BigInt(t1Message.headers["lsn"]!)
        const { rows: walRows } = await pool.query<{ end_lsn: string; resource_manager: string; record_type: string }>(
          `SELECT end_lsn::text, resource_manager, record_type FROM pg_get_wal_record_info($1::pg_lsn)`,
          [Lsn.toPg(t1Commit)]
        )
        expect(walRows[0]).toMatchObject({ resource_manager: "Transaction", record_type: "COMMIT" })
        t1End = Lsn.fromPg(walRows[0]!.end_lsn)

        // T1 is durable in the shape once the service acknowledges it.
        await waitFor("the ack of T1", async () => {
          const state = await slotState()
          return state !== undefined && state.confirmedFlush >= t1End ? true : undefined
        })

        service.child.kill("SIGKILL")
        await w2.query("COMMIT")
      } finally {
        await w2.end()
      }
      await service.child.exited
      await waitFor("the slot to become inactive", async () => ((await slotState())?.active === false ? true : undefined))

      const state = (await slotState())!
      // The ack is exactly T1's end LSN: never end_lsn + 1, and nothing beyond T1 was processed.
      expect(state.confirmedFlush).toBe(t1End)

      const begins = (await peek()).filter((m): m is Extract<PgOutputMessage, { tag: "begin" }> => m.tag === "begin")
      // T2 is the only transaction on the publication since T1, so it comes first.
      expect(begins.length).toBeGreaterThanOrEqual(1)
      const t2Commit = begins[0]!.finalLsn
      expect(t2Commit).toBeGreaterThanOrEqual(t1End)
      attempts.push(`round ${round}: T1 end ${Lsn.toPg(t1End)}, T2 commit ${Lsn.toPg(t2Commit)}`)
      // Other test files write WAL to the same cluster, which can land between the two commits.
      if (t2Commit === t1End) adjacent = { t1, t2 }
    }
    if (adjacent === undefined) throw new Error(`the two commits were never adjacent:\n${attempts.join("\n")}`)
    console.log(`adjacent after ${attempts.length} round(s):\n${attempts.join("\n")}`)

    // S2 on the same storage dir and stream id continues the same shape: no 409.
    service = await startService()
    await client.syncUpToDate(service.baseUrl)
    await client.awaitInsert(service.baseUrl, adjacent.t2)

    const { rows: expected } = await pool.query<{ id: string; v: string | null }>(
      `SELECT id::text AS id, v FROM ${TABLE} ORDER BY ${TABLE}.id`
    )
    const ids = expected.map((r) => Number(r.id)).filter((id) => id > 1000)
    expect(ids).toContain(adjacent.t1)
    expect(ids).toContain(adjacent.t2)
    // Every row written across all rounds (the adjacent pair included) arrived exactly once.
    for (const id of ids) expect({ id, inserts: client.inserts(id).length }).toEqual({ id, inserts: 1 })

    const synced = [...client.rows.values()]
      .map((r) => ({ id: r["id"], v: r["v"] }))
      .sort((a, b) => Number(a.id) - Number(b.id))
    expect(synced).toEqual(expected.map((r) => ({ ...r })))
    service.child.kill("SIGTERM")
    expect(await service.child.exited).toEqual({ code: 0, signal: null })
  })
})
