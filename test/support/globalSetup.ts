import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import type {} from "vitest"
import type { TestProject } from "vitest/node"
import { startEmbeddedPostgres, stopOrphanedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { processAlive } from "./process.js"

declare module "vitest" {
  export interface ProvidedContext {
    databaseUrl: string
    /** Where the run's tests make their directories (storage dirs and the like); removed with the run. */
    scratchDir: string
  }
}

const PREFIX = "syncline-test-"

/**
 * A run interrupted before its teardown leaves its Postgres and directory behind. Each run
 * records its own pid in `owner.pid`, so only directories whose owner is gone are swept, and a
 * concurrent run's database is never touched.
 */
const sweepAbandonedRuns = async (): Promise<void> => {
  const entries = await fs.readdir(os.tmpdir()).catch(() => [])
  for (const name of entries) {
    if (!name.startsWith(PREFIX)) continue
    const dir = path.join(os.tmpdir(), name)
    const owner = Number(await fs.readFile(path.join(dir, "owner.pid"), "utf8").catch(() => ""))
    if (!Number.isInteger(owner) || owner <= 0 || processAlive(owner)) continue
    try {
      await stopOrphanedPostgres(path.join(dir, "data"))
      await fs.rm(dir, { recursive: true, force: true })
    } catch {
      // Best effort: a leftover that cannot be removed does not stop this run.
    }
  }
}

/**
 * Starts one Postgres (logical replication on) for the whole test run in a fresh temporary
 * directory and provides its URL as `inject("databaseUrl")`. Test files share it, so each one
 * creates its own uniquely named tables, slots and publications.
 */
export default async function setup({ provide }: TestProject): Promise<() => Promise<void>> {
  await sweepAbandonedRuns()
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), PREFIX))
  // mkdtemp makes the directory 0700; as root, Postgres runs as another user that must enter it.
  await fs.chmod(dir, 0o755)
  await fs.writeFile(path.join(dir, "owner.pid"), `${process.pid}\n`)
  const scratch = path.join(dir, "scratch")
  await fs.mkdir(scratch)
  const postgres = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    settings: { max_connections: "300", fsync: "off", synchronous_commit: "off", full_page_writes: "off" }
  })
  provide("databaseUrl", postgres.url)
  provide("scratchDir", scratch)
  return async () => {
    await postgres.stop()
    await fs.rm(dir, { recursive: true, force: true })
  }
}
