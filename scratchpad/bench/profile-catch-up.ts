import * as fs from "node:fs/promises"
import * as inspector from "node:inspector/promises"
import * as os from "node:os"
import * as path from "node:path"
import pg from "pg"
import { startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { startInProcess } from "./server.js"

/*
 * The catch-up of one shape, profiled: a synced client, the server stopped, `TXNS` single-row
 * transactions committed, the server started again; the CPU profile covers only the restart
 * until the client has seen every change, and is written to `PROFILE` (a .cpuprofile file).
 * Run with `node --import tsx scratchpad/bench/profile-catch-up.ts`.
 */

const TXNS = Number(process.env["BENCH_TXNS"] ?? 20_000)
const PROFILE = process.env["PROFILE"] ?? "/tmp/catch-up.cpuprofile"
const TABLE = "catchup_items"

const main = async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-catchup-"))
  await fs.chmod(dir, 0o755)
  const postgres = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off" }
  })
  const pool = new pg.Pool({ connectionString: postgres.url, max: 5 })
  pool.on("error", () => {})
  const settings = { storageDir: path.join(dir, "syncline"), replicationStreamId: "catchup", longPollTimeoutMs: 5_000 }
  let server: Awaited<ReturnType<typeof startInProcess>> | undefined
  try {
    await pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, title text NOT NULL, n int NOT NULL, created_at timestamptz NOT NULL, done bool NOT NULL)`)
    await pool.query(`INSERT INTO ${TABLE} SELECT i, 'item ' || i, i, now(), false FROM generate_series(1, 1000) i`)
    server = await startInProcess(postgres.url, settings)
    let handle = ""
    let offset = "-1"
    const request = async (live: boolean) => {
      const res = await fetch(`${server!.baseUrl}/v1/shape?table=${TABLE}&offset=${offset}${handle === "" ? "" : `&handle=${handle}`}${live ? "&live=true" : ""}`)
      const text = await res.text()
      if (res.status !== 200) throw new Error(`${res.status} ${text}`)
      handle = res.headers.get("electric-handle") ?? handle
      offset = res.headers.get("electric-offset") ?? offset
      return JSON.parse(text) as Array<{ headers: Record<string, string> }>
    }
    while (!(await request(false)).some((m) => m.headers["control"] === "up-to-date"));
    await server.stop()
    server = undefined
    await Promise.all(Array.from({ length: 4 }, async (_, w) => {
      const client = await pool.connect()
      try {
        for (let k = w; k < TXNS; k += 4) {
          if (k % 2 === 0) await client.query(`INSERT INTO ${TABLE} VALUES ($1, 'new', $2, now(), false)`, [10_000 + k, k])
          else await client.query(`UPDATE ${TABLE} SET n = n + 1, done = NOT done WHERE id = $1`, [1 + (k % 1000)])
        }
      } finally {
        client.release()
      }
    }))
    const session = new inspector.Session()
    session.connect()
    await session.post("Profiler.enable")
    await session.post("Profiler.setSamplingInterval", { interval: 200 })
    await session.post("Profiler.start")
    const started = performance.now()
    server = await startInProcess(postgres.url, settings)
    const active = performance.now() - started
    let seen = 0
    while (seen < TXNS) seen += (await request(true)).filter((m) => m.headers["operation"] !== undefined).length
    const ms = performance.now() - started
    const { profile } = await session.post("Profiler.stop")
    await fs.writeFile(PROFILE, JSON.stringify(profile))
    console.log(`${seen} changes in ${ms.toFixed(0)} ms (active after ${active.toFixed(0)} ms): ${Math.round(seen / (ms / 1000))} changes/s`)
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
