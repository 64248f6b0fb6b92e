import { HttpServerResponse } from "@effect/platform"
import { Context, Effect, Metric, Option, SubscriptionRef } from "effect"
import { StackConfig } from "../config/StackConfig.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import { ConsumerSupervisor } from "../shapes/ConsumerSupervisor.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { ReplicationPump } from "../stack/ReplicationPump.js"
import { StackSupervisor } from "../stack/StackSupervisor.js"
import { renderPrometheus, type Sample } from "./Metrics.js"

/** Postgres timestamps count microseconds from 2000-01-01 UTC. */
const POSTGRES_EPOCH_MS = 946_684_800_000

/**
 * `GET /metrics`: the registry's counters (transactions, changes, responses,
 * held long-polls and SSE streams) and, read from the stack now, its state:
 * whether it is active, its restarts, shapes, running consumers, and the
 * replication lag — in bytes, from the furthest WAL position the server
 * reported to the position acknowledged; in seconds, from the commit of the
 * last transaction read while it is not acknowledged yet (0 once it is).
 */
export const metricsRoute = Effect.gen(function*() {
  const supervisor = yield* StackSupervisor
  const settings = yield* StackConfig
  const labels = { source: settings.replicationStreamId }
  const status = yield* SubscriptionRef.get(supervisor.status)
  const gauge = (name: string, help: string, value: number): Sample => ({ name, help, type: "gauge", labels, value })
  const samples: Array<Sample> = [
    gauge("syncline_stack_active", "1 while the stack is active (it holds the slot), 0 otherwise", status._tag === "Active" ? 1 : 0),
    {
      name: "syncline_stack_restarts_total",
      help: "Times the stack was started again, after a failure or on request",
      type: "counter",
      labels,
      value: supervisor.restarts()
    }
  ]
  const active = yield* Effect.option(supervisor.active("0 millis"))
  if (Option.isSome(active)) {
    const context = active.value
    const shapes = yield* Context.get(context, ShapeCache).list
    const consumers = yield* Context.get(context, ConsumerSupervisor).running
    const tracker = Context.get(context, FlushTracker)
    const progress = Context.get(context, ReplicationPump).progress()
    const acknowledged = tracker.sentLsn()
    const behind = progress.lastCommitTime !== undefined && acknowledged < progress.lastEndLsn
    const committedMs = progress.lastCommitTime === undefined ? 0 : Number(progress.lastCommitTime / 1000n) + POSTGRES_EPOCH_MS
    samples.push(
      gauge("syncline_shapes", "Shapes served", shapes.length),
      gauge("syncline_consumers", "Shape consumers running", consumers),
      gauge(
        "syncline_replication_lag_bytes",
        "WAL bytes between the furthest position the server reported and the position acknowledged",
        progress.walEnd > acknowledged ? Number(progress.walEnd - acknowledged) : 0
      ),
      gauge(
        "syncline_replication_lag_seconds",
        "Seconds since the commit of the last transaction read, while it is not acknowledged",
        behind ? Math.max(0, (Date.now() - committedMs) / 1000) : 0
      ),
      gauge("syncline_transactions_in_flight", "Transactions routed and not yet durable in every shape", tracker.inFlight())
    )
  }
  const body = renderPrometheus(yield* Metric.snapshot, samples)
  return HttpServerResponse.text(body, { contentType: "text/plain; version=0.0.4; charset=utf-8" })
})
