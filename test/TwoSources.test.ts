import { Cause, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { inject } from "vitest"
import { TwoSources } from "../scratchpad/host-app/TwoSources.js"
import { ShutdownSignal, StackConfig, type StackSettings, Syncline } from "../src/index.js"
import { sleep } from "./support/oracle.js"
import { freePort } from "./support/process.js"
import { StrictFollower, type SubqueryShape } from "./support/subqueryOracle.js"
import { dropReplication, tempDir, testPool } from "./support/syncline.js"

/**
 * Two source databases in one process (`scratchpad/host-app/TwoSources.ts`): each its own stack, mounted at its
 * own path, followed with the official client; each restarted while the other is written and read, neither
 * disturbing the other. A third stack that would reuse a stream id on the same cluster is refused at start.
 */

const SECOND_DB = "syncline_two_sources"
const TABLE = "source_items"
const ORDERS = "two_orders"
const BILLING = "two_billing"

let orders: pg.Pool
let billing: pg.Pool
let billingUrl: string
let port: number
const dirs: Record<string, string> = {}

const seed = async (pool: pg.Pool, prefix: string) => {
  await pool.query(`DROP TABLE IF EXISTS ${TABLE}`)
  await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, v text)`)
  await pool.query(`INSERT INTO ${TABLE} SELECT i, '${prefix} ' || i FROM generate_series(1, 3) i`)
}

beforeAll(async () => {
  orders = testPool()
  // A database left by an earlier run goes with its slots.
  for (const slot of [ORDERS, BILLING].map((s) => `electric_slot_${s}`)) {
    await orders.query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", [slot])
  }
  await orders.query(`DROP DATABASE IF EXISTS ${SECOND_DB}`)
  await orders.query(`CREATE DATABASE ${SECOND_DB}`)
  const url = new URL(inject("databaseUrl"))
  url.pathname = `/${SECOND_DB}`
  billingUrl = url.toString()
  billing = new pg.Pool({ connectionString: billingUrl, max: 2 })
  // The database is dropped WITH (FORCE) at the end, which can end a connection the pool is still closing: a
  // pool with no listener would throw that error out of the test run.
  billing.on("error", () => {})
  await seed(orders, "order")
  await seed(billing, "invoice")
  for (const id of [ORDERS, BILLING, "two_refused"]) dirs[id] = await tempDir(id)
  port = await freePort()
})

afterAll(async () => {
  await dropReplication(orders, ORDERS)
  await dropReplication(billing, BILLING)
  await billing.end()
  await orders.query(`DROP DATABASE IF EXISTS ${SECOND_DB} WITH (FORCE)`)
  await orders.end()
})

const settingsOf = (databaseUrl: string, streamId: string, storage = streamId): StackSettings =>
  StackConfig.make({
    databaseUrl: Option.some(Redacted.make(databaseUrl)),
    storageDir: dirs[storage]!,
    replicationStreamId: streamId,
    enableIntegrationTesting: true
  })

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

const items: SubqueryShape = { label: TABLE, table: TABLE, columns: ["id", "v"], booleans: [] }

const rowsOf = async (pool: pg.Pool) =>
  (await pool.query<{ id: number; v: string }>(`SELECT id, v FROM ${TABLE} ORDER BY id`)).rows.map((r) => [r.id, r.v])

describe("two source databases in one process", () => {
  it("serves each at its own path, restarts each without disturbing the other, and refuses a stream id used twice", async () => {
    const scope = Effect.runSync(Scope.make())
    const app = TwoSources({
      port,
      host: "127.0.0.1",
      orders: settingsOf(inject("databaseUrl"), ORDERS),
      billing: settingsOf(billingUrl, BILLING)
    })
    await Effect.runPromise(Layer.buildWithScope(app, scope))
    const base = `http://127.0.0.1:${port}`
    const followers: Array<StrictFollower> = []
    try {
      for (const path of ["/orders", "/billing"]) {
        await waitFor(`${path} active`, async () => (await fetch(`${base}${path}/v1/health`).catch(() => undefined))?.status === 200)
      }
      const ordersFollower = new StrictFollower({ ...items, label: "orders" }, () => ({ url: `${base}/orders`, generation: 0 }))
      const billingFollower = new StrictFollower({ ...items, label: "billing" }, () => ({ url: `${base}/billing`, generation: 0 }))
      followers.push(ordersFollower, billingFollower)
      await waitFor("both shapes", () => ordersFollower.rows().length === 3 && billingFollower.rows().length === 3)
      expect(ordersFollower.rows()).toEqual(await rowsOf(orders))
      expect(billingFollower.rows()).toEqual(await rowsOf(billing))

      // Each source restarts while the other is written and followed.
      let next = 4
      for (const [restarted, other, otherPool, otherFollower] of [
        ["/orders", "billing", billing, billingFollower],
        ["/billing", "orders", orders, ordersFollower]
      ] as const) {
        expect((await fetch(`${base}${restarted}/v1/admin/restart`, { method: "POST" })).status).toBe(202)
        const id = next++
        await otherPool.query(`INSERT INTO ${TABLE} VALUES ($1, $2)`, [id, `${other} ${id}`])
        await waitFor(`${other} while ${restarted} restarts`, () => otherFollower.rows().some((r) => r[0] === id))
        await orders.query(`INSERT INTO ${TABLE} VALUES ($1, $2)`, [next, `order ${next}`])
        await billing.query(`INSERT INTO ${TABLE} VALUES ($1, $2)`, [next, `invoice ${next}`])
        next++
        await waitFor(`both after ${restarted} restarted`, async () =>
          JSON.stringify(ordersFollower.rows()) === JSON.stringify(await rowsOf(orders)) &&
          JSON.stringify(billingFollower.rows()) === JSON.stringify(await rowsOf(billing)))
      }

      // A stack on the billing database with the orders stream id would share the orders slot's name.
      const refused = await Effect.runPromise(
        Effect.scoped(
          Effect.flatMap(Syncline.source(settingsOf(billingUrl, ORDERS, "two_refused")), (source) => source.supervisor.fatal)
        ).pipe(Effect.provide(ShutdownSignal.layer), Effect.exit)
      )
      expect(Exit.isFailure(refused) && Option.getOrUndefined(Cause.failureOption(refused.cause))).toMatchObject({
        _tag: "PostgresError",
        reason: "SlotTaken"
      })
      // The orders source goes on.
      await orders.query(`INSERT INTO ${TABLE} VALUES (100, 'order 100')`)
      await waitFor("orders after the refusal", () => ordersFollower.rows().some((r) => r[0] === 100))
      expect(ordersFollower.rows()).toEqual(await rowsOf(orders))
      expect(billingFollower.rows()).toEqual(await rowsOf(billing))
      expect([...ordersFollower.failures, ...billingFollower.failures]).toEqual([])
    } finally {
      for (const f of followers) f.stop()
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }, 120_000)
})
