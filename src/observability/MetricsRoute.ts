import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import { StackConfig } from "../config/StackConfig.js"
import { renderPrometheus, type Sample } from "./Metrics.js"
import { stackFigures } from "./StackFigures.js"

/**
 * `GET /metrics`: the registry's counters (transactions, changes, responses,
 * held long-polls and SSE streams) and, read from the stack now, its state:
 * whether it is active and since when, its restarts, shapes, running
 * consumers, transactions in flight, and the replication lag in bytes and in
 * seconds (`StackFigures`).
 */
export const metricsRoute = Effect.gen(function*() {
  const settings = yield* StackConfig
  const labels = { source: settings.replicationStreamId }
  const figures = yield* stackFigures
  const gauge = (name: string, help: string, value: number): Sample => ({ name, help, type: "gauge", labels, value })
  const samples: Array<Sample> = [
    gauge("syncline_stack_active", "1 while the stack is active (it holds the slot), 0 otherwise", figures.status === "Active" ? 1 : 0),
    {
      name: "syncline_stack_restarts_total",
      help: "Times the stack was started again, after a failure or on request",
      type: "counter",
      labels,
      value: figures.restarts
    }
  ]
  const active = figures.active
  if (active !== undefined) {
    samples.push(
      gauge(
        "syncline_stack_active_start_time_seconds",
        "When the stack became active, in seconds since the epoch",
        active.since / 1000
      ),
      gauge("syncline_shapes", "Shapes served", active.shapes),
      gauge("syncline_consumers", "Shape consumers running", active.consumers),
      gauge(
        "syncline_replication_lag_bytes",
        "WAL bytes between the furthest position the server reported and the position acknowledged",
        active.lagBytes
      ),
      gauge(
        "syncline_replication_lag_seconds",
        "Seconds since the commit of the last transaction read, while it is not acknowledged",
        active.lagSeconds
      ),
      gauge("syncline_transactions_in_flight", "Transactions routed and not yet durable in every shape", active.inFlight)
    )
  }
  const body = renderPrometheus(yield* Metric.snapshot, samples)
  return HttpServerResponse.text(body, { contentType: "text/plain; version=0.0.4; charset=utf-8" })
})
