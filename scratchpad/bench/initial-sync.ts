import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { Writable } from "node:stream"
import { pipeline } from "node:stream/promises"
import pg from "pg"
import { to as copyTo } from "pg-copy-streams"
import { startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"
import { startInProcess } from "../../test/support/inProcess.js"

/*
 * Initial sync and live throughput, next to what Postgres itself can do:
 *   (a) COPY of the table to STDOUT: the physical limit for reading it;
 *   (b) the initial sync of the same table through Syncline over HTTP (fetch loop from -1);
 *   (c) 20k single-row transactions through one shape, seen by a long-polling client, beside
 *       decoding the same transactions straight from a logical slot;
 *   (d) catch-up, the pipeline's own capacity: the server is stopped, 20k single-row
 *       transactions matching the shape are committed, the server starts again on the same
 *       storage and slot, and the client (continuing from its handle and offset) is timed
 *       until it has seen every change; beside raw decoding of the same transactions;
 *   (e) non-matching capacity: 1,000 idle shapes (`where id = <k>`, k outside the written
 *       rows), the same stop / write / start, timed until the slot's confirmed_flush_lsn
 *       passes the last commit.
 * Run with `npm run bench:initial-sync` (or `npx tsx scratchpad/bench/initial-sync.ts`).
 */

const ROWS = Number(process.env["BENCH_ROWS"] ?? 100_000)
const LIVE_TXNS = Number(process.env["BENCH_LIVE_TXNS"] ?? 20_000)
const CATCHUP_TXNS = Number(process.env["BENCH_CATCHUP_TXNS"] ?? 20_000)
const IDLE_SHAPES = Number(process.env["BENCH_IDLE_SHAPES"] ?? 1_000)
const IDLE_TXNS = Number(process.env["BENCH_IDLE_TXNS"] ?? 20_000)
const WRITERS = 4
const TABLE = "bench_items"
const IDLE_TABLE = "bench_idle"
const STREAM = "bench"

interface Message {
  readonly headers: Record<string, string | undefined>
  readonly key?: string
}

const seconds = (ms: number) => (ms / 1000).toFixed(2)
const perSecond = (n: number, ms: number) => Math.round(n / (ms / 1000)).toLocaleString("en-US")
const mb = (bytes: number) => (bytes / 1024 / 1024).toFixed(1)

/** Counts the occurrences of `needle` in `haystack`. */
const occurrences = (haystack: Buffer, needle: Buffer): number => {
  let n = 0
  for (let i = haystack.indexOf(needle); i !== -1; i = haystack.indexOf(needle, i + needle.length)) n++
  return n
}
const INSERT_NEEDLE = Buffer.from(`"operation":"insert"`)

const main = async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-bench-"))
  // As root the embedded Postgres runs as another user, which must be able to enter the directory.
  await fs.chmod(dir, 0o755)
  const results: Array<[string, string, string, string]> = []
  const postgres = await startEmbeddedPostgres({
    dataDir: path.join(dir, "data"),
    // The disk is not what is measured: no fsync, like the test cluster.
    settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off" }
  })
  const pool = new pg.Pool({ connectionString: postgres.url, max: WRITERS + 2 })
  let stopping = false
  // Postgres's fast shutdown at the end terminates whatever the pool still holds; only other errors matter.
  pool.on("error", (error) => {
    if (!stopping) console.error(`idle bench connection: ${error.message}`)
  })
  let server: Awaited<ReturnType<typeof startInProcess>> | undefined
  /** Commits `n` single-row transactions over `WRITERS` connections; `k` numbers them 0..n-1. */
  const write = (n: number, statement: (client: pg.PoolClient, k: number) => Promise<unknown>) =>
    Promise.all(
      Array.from({ length: WRITERS }, async (_, w) => {
        const client = await pool.connect()
        try {
          for (let k = w; k < n; k += WRITERS) await statement(client, k)
        } finally {
          client.release()
        }
      })
    )
  try {
    await pool.query(`CREATE TABLE ${TABLE} (
      id int PRIMARY KEY, title text NOT NULL, n int NOT NULL, created_at timestamptz NOT NULL, done bool NOT NULL)`)
    await pool.query(
      `INSERT INTO ${TABLE}
       SELECT i, 'item number ' || i, (i * 7919) % 100000, now() - i * interval '1 second', i % 3 = 0
       FROM generate_series(1, $1) i`,
      [ROWS]
    )
    await pool.query(`VACUUM ANALYZE ${TABLE}`)

    // (a) COPY TO STDOUT.
    {
      const client = await pool.connect()
      try {
        let bytes = 0
        let lines = 0
        const started = performance.now()
        await pipeline(
          client.query(copyTo(`COPY (SELECT * FROM ${TABLE}) TO STDOUT`)),
          new Writable({
            write(chunk: Buffer, _enc, cb) {
              bytes += chunk.length
              for (let i = 0; i < chunk.length; i++) if (chunk[i] === 10) lines++
              cb()
            }
          })
        )
        const ms = performance.now() - started
        if (lines !== ROWS) throw new Error(`COPY returned ${lines} rows, expected ${ROWS}`)
        results.push(["COPY (SELECT *) TO STDOUT", `${lines.toLocaleString("en-US")} rows`, seconds(ms), `${perSecond(lines, ms)} rows/s (${mb(bytes)} MB)`])
      } finally {
        client.release()
      }
    }

    // (b) Initial sync over HTTP, from offset -1 until up-to-date.
    const settings = { storageDir: path.join(dir, "syncline"), replicationStreamId: STREAM, longPollTimeoutMs: 5_000 }
    server = await startInProcess(postgres.url, settings)
    // The port changes when the server restarts.
    const baseUrl = () => `${server!.baseUrl}/v1/shape?table=${TABLE}`
    const base = baseUrl()
    let handle = ""
    let offset = "-1"
    const request = async (live: boolean): Promise<{ messages: Array<Message>; bytes: number; upToDate: boolean }> => {
      const url = `${baseUrl()}&offset=${offset}${handle === "" ? "" : `&handle=${handle}`}${live ? "&live=true" : ""}`
      const res = await fetch(url)
      const text = await res.text()
      if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${text}`)
      handle = res.headers.get("electric-handle") ?? handle
      offset = res.headers.get("electric-offset") ?? offset
      const messages = JSON.parse(text) as Array<Message>
      return { messages, bytes: text.length, upToDate: messages.some((m) => m.headers["control"] === "up-to-date") }
    }
    // The server's side of an initial sync: bodies are read as bytes and not parsed. `replica=full`
    // makes it a shape of its own whose snapshot is the same rows as the one below.
    {
      let rows = 0
      let bytes = 0
      let requests = 0
      let firstByte = 0
      let h = ""
      let o = "-1"
      const started = performance.now()
      for (;;) {
        const res = await fetch(`${base}&replica=full&offset=${o}${h === "" ? "" : `&handle=${h}`}`)
        if (firstByte === 0) firstByte = performance.now() - started
        const body = Buffer.from(await res.arrayBuffer())
        if (res.status !== 200) throw new Error(`GET ${res.url}: ${res.status} ${body.toString()}`)
        requests++
        bytes += body.length
        rows += occurrences(body, INSERT_NEEDLE)
        h = res.headers.get("electric-handle") ?? h
        o = res.headers.get("electric-offset") ?? o
        if (res.headers.has("electric-up-to-date")) break
      }
      const ms = performance.now() - started
      if (rows !== ROWS) throw new Error(`initial sync (bytes) returned ${rows} rows, expected ${ROWS}`)
      results.push([
        "Syncline initial sync, server side (bodies not parsed)",
        `${rows.toLocaleString("en-US")} rows`,
        seconds(ms),
        `${perSecond(rows, ms)} rows/s (${mb(bytes)} MB, ${requests} requests, first byte ${seconds(firstByte)} s)`
      ])
    }
    {
      let rows = 0
      let bytes = 0
      let requests = 0
      const started = performance.now()
      for (;;) {
        const r = await request(false)
        requests++
        bytes += r.bytes
        rows += r.messages.filter((m) => m.headers["operation"] === "insert").length
        if (r.upToDate) break
      }
      const ms = performance.now() - started
      if (rows !== ROWS) throw new Error(`initial sync returned ${rows} rows, expected ${ROWS}`)
      results.push([
        "Syncline initial sync (HTTP, offset=-1)",
        `${rows.toLocaleString("en-US")} rows`,
        seconds(ms),
        `${perSecond(rows, ms)} rows/s (${mb(bytes)} MB JSON, ${requests} requests)`
      ])
      // A second client of the same shape reads it from storage, not from Postgres.
      const cached = performance.now()
      const savedHandle = handle
      const savedOffset = offset
      handle = ""
      offset = "-1"
      let again = 0
      for (;;) {
        const r = await request(false)
        again += r.messages.filter((m) => m.headers["operation"] === "insert").length
        if (r.upToDate) break
      }
      const cachedMs = performance.now() - cached
      results.push(["Syncline initial sync, shape already on disk", `${again.toLocaleString("en-US")} rows`, seconds(cachedMs), `${perSecond(again, cachedMs)} rows/s`])
      handle = savedHandle
      offset = savedOffset
    }

    // (c) Live: a plain logical slot on the same publication decodes the same transactions.
    const rawSlot = "bench_raw_decoding"
    await pool.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [rawSlot])
    {
      let seen = 0
      let polling = true
      const poller = (async () => {
        while (polling && seen < LIVE_TXNS) {
          const r = await request(true)
          seen += r.messages.filter((m) => m.headers["operation"] !== undefined).length
        }
      })()
      const perWriter = Math.ceil(LIVE_TXNS / WRITERS)
      const started = performance.now()
      let writesDone = 0
      await Promise.all(
        Array.from({ length: WRITERS }, async (_, w) => {
          const client = await pool.connect()
          try {
            for (let i = 0; i < perWriter; i++) {
              const k = w * perWriter + i
              if (k >= LIVE_TXNS) break
              // Half new rows, half updates of existing ones; each statement is its own transaction.
              if (k % 2 === 0) {
                await client.query(`INSERT INTO ${TABLE} VALUES ($1, 'live', $2, now(), false)`, [ROWS + 1 + k, k])
              } else {
                await client.query(`UPDATE ${TABLE} SET n = n + 1, done = NOT done WHERE id = $1`, [1 + (k % ROWS)])
              }
            }
          } finally {
            client.release()
          }
        })
      ).then(() => {
        writesDone = performance.now() - started
      })
      const deadline = Date.now() + 90_000
      while (seen < LIVE_TXNS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
      const ms = performance.now() - started
      polling = false
      if (seen < LIVE_TXNS) throw new Error(`the client saw ${seen} of ${LIVE_TXNS} changes`)
      await poller
      results.push(["Writers: single-row autocommit txns", `${LIVE_TXNS.toLocaleString("en-US")} txns`, seconds(writesDone), `${perSecond(LIVE_TXNS, writesDone)} txns/s (${WRITERS} connections)`])
      results.push(["Syncline live: first write -> client saw all", `${seen.toLocaleString("en-US")} changes`, seconds(ms), `${perSecond(seen, ms)} changes/s (long-poll; all seen ${seconds(ms - writesDone)} s after the last commit)`])
    }
    const publication = `electric_publication_${STREAM}`
    const rawDecode = async (label: string): Promise<[string, string, string, string]> => {
      const started = performance.now()
      const { rows } = await pool.query<{ n: string; commits: string }>(
        `SELECT count(*) AS n, count(*) FILTER (WHERE get_byte(data, 0) = 67) AS commits
         FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`,
        [rawSlot, publication]
      )
      const ms = performance.now() - started
      const commits = Number(rows[0]!.commits)
      return [label, `${commits.toLocaleString("en-US")} txns`, seconds(ms), `${perSecond(commits, ms)} txns/s (${Number(rows[0]!.n).toLocaleString("en-US")} messages)`]
    }
    results.push(await rawDecode("Postgres logical decoding (pgoutput, SQL)"))
    await pool.query(`SELECT pg_drop_replication_slot($1)`, [rawSlot])
    // (d) Catch-up through one shape, and (e) non-matching changes past 1,000 idle shapes. A raw
    // slot created now decodes the same transactions afterwards, for comparison.
    const restart = async (): Promise<{ started: number; activeMs: number }> => {
      const started = performance.now()
      server = await startInProcess(postgres.url, settings)
      return { started, activeMs: performance.now() - started }
    }
    {
      await server!.stop()
      server = undefined
      await pool.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [rawSlot])
      const firstId = ROWS + 1 + LIVE_TXNS
      await write(CATCHUP_TXNS, (client, k) =>
        k % 2 === 0
          ? client.query(`INSERT INTO ${TABLE} VALUES ($1, 'caught up', $2, now(), false)`, [firstId + k, k])
          : client.query(`UPDATE ${TABLE} SET n = n + 1, done = NOT done WHERE id = $1`, [1 + (k % ROWS)])
      )
      const { started, activeMs } = await restart()
      let seen = 0
      while (seen < CATCHUP_TXNS) {
        const r = await request(true)
        seen += r.messages.filter((m) => m.headers["operation"] !== undefined).length
      }
      const ms = performance.now() - started
      if (seen !== CATCHUP_TXNS) throw new Error(`the client saw ${seen} changes after the restart, expected ${CATCHUP_TXNS}`)
      results.push([
        "Syncline catch-up: start -> client saw all",
        `${seen.toLocaleString("en-US")} changes`,
        seconds(ms),
        `${perSecond(seen, ms)} changes/s (${perSecond(seen, ms - activeMs)}/s after active at ${seconds(activeMs)} s)`
      ])
      results.push(await rawDecode("Postgres logical decoding of the catch-up txns"))
    }
    {
      await pool.query(`CREATE TABLE ${IDLE_TABLE} (id int PRIMARY KEY, n int NOT NULL)`)
      const shapeUrl = (where: string) => `${server!.baseUrl}/v1/shape?table=${IDLE_TABLE}&where=${encodeURIComponent(where)}&offset=-1`
      const created = performance.now()
      let next = 0
      await Promise.all(Array.from({ length: 8 }, async () => {
        while (next < IDLE_SHAPES) {
          const k = 1_000_000 + next++
          const res = await fetch(shapeUrl(`id = ${k}`))
          await res.arrayBuffer()
          if (res.status !== 200) throw new Error(`creating idle shape ${k}: ${res.status}`)
        }
      }))
      const createdMs = performance.now() - created
      // The marker row matches one more shape: its durable write is acknowledged at once, so the
      // slot's position shows when everything before it went through.
      const marker = await fetch(shapeUrl("id = 0"))
      await marker.arrayBuffer()
      if (marker.status !== 200) throw new Error(`creating the marker shape: ${marker.status}`)
      await server!.stop()
      server = undefined
      await rawDecode("only drains the slot")
      await write(IDLE_TXNS, (client, k) => client.query(`INSERT INTO ${IDLE_TABLE} VALUES ($1, $2)`, [1 + k, k]))
      const client = await pool.connect()
      let lastLsn: string
      try {
        await client.query("BEGIN")
        await client.query(`INSERT INTO ${IDLE_TABLE} VALUES (0, 0)`)
        lastLsn = (await client.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn")).rows[0]!.lsn
        await client.query("COMMIT")
      } finally {
        client.release()
      }
      const { started, activeMs } = await restart()
      const deadline = Date.now() + 120_000
      for (;;) {
        const { rows } = await pool.query<{ passed: boolean }>(
          `SELECT confirmed_flush_lsn >= $2::pg_lsn AS passed FROM pg_replication_slots WHERE slot_name = $1`,
          [`electric_slot_${STREAM}`, lastLsn]
        )
        if (rows[0]?.passed === true) break
        if (Date.now() > deadline) throw new Error("the slot did not pass the last commit")
        await new Promise((r) => setTimeout(r, 5))
      }
      const ms = performance.now() - started
      results.push([
        `Syncline non-matching, ${IDLE_SHAPES.toLocaleString("en-US")} idle shapes: start -> slot passed`,
        `${IDLE_TXNS.toLocaleString("en-US")} txns`,
        seconds(ms),
        `${perSecond(IDLE_TXNS, ms)} txns/s (${perSecond(IDLE_TXNS, ms - activeMs)}/s after active at ${seconds(activeMs)} s; shapes created in ${seconds(createdMs)} s)`
      ])
      results.push(await rawDecode("Postgres logical decoding of the idle-shape txns"))
      await pool.query(`SELECT pg_drop_replication_slot($1)`, [rawSlot])
    }
  } finally {
    stopping = true
    await server?.stop()
    await pool.end()
    await postgres.stop()
    await fs.rm(dir, { recursive: true, force: true })
  }

  const header: [string, string, string, string] = ["measurement", "volume", "seconds", "rate"]
  const widths = header.map((h, i) => Math.max(h.length, ...results.map((r) => r[i]!.length)))
  const line = (r: ReadonlyArray<string>) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ")
  console.log()
  console.log(line(header))
  console.log(widths.map((w) => "-".repeat(w)).join("  "))
  for (const r of results) console.log(line(r))
  console.log(`\nnode ${process.version}, ${os.cpus().length} CPUs, Postgres with fsync=off`)
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
