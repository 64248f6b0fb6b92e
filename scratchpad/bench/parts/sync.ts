import * as path from "node:path"
import { Writable } from "node:stream"
import { pipeline } from "node:stream/promises"
import type pg from "pg"
import { to as copyTo } from "pg-copy-streams"
import { createItems, fmtMb, fmtRatio, fmtS, fmtShortRate, makeAgent, median, sized, syncShape } from "../harness.js"
import type { Part } from "./part.js"

/*
 * Initial sync of a 100k-row shape, cold (the snapshot comes from Postgres) and warm (the same
 * shape again from offset -1, read from the service's files), beside `COPY (SELECT * FROM t) TO
 * STDOUT` of the same rows. Bodies are counted as they arrive (`"operation":"insert"`), never
 * parsed or joined, as the COPY's rows are counted by their newlines.
 * Five identical tables, so each figure is the median of five: one cold and one warm sync each, with
 * a COPY before and after them (the limit is the median of those ten: each takes a tenth of a second on
 * a box whose speed moves by a third from one second to the next). Each table gets a one-row shape
 * first, so the cold figure is the snapshot, not the first-shape set-up of a table (publication,
 * replica identity).
 */

const STREAM = "bench_sync"
const TABLES = 5

export const sync: Part = {
  name: "sync",
  describe: "cold and warm initial sync of 100k rows beside COPY",
  run: async ({ db, dir, report, startService }) => {
    const rows = sized("ROWS", 100_000, 20_000)
    const tables = Array.from({ length: TABLES }, (_, i) => `bench_sync_${i + 1}`)
    for (const t of tables) await createItems(db.pool, t, rows)
    const service = await startService({ stream: STREAM, storageDir: path.join(dir, "sync") })
    const agent = makeAgent(2)
    const copyBefore: Array<number> = []
    const copyAfter: Array<number> = []
    const cold: Array<number> = []
    const warm: Array<number> = []
    let bytes = 0
    let requests = 0
    try {
      for (const table of tables) {
        const first = await syncShape(agent, service.baseUrl, `table=${table}&where=${encodeURIComponent("id = 1")}`)
        if (first.inserts !== 1) throw new Error(`the one-row shape of ${table} returned ${first.inserts} rows`)
        copyBefore.push(rows / ((await copyRows(db.pool, table, rows)) / 1000))
        let started = performance.now()
        const c = await syncShape(agent, service.baseUrl, `table=${table}`)
        const coldMs = performance.now() - started
        if (c.inserts !== rows) throw new Error(`cold initial sync of ${table} returned ${c.inserts} rows, expected ${rows}`)
        cold.push(rows / (coldMs / 1000))
        bytes = c.bytes
        requests = c.requests
        started = performance.now()
        const w = await syncShape(agent, service.baseUrl, `table=${table}`)
        const warmMs = performance.now() - started
        if (w.inserts !== rows) throw new Error(`warm initial sync of ${table} returned ${w.inserts} rows, expected ${rows}`)
        if (w.at.handle !== c.at.handle) throw new Error(`the second sync of ${table} got another shape (${w.at.handle}, not ${c.at.handle})`)
        warm.push(rows / (warmMs / 1000))
        copyAfter.push(rows / ((await copyRows(db.pool, table, rows)) / 1000))
      }
    } finally {
      await agent.close()
      await service.stop()
    }
    const [copyRate, coldRate, warmRate] = [median([...copyBefore, ...copyAfter]), median(cold), median(warm)]
    const n = rows.toLocaleString("en-US")
    const limit = `\`COPY (SELECT * …) TO STDOUT\`: ${fmtShortRate(copyRate)} rows/s`
    report.rows.push({
      figure: `cold initial sync, ${n} rows, offset -1 to up-to-date`,
      syncline: `${fmtShortRate(coldRate)} rows/s`,
      limit,
      ratio: fmtRatio(coldRate / copyRate),
      target: "≥ 0.5",
      met: coldRate / copyRate >= 0.5
    })
    report.rows.push({
      figure: "warm initial sync (same shape again, from files)",
      syncline: `${fmtShortRate(warmRate)} rows/s`,
      limit: "same COPY",
      ratio: fmtRatio(warmRate / copyRate),
      target: "≥ 1",
      met: warmRate / copyRate >= 1
    })
    report.notes.push(
      `initial sync: median of ${TABLES} tables of ${n} rows (${fmtMb(bytes)} MB of JSON in ${requests} responses); ` +
        `rows/s per table: COPY before / after the syncs ${copyBefore.map((r, i) => `${fmtShortRate(r)} / ${fmtShortRate(copyAfter[i]!)}`).join(", ")}; cold ${cold.map(fmtShortRate).join(", ")}; warm ${warm.map(fmtShortRate).join(", ")} ` +
        `(cold ${fmtS((rows / coldRate) * 1000)} s, warm ${fmtS((rows / warmRate) * 1000)} s).`
    )
  }
}

/** COPY of `table` to STDOUT, read to the end; the time it took, in ms. */
const copyRows = async (pool: pg.Pool, table: string, expected: number): Promise<number> => {
  const client = await pool.connect()
  try {
    let lines = 0
    const started = performance.now()
    await pipeline(
      client.query(copyTo(`COPY (SELECT * FROM ${table}) TO STDOUT`)),
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++
          callback()
        }
      })
    )
    const ms = performance.now() - started
    if (lines !== expected) throw new Error(`COPY of ${table} returned ${lines} rows, expected ${expected}`)
    return ms
  } finally {
    client.release()
  }
}
