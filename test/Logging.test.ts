import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { inject } from "vitest"
import { freePort, serviceEnv, spawnSyncline, stopAllChildren, waitHealthy } from "./support/process.js"
import { dropReplication, tempDir, testPool } from "./support/syncline.js"

/**
 * The service's logs as `ELECTRIC_LOG_LEVEL` and `SYNCLINE_LOG_FORMAT` ask, from the service process itself: one
 * JSON object per line for a log collector, and nothing below the level asked.
 */

const STREAM = "logging"
let pool: pg.Pool

beforeAll(() => {
  pool = testPool()
})

afterAll(async () => {
  await stopAllChildren()
  await dropReplication(pool, STREAM)
  await pool.end()
})

/** Starts the service with `extra` settings, waits until it is active, stops it with SIGTERM; its output. */
const run = async (extra: Record<string, string>) => {
  const port = await freePort()
  const child = spawnSyncline({
    env: serviceEnv({ databaseUrl: inject("databaseUrl"), port, storageDir: await tempDir(STREAM), streamId: STREAM, extra })
  })
  await waitHealthy(`http://127.0.0.1:${port}`, 60_000, child)
  child.kill("SIGTERM")
  expect((await child.exited).code).toBe(0)
  return child
}

describe("the service's logs", () => {
  it("are one JSON object per line with SYNCLINE_LOG_FORMAT=json", async () => {
    const child = await run({ SYNCLINE_LOG_FORMAT: "json" })
    const lines = child.stdout().split("\n").filter((line) => line.trim() !== "")
    const entries = lines.map((line) => JSON.parse(line) as { message: unknown; logLevel: string })
    expect(entries).toContainEqual(expect.objectContaining({ message: "stack active", logLevel: "INFO" }))
  }, 90_000)

  it("leave out what is below ELECTRIC_LOG_LEVEL", async () => {
    const child = await run({ ELECTRIC_LOG_LEVEL: "warning" })
    expect(child.output()).not.toContain("stack active")
    const info = await run({ ELECTRIC_LOG_LEVEL: "info" })
    expect(info.output()).toContain("stack active")
  }, 120_000)
})
