import { it as effect } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import * as fs from "node:fs/promises"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Lsn } from "../../src/domain/Lsn.js"
import { FakePostgres, textTable } from "../../src/testing/FakePostgres.js"
import { advanceUntil, readToEnd, startServer, tempDirs } from "../../src/testing/TestHarness.js"
import { type Follower, follow } from "../support/follow.js"
import { startInProcess } from "../support/inProcess.js"
import { freePort } from "../support/process.js"
import { dropReplication, type OwnPostgres, ownPostgres, tempDir } from "../support/syncline.js"

/**
 * The slot's restart position across a graceful stop, on a Postgres of this file's own: where the slot's next
 * walsender starts decoding depends on every transaction open anywhere in the cluster, which the shared test
 * database always has.
 */

const STREAM = "pump_restart_position"
const SLOT = `electric_slot_${STREAM}`
const TABLE = "pump_items"

let postgres: OwnPostgres | undefined
let databaseUrl: string
let storageDir: string
let pool: pg.Pool
let stopping = false
const stops: Array<() => Promise<void>> = []
const followers: Array<Follower> = []
let port: number

beforeAll(async () => {
  postgres = await ownPostgres(STREAM, { fsync: "off", synchronous_commit: "off", full_page_writes: "off", autovacuum: "off" })
  databaseUrl = postgres.postgres.url
  pool = new pg.Pool({ connectionString: databaseUrl, max: 4 })
  // Stopping this file's Postgres at the end terminates what the pool still closes; only that is expected.
  pool.on("error", (error) => {
    if (!stopping) throw error
  })
  await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, v text)`)
  await pool.query(`INSERT INTO ${TABLE} SELECT i, 'row ' || i FROM generate_series(1, 5) i`)
  storageDir = await tempDir(STREAM)
  port = await freePort()
}, 120_000)

afterAll(async () => {
  for (const f of followers) f.stop()
  for (const stop of stops) await stop().catch(() => undefined)
  await dropReplication(pool, STREAM).catch(() => undefined)
  stopping = true
  await pool?.end()
  await postgres?.stop()
  if (storageDir !== undefined) await fs.rm(storageDir, { recursive: true, force: true })
})

const start = async () => {
  const server = await startInProcess(databaseUrl, {
    port,
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

describe("the slot's restart position", () => {
  it("a graceful stop moves it up to the acknowledged position, and the next start still sends what was committed meanwhile", {
    timeout: 120_000
  }, async () => {
    let server = await start()
    // The official client follows the shape across the restart, on the same port.
    const f = follow(pool, server.baseUrl, TABLE)
    followers.push(f)
    await f.equalsPostgres()
    for (let i = 0; i < 100; i++) await pool.query(`UPDATE ${TABLE} SET v = $1 WHERE id = $2`, [`update ${i}`, 1 + (i % 5)])
    const written = await currentLsn()
    await f.equalsPostgres()
    await waitFor("the acknowledgement of the updates", async () => (await slot()).confirmed >= written)

    await server.stop()
    await waitFor("the slot to be released", async () => !(await slot()).active)
    const stopped = await slot()
    // Postgres alone moves it only every 15 s or at a checkpoint, to a log it wrote then.
    expect(stopped.restart).toBeGreaterThanOrEqual(written)

    await pool.query(`INSERT INTO ${TABLE} VALUES (6, 'while stopped')`)
    await pool.query(`UPDATE ${TABLE} SET v = 'also while stopped' WHERE id = 1`)
    server = await start()
    await f.equalsPostgres()
    expect(f.handles).toHaveLength(1)
    expect(f.failures).toEqual([])
  })
})

describe("a stop and the slot's restart position, on the fake Postgres", () => {
  const ITEMS = textTable(16401, "items", ["id", "title"])
  const insert = (id: string) => ({ kind: "insert", table: "items", row: { id, title: `row ${id}` } }) as const
  const ASKED = "running transactions: log asked for"

  /** A server on `db` in a scope of its own, with a shape followed up to date; `stop` closes that scope. */
  const running = (db: FakePostgres) =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const h = yield* startServer(db, yield* tempDirs).pipe(Scope.extend(scope))
      yield* readToEnd(h, "table=items")
      return { h, stop: Scope.close(scope, Exit.void) }
    })

  effect.scoped("caught up with the slot, a stop has the running transactions logged and acknowledges a position past the log", () =>
    Effect.gen(function*() {
      const db = new FakePostgres([ITEMS])
      db.runningTransactionsLog = "keepalive"
      const { stop } = yield* running(db)
      const t = yield* db.commit([insert("1")])
      yield* db.awaitConfirmed(t.endLsn)
      yield* db.awaitConfirmed(yield* db.keepalive())
      yield* stop
      expect(db.events.filter((e) => e === ASKED)).toHaveLength(1)
      expect(db.runningTransactionsLogs).toHaveLength(1)
      expect(db.confirmedFlush).toBeGreaterThanOrEqual(db.runningTransactionsLogs[0]!)
    }))

  effect.scoped("a stop whose log is never followed by a keepalive goes on without it", () =>
    Effect.gen(function*() {
      const db = new FakePostgres([ITEMS])
      db.runningTransactionsLog = "silent"
      const { stop } = yield* running(db)
      const position = yield* db.keepalive()
      yield* db.awaitConfirmed(position)
      yield* stop
      expect(db.runningTransactionsLogs).toHaveLength(1)
      expect(db.confirmedFlush).toBe(position)
      expect(db.events.at(-1)).toBe("lock: released")
    }))

  effect.scoped("a stop with the slot still being read, or a stack that failed, does not ask for the log", () =>
    Effect.gen(function*() {
      const db = new FakePostgres([ITEMS])
      db.runningTransactionsLog = "keepalive"
      const { h, stop } = yield* running(db)
      // The last thing read is a transaction: the server may have more to send.
      const t = yield* db.commit([insert("1")])
      yield* db.awaitConfirmed(t.endLsn)
      yield* db.awaitConfirmed(yield* db.keepalive())
      const mark = db.events.length
      yield* db.poison()
      const after = yield* db.commit([insert("2")])
      // The stack is built again after the restart policy's delay, in the stack's own time.
      yield* advanceUntil(Effect.sync(() => db.confirmedFlush >= after.endLsn))
      yield* readToEnd(h, "table=items")
      expect(db.events.slice(mark)).toContain("replication: connected")
      expect(db.events.slice(mark)).not.toContain(ASKED)
      const mid = db.events.length
      yield* db.commit([insert("3")])
      yield* stop
      expect(db.events.slice(mid)).not.toContain(ASKED)
    }))
})
