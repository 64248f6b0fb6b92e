import { HttpServer } from "@effect/platform"
import { Effect, Exit, Layer, Scope } from "effect"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import pg from "pg"
import { inject } from "vitest"
import { StackConfig, type StackSettings } from "../../src/config/StackConfig.js"
import { Server } from "../../layers/Server.js"

/** A Syncline server running in this process against the test database. */
export interface RunningSyncline {
  readonly baseUrl: string
  readonly settings: StackSettings
  readonly stop: () => Promise<void>
}

/** A temp directory removed when the test run's process ends. */
export const tempDir = (prefix: string): Promise<string> => fs.mkdtemp(path.join(os.tmpdir(), `syncline-${prefix}-`))

/**
 * Starts the HTTP server and a stack with its own replication stream id (so
 * its own slot and publication) and storage dir; waits until it is active.
 */
export const startSyncline = async (options: {
  readonly streamId: string
  readonly storageDir?: string
  readonly settings?: Partial<StackSettings>
}): Promise<RunningSyncline> => {
  const storageDir = options.storageDir ?? (await tempDir(options.streamId))
  const settings = StackConfig.make({
    port: 0,
    storageDir,
    replicationStreamId: options.streamId,
    enableIntegrationTesting: true,
    cacheMaxAge: 1,
    cacheStaleAge: 3,
    ...options.settings
  })
  const databaseUrl = inject("databaseUrl")
  const app = Server(settings, databaseUrl, { host: "127.0.0.1" })
  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(Layer.buildWithScope(app, scope))
  const server = Effect.runSync(Effect.provide(HttpServer.HttpServer, context))
  const address = server.address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  const baseUrl = `http://127.0.0.1:${address.port}`
  const deadline = Date.now() + 60_000
  for (;;) {
    const res = await fetch(`${baseUrl}/v1/health`).catch(() => undefined)
    if (res !== undefined && res.status === 200) break
    if (Date.now() > deadline) throw new Error("Syncline did not become active")
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    baseUrl,
    settings,
    stop: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

/** A `pg` pool on the test database. */
export const testPool = (): pg.Pool => new pg.Pool({ connectionString: inject("databaseUrl"), max: 4 })

/** Drops the slot and publication a test stack created, once its connection is gone. */
export const dropReplication = async (pool: pg.Pool, streamId: string): Promise<void> => {
  const slot = `electric_slot_${streamId}`
  for (let i = 0; i < 100; i++) {
    const { rows } = await pool.query("SELECT active FROM pg_replication_slots WHERE slot_name = $1", [slot])
    if (rows.length === 0) break
    if (!rows[0].active) {
      await pool.query("SELECT pg_drop_replication_slot($1)", [slot])
      break
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  await pool.query(`DROP PUBLICATION IF EXISTS "electric_publication_${streamId}"`)
}
