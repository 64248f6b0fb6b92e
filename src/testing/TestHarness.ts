import * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpServer from "@effect/platform/HttpServer"
import type * as HttpServerError from "@effect/platform/HttpServerError"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as HashSet from "effect/HashSet"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as TestServices from "effect/TestServices"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { SynclineServices } from "../../layers/Syncline.js"
import { type TestDirs, TestServer, TestSyncline } from "../../layers/Test.js"
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
  /** Where the server answers the shape API: `/v1/shape`, under the path a host app mounts it at. */
  readonly shapePath: string
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
  Effect.map(Layer.build(TestServer(db, dirs, settings, holder, options)), (context) => harnessOf(context, "/v1/shape"))

/**
 * Starts a host app's serving layer — its router with `ShapeApi` mounted at `mount`, and `Syncline.drain` beside
 * it — on a test server (port 0, an `HttpClient` aimed at it, the test's clock) over `TestSyncline`, in the
 * current scope.
 */
export const startApp = <E>(
  app: Layer.Layer<never, E, SynclineServices | HttpServer.HttpServer>,
  db: FakePostgres,
  dirs: TestDirs,
  options: { readonly mount?: string; readonly settings?: Partial<StackSettings> } = {}
): Effect.Effect<Harness, E | HttpServerError.ServeError, Scope.Scope> =>
  Effect.map(
    Layer.build(app.pipe(Layer.provideMerge(NodeHttpServer.layerTest), Layer.provideMerge(TestSyncline(db, dirs, options.settings)))),
    (context) => harnessOf(context, `${options.mount ?? ""}/v1/shape`)
  )

const harnessOf = (context: Context.Context<StackSupervisor | HttpClient.HttpClient>, shapePath: string): Harness => {
  const supervisor = Context.get(context, StackSupervisor)
  const client = Context.get(context, HttpClient.HttpClient)
  const get = (pathAndQuery: string) =>
    Effect.gen(function*() {
      const res = yield* client.get(pathAndQuery)
      const text = yield* res.text
      return { status: res.status, headers: res.headers as Readonly<Record<string, string>>, text }
    }).pipe(Effect.orDie)
  return { supervisor, get, shapePath, active: supervisor.active("1 hour").pipe(Effect.orDie) }
}

/**
 * Moves the test clock in small steps, letting the stack's real I/O (files, SQLite) run between them, until
 * `check` holds: for what happens after a wait in the stack's own time, such as a restart's backoff.
 */
export const advanceUntil = (check: Effect.Effect<boolean>, step: Duration.DurationInput = "100 millis", limit = 2_000) =>
  Effect.gen(function*() {
    for (let i = 0; i < limit; i++) {
      if (yield* check) return
      yield* TestClock.adjust(step)
      yield* TestServices.provideLive(Effect.sleep("2 millis"))
    }
    return yield* Effect.dieMessage("the condition never held")
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
      const res = yield* h.get(`${h.shapePath}?${query}&offset=${offset}${handle === undefined ? "" : `&handle=${handle}`}`)
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
