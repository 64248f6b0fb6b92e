import { Option, Redacted } from "effect"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { dumpDom } from "../support/chromium.js"
import { sleep } from "../support/oracle.js"
import { dropReplication, itemsTable, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

/**
 * `/v1/status`: JSON for a program, and a page that headless Chromium (from Debian) loads and draws — its figures
 * filled and its charts drawn from the last seconds' samples. Behind the secret.
 */

const STREAM = "status_page"
const TABLE = "status_items"
const SECRET = "status-secret"

let pool: pg.Pool
let syncline: RunningSyncline

beforeAll(async () => {
  pool = testPool()
  await itemsTable(pool, TABLE, `SELECT i, 'row ' || i FROM generate_series(1, 5) i`)
  syncline = await startSyncline({ streamId: STREAM, settings: { secret: Option.some(Redacted.make(SECRET)) } })
})

afterAll(async () => {
  await syncline?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

interface Report {
  readonly stack: { readonly status: string; readonly active?: { readonly shapes: number; readonly since: number } }
  readonly shapeCount: number
  readonly shapes: ReadonlyArray<{ readonly table: string; readonly where: string | null; readonly bytes: number; readonly lastChange: string | null }>
  readonly history: ReadonlyArray<{ readonly transactions: number }>
}

describe("/v1/status", () => {
  it("answers JSON and a page Chromium draws, behind the secret", async () => {
    const base = syncline.baseUrl
    const created = await fetch(`${base}/v1/shape?table=${TABLE}&where=${encodeURIComponent("id > 2")}&offset=-1&secret=${SECRET}`)
    expect(created.status).toBe(200)
    await created.text()
    const writtenFrom = Date.now()
    for (let i = 6; i <= 9; i++) {
      await pool.query(`INSERT INTO ${TABLE} VALUES ($1, $2)`, [i, `row ${i}`])
      await sleep(400)
    }

    expect((await fetch(`${base}/v1/status`)).status).toBe(401)
    expect((await fetch(`${base}/v1/status?secret=wrong`)).status).toBe(401)

    // A few samples with the transactions in them.
    let report: Report | undefined
    const deadline = Date.now() + 20_000
    for (;;) {
      const res = await fetch(`${base}/v1/status?secret=${SECRET}`, { headers: { accept: "application/json" } })
      expect(res.status).toBe(200)
      report = (await res.json()) as Report
      const last = report.history.at(-1)
      if (report.history.length >= 3 && last !== undefined && last.transactions >= 4) break
      if (Date.now() > deadline) throw new Error(`no samples with the transactions: ${JSON.stringify(report.history)}`)
      await sleep(250)
    }
    expect(report.stack.status).toBe("Active")
    // Active since before this test's writes, which it took in.
    expect(report.stack.active!.since).toBeLessThan(writtenFrom)
    expect(report.shapeCount).toBe(1)
    expect(report.shapes).toEqual([
      expect.objectContaining({ table: `public.${TABLE}`, where: `("id" > 2)`, lastChange: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) })
    ])
    expect(report.shapes[0]!.bytes).toBeGreaterThan(0)

    const dom = await dumpDom(`${base}/v1/status?secret=${SECRET}`)
    expect(dom).toContain(`data-drawn="true"`)
    expect(/<b id="stack-state">active<\/b>/.test(dom)).toBe(true)
    expect(/<b id="shape-count">1<\/b>/.test(dom)).toBe(true)
    expect(dom).toContain(`<td>public.${TABLE}</td>`)
    expect(dom).toContain(`<td>("id" &gt; 2)</td>`)
    // Each chart has its lines, each with a point per sample interval, and the throughput shows the transactions.
    for (const [chart, series] of [["throughput", 2], ["requests", 4], ["lag-chart", 1]] as const) {
      const svg = new RegExp(`<svg[^>]*id="${chart}"[^>]*>([\\s\\S]*?)</svg>`).exec(dom)
      expect(svg, chart).not.toBeNull()
      const lines = [...svg![1]!.matchAll(/<polyline points="([^"]*)"/g)].map((m) => m[1]!.split(" "))
      expect(lines, chart).toHaveLength(series)
      for (const points of lines) expect(points.length, chart).toBeGreaterThanOrEqual(2)
    }
    const throughput = /<svg[^>]*id="throughput"[^>]*>([\s\S]*?)<\/svg>/.exec(dom)![1]!
    const transactionsLine = /<polyline points="([^"]*)"[^>]*data-series="transactions"/.exec(throughput)![1]!
    // Some point above the baseline (y = 135): a second with transactions in it.
    expect(transactionsLine.split(" ").some((p) => Number(p.split(",")[1]) < 135)).toBe(true)
  }, 240_000)
})
