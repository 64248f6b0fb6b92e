import { ConfigProvider, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { inject } from "vitest"
import { HostApp } from "../scratchpad/host-app/HostApp.js"
import { StackConfig } from "../src/index.js"
import { sleep } from "./support/oracle.js"
import { freePort } from "./support/process.js"
import { StrictFollower, type SubqueryShape } from "./support/subqueryOracle.js"
import { dropReplication, itemsTable, tempDir, testPool } from "./support/syncline.js"

/**
 * Syncline composed into a host Effect app (`scratchpad/host-app`): the host's own route beside the shape API
 * mounted at `/sync`, on the host's server, the settings given once — as a value, then through the host's
 * `ConfigProvider`. The official client follows a shape through an in-process restart of the stack and a
 * graceful stop of the whole host, strict about every response.
 */

const STREAM = "host_app"
const TABLE = "host_items"

let pool: pg.Pool
let storageDir: string
let port: number

beforeAll(async () => {
  pool = testPool()
  await itemsTable(pool, TABLE, `SELECT i, 'row ' || i FROM generate_series(1, 5) i`)
  storageDir = await tempDir(STREAM)
  port = await freePort()
})

afterAll(async () => {
  await dropReplication(pool, STREAM)
  await pool.end()
})

/** Builds the host app on `port` with `settings` and waits until the shape API under `/sync` is active. */
const startHost = async (settings: Layer.Layer<StackConfig, unknown>) => {
  const scope = Effect.runSync(Scope.make())
  await Effect.runPromise(Layer.buildWithScope(HostApp({ port, host: "127.0.0.1" }).pipe(Layer.provide(settings)), scope))
  const base = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 60_000
  for (;;) {
    const res = await fetch(`${base}/sync/v1/health`).catch(() => undefined)
    if (res?.status === 200) break
    if (Date.now() > deadline) throw new Error("the host app's shape API never became active")
    await sleep(50)
  }
  return { base, stop: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

const waitFor = async (what: string, check: () => boolean, timeoutMs = 30_000) => {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

const items: SubqueryShape = { label: "host_items", table: TABLE, columns: ["id", "v"], booleans: [] }

const expectedRows = async () =>
  (await pool.query<{ id: number; v: string }>(`SELECT id, v FROM ${TABLE} ORDER BY id`)).rows.map((r) => [r.id, r.v])

describe("a host app with Syncline inside", () => {
  it("serves its own route beside the shape API at /sync, restarts the stack, and stops gracefully losing nothing", async () => {
    const url = inject("databaseUrl")
    // Long-polls held for ten minutes: were the drain not part of the host's stop, stopping would wait for them.
    const first = await startHost(StackConfig.layerWith({
      databaseUrl: Option.some(Redacted.make(url)),
      storageDir,
      replicationStreamId: STREAM,
      enableIntegrationTesting: true,
      longPollTimeoutMs: 600_000
    }))
    let stopped = false
    let host = first
    const follower = new StrictFollower(items, () => ({ url: `${host.base}/sync`, generation: 0 }))
    try {
      const hello = await fetch(`${first.base}/hello`)
      expect(hello.status).toBe(200)
      expect(await hello.json()).toEqual({ message: "hello from the host app" })
      // The shape API answers under the host's path only.
      expect((await fetch(`${first.base}/v1/shape?table=${TABLE}&offset=-1`)).status).toBe(404)

      await waitFor("the initial rows", () => follower.upToDate && follower.rows().length === 5)
      expect(follower.rows()).toEqual(await expectedRows())

      // The stack restarts inside the host, while rows are written.
      const restart = await fetch(`${first.base}/sync/v1/admin/restart`, { method: "POST" })
      expect(restart.status).toBe(202)
      for (let i = 6; i <= 10; i++) await pool.query(`INSERT INTO ${TABLE} VALUES ($1, $2)`, [i, `row ${i}`])
      await waitFor("the rows written across the restart", () => follower.rows().length === 10)
      expect(follower.rows()).toEqual(await expectedRows())

      // The host stops while the client holds a long-poll and two more rows are on their way; it starts again, its
      // settings read this time through its own ConfigProvider.
      await pool.query(`INSERT INTO ${TABLE} VALUES (11, 'row 11'), (12, 'row 12')`)
      await first.stop()
      stopped = true
      host = await startHost(StackConfig.layer.pipe(Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
        new Map([
          ["DATABASE_URL", url],
          ["ELECTRIC_INSECURE", "true"],
          ["ELECTRIC_STORAGE_DIR", storageDir],
          ["ELECTRIC_REPLICATION_STREAM_ID", STREAM]
        ])
      )))))
      stopped = false
      await pool.query(`INSERT INTO ${TABLE} VALUES (13, 'row 13')`)
      await waitFor("every row after the host's restart", () => follower.rows().length === 13)
      expect(follower.rows()).toEqual(await expectedRows())
      expect(follower.failures).toEqual([])
    } finally {
      follower.stop()
      if (!stopped) await host.stop()
    }
  }, 120_000)
})
