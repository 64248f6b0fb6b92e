import * as fs from "node:fs/promises"
import * as path from "node:path"
import pg from "pg"
import { inject } from "vitest"
import { StackConfig, type StackSettings } from "../../src/config/StackConfig.js"
import { type RunningPostgres, startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { type InProcessSyncline, startInProcess } from "./inProcess.js"

/** A Syncline server running in this process against the test database. */
export type RunningSyncline = InProcessSyncline

/** A fresh directory in the run's scratch directory, which the run removes when it ends. */
export const tempDir = (prefix: string): Promise<string> => fs.mkdtemp(path.join(inject("scratchDir"), `syncline-${prefix}-`))

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
  return startInProcess(inject("databaseUrl"), settings)
}

/** A Postgres of one test file's own, and how to stop it. */
export interface OwnPostgres {
  readonly postgres: RunningPostgres
  /** Stops it and removes its directory. */
  readonly stop: () => Promise<void>
}

/**
 * A Postgres of the calling file's own, for what the shared test database cannot give (its WAL, its slots and its
 * open transactions are every file's), in a fresh directory.
 */
export const ownPostgres = async (prefix: string, settings: Readonly<Record<string, string>>): Promise<OwnPostgres> => {
  const dir = await tempDir(`${prefix}-pg`)
  const removeDir = () => fs.rm(dir, { recursive: true, force: true })
  try {
    // As root the embedded Postgres runs as another user, which must be able to enter the directory.
    await fs.chmod(dir, 0o755)
    const postgres = await startEmbeddedPostgres({ dataDir: path.join(dir, "data"), settings })
    return {
      postgres,
      stop: async () => {
        try {
          await postgres.stop()
        } finally {
          await removeDir()
        }
      }
    }
  } catch (error) {
    await removeDir()
    throw error
  }
}

/** A `pg` pool on the test database. */
export const testPool = (): pg.Pool => new pg.Pool({ connectionString: inject("databaseUrl"), max: 4 })

/**
 * A fresh table `(id int PRIMARY KEY, v text)` (dropped first, in case a previous run left it) filled by
 * `rows`, a query such as `SELECT i, 'row ' || i FROM generate_series(1, 5) i`.
 */
export const itemsTable = async (pool: pg.Pool, name: string, rows: string): Promise<void> => {
  await pool.query(`DROP TABLE IF EXISTS ${name}`)
  await pool.query(`CREATE TABLE ${name} (id int PRIMARY KEY, v text)`)
  await pool.query(`INSERT INTO ${name} ${rows}`)
}

/** An HTTP response as a test reads it. */
export interface RawReply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
}

/** One request to `baseUrl` + `path`, with `query` sent as written (so `%00` reaches the server as a NUL). */
export const send = async (baseUrl: string, method: string, path: string, query = ""): Promise<RawReply> => {
  const res = await fetch(`${baseUrl}${path}${query === "" ? "" : `?${query}`}`, { method })
  return { status: res.status, headers: res.headers, text: await res.text() }
}

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
