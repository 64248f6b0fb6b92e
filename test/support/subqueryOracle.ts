import { Shape, ShapeStream } from "@electric-sql/client"
import type pg from "pg"
import { type Row, sleep } from "./oracle.js"

/**
 * Pieces of the subquery oracle test: a shape followed with the official client across server
 * restarts and switches, checked message by message, and compared with the same query on Postgres.
 */

/** Where clients send their requests: a load balancer's current target, with a counter of switches. */
export interface ServerRef {
  readonly url: string
  readonly generation: number
}

/** One shape of the oracle: its table, clause and `$n` values, and the table's columns in order. */
export interface SubqueryShape {
  readonly label: string
  readonly table: string
  /** Absent for a shape of the whole table. */
  readonly where?: string
  readonly params?: ReadonlyArray<string>
  readonly columns: ReadonlyArray<string>
  /** Which of `columns` are booleans (compared by value in text form, see `textByValue`). */
  readonly booleans: ReadonlyArray<string>
  /** The `columns` parameter, when the shape selects some columns only. */
  readonly selected?: ReadonlyArray<string>
  readonly replica?: "default" | "full"
  /**
   * How a column `v` bumped by every write must move in the updates of a row (see `OracleClient`): by one,
   * or never back; not checked when absent.
   */
  readonly versions?: "stepByOne" | "neverBack"
}

/** A row as a list of its column values in `SubqueryShape.columns` order, as the client parses them. */
export type Tuple = ReadonlyArray<unknown>

/** JSON with bigints written as `<digits>n`, so that rows as the client parses them compare and print. */
export const asJson = (value: unknown): string => JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))

/** Whether two rows, or two lists of rows, hold the same values. */
export const sameRows = (a: unknown, b: unknown): boolean => asJson(a) === asJson(b)

export const NO_DIFFERENCE = { extra: [], missing: [], differing: [] }

/** What a client holds that Postgres does not, and the other way round, by row id (the first value): a readable failure. */
export const difference = (held: ReadonlyArray<Tuple>, expected: ReadonlyArray<Tuple>) => {
  const byId = (rows: ReadonlyArray<Tuple>) => new Map(rows.map((r) => [String(r[0]), r]))
  const [h, e] = [byId(held), byId(expected)]
  return {
    extra: [...h.entries()].filter(([id]) => !e.has(id)).map(([, r]) => r),
    missing: [...e.entries()].filter(([id]) => !h.has(id)).map(([, r]) => r),
    differing: [...h.entries()].filter(([id, r]) => e.has(id) && !sameRows(r, e.get(id))).map(([id, r]) => ({ held: r, postgres: e.get(id) }))
  }
}

/**
 * A shape followed with `ShapeStream` + `Shape` (as an app uses them) through a fetch that sends
 * each request to the current server. What a strict client refuses is recorded in `failures`:
 * an insert of a key it holds, an update or delete of a key it does not hold, a `must-refetch`,
 * any status but 200/304 (a 503 with `retry-after` is asked again, as the protocol allows), a
 * handle other than the first one, and a request that starts over (no handle, or offset -1)
 * once the shape has a handle. A network error is asked again against the current server.
 */
export class StrictFollower {
  /** The handle of the first response; every later response and request must carry it. */
  handle: string | undefined
  requests = 0
  retries = 0
  /** Change messages received. */
  changes = 0
  readonly failures: Array<string> = []
  private readonly held = new Set<string>()
  private readonly stream: ShapeStream
  private readonly shape: Shape
  private readonly abort = new AbortController()
  private stopped = false

  constructor(readonly spec: SubqueryShape, server: () => ServerRef) {
    const self = this
    const fetching = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
      const asked = new URL(input instanceof Request ? input.url : String(input))
      self.checkRequest(asked)
      for (;;) {
        const url = new URL(`${asked.pathname}${asked.search}`, server().url)
        let res: Response
        try {
          res = await fetch(url, init)
        } catch (error) {
          if (init?.signal?.aborted === true || self.stopped) throw error
          self.retries++
          await sleep(100)
          continue
        }
        self.requests++
        if (res.status === 503 && res.headers.get("retry-after") !== null) {
          await res.body?.cancel()
          self.retries++
          await sleep(150)
          continue
        }
        if (res.status !== 200 && res.status !== 304) {
          self.fail(`${res.status} ${await res.clone().text()} <- ${asked.search}`)
        }
        const handle = res.headers.get("electric-handle")
        if (res.status === 200 && handle !== null) {
          if (self.handle === undefined) self.handle = handle
          else if (handle !== self.handle) self.fail(`handle changed from ${self.handle} to ${handle} <- ${asked.search}`)
        }
        return res
      }
    }
    this.stream = new ShapeStream({
      url: `${server().url}/v1/shape`,
      params: {
        table: spec.table,
        ...(spec.where === undefined ? {} : { where: spec.where }),
        ...(spec.params === undefined ? {} : { params: [...spec.params] }),
        ...(spec.selected === undefined ? {} : { columns: [...spec.selected] }),
        ...(spec.replica === undefined ? {} : { replica: spec.replica })
      },
      signal: this.abort.signal,
      fetchClient: fetching as typeof fetch,
      backoffOptions: { initialDelay: 100, maxDelay: 1000, multiplier: 1.5 },
      onError: (error) => {
        if (!this.stopped) this.fail(`the stream failed: ${String(error)}`)
      }
    })
    const versions = new Map<string, number>()
    this.stream.subscribe((messages) => {
      for (const m of messages as ReadonlyArray<{ key?: string; value?: Record<string, unknown>; headers: Record<string, unknown> }>) {
        if (m.headers["control"] === "must-refetch") {
          this.fail("must-refetch")
          this.held.clear()
        }
        const op = m.headers["operation"]
        if (m.key === undefined || typeof op !== "string") continue
        this.changes++
        if (op === "insert" && this.held.has(m.key)) this.fail(`duplicate insert of ${m.key}: ${JSON.stringify(m)}`)
        if (op !== "insert" && !this.held.has(m.key)) this.fail(`${op} of ${m.key}, which the client does not hold: ${JSON.stringify(m)}`)
        if (op === "delete") this.held.delete(m.key)
        else this.held.add(m.key)
        const v = m.value?.["v"]
        if (op === "delete") versions.delete(m.key)
        else if (typeof v === "number" && spec.versions !== undefined) {
          const held = versions.get(m.key)
          if (op === "update" && held !== undefined && (spec.versions === "neverBack" ? v < held : v !== held + 1)) {
            this.fail(`update of ${m.key} to v=${v} after v=${held}: a change was lost or applied twice: ${JSON.stringify(m)}`)
          }
          versions.set(m.key, v)
        }
      }
    })
    this.shape = new Shape(this.stream as never)
  }

  private fail(what: string): void {
    this.failures.push(`${this.spec.label}: ${what}`)
  }

  private checkRequest(url: URL): void {
    if (this.handle === undefined) return
    const handle = url.searchParams.get("handle")
    const offset = url.searchParams.get("offset")
    if (handle !== this.handle || offset === null || offset === "-1") {
      this.fail(`started over (handle ${handle}, offset ${offset}) after handle ${this.handle}`)
    }
  }

  /** Whether the last response ended up-to-date. */
  get upToDate(): boolean {
    return this.stream.isUpToDate
  }

  /** The rows the app sees, as the client parsed them, in no particular order. */
  values(): ReadonlyArray<Record<string, unknown>> {
    return this.shape.currentRows as unknown as ReadonlyArray<Record<string, unknown>>
  }

  /** The rows the app sees, ordered by `id`, each as its column values. */
  rows(): ReadonlyArray<Tuple> {
    return toTuples(this.spec, this.shape.currentRows as unknown as ReadonlyArray<Record<string, unknown>>)
  }

  stop(): void {
    this.stopped = true
    this.stream.unsubscribeAll()
    this.abort.abort()
  }
}

const toTuples = (spec: SubqueryShape, rows: ReadonlyArray<Record<string, unknown>>): ReadonlyArray<Tuple> =>
  rows.map((r) => spec.columns.map((c) => r[c] ?? null)).sort((a, b) => (a[0] as number) - (b[0] as number))

/** The shape's query on Postgres, each row as its column values (`pg` parses int4, bool and text as the client does). */
export const postgresRows = async (pool: pg.Pool, spec: SubqueryShape): Promise<ReadonlyArray<Tuple>> => {
  const { rows } = await pool.query<Array<unknown>>({
    text: `SELECT ${spec.columns.join(", ")} FROM ${spec.table} WHERE ${spec.where ?? "true"} ORDER BY id`,
    values: spec.params === undefined ? [] : [...spec.params],
    rowMode: "array"
  })
  return rows
}

const BOOLEAN_TEXT: Readonly<Record<string, string>> = { t: "true", true: "true", f: "false", false: "false" }

/**
 * A row in text form with each boolean written one way: a row a snapshot wrote carries a boolean
 * as its `::text` (`true`/`false`), a row from the log as pgoutput sends it (`t`/`f`), and a client
 * reads both as the same value. Any other text is kept, so a boolean column holding anything else
 * still differs. Keys come in `columns` order, then any others sorted, so rows compare as JSON.
 */
export const textByValue = (spec: SubqueryShape, row: Row): Row => {
  const value = (column: string): string | null => {
    const text = row[column] ?? null
    return text !== null && spec.booleans.includes(column) ? (BOOLEAN_TEXT[text] ?? text) : text
  }
  const others = Object.keys(row).filter((c) => !spec.columns.includes(c)).sort()
  return Object.fromEntries([...spec.columns.filter((c) => c in row), ...others].map((c) => [c, value(c)]))
}

/** The shape's query on Postgres with every value in its text form (see `textByValue`), as a raw-HTTP client holds them. */
export const postgresTextRows = async (pool: pg.Pool, spec: SubqueryShape): Promise<Array<Row>> => {
  const { rows } = await pool.query<Row>({
    text: `SELECT ${spec.columns.map((c) => `${c}::text AS ${c}`).join(", ")} FROM ${spec.table} WHERE ${spec.where ?? "true"} ORDER BY ${spec.table}.id`,
    values: spec.params === undefined ? [] : [...spec.params]
  })
  return rows.map((r) => textByValue(spec, r))
}
