import * as fs from "node:fs/promises"
import * as inspector from "node:inspector/promises"
import * as os from "node:os"
import * as path from "node:path"
import pg from "pg"
import { startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { startInProcess } from "./server.js"

/*
 * The server's side of initial syncs only, for profiling: `TABLES` copies of the bench table are
 * each synced once from offset -1 with the bodies read as bytes and not parsed, and the time to
 * the first and last byte is printed per table. With `PROFILE=<file>.cpuprofile` the syncs (not
 * the start-up) are CPU-profiled. Run with `node --import tsx scratchpad/bench/profile-initial-sync.ts`.
 */

const ROWS = Number(process.env["BENCH_ROWS"] ?? 100_000)
const TABLES = Number(process.env["BENCH_TABLES"] ?? 3)
const PROFILE = process.env["PROFILE"]

const main = async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-profile-"))
  await fs.chmod(dir, 0o755)
  const postgres = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off" }
  })
  const pool = new pg.Pool({ connectionString: postgres.url, max: 2 })
  pool.on("error", () => {})
  let server: Awaited<ReturnType<typeof startInProcess>> | undefined
  try {
    for (let t = 0; t < TABLES; t++) {
      await pool.query(`CREATE TABLE profile_items_${t} (
        id int PRIMARY KEY, title text NOT NULL, n int NOT NULL, created_at timestamptz NOT NULL, done bool NOT NULL)`)
      await pool.query(
        `INSERT INTO profile_items_${t}
         SELECT i, 'item number ' || i, (i * 7919) % 100000, now() - i * interval '1 second', i % 3 = 0
         FROM generate_series(1, $1) i`,
        [ROWS]
      )
      await pool.query(`VACUUM ANALYZE profile_items_${t}`)
    }
    server = await startInProcess(postgres.url, { storageDir: path.join(dir, "syncline"), replicationStreamId: "profile" })
    const session = new inspector.Session()
    if (PROFILE !== undefined) {
      session.connect()
      await session.post("Profiler.enable")
      await session.post("Profiler.setSamplingInterval", { interval: 200 })
      await session.post("Profiler.start")
    }
    for (let t = 0; t < TABLES; t++) {
      let handle = ""
      let offset = "-1"
      let bytes = 0
      let firstByte = 0
      const started = performance.now()
      for (;;) {
        const res = await fetch(`${server.baseUrl}/v1/shape?table=profile_items_${t}&offset=${offset}${handle === "" ? "" : `&handle=${handle}`}`)
        if (firstByte === 0) firstByte = performance.now() - started
        const body = await res.arrayBuffer()
        if (res.status !== 200) throw new Error(`${res.status}`)
        bytes += body.byteLength
        handle = res.headers.get("electric-handle") ?? handle
        offset = res.headers.get("electric-offset") ?? offset
        if (res.headers.has("electric-up-to-date")) break
      }
      const ms = performance.now() - started
      console.log(`table ${t}: first byte ${firstByte.toFixed(0)} ms, last byte ${ms.toFixed(0)} ms, ${(bytes / 1e6).toFixed(1)} MB, ${Math.round(ROWS / (ms / 1000))} rows/s`)
    }
    if (PROFILE !== undefined) {
      const { profile } = await session.post("Profiler.stop")
      await fs.writeFile(PROFILE, JSON.stringify(profile))
    }
  } finally {
    await server?.stop()
    await pool.end()
    await postgres.stop()
    await fs.rm(dir, { recursive: true, force: true })
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
