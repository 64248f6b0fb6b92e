import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { StackConfig } from "../config/StackConfig.js"
import { isAuthorized } from "../http/ApiSecret.js"
import { invalidRequestBody, parseAdminParams } from "../http/ShapeParams.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { StackSupervisor } from "../stack/StackSupervisor.js"
import { ShapeLogStorage } from "../storage/ShapeLogStorage.js"
import { type StackFigures, stackFigures } from "./StackFigures.js"
import { StatusHistory, type StatusSample } from "./StatusHistory.js"

/** How many shapes the page lists (the largest first); the count says how many there are. */
const LISTED = 100

/** One shape as the status page lists it. */
interface ShapeLine {
  readonly handle: string
  readonly table: string
  readonly where: string | null
  /** Bytes of its files on disk. */
  readonly bytes: number
  /** When its files were last written (ISO 8601), if it has any. */
  readonly lastChange: string | null
}

/** What `/v1/status` shows, as its JSON has it. */
export interface StatusReport {
  readonly source: string
  readonly stack: StackFigures
  readonly shapeCount: number
  readonly shapes: ReadonlyArray<ShapeLine>
  readonly history: ReadonlyArray<StatusSample>
}

const report = Effect.gen(function*() {
  const settings = yield* StackConfig
  const supervisor = yield* StackSupervisor
  const history = yield* StatusHistory
  const stack = yield* stackFigures
  const active = supervisor.activeNow()
  let shapes: Array<ShapeLine> = []
  let shapeCount = 0
  if (Option.isSome(active)) {
    const storage = Context.get(active.value, ShapeLogStorage)
    const all = yield* Context.get(active.value, ShapeCache).list
    shapeCount = all.length
    const used = yield* Effect.forEach(all, (shape) =>
      Effect.map(
        Effect.orElseSucceed(storage.usage(shape.handle), () => ({ bytes: 0, writtenAt: undefined })),
        (usage): ShapeLine => ({
          handle: shape.handle,
          table: `${shape.table.schema}.${shape.table.name}`,
          where: shape.where ?? null,
          bytes: usage.bytes,
          lastChange: usage.writtenAt === undefined ? null : new Date(usage.writtenAt).toISOString()
        })
      ), { concurrency: 8 })
    shapes = used.sort((a, b) => b.bytes - a.bytes).slice(0, LISTED)
  }
  return { source: settings.replicationStreamId, stack, shapeCount, shapes, history: history.samples() } satisfies StatusReport
})

/**
 * `GET /v1/status`, behind the secret like every route that shows data: the
 * stack's state, its shapes (table, where, size on disk, last change), the
 * replication lag, and charts of throughput, requests and lag over the last
 * minutes. HTML for a browser, which draws the charts; JSON for `Accept:
 * application/json`.
 */
export const statusRoute = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const settings = yield* StackConfig
  const params = parseAdminParams(new URL(request.url, "http://localhost").searchParams)
  if (Either.isLeft(params)) return HttpServerResponse.text(invalidRequestBody(params.left), { status: 400, contentType: "application/json" })
  if (!isAuthorized(settings.secret, params.right.secret)) {
    return HttpServerResponse.text(JSON.stringify({ message: "Unauthorized - Invalid API secret" }), {
      status: 401,
      contentType: "application/json"
    })
  }
  const body = yield* report
  const headers = { "cache-control": "no-store" }
  if ((request.headers["accept"] ?? "").includes("application/json")) {
    return HttpServerResponse.text(JSON.stringify(body), { contentType: "application/json", headers })
  }
  return HttpServerResponse.html(page(body)).pipe(HttpServerResponse.setHeaders(headers))
})

/** The page: the report as data, and a script that fills the figures and draws the charts from it. */
const page = (report: StatusReport): string => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Syncline status: ${escapeHtml(report.source)}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222 }
.figures { display: flex; gap: 2em; flex-wrap: wrap }
.figure b { display: block; font-size: 1.6em }
.charts { display: flex; gap: 2em; flex-wrap: wrap; margin: 1.5em 0 }
svg.chart { width: 360px; height: 140px; border: 1px solid #ddd; background: #fafafa }
svg.chart polyline { fill: none; stroke-width: 1.5 }
table { border-collapse: collapse } td, th { padding: .2em .8em; border-bottom: 1px solid #eee; text-align: left }
</style>
</head>
<body>
<h1>Syncline status <small id="source"></small></h1>
<div class="figures">
  <div class="figure">stack<b id="stack-state"></b></div>
  <div class="figure">shapes<b id="shape-count"></b></div>
  <div class="figure">replication lag<b id="lag"></b></div>
  <div class="figure">restarts<b id="restarts"></b></div>
</div>
<div class="charts">
  <figure><figcaption>transactions and changes per second</figcaption><svg class="chart" id="throughput" viewBox="0 0 360 140"></svg></figure>
  <figure><figcaption>requests per second by status</figcaption><svg class="chart" id="requests" viewBox="0 0 360 140"></svg></figure>
  <figure><figcaption>replication lag (bytes)</figcaption><svg class="chart" id="lag-chart" viewBox="0 0 360 140"></svg></figure>
</div>
<table id="shapes"><thead><tr><th>handle</th><th>table</th><th>where</th><th>size</th><th>last change</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="status-data">${JSON.stringify(report).replace(/</g, "\\u003c")}</script>
<script>
(function () {
  var report = JSON.parse(document.getElementById("status-data").textContent)
  var text = function (id, value) { document.getElementById(id).textContent = value }
  var active = report.stack.active
  text("source", report.source)
  text("stack-state", report.stack.status.toLowerCase())
  text("shape-count", String(report.shapeCount))
  text("restarts", String(report.stack.restarts))
  text("lag", active ? active.lagBytes + " B, " + active.lagSeconds.toFixed(1) + " s" : "no active stack")
  var h = report.history
  var rates = function (pick) {
    var out = []
    for (var i = 1; i < h.length; i++) {
      var seconds = Math.max((h[i].at - h[i - 1].at) / 1000, 0.001)
      out.push(Math.max(0, (pick(h[i]) - pick(h[i - 1])) / seconds))
    }
    return out
  }
  var draw = function (id, series) {
    var svg = document.getElementById(id)
    var top = 1
    series.forEach(function (s) { s.values.forEach(function (v) { if (v > top) top = v }) })
    series.forEach(function (s) {
      var n = s.values.length
      var points = s.values.map(function (v, i) {
        var x = n < 2 ? 0 : (i * 350) / (n - 1) + 5
        var y = 135 - (v / top) * 125
        return x.toFixed(1) + "," + y.toFixed(1)
      })
      var line = document.createElementNS("http://www.w3.org/2000/svg", "polyline")
      line.setAttribute("points", points.join(" "))
      line.setAttribute("stroke", s.color)
      line.setAttribute("data-series", s.name)
      svg.appendChild(line)
    })
    var label = document.createElementNS("http://www.w3.org/2000/svg", "text")
    label.setAttribute("x", "6")
    label.setAttribute("y", "14")
    label.setAttribute("font-size", "11")
    label.textContent = "max " + (Math.round(top * 10) / 10)
    svg.appendChild(label)
  }
  draw("throughput", [
    { name: "transactions", color: "#2a6fdb", values: rates(function (s) { return s.transactions }) },
    { name: "changes", color: "#e07b00", values: rates(function (s) { return s.changes }) }
  ])
  draw("requests", ["2xx", "3xx", "4xx", "5xx"].map(function (kind, i) {
    return { name: kind, color: ["#2a9d2a", "#777", "#d4a000", "#c0392b"][i], values: rates(function (s) { return s.responses[kind] || 0 }) }
  }))
  draw("lag-chart", [{ name: "lag bytes", color: "#8e44ad", values: h.map(function (s) { return s.lagBytes }) }])
  var body = document.querySelector("#shapes tbody")
  report.shapes.forEach(function (s) {
    var row = document.createElement("tr")
    ;[s.handle, s.table, s.where || "", s.bytes + " B", s.lastChange || ""].forEach(function (value) {
      var cell = document.createElement("td")
      cell.textContent = value
      row.appendChild(cell)
    })
    body.appendChild(row)
  })
  document.body.setAttribute("data-drawn", "true")
})()
</script>
</body>
</html>
`

const escapeHtml = (text: string): string =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")
