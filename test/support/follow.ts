import { Shape, ShapeStream } from "@electric-sql/client"
import type pg from "pg"

/** A table of the fault tests: `id int PRIMARY KEY, v text`. */
export interface FollowedRow {
  readonly id: number
  readonly v: string | null
}

/**
 * A shape followed with the official client (`ShapeStream` and `Shape`, as
 * an app uses them), with every response it got recorded: its status and the
 * handle it named. Every message is also checked as a strict client would:
 * an insert of a row already held, or an update or delete of a row not held,
 * fails `equalsPostgres`.
 */
export interface Follower {
  readonly statuses: ReadonlyArray<number>
  /** The status and body of every response other than 200 and 304, with the URL asked. */
  readonly failures: ReadonlyArray<string>
  /** Every `electric-handle` the server answered with, in order, without repeats. */
  readonly handles: ReadonlyArray<string>
  readonly rows: () => ReadonlyArray<FollowedRow>
  /** Waits (bounded) until the client holds exactly what `SELECT id, v FROM <table> [WHERE]` returns now. */
  readonly equalsPostgres: (timeoutMs?: number) => Promise<void>
  readonly stop: () => void
}

const sortRows = (rows: ReadonlyArray<FollowedRow>) => [...rows].sort((a, b) => a.id - b.id)

/** Follows `table` (optionally with `where`) on the server at `baseUrl`; the client retries quickly. */
export const follow = (
  pool: pg.Pool,
  baseUrl: string,
  table: string,
  options: { readonly where?: string; readonly secret?: string } = {}
): Follower => {
  const statuses: Array<number> = []
  const failures: Array<string> = []
  const handles: Array<string> = []
  const recording = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const res = await fetch(input, init)
    statuses.push(res.status)
    if (res.status !== 200 && res.status !== 304) {
      failures.push(`${res.status} ${await res.clone().text()} <- ${String(input instanceof Request ? input.url : input)}`)
    }
    const handle = res.headers.get("electric-handle")
    if (handle !== null && handles.at(-1) !== handle) handles.push(handle)
    return res
  }
  const stream = new ShapeStream({
    url: `${baseUrl}/v1/shape`,
    params: {
      table,
      ...(options.where === undefined ? {} : { where: options.where }),
      ...(options.secret === undefined ? {} : { secret: options.secret })
    },
    fetchClient: recording as typeof fetch,
    backoffOptions: { initialDelay: 100, maxDelay: 1000, multiplier: 1.5 }
  })
  // What a strict client would refuse: an insert of a row it holds, an update or delete of one it does not.
  const held = new Set<string>()
  const violations: Array<string> = []
  stream.subscribe((messages) => {
    for (const m of messages as ReadonlyArray<{ key?: string; headers: Record<string, unknown> }>) {
      const op = m.headers["operation"]
      if (m.headers["control"] === "must-refetch") held.clear()
      if (m.key === undefined || typeof op !== "string") continue
      if (op === "insert" && held.has(m.key)) violations.push(`duplicate insert of ${m.key}`)
      if (op !== "insert" && !held.has(m.key)) violations.push(`${op} of ${m.key}, which the client does not hold`)
      if (op === "delete") held.delete(m.key)
      else held.add(m.key)
    }
  })
  const shape = new Shape(stream as never)
  const rows = () => sortRows(shape.currentRows as unknown as ReadonlyArray<FollowedRow>)
  const query = `SELECT id, v FROM ${table}${options.where === undefined ? "" : ` WHERE ${options.where}`} ORDER BY id`
  return {
    statuses,
    failures,
    handles,
    rows,
    equalsPostgres: async (timeoutMs = 30_000) => {
      const deadline = Date.now() + timeoutMs
      let expected: ReadonlyArray<FollowedRow> = []
      for (;;) {
        expected = (await pool.query<FollowedRow>(query)).rows.map((r) => ({ id: r.id, v: r.v }))
        if (violations.length > 0) break
        if (JSON.stringify(rows()) === JSON.stringify(expected)) return
        if (Date.now() > deadline) break
        await new Promise((r) => setTimeout(r, 50))
      }
      if (violations.length > 0) throw new Error(`the client got messages it must refuse on ${table}: ${violations.join("; ")}`)
      throw new Error(
        `the client never caught up with Postgres on ${table}:\n  client:   ${JSON.stringify(rows())}\n  postgres: ${
          JSON.stringify(expected)
        }\n  statuses: ${statuses.join(",")}\n  failures: ${failures.join("\n    ")}`
      )
    },
    stop: () => stream.unsubscribeAll()
  }
}
