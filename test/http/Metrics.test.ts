import { Option } from "effect"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { sleep } from "../support/oracle.js"
import { freePort } from "../support/process.js"
import { dropReplication, itemsTable, type RunningSyncline, startSyncline, testPool } from "../support/syncline.js"

/**
 * `/metrics` in Prometheus's text format, on the main port and on `ELECTRIC_PROMETHEUS_PORT`: traffic is driven
 * through the real server and every figure is read back.
 */

const STREAM = "metrics_http"
const TABLE = "metrics_items"

let pool: pg.Pool
let syncline: RunningSyncline
let prometheusPort: number
/** Milliseconds since the epoch before the service was started. */
let startedAt: number

beforeAll(async () => {
  startedAt = Date.now()
  pool = testPool()
  await itemsTable(pool, TABLE, `SELECT i, 'row ' || i FROM generate_series(1, 4) i`)
  prometheusPort = await freePort()
  syncline = await startSyncline({ streamId: STREAM, settings: { prometheusPort: Option.some(prometheusPort) } })
})

afterAll(async () => {
  await syncline?.stop()
  await dropReplication(pool, STREAM)
  await pool.end()
})

/** The samples of a scrape: `name{labels}` to value; every line is a comment or a sample. */
const scrape = async (url: string) => {
  const res = await fetch(url)
  expect(res.status).toBe(200)
  expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/)
  const samples = new Map<string, number>()
  const types = new Map<string, string>()
  for (const line of (await res.text()).split("\n")) {
    if (line === "") continue
    const type = /^# TYPE (\S+) (counter|gauge|histogram)$/.exec(line)
    if (type !== null) types.set(type[1]!, type[2]!)
    if (line.startsWith("#")) continue
    const sample = /^(\w+(?:\{[^}]*\})?) (\S+)$/.exec(line)
    expect(sample, line).not.toBeNull()
    samples.set(sample![1]!, Number(sample![2]))
  }
  return { samples, types }
}

const source = `source="${STREAM}"`
const slot = `slot="electric_slot_${STREAM}"`

const waitFor = async (what: string, check: () => Promise<boolean>) => {
  const deadline = Date.now() + 30_000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

describe("/metrics", () => {
  it("shows since when the stack is active, its shapes, consumers, lag, throughput, held requests, restarts and responses as the traffic made them", async () => {
    const base = syncline.baseUrl
    const before = await scrape(`${base}/metrics`)
    const transactionsBefore = before.samples.get(`syncline_transactions_total{${slot}}`) ?? 0
    const changesBefore = before.samples.get(`syncline_changes_total{${slot}}`) ?? 0

    const first = await fetch(`${base}/v1/shape?table=${TABLE}&offset=-1`)
    expect(first.status).toBe(200)
    await first.text()
    const handle = first.headers.get("electric-handle")!
    const offset = first.headers.get("electric-offset")!
    expect((await fetch(`${base}/v1/shape?table=${TABLE}&offset=nope`)).status).toBe(400)

    // A long-poll and an SSE stream held open while the scrape is taken.
    const aborts = new AbortController()
    const longPoll = fetch(`${base}/v1/shape?table=${TABLE}&offset=${offset}&handle=${handle}&live=true`, { signal: aborts.signal })
      .catch(() => undefined)
    const sse = await fetch(`${base}/v1/shape?table=${TABLE}&offset=${offset}&handle=${handle}&live=true&live_sse=true`, {
      signal: aborts.signal
    })
    expect(sse.status).toBe(200)
    await waitFor("the held requests", async () => {
      const { samples } = await scrape(`${base}/metrics`)
      return samples.get(`syncline_long_polls_held{${source}}`) === 1 && samples.get(`syncline_sse_streams_open{${source}}`) === 1
    })

    // Two transactions of three row changes, which the long-poll answers.
    await pool.query(`INSERT INTO ${TABLE} VALUES (5, 'row 5'), (6, 'row 6')`)
    await pool.query(`UPDATE ${TABLE} SET v = 'changed' WHERE id = 1`)
    const answered = await longPoll
    expect(answered?.status).toBe(200)
    aborts.abort()

    // Read, made durable everywhere (none left in flight), and the held requests released.
    await waitFor("the transactions and the released requests", async () => {
      const { samples } = await scrape(`${base}/metrics`)
      return (samples.get(`syncline_transactions_total{${slot}}`) ?? 0) >= transactionsBefore + 2 &&
        samples.get(`syncline_transactions_in_flight{${source}}`) === 0 &&
        samples.get(`syncline_long_polls_held{${source}}`) === 0 && samples.get(`syncline_sse_streams_open{${source}}`) === 0
    })
    const { samples, types } = await scrape(`${base}/metrics`)
    expect(samples.get(`syncline_changes_total{${slot}}`)! - changesBefore).toBeGreaterThanOrEqual(3)
    expect(samples.get(`syncline_shapes{${source}}`)).toBe(1)
    expect(samples.get(`syncline_consumers{${source}}`)).toBe(1)
    expect(samples.get(`syncline_stack_active{${source}}`)).toBe(1)
    // The moment the stack became active: after the service was started, and the same in a later scrape.
    const activeSince = samples.get(`syncline_stack_active_start_time_seconds{${source}}`)!
    expect(activeSince * 1000).toBeGreaterThanOrEqual(startedAt)
    expect(activeSince * 1000).toBeLessThanOrEqual(Date.now())
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect((await scrape(`${base}/metrics`)).samples.get(`syncline_stack_active_start_time_seconds{${source}}`)).toBe(activeSince)
    expect(samples.get(`syncline_replication_lag_bytes{${source}}`)).toBeGreaterThanOrEqual(0)
    expect(samples.get(`syncline_replication_lag_seconds{${source}}`)).toBeGreaterThanOrEqual(0)
    expect(samples.get(`syncline_http_responses_total{${source},status="400",cause="invalid_request"}`)).toBe(1)
    expect(samples.get(`syncline_http_responses_total{${source},status="200",cause="ok"}`)).toBeGreaterThanOrEqual(3)
    expect(types.get("syncline_transactions_total")).toBe("counter")
    expect(types.get("syncline_long_polls_held")).toBe("gauge")
    expect(types.get("syncline_replication_lag_bytes")).toBe("gauge")

    // A restart is counted; the stack comes back active, since a moment after the restart was asked for.
    const restartAskedAt = Date.now()
    expect((await fetch(`${base}/v1/admin/restart`, { method: "POST" })).status).toBe(202)
    await waitFor("the restarted stack", async () => {
      const { samples } = await scrape(`${base}/metrics`)
      return samples.get(`syncline_stack_restarts_total{${source}}`) === 1 && samples.get(`syncline_stack_active{${source}}`) === 1
    })
    const restarted = await scrape(`${base}/metrics`)
    const activeAgainSince = restarted.samples.get(`syncline_stack_active_start_time_seconds{${source}}`)!
    expect(activeAgainSince * 1000).toBeGreaterThanOrEqual(restartAskedAt)
    expect(activeAgainSince).toBeGreaterThan(activeSince)

    // The same figures on the Prometheus port.
    const separate = await scrape(`http://127.0.0.1:${prometheusPort}/metrics`)
    expect(separate.samples.get(`syncline_stack_restarts_total{${source}}`)).toBe(1)
    expect(separate.samples.get(`syncline_shapes{${source}}`)).toBe(1)
    expect(separate.samples.get(`syncline_http_responses_total{${source},status="400",cause="invalid_request"}`)).toBe(1)
  })
})
