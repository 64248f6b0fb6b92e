import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"

/**
 * What the service counts as it runs, in Effect's metric registry (one per
 * process, so several stacks share it, each under its own `slot` or `source`
 * label), and the Prometheus text format `/metrics` answers with. Figures
 * that are a state rather than a count (shapes, lag) are read from the active
 * stack when scraped, as `Sample`s.
 */

const transactionsKey = MetricKey.counter("syncline_transactions_total", {
  description: "Transactions read from the replication slot and routed to shapes",
  incremental: true
})
/** Transactions read from the slot and routed, per slot. */
export const transactions = Metric.fromMetricKey(transactionsKey)

const changesKey = MetricKey.counter("syncline_changes_total", {
  description: "Row changes in the transactions read from the replication slot",
  incremental: true
})
/** Row changes (inserts, updates, deletes, truncates) in those transactions. */
export const changes = Metric.fromMetricKey(changesKey)

/** `transactions` and `changes` of one slot, labelled once: the pump updates them for every batch. */
export const slotCounters = (slot: string) => {
  const labels = [MetricLabel.make("slot", slot)]
  return {
    transactions: Metric.fromMetricKey(MetricKey.taggedWithLabels(transactionsKey, labels)),
    changes: Metric.fromMetricKey(MetricKey.taggedWithLabels(changesKey, labels))
  }
}

const responsesKey = MetricKey.counter("syncline_http_responses_total", {
  description: "Responses of the shape API, by status and cause",
  incremental: true
})
/** Answers of the shape API by status and cause. */
export const responses = Metric.fromMetricKey(responsesKey)

const heldLongPollsKey = MetricKey.counter("syncline_long_polls_held", {
  description: "Live requests held until a change comes or they time out"
})
/** Long-polls held until a change or their timeout. */
export const heldLongPolls = Metric.fromMetricKey(heldLongPollsKey)

const sseStreamsKey = MetricKey.counter("syncline_sse_streams_open", { description: "Live SSE streams open" })
/** SSE streams open. */
export const sseStreams = Metric.fromMetricKey(sseStreamsKey)

/** Why a response has its status: the label `cause` of `syncline_http_responses_total`. */
export const causeOf = (status: number): string => {
  switch (status) {
    case 200:
      return "ok"
    case 202:
      return "accepted"
    case 204:
      return "no_content"
    case 304:
      return "not_modified"
    case 400:
      return "invalid_request"
    case 401:
      return "unauthorized"
    case 404:
      return "not_found"
    case 405:
      return "not_allowed"
    case 409:
      return "must_refetch"
    case 503:
      return "unavailable"
    default:
      return status >= 500 ? "internal_error" : "other"
  }
}

/**
 * The counter of `key` under one set of labels, made once: a metric tagged
 * per update looks its entry up in the registry by hashing the labels every
 * time, which each request would pay for.
 */
const labelled = (key: MetricKey.MetricKey.Counter<number>) => {
  const made = new Map<string, Metric.Metric.Counter<number>>()
  return (labels: ReadonlyArray<readonly [string, string]>): Metric.Metric.Counter<number> => {
    const id = labels.map(([k, v]) => `${k}=${v}`).join("\n")
    let metric = made.get(id)
    if (metric === undefined) {
      metric = Metric.fromMetricKey(MetricKey.taggedWithLabels(key, labels.map(([k, v]) => MetricLabel.make(k, v))))
      made.set(id, metric)
    }
    return metric
  }
}

const responseCounter = labelled(responsesKey)

/** Counts a response of the shape API of source `source`. */
export const countResponse = (source: string, status: number): Effect.Effect<void> =>
  Metric.increment(responseCounter([["source", source], ["status", String(status)], ["cause", causeOf(status)]]))

/** `countResponse`, for a response sent outside any fiber (so with no labels a fiber adds). */
export const countResponseNow = (source: string, status: number): void =>
  responseCounter([["source", source], ["status", String(status)], ["cause", causeOf(status)]]).unsafeUpdate(1, [])

const gaugeCounters = new Map<typeof heldLongPolls, ReturnType<typeof labelled>>([
  [heldLongPolls, labelled(heldLongPollsKey)],
  [sseStreams, labelled(sseStreamsKey)]
])

/** Runs `effect` counted in `gauge` (an up-down counter) while it runs, per source. */
export const countedWhile = <A, E, R>(
  gauge: typeof heldLongPolls,
  source: string,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> => {
  const tagged = gaugeCounters.get(gauge)!([["source", source]])
  return Effect.acquireUseRelease(Metric.increment(tagged), () => effect, () => Metric.incrementBy(tagged, -1))
}

/** One figure read at scrape time. */
export interface Sample {
  readonly name: string
  readonly help: string
  readonly type: "counter" | "gauge"
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

const escapeLabel = (value: string): string => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, "\\\"")

const labelText = (labels: ReadonlyArray<readonly [string, string]>): string =>
  labels.length === 0 ? "" : `{${labels.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`

const numberText = (value: number | bigint): string =>
  typeof value === "bigint" ? value.toString() : Number.isFinite(value) ? String(value) : value > 0 ? "+Inf" : value < 0 ? "-Inf" : "NaN"

/**
 * The Prometheus text exposition (version 0.0.4) of the registry's counters
 * and gauges named `syncline_*` and of `samples`: one `# HELP` and `# TYPE`
 * per name, then its series. A counter whose name ends in `_total` is a
 * counter; an up-down one is a gauge.
 */
export const renderPrometheus = (
  pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>,
  samples: ReadonlyArray<Sample>
): string => {
  const families = new Map<string, { help: string; type: string; lines: Array<string> }>()
  const family = (name: string, help: string, type: string) => {
    let f = families.get(name)
    if (f === undefined) families.set(name, f = { help, type, lines: [] })
    return f
  }
  for (const pair of pairs) {
    const key = pair.metricKey
    const name = key.name
    if (!name.startsWith("syncline_")) continue
    const labels = key.tags.map((t) => [t.key, t.value] as const)
    const help = key.description._tag === "Some" ? key.description.value : name
    const state = pair.metricState
    if (MetricState.isCounterState(state)) {
      family(name, help, name.endsWith("_total") ? "counter" : "gauge").lines.push(`${name}${labelText(labels)} ${numberText(state.count)}`)
    } else if (MetricState.isGaugeState(state)) {
      family(name, help, "gauge").lines.push(`${name}${labelText(labels)} ${numberText(state.value)}`)
    }
  }
  for (const s of samples) {
    family(s.name, s.help, s.type).lines.push(`${s.name}${labelText(Object.entries(s.labels))} ${numberText(s.value)}`)
  }
  const out: Array<string> = []
  for (const [name, f] of families) {
    out.push(`# HELP ${name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`, `# TYPE ${name} ${f.type}`, ...f.lines)
  }
  return out.length === 0 ? "" : `${out.join("\n")}\n`
}
