import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"
import * as SubscriptionRef from "effect/SubscriptionRef"
import { slotName, StackConfig } from "../config/StackConfig.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import { ConsumerSupervisor } from "../shapes/ConsumerSupervisor.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { ReplicationPump } from "../stack/ReplicationPump.js"
import { StackSupervisor } from "../stack/StackSupervisor.js"

/** Postgres timestamps count microseconds from 2000-01-01 UTC. */
const POSTGRES_EPOCH_MS = 946_684_800_000

/** What a stack is doing now, as `/metrics` and `/v1/status` show it. */
export interface StackFigures {
  readonly status: "Starting" | "ReadOnly" | "Active" | "Stopping"
  readonly restarts: number
  /** Undefined while no stack is active. */
  readonly active:
    | {
      /** When the stack became active, in milliseconds since the epoch. */
      readonly since: number
      readonly shapes: number
      readonly consumers: number
      /** From the furthest WAL position the server reported to the position acknowledged. */
      readonly lagBytes: number
      /** Since the commit of the last transaction read, while it is not acknowledged (0 once it is). */
      readonly lagSeconds: number
      /** Transactions routed and not yet durable in every shape. */
      readonly inFlight: number
    }
    | undefined
}

/** The figures of the stack the current `StackSupervisor` runs, read now. */
export const stackFigures: Effect.Effect<StackFigures, never, StackSupervisor> = Effect.gen(function*() {
  const supervisor = yield* StackSupervisor
  const status = yield* SubscriptionRef.get(supervisor.status)
  const now = yield* Clock.currentTimeMillis
  const current = supervisor.activeNow()
  // Read with the stack it belongs to: a restart in the steps below must not pair this stack with another's moment.
  const since = supervisor.activeSince()
  if (Option.isNone(current) || since === undefined) return { status: status._tag, restarts: supervisor.restarts(), active: undefined }
  const context = current.value
  const shapes = yield* Context.get(context, ShapeCache).count
  const consumers = yield* Context.get(context, ConsumerSupervisor).running
  const tracker = Context.get(context, FlushTracker)
  const progress = Context.get(context, ReplicationPump).progress()
  const acknowledged = tracker.sentLsn()
  const behind = progress.lastCommitTime !== undefined && acknowledged < progress.lastEndLsn
  const committedMs = progress.lastCommitTime === undefined ? 0 : Number(progress.lastCommitTime / 1000n) + POSTGRES_EPOCH_MS
  return {
    status: status._tag,
    restarts: supervisor.restarts(),
    active: {
      since,
      shapes,
      consumers,
      lagBytes: progress.walEnd > acknowledged ? Number(progress.walEnd - acknowledged) : 0,
      lagSeconds: behind ? Math.max(0, (now - committedMs) / 1000) : 0,
      inFlight: tracker.inFlight()
    }
  }
})

/** Running totals of one source, from the metric registry. */
export interface SourceTotals {
  readonly transactions: number
  readonly changes: number
  /** Responses of the shape API by status class: `2xx`, `3xx`, `4xx`, `5xx`. */
  readonly responses: Readonly<Record<string, number>>
}

const tagOf = (pair: MetricPair.MetricPair.Untyped, key: string): string | undefined =>
  pair.metricKey.tags.find((t) => t.key === key)?.value

/** The totals of the source `StackConfig` names, summed over the registry's series. */
export const sourceTotals: Effect.Effect<SourceTotals, never, StackConfig> = Effect.gen(function*() {
  const settings = yield* StackConfig
  const slot = slotName(settings)
  const source = settings.replicationStreamId
  let transactions = 0
  let changes = 0
  const responses: Record<string, number> = { "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0 }
  for (const pair of yield* Metric.snapshot) {
    const state = pair.metricState
    if (!MetricState.isCounterState(state)) continue
    const count = Number(state.count)
    switch (pair.metricKey.name) {
      case "syncline_transactions_total":
        if (tagOf(pair, "slot") === slot) transactions += count
        break
      case "syncline_changes_total":
        if (tagOf(pair, "slot") === slot) changes += count
        break
      case "syncline_http_responses_total": {
        if (tagOf(pair, "source") !== source) break
        const status = tagOf(pair, "status") ?? ""
        const kind = `${status.slice(0, 1)}xx`
        if (kind in responses) responses[kind] = responses[kind]! + count
        break
      }
    }
  }
  return { transactions, changes, responses }
})
