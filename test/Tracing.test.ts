import * as http from "node:http"
import type { AddressInfo } from "node:net"
import type pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { inject } from "vitest"
import { sleep } from "./support/oracle.js"
import { freePort, serviceEnv, spawnSyncline, stopAllChildren, waitHealthy } from "./support/process.js"
import { dropReplication, itemsTable, tempDir, testPool } from "./support/syncline.js"

/**
 * Traces reach an OTLP/HTTP collector when `ELECTRIC_OTLP_ENDPOINT` names one: the service process (the bundle
 * `npm start` runs) is run against a small receiver that keeps what is posted to `/v1/traces`.
 */

const STREAM = "tracing"
const TABLE = "tracing_items"

interface Span {
  readonly name: string
}
interface Export {
  readonly resourceSpans: ReadonlyArray<{
    readonly resource: { readonly attributes: ReadonlyArray<{ readonly key: string; readonly value: { readonly stringValue?: string } }> }
    readonly scopeSpans: ReadonlyArray<{ readonly spans: ReadonlyArray<Span> }>
  }>
}

let pool: pg.Pool
let collector: http.Server
const received: Array<{ readonly path: string; readonly type: string | undefined; readonly body: Export }> = []

beforeAll(async () => {
  pool = testPool()
  await itemsTable(pool, TABLE, `SELECT i, 'row ' || i FROM generate_series(1, 3) i`)
  collector = http.createServer((request, response) => {
    const chunks: Array<Buffer> = []
    request.on("data", (chunk: Buffer) => chunks.push(chunk))
    request.on("end", () => {
      received.push({
        path: request.url ?? "",
        type: request.headers["content-type"],
        body: JSON.parse(Buffer.concat(chunks).toString("utf8")) as Export
      })
      response.writeHead(200, { "content-type": "application/json" }).end("{}")
    })
  })
  await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve))
})

afterAll(async () => {
  await stopAllChildren()
  await dropReplication(pool, STREAM)
  await pool.end()
  await new Promise((resolve) => collector.close(resolve))
})

describe("OpenTelemetry traces", () => {
  it("reach an OTLP/HTTP collector, with the service's name and a span per request", async () => {
    const port = await freePort()
    const endpoint = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`
    const child = spawnSyncline({
      env: serviceEnv({
        databaseUrl: inject("databaseUrl"),
        port,
        storageDir: await tempDir(STREAM),
        streamId: STREAM,
        extra: { ELECTRIC_OTLP_ENDPOINT: endpoint, OTEL_SERVICE_NAME: "syncline-under-test" }
      }),
      // The shipped bundle loads the OTLP exporter as a chunk of its own, only when an endpoint is set.
      compiled: true
    })
    await waitHealthy(`http://127.0.0.1:${port}`, 60_000, child)
    const res = await fetch(`http://127.0.0.1:${port}/v1/shape?table=${TABLE}&offset=-1`)
    expect(res.status).toBe(200)
    await res.text()

    const spans = () =>
      received.flatMap((r) =>
        r.body.resourceSpans.flatMap((rs) =>
          rs.scopeSpans.flatMap((ss) =>
            ss.spans.map((span) => ({
              name: span.name,
              service: rs.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue
            }))
          )
        )
      )
    const deadline = Date.now() + 30_000
    while (!spans().some((s) => s.name === "http.server GET")) {
      if (Date.now() > deadline) throw new Error(`no request span reached the collector: ${JSON.stringify(spans().slice(0, 20))}`)
      await sleep(100)
    }
    expect(received.every((r) => r.path === "/v1/traces" && r.type?.startsWith("application/json") === true)).toBe(true)
    expect(new Set(spans().map((s) => s.service))).toEqual(new Set(["syncline-under-test"]))
    // The stack's own steps are traced too.
    expect(spans().map((s) => s.name)).toContain("PgAdmin.slotState")

    child.kill("SIGTERM")
    expect((await child.exited).code).toBe(0)
  }, 90_000)
})
