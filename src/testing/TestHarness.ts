import { HttpClient } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { Context, Effect, HashSet, Layer, Option, type Scope, TestServices } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { type TestDirs, TestServer } from "../../layers/Test.js"
import type { StackSettings } from "../config/StackConfig.js"
import { type ActiveServices, StackSupervisor, type StackSupervisorService } from "../stack/StackSupervisor.js"
import { ShapeDb } from "../storage/ShapeDb.js"
import type { FakePostgres } from "./FakePostgres.js"

/** A response as a test reads it. */
export interface Reply {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly text: string
}

/** A running test server: the HTTP client aimed at it and its stack supervisor. */
export interface Harness {
  readonly supervisor: StackSupervisorService
  readonly get: (pathAndQuery: string) => Effect.Effect<Reply>
  /** The active stack's services (waits for it). */
  readonly active: Effect.Effect<Context.Context<ActiveServices>>
}

/** A storage dir removed when the scope closes. */
export const tempDirs: Effect.Effect<TestDirs, never, Scope.Scope> = Effect.acquireRelease(
  Effect.sync(() => ({ storageDir: fs.mkdtempSync(path.join(os.tmpdir(), "syncline-stack-")) })),
  (dirs) => Effect.sync(() => fs.rmSync(dirs.storageDir, { recursive: true, force: true }))
)

/** Starts `TestServer` in the current scope; with `chunkBytesThreshold`, shape logs chunk at that size. */
export const startServer = (
  db: FakePostgres,
  dirs: TestDirs,
  settings: Partial<StackSettings> = {},
  holder = "syncline",
  options: { readonly maxInFlight?: number; readonly chunkBytesThreshold?: number } = {}
): Effect.Effect<Harness, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const context = yield* Layer.build(TestServer(db, dirs, settings, holder, options))
    const supervisor = Context.get(context, StackSupervisor)
    const client = Context.get(context, HttpClient.HttpClient)
    const get = (pathAndQuery: string) =>
      Effect.gen(function*() {
        const res = yield* client.get(pathAndQuery)
        const text = yield* res.text
        return { status: res.status, headers: res.headers as Readonly<Record<string, string>>, text }
      }).pipe(Effect.orDie)
    return { supervisor, get, active: supervisor.active("1 hour").pipe(Effect.orDie) }
  })

/** One message of a shape response. */
export interface Message {
  readonly key?: string
  readonly value?: Record<string, unknown>
  readonly headers: { readonly operation?: string; readonly control?: string; readonly [k: string]: unknown }
}

/** Reads a shape from `offset` (non-live) until the server says it is up to date. */
export const readToEnd = (
  h: Harness,
  query: string,
  from: { readonly offset: string; readonly handle?: string } = { offset: "-1" }
) =>
  Effect.gen(function*() {
    let offset = from.offset
    let handle = from.handle
    const messages: Array<Message> = []
    for (let i = 0; i < 100; i++) {
      const res = yield* h.get(`/v1/shape?${query}&offset=${offset}${handle === undefined ? "" : `&handle=${handle}`}`)
      if (res.status !== 200) return yield* Effect.dieMessage(`expected 200, got ${res.status}: ${res.text}`)
      messages.push(...(JSON.parse(res.text) as Array<Message>))
      offset = res.headers["electric-offset"]!
      handle = res.headers["electric-handle"]!
      if (res.headers["electric-up-to-date"] !== undefined) return { handle, offset, messages }
    }
    return yield* Effect.dieMessage("the shape never got up to date")
  })

/** The keys of the insert messages, in log order. */
export const insertedKeys = (messages: ReadonlyArray<Message>): ReadonlyArray<string> =>
  messages.filter((m) => m.headers.operation === "insert").map((m) => m.key!)

/** Waits (in real time) until `check` holds; for state the test cannot await directly. */
export const eventually = (check: Effect.Effect<boolean>): Effect.Effect<void> =>
  Effect.gen(function*() {
    while (!(yield* check)) yield* TestServices.provideLive(Effect.sleep("2 millis"))
  })

/** Completes once the calling fiber has been asked to stop (an interruption is pending): used inside fakes. */
export const untilInterrupted: Effect.Effect<void> = eventually(
  Effect.descriptorWith((d) => Effect.succeed(HashSet.size(d.interruptors) > 0))
)

/** Reads the registry through a connection of its own. */
const readRegistry = <A>(dirs: TestDirs, read: (sql: SqlClient.SqlClient) => Effect.Effect<A, unknown>) =>
  Effect.scoped(
    Effect.flatMap(Layer.build(ShapeDb.layer(dirs.storageDir)), (context) => read(Context.get(context, SqlClient.SqlClient)))
  ).pipe(Effect.orDie)

/** The registry's rows. */
export const registryRows = (dirs: TestDirs) =>
  readRegistry(dirs, (sql) =>
    Effect.gen(function*() {
      const shapes = yield* sql<{ handle: string; removing: number }>`SELECT handle, removing FROM shapes`
      const state = yield* sql<{ value: string }>`SELECT value FROM replication_state WHERE key = 'last_processed_lsn'`
      return { shapes, lastProcessed: Option.map(Option.fromNullable(state[0]), (r) => BigInt(r.value)) }
    }))

/** The snapshot mark the registry holds for a shape, as stored (JSON); none before its snapshot is complete. */
export const storedMark = (dirs: TestDirs, handle: string) =>
  readRegistry(dirs, (sql) =>
    Effect.map(
      sql<{ snapshot: string | null }>`SELECT snapshot FROM shapes WHERE handle = ${handle}`,
      (rows) => Option.map(Option.fromNullable(rows[0]?.snapshot), (text) => JSON.parse(text) as Record<string, unknown>)
    ))

/** Whether a shape has files on disk. */
export const hasFiles = (dirs: TestDirs, handle: string): boolean =>
  fs.existsSync(path.join(dirs.storageDir, "shapes", handle))
