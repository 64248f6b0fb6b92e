/**
 * Pieces of the restart-aware oracle test (DESIGN.md "Testing"): a seeded PRNG and a raw-HTTP
 * shape client that checks every message it is sent against its own materialised rows.
 */

/** mulberry32: a small deterministic PRNG, so a failing run can be replayed from its seed. */
export const prng = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** An integer setting of an oracle run from the environment, `fallback` when unset. */
export const envInt = (name: string, fallback: number): number => {
  const value = process.env[name]
  if (value === undefined || value === "") return fallback
  const parsed = Number.parseInt(value, 10)
  if (!Number.isSafeInteger(parsed)) throw new Error(`${name} must be an integer, got ${value}`)
  return parsed
}

export type Row = Record<string, string | null>

interface Message {
  readonly key?: string
  readonly value?: Row
  readonly headers: Record<string, unknown>
}

export interface ShapeSpec {
  readonly label: string
  readonly where?: string
  /** Selected columns; all of them when absent. */
  readonly columns?: ReadonlyArray<string>
  /** Values of the clause's `$1`, `$2`, … (sent as `params[n]`). */
  readonly params?: ReadonlyArray<string>
  readonly replica?: "default" | "full"
  readonly log?: "full" | "changes_only"
}

export interface OracleClientOptions {
  /**
   * Whether an update or delete of a row the client does not hold is allowed (a `changes_only`
   * log holds changes of rows that existed before it started); never, when absent.
   */
  readonly unknownAllowed?: (key: string) => boolean
  /** Called when the first 200 arrives, before its messages are applied. */
  readonly onStart?: () => void
  /**
   * How `v` (bumped by every write) must move in the updates of a held row: by one (the default),
   * or never back. A shape with subqueries also sends a held row as its move-in query reads it,
   * which can be ahead of the change being applied, so its updates may skip versions.
   */
  readonly versions?: "stepByOne" | "neverBack"
}

/**
 * Follows one shape the way a client that keeps its position does: `electric-handle` and
 * `electric-offset` from every 200, `live=true&cursor=…` once up-to-date, and on a network error
 * or a 503 with `retry-after` the very same request again (against whatever the current base URL
 * is). It never starts over: anything that would make it start over is recorded as a failure.
 */
export class OracleClient {
  handle: string | undefined
  offset = "-1"
  cursor: string | undefined
  live = false
  readonly rows = new Map<string, Row>()
  /** xid (as text) → commit LSN (decimal text) of every transaction that reached this shape. */
  readonly xids = new Map<string, string>()
  /** The server generation (see `run`) of the last response that ended up-to-date. */
  upToDateGeneration = -1
  requests = 0
  retries = 0
  /** Change messages applied. */
  changes = 0
  stopped = false
  private lastLog: { lsn: bigint; op: bigint } | undefined
  private readonly abort = new AbortController()

  constructor(
    readonly spec: ShapeSpec,
    private readonly table: string,
    private readonly longPollMs: number,
    private readonly failures: Array<string>,
    private readonly options: OracleClientOptions = {}
  ) {}

  private fail(what: string): void {
    this.failures.push(`${this.spec.label}: ${what}`)
    this.stopped = true
  }

  stop(): void {
    this.stopped = true
    this.abort.abort()
  }

  /**
   * Requests until stopped; `server()` is read for every request, so a switch of server takes
   * effect at once. Its generation tells responses of one server process from another's.
   */
  async run(server: () => { readonly url: string; readonly generation: number }): Promise<void> {
    while (!this.stopped) {
      const params = new URLSearchParams({ table: this.table, offset: this.offset })
      if (this.spec.where !== undefined) params.set("where", this.spec.where)
      if (this.spec.columns !== undefined) params.set("columns", this.spec.columns.join(","))
      for (const [i, value] of (this.spec.params ?? []).entries()) params.set(`params[${i + 1}]`, value)
      if (this.spec.replica !== undefined) params.set("replica", this.spec.replica)
      if (this.spec.log !== undefined) params.set("log", this.spec.log)
      if (this.handle !== undefined) params.set("handle", this.handle)
      if (this.live) {
        params.set("live", "true")
        if (this.cursor !== undefined) params.set("cursor", this.cursor)
      }
      const { url, generation } = server()
      let status: number
      let headers: Headers
      let text: string
      try {
        // The bound only keeps a connection that silently went away (kill -9) from blocking forever.
        const signal = AbortSignal.any([this.abort.signal, AbortSignal.timeout(this.longPollMs + 20_000)])
        const res = await fetch(`${url}/v1/shape?${params}`, { signal })
        status = res.status
        headers = res.headers
        text = await res.text()
      } catch {
        // The server is down or went away mid-response: the same request again, a moment later.
        if (this.stopped) return
        this.retries++
        await sleep(100)
        continue
      }
      this.requests++
      if (status === 503 && headers.get("retry-after") !== null) {
        this.retries++
        await sleep(150)
        continue
      }
      if (status !== 200) {
        this.fail(`GET ${params} answered ${status}: ${text.slice(0, 500)}`)
        return
      }
      this.accept(generation, params, headers, text)
    }
  }

  private accept(generation: number, params: URLSearchParams, headers: Headers, text: string): void {
    const handle = headers.get("electric-handle")
    const offset = headers.get("electric-offset")
    if (handle === null || offset === null) {
      this.fail(`GET ${params}: 200 without electric-handle/electric-offset`)
      return
    }
    // Handles are stable across restarts: a different handle without a 409 would be a new shape.
    if (this.handle !== undefined && handle !== this.handle) {
      this.fail(`GET ${params}: handle changed from ${this.handle} to ${handle}`)
      return
    }
    if (this.handle === undefined) this.options.onStart?.()
    let messages: Array<Message>
    try {
      messages = JSON.parse(text) as Array<Message>
    } catch {
      this.fail(`GET ${params}: body is not JSON: ${text.slice(0, 200)}`)
      return
    }
    for (const m of messages) {
      if (!this.message(m)) return
    }
    this.handle = handle
    this.offset = offset
    this.cursor = headers.get("electric-cursor") ?? this.cursor
    // A batch is up-to-date only if its last message is the up-to-date control (protocol §6.2).
    const last = messages[messages.length - 1]
    this.live = last !== undefined && last.headers["control"] === "up-to-date"
    if (this.live) this.upToDateGeneration = generation
  }

  /** Applies one message; false (and a recorded failure) when it breaks an invariant. */
  private message(m: Message): boolean {
    const control = m.headers["control"]
    if (control !== undefined) {
      if (control === "must-refetch") {
        this.fail("must-refetch in a 200 body")
        return false
      }
      return true
    }
    const op = m.headers["operation"]
    const key = m.key
    if (key === undefined || m.value === undefined) {
      this.fail(`change without key/value: ${JSON.stringify(m)}`)
      return false
    }
    const lsn = m.headers["lsn"]
    if (lsn !== undefined) {
      // Log offsets of one shape strictly increase: a repeat or a step back is a replayed change.
      const position = { lsn: BigInt(lsn as string), op: BigInt(m.headers["op_position"] as number) }
      if (
        this.lastLog !== undefined &&
        (position.lsn < this.lastLog.lsn || (position.lsn === this.lastLog.lsn && position.op <= this.lastLog.op))
      ) {
        this.fail(`log position ${position.lsn}_${position.op} after ${this.lastLog.lsn}_${this.lastLog.op}: ${JSON.stringify(m)}`)
        return false
      }
      this.lastLog = position
      for (const xid of (m.headers["txids"] as Array<number> | undefined) ?? []) this.xids.set(String(xid), lsn as string)
    }
    const existing = this.rows.get(key)
    this.changes++
    if (op !== "insert" && existing === undefined && this.options.unknownAllowed?.(key) === true) return true
    switch (op) {
      case "insert":
        if (existing !== undefined) {
          this.fail(`duplicate insert of ${key}: ${JSON.stringify(m)}`)
          return false
        }
        this.rows.set(key, { ...m.value })
        return true
      case "update": {
        if (existing === undefined) {
          this.fail(`update of unknown row ${key}: ${JSON.stringify(m)}`)
          return false
        }
        // Every write bumps `v` by one, so an update that skips a version means a lost change.
        const v = m.value["v"]
        const held = Number(existing["v"])
        if (v !== undefined && (this.options.versions === "neverBack" ? Number(v) < held : Number(v) !== held + 1)) {
          this.fail(`update of ${key} to v=${v} after v=${existing["v"]}: a change was lost or replayed: ${JSON.stringify(m)}`)
          return false
        }
        this.rows.set(key, { ...existing, ...m.value })
        return true
      }
      case "delete":
        if (existing === undefined) {
          this.fail(`delete of unknown row ${key}: ${JSON.stringify(m)}`)
          return false
        }
        this.rows.delete(key)
        return true
      default:
        this.fail(`unknown message ${JSON.stringify(m)}`)
        return false
    }
  }

  /** The materialised rows ordered by integer `id`, as the oracle query returns them. */
  sortedRows(): Array<Row> {
    return [...this.rows.values()].sort((a, b) => Number(a["id"]) - Number(b["id"]))
  }
}
