import { randomInt } from "node:crypto"
import type * as http from "node:http"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { StackConfig, type StackSettings } from "../config/StackConfig.js"
import { LogOffset } from "../domain/LogOffset.js"
import { ShapeDefinition } from "../domain/ShapeDefinition.js"
import {
  InvalidRequest,
  PostgresError,
  type RegistryError,
  StorageError,
  type TableAbsent
} from "../domain/errors.js"
import { Inspector } from "../postgres/Inspector.js"
import { refused } from "../postgres/PgPool.js"
import { schemaHeader } from "../postgres/SchemaHeader.js"
import { Snapshot } from "../postgres/Snapshot.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import type { Shape } from "../shapes/Shape.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { loadSubqueryTables, shapeWhere } from "../shapes/ShapeResolver.js"
import { ReadOnlyShapes } from "../shapes/ReadOnlyShapes.js"
import { type ActiveServices, StackSupervisor } from "../stack/StackSupervisor.js"
import { type BodyFormat, type LogRead, type LogStream, PIECE_BYTES, ShapeLogStorage } from "../storage/ShapeLogStorage.js"
import { parseOrderBy } from "../where/OrderBy.js"
import { parseWhere } from "../where/WhereClause.js"
import { eventStream, isResumeOffset } from "./EventStream.js"
import { isAuthorized } from "./ApiSecret.js"
import {
  cacheControl,
  type CacheKind,
  corsHeaders,
  etag,
  type HeaderRecord,
  ifNoneMatchMatches,
  mustRefetchBody,
  nextCursor,
  optionsHeaders,
  serverHeader,
  upToDateMessage
} from "./ResponseHeaders.js"
import { CommitLane, type WholeResponse } from "./CommitLane.js"
import { abortConnection, closeConnectionOnFinish, writePieces } from "./NodeServer.js"
import { answerSettled, type SettledResponse, settledResponsesOf } from "./SettledResponses.js"
import { ShutdownSignal } from "./ShutdownSignal.js"
import { countedWhile, countResponse, heldLongPolls, sseStreams } from "../observability/Metrics.js"
import { metricsRoute } from "../observability/MetricsRoute.js"
import { statusRoute } from "../observability/StatusPage.js"
import {
  invalidRequestBody,
  parseAdminParams,
  parseDeleteParams,
  parseShapeParams,
  type ShapeDefinitionParams,
  type ShapeRequest,
  type SubsetParams
} from "./ShapeParams.js"

const JSON_TYPE = "application/json; charset=utf-8"
/** How long a request waits for a stack that is starting before it gets a 503. */
const STACK_WAIT = "5 seconds"

const encoder = new TextEncoder()
const OPEN = encoder.encode("[")
const CLOSE = encoder.encode("]")

/** The bytes of `parts` in memory of their own, not a slice of Node's shared pool that a kept body would pin. */
const keptConcat = (...parts: ReadonlyArray<Uint8Array>): Buffer => {
  let length = 0
  for (const part of parts) length += part.length
  const body = Buffer.allocUnsafeSlow(length)
  let at = 0
  for (const part of parts) {
    body.set(part, at)
    at += part.length
  }
  return body
}

/** The end of an array body of `length` bytes of lines: `]`, after the trailing message if there is one. */
const closeOf = (length: number, trailing: string | undefined): Uint8Array =>
  trailing === undefined ? CLOSE : encoder.encode(`${length > 0 ? "," : ""}${trailing}]`)

/** A body held whole, as one buffer: `[`, the lines, the trailing message, `]`. */
const wholeBody = (lines: Uint8Array, trailing: string | undefined): Buffer =>
  Buffer.concat([OPEN, lines, closeOf(lines.length, trailing)])

/**
 * A body read whole and at most this long is copied into one buffer with its brackets, written in one go; a
 * larger one (other requests may share it) is written as it is, between them.
 */
const COPIED_BODY_BYTES = 64 * 1024

/** A body held whole, as the parts to write (see `COPIED_BODY_BYTES`). */
const bodyParts = (lines: Uint8Array, trailing: string | undefined): ReadonlyArray<Uint8Array> =>
  lines.length <= COPIED_BODY_BYTES ? [wholeBody(lines, trailing)] : [OPEN, lines, closeOf(lines.length, trailing)]

const lengthOf = (parts: ReadonlyArray<Uint8Array>): number => {
  let length = 0
  for (const part of parts) length += part.length
  return length
}

/**
 * The response for a read: `[`, the stored lines, an optional trailing message,
 * `]` — stored bytes are never re-encoded. A small body held whole is sent as
 * one buffer, a larger one held whole (shared) as it is, between the brackets;
 * one not held is streamed, each piece read from disk while the socket takes
 * the one before (see `writePieces`), so a slow reader holds about two pieces.
 */
const arrayResponse = (
  request: HttpServerRequest.HttpServerRequest,
  read: LogStream,
  trailing: string | undefined,
  options: { readonly status: number; readonly contentType: string; readonly headers: HeaderRecord }
): HttpServerResponse.HttpServerResponse => {
  if (read.bytes !== undefined) {
    const parts = bodyParts(read.bytes, trailing)
    if (parts.length === 1) return HttpServerResponse.uint8Array(parts[0]!, options)
    return HttpServerResponse.stream(Stream.fromIterable(parts), { ...options, contentLength: lengthOf(parts) })
  }
  const close = closeOf(read.length, trailing)
  // Under Node the pieces go straight into the response, between the `[` and the end written as stream elements.
  const direct = read.readPiece === undefined ? undefined : writePieces(request, read.length, PIECE_BYTES, read.readPiece)
  const body = Stream.succeed(OPEN).pipe(
    Stream.concat(direct === undefined ? read.pieces : Stream.execute(direct)),
    Stream.concat(Stream.succeed(close)),
    // The headers, content-length included, are out: the only honest end left is to drop the connection.
    Stream.catchAll((error) =>
      Stream.execute(
        Effect.zipRight(
          Effect.logWarning("a response body failed after its headers were sent", error),
          Effect.sync(() => abortConnection(request))
        )
      )
    )
  )
  return HttpServerResponse.stream(body, { ...options, contentLength: OPEN.length + read.length + close.length })
}

const schemas = new WeakMap<Shape, string>()
const schemaOf = (shape: Shape): string => {
  let s = schemas.get(shape)
  if (s === undefined) {
    s = schemaHeader(shape.table, shape.columns)
    schemas.set(shape, s)
  }
  return s
}

/**
 * The outcome of whichever of `waits` ends first; the others are interrupted.
 * Each runs as a fiber of its own that no one joins: a commit that wakes a
 * thousand held requests then costs each one a resumption, not the merging
 * of fiber state that a race's join does.
 */
const firstOf = <A>(waits: ReadonlyArray<Effect.Effect<A>>): Effect.Effect<A> =>
  Effect.flatMap(Effect.runtime<never>(), (runtime) =>
    // The fibers exist only with the finalizer that interrupts them: an interruption between the two would leave
    // them waiting for a commit, a shutdown or a timeout that nobody needs any more.
    Effect.uninterruptibleMask((restore) => {
      const first = Deferred.unsafeMake<A>(FiberId.none)
      const run = Runtime.runFork(runtime)
      // A defect in a wait ends the request with it, not with the long-poll timeout.
      const fibers = waits.map((wait) => run(Effect.flatMap(Effect.exit(wait), (exit) => Deferred.done(first, exit))))
      return restore(Deferred.await(first)).pipe(
        Effect.ensuring(Effect.sync(() => {
          for (const fiber of fibers) fiber.unsafeInterruptAsFork(FiberId.none)
        }))
      )
    }))

/**
 * The lane that answers a held long-poll at the commit that ends its wait, for a GET under the service's Node
 * server from a source that has one; undefined otherwise (the fiber waits and answers, as it always can). A
 * request with `if-none-match` is left to the fiber, which may answer it 304.
 */
const commitLaneFor = (
  source: LogSource,
  request: HttpServerRequest.HttpServerRequest,
  headers: Readonly<Record<string, string | undefined>>,
  offset: LogOffset,
  after: LogOffset,
  render: (read: LogRead, globalLsn: bigint) => WholeResponse
): CommitLane | undefined => {
  const commits = source.commits
  if (commits === undefined || request.method !== "GET" || headers["if-none-match"] !== undefined) return undefined
  const response: http.ServerResponse | undefined = NodeHttpServerRequest.toServerResponse(request)
  if (response === undefined) return undefined
  return new CommitLane(response, {
    hasDataAfter: () => LogOffset.gt(commits.latestOffset(), after),
    closed: commits.closed,
    alive: commits.alive,
    onNextCommit: commits.onNextCommit,
    globalLsn: source.globalLsn,
    readWhole: () => commits.readWhole(offset)
  }, render)
}

/** Why a request ends early, as a response. */
class Reply {
  constructor(readonly response: HttpServerResponse.HttpServerResponse) {}
}

const jsonResponse = (status: number, body: string, headers: HeaderRecord) =>
  HttpServerResponse.text(body, { status, contentType: JSON_TYPE, headers })

const errorHeaders = (origin: string | undefined, extra: HeaderRecord = {}): HeaderRecord => ({
  ...corsHeaders(origin, "shape"),
  ...cacheControl({ _tag: "error" }),
  ...extra
})

const badRequest = (origin: string | undefined, e: InvalidRequest) =>
  new Reply(jsonResponse(400, invalidRequestBody(e), errorHeaders(origin)))

const unavailable = (origin: string | undefined, retryAfter: number, message: string) =>
  new Reply(
    jsonResponse(503, JSON.stringify({ message }), errorHeaders(origin, { "retry-after": String(retryAfter) }))
  )

/** The protocol's answer while Postgres cannot be reached (`reference/protocol.md` §13). */
const databaseUnreachable = (origin: string | undefined) =>
  new Reply(
    jsonResponse(
      503,
      JSON.stringify({ code: "database_unreachable", error: "Database is unreachable" }),
      errorHeaders(origin, { "retry-after": "10" })
    )
  )

/** No stack to serve from: because Postgres is unreachable, or because one is starting. */
const notReady = (origin: string | undefined, supervisor: StackSupervisor["Type"]) => () =>
  supervisor.databaseUnreachable() ? databaseUnreachable(origin) : unavailable(origin, 5, "The stack is starting")

const mustRefetch = (origin: string | undefined, handle: string | undefined) =>
  new Reply(
    jsonResponse(409, mustRefetchBody, {
      ...corsHeaders(origin, "shape"),
      ...cacheControl({ _tag: "mustRefetch", hasNewHandle: handle !== undefined }),
      ...(handle === undefined ? {} : { "electric-handle": handle })
    })
  )

const unauthorized = () =>
  jsonResponse(401, JSON.stringify({ message: "Unauthorized - Invalid API secret" }), {})

const searchParams = (url: string) => new URL(url, "http://localhost").searchParams

/** Where a response's data comes from: the active stack's log, or the files of a read-only stack. */
interface LogSource {
  readonly handle: string
  /** For a held long-poll answered at the commit that ends its wait (`CommitLane`); undefined where not possible. */
  readonly commits?: {
    readonly onNextCommit: (listener: () => void) => () => void
    readonly latestOffset: () => LogOffset
    readonly closed: () => boolean
    readonly alive: () => boolean
    readonly readWhole: (from: LogOffset) => Promise<LogRead | undefined>
  }
  readonly schema: () => string
  readonly latestOffset: Effect.Effect<LogOffset, StorageError>
  readonly read: (from: LogOffset, format?: BodyFormat) => Effect.Effect<LogStream, StorageError, Scope.Scope>
  /** Completes once durable data past `after` exists (or the log closed). */
  readonly awaitDataAfter: (after: LogOffset) => Effect.Effect<void, StorageError>
  /** Whether the shape still exists; `undefined` when the stack it belongs to has stopped. */
  readonly exists: Effect.Effect<boolean | undefined>
  /** The definition's current handle, for a 409 after the shape went away. */
  readonly currentHandle: Effect.Effect<string | undefined, Reply>
  /**
   * The commit LSN up to which every transaction is durable in every shape's log (0 when it is not known): an
   * up-to-date never reports more, so a client that compares it with a subset snapshot's `database_lsn` has
   * received every change below it.
   */
  readonly globalLsn: () => bigint
}

/** How often a read-only stack looks at the files for data another process committed. */
const READ_ONLY_POLL = "250 millis"

/**
 * Answers a `GET /v1/shape` from a log source: reads after the offset, and
 * when live and caught up holds the request until data, the long-poll
 * timeout, or the server stopping.
 */
const respond = (
  source: LogSource,
  request: ShapeRequest,
  headers: Readonly<Record<string, string | undefined>>,
  settings: StackSettings,
  shutdown: ShutdownSignal["Type"],
  remember?: (response: Omit<SettledResponse, "shape">) => void
): Effect.Effect<
  HttpServerResponse.HttpServerResponse,
  Reply | StorageError,
  Scope.Scope | HttpServerRequest.HttpServerRequest
> =>
  Effect.gen(function*() {
    const origin = headers["origin"]
    const handle = source.handle
    const live = request.live
    const cors = corsHeaders(origin, "shape")
    const baseHeaders: HeaderRecord = {
      ...cors,
      "electric-handle": handle,
      ...(live ? { "electric-cursor": nextCursor(Date.now(), settings.longPollTimeoutMs, request.cursor, Math.random) } : {})
    }

    if (request.offset === "now") {
      // Taken before the log's end: whatever is durable below it is in the log read after it.
      const lsn = source.globalLsn()
      const latest = yield* source.latestOffset
      return jsonResponse(200, `[${upToDateMessage(lsn > latest.tx ? lsn : latest.tx)}]`, {
        ...baseHeaders,
        ...cacheControl({ _tag: "catchUp", maxAge: settings.cacheMaxAge, staleAge: settings.cacheStaleAge }),
        "electric-offset": LogOffset.format(latest),
        "electric-schema": source.schema(),
        "electric-up-to-date": "",
        "electric-has-data": "false",
        etag: etag(handle, "now", latest)
      })
    }

    const offset = request.offset
    const isInitial = LogOffset.isBeforeAll(offset)
    const cacheKind: CacheKind = isInitial
      ? { _tag: "initial" }
      : live
      ? { _tag: "live" }
      : { _tag: "catchUp", maxAge: settings.cacheMaxAge, staleAge: settings.cacheStaleAge }

    /** The headers of a response with data, and the up-to-date message that ends it (if any), for `read`. */
    const completion = (read: { readonly nextOffset: LogOffset; readonly reachedEnd: boolean }, global: bigint) => {
      const upToDate = read.reachedEnd && !isInitial
      const responseEtag = etag(handle, offset, read.nextOffset)
      const responseHeaders: HeaderRecord = {
        ...baseHeaders,
        ...cacheControl(cacheKind),
        "electric-offset": LogOffset.format(read.nextOffset),
        ...(live ? {} : { "electric-schema": source.schema() }),
        ...(upToDate ? { "electric-up-to-date": "" } : {}),
        "electric-has-data": "true",
        etag: responseEtag
      }
      let trailing: string | undefined
      if (upToDate) {
        const chunkEnd = read.nextOffset.tx > 0n ? read.nextOffset.tx : 0n
        trailing = upToDateMessage(live ? (chunkEnd > 0n ? chunkEnd : global) : chunkEnd > global ? chunkEnd : global)
      }
      return { responseHeaders, responseEtag, trailing }
    }

    // An offset past the end of the log is only legal if the log catches up with it soon; the offset an SSE
    // client resumes at after the last entry is in bounds.
    const pastEnd = (latest: LogOffset) => LogOffset.gt(offset, latest) && !isResumeOffset(offset, latest)
    if (LogOffset.isReal(offset) && pastEnd(yield* source.latestOffset)) {
      const deadline = Math.max(1, Math.floor(settings.longPollTimeoutMs / 2))
      const waitUntilReached: Effect.Effect<void, StorageError> = Effect.gen(function*() {
        let latest = yield* source.latestOffset
        while (pastEnd(latest)) {
          yield* source.awaitDataAfter(latest)
          latest = yield* source.latestOffset
        }
      })
      yield* waitUntilReached.pipe(Effect.timeoutOption(deadline))
      if (pastEnd(yield* source.latestOffset)) {
        return yield* Effect.fail(
          new Reply(
            jsonResponse(
              400,
              JSON.stringify({ message: "Invalid request", errors: { offset: ["out of bounds for this shape"] } }),
              errorHeaders(origin)
            )
          )
        )
      }
    }

    if (request.sse) {
      const httpRequest = yield* HttpServerRequest.HttpServerRequest
      const sseHeaders: HeaderRecord = {
        ...baseHeaders,
        ...cacheControl({ _tag: "liveSse", sseTimeoutMs: settings.sseTimeoutMs }),
        "electric-offset": LogOffset.format(offset),
        // A buffering proxy (nginx) would hold the events back until the stream ends.
        "x-accel-buffering": "no",
        connection: "keep-alive"
      }
      // HEAD: the headers of the stream, which is never run.
      if (httpRequest.method === "HEAD") {
        return HttpServerResponse.empty({ status: 200, headers: { ...sseHeaders, "content-type": "text/event-stream" } })
      }
      const closeOnFinish = () => closeConnectionOnFinish(httpRequest)
      const open = countedWhile(sseStreams, settings.replicationStreamId, Effect.never)
      const stream = Stream.merge(eventStream(source, offset, settings, shutdown, closeOnFinish), Stream.fromEffect(open).pipe(Stream.drain), {
        haltStrategy: "left"
      })
      return HttpServerResponse.stream(stream, {
        status: 200,
        contentType: "text/event-stream",
        headers: sseHeaders
      })
    }

    // Each up-to-date reports the durable LSN taken before the read it ends: every change below it is in the read
    // (or was before it), never one the client has yet to get.
    let global = source.globalLsn()
    let read = yield* source.read(offset)
    if (live && read.length === 0) {
      const readGlobal = global
      const noChange = (extra: HeaderRecord) => {
        const lsn = offset.tx > 0n ? offset.tx : readGlobal
        return jsonResponse(200, `[${upToDateMessage(lsn)}]`, {
          ...baseHeaders,
          ...cacheControl(cacheKind),
          "electric-offset": LogOffset.format(offset),
          "electric-up-to-date": "",
          "electric-has-data": "false",
          etag: etag(handle, offset, offset, String(Date.now())),
          ...extra
        })
      }
      const after = LogOffset.max(offset, read.nextOffset)
      const httpRequest = yield* HttpServerRequest.HttpServerRequest
      const lane = commitLaneFor(source, httpRequest, headers, offset, after, (whole, lsn) => {
        const { responseHeaders, trailing } = completion(whole, lsn)
        const body = bodyParts(whole.body, trailing)
        return {
          body,
          headers: { ...responseHeaders, "content-type": JSON_TYPE, "content-length": lengthOf(body), [serverHeader[0]]: serverHeader[1] }
        }
      })
      const outcome = yield* countedWhile(
        heldLongPolls,
        settings.replicationStreamId,
        firstOf([
          lane === undefined
            ? source.awaitDataAfter(after).pipe(
              Effect.as("data" as const),
              Effect.catchAll(() => Effect.succeed("closed" as const))
            )
            : lane.wait,
          Effect.as(Effect.sleep(settings.longPollTimeoutMs), "timeout" as const),
          Effect.as(shutdown.await, "shutdown" as const)
        ])
      )
      // Answered at the commit, before this fiber resumed: the server has nothing left to write.
      if (lane !== undefined && (yield* lane.settle)) return HttpServerResponse.empty({ status: 200 })
      if (outcome === "shutdown") return noChange({ connection: "close" })
      // A stack that stopped during the wait has closed its registry and logs: the client simply polls again.
      const exists = yield* source.exists
      if (exists === undefined) return noChange({})
      if (!exists) return yield* Effect.fail(mustRefetch(origin, yield* source.currentHandle))
      if (outcome === "timeout") return noChange({})
      global = source.globalLsn()
      const again = yield* Effect.either(source.read(offset))
      if (Either.isLeft(again)) {
        if (again.left.reason === "Closed") return noChange({})
        return yield* again.left
      }
      read = again.right
    }

    const { responseHeaders, responseEtag, trailing } = completion(read, global)
    if (ifNoneMatchMatches(headers["if-none-match"], responseEtag)) {
      const { "electric-schema": _schema, ...notModified } = responseHeaders
      return HttpServerResponse.empty({ status: 304, headers: notModified })
    }
    if (remember !== undefined && read.settled && read.bytes !== undefined && !live && trailing === undefined) {
      const body = keptConcat(OPEN, read.bytes, CLOSE)
      const stable: Record<string, string> = {}
      for (const [name, value] of Object.entries(responseHeaders)) {
        if (value !== undefined && !(name in cors)) stable[name] = value
      }
      remember({ headers: stable, etag: responseEtag, body })
      return HttpServerResponse.uint8Array(body, { status: 200, contentType: JSON_TYPE, headers: responseHeaders })
    }
    return arrayResponse(yield* HttpServerRequest.HttpServerRequest, read, trailing, {
      status: 200,
      contentType: JSON_TYPE,
      headers: responseHeaders
    })
  }).pipe(
    // A log closed under a request: removed (the definition has a new shape) or its stack is stopping.
    Effect.catchTag("StorageError", (e): Effect.Effect<never, Reply | StorageError> =>
      e.reason === "Removed"
        ? Effect.flatMap(source.currentHandle, (current) => Effect.fail(mustRefetch(headers["origin"], current)))
        : Effect.fail(e)
    )
  )

/** A definition that does not check out is the client's error (400); a catalog that cannot be read is a 503. */
const resolvedOrReply = <A>(origin: string | undefined, resolve: Effect.Effect<A, InvalidRequest | PostgresError>) =>
  resolve.pipe(
    Effect.catchTags({
      InvalidRequest: (e) => Effect.fail(badRequest(origin, e)),
      PostgresError: (e) =>
        Effect.fail(e.reason === "Connection" ? databaseUnreachable(origin) : unavailable(origin, 1, e.message))
    })
  )

const specOf = (request: ShapeDefinitionParams) => ({
  table: request.table,
  where: request.where,
  params: request.params,
  columns: request.columns,
  replica: request.replica,
  log: request.log
})

/** Infrastructure failures a request can meet, as 503s with `retry-after`: never a 500. */
const unavailableOnFailure = <A, R>(
  origin: string | undefined,
  effect: Effect.Effect<A, Reply | TableAbsent | PostgresError | RegistryError | StorageError, R>
): Effect.Effect<A, Reply, R> =>
  effect.pipe(
    Effect.catchTags({
      TableAbsent: () => Effect.fail(unavailable(origin, 5, "The stack is restarting")),
      PostgresError: (e) =>
        Effect.fail(e.reason === "Connection" ? databaseUnreachable(origin) : unavailable(origin, 10, e.message)),
      RegistryError: () => Effect.fail(unavailable(origin, 5, "The shape registry is unavailable")),
      StorageError: (e) =>
        Effect.fail(unavailable(origin, 5, e.reason === "Closed" ? "The stack is restarting" : "Shape storage is unavailable"))
    })
  )

/**
 * The shape a request to the active stack names, found or created, with its
 * log as a `LogSource`: a stale handle is a 409 with the current one.
 */
const activeShape = (
  request: ShapeRequest,
  headers: Readonly<Record<string, string | undefined>>
) =>
  Effect.gen(function*() {
    const origin = headers["origin"]
    const cache = yield* ShapeCache
    const storage = yield* ShapeLogStorage
    const tracker = yield* FlushTracker

    const resolved = yield* resolvedOrReply(origin, cache.resolve(specOf(request)))
    const identity = ShapeDefinition.identity(resolved.definition)
    // Resolved again: a shape that went away because its table changed must be recreated on the table as it is now.
    const currentHandle: Effect.Effect<string | undefined, Reply> = unavailableOnFailure(
      origin,
      cache.resolve(specOf(request)).pipe(
        Effect.catchTag("InvalidRequest", (e) => Effect.fail(badRequest(origin, e))),
        Effect.flatMap((now) =>
          Effect.flatMap(cache.find(now.definition), (found) =>
            Option.isSome(found) ? Effect.succeed(found.value.handle) : Effect.map(cache.getOrCreate(now), (s) => s.handle)
          )
        )
      )
    )

    let shape: Shape
    if (request.handle !== undefined) {
      const found = yield* cache.get(request.handle)
      if (Option.isNone(found) || ShapeDefinition.identity(found.value.definition) !== identity) {
        return yield* Effect.fail(mustRefetch(origin, yield* currentHandle))
      }
      shape = found.value
    } else {
      shape = yield* cache.getOrCreate(resolved)
    }
    // Files found damaged, or gone while the shape is still registered, invalidate the shape: it is removed
    // (with a log line saying why) and the client re-syncs with a new handle, never served over a hole.
    const handle = shape.handle
    const stillRegistered = Effect.map(cache.get(handle), Option.isSome).pipe(Effect.orElseSucceed(() => false))
    const invalidateIfDamaged = (e: StorageError): Effect.Effect<never, StorageError> =>
      Effect.gen(function*() {
        const damaged = e.reason === "Corrupt" || (e.reason === "Removed" && (yield* stillRegistered))
        if (!damaged) return yield* e
        yield* cache.remove(handle, e.reason === "Corrupt" ? `its files are damaged (${e.message})` : "its files are missing")
          .pipe(Effect.catchAll((cause) => Effect.logWarning(`removal of shape ${handle} failed`, cause)))
        return yield* new StorageError({ reason: "Removed", handle, message: "the shape was removed" })
      })
    // Removed between the lookup and the open: the definition has (or gets) a new shape.
    const log = yield* storage.open(handle).pipe(
      Effect.catchTag("StorageError", invalidateIfDamaged),
      Effect.catchTag("StorageError", (e): Effect.Effect<never, Reply | StorageError> =>
        e.reason === "Removed"
          ? Effect.flatMap(currentHandle, (current) => Effect.fail(mustRefetch(origin, current)))
          : Effect.fail(e)
      )
    )
    const source: LogSource = {
      handle,
      commits: {
        onNextCommit: log.onNextCommit,
        latestOffset: log.latestOffset,
        closed: log.isClosed,
        alive: () => cache.peek(handle) !== undefined,
        readWhole: (from) => log.readWhole(from, "array")
      },
      schema: () => schemaOf(shape),
      latestOffset: Effect.sync(() => log.latestOffset()),
      read: (from, format) => log.stream(from, format).pipe(Effect.catchTag("StorageError", invalidateIfDamaged)),
      awaitDataAfter: log.awaitDataAfter,
      exists: cache.get(shape.handle).pipe(
        Effect.map(Option.isSome),
        Effect.orElseSucceed(() => undefined)
      ),
      currentHandle,
      globalLsn: () => tracker.lastProcessedLsn()
    }
    return { shape, log, source }
  })

/** Serves a request from the active stack: the shape is found or created. */
const serveActive = (
  request: ShapeRequest,
  headers: Readonly<Record<string, string | undefined>>,
  settings: StackSettings,
  shutdown: ShutdownSignal["Type"],
  url: string
) =>
  Effect.gen(function*() {
    const { shape, source } = yield* activeShape(request, headers)
    const responses = settledResponsesOf(yield* ShapeCache)
    return yield* respond(source, request, headers, settings, shutdown, (response) => responses.set(url, { shape, ...response }))
  }).pipe((effect) => unavailableOnFailure(headers["origin"], effect))

/**
 * The settled response an earlier request with the same URL got, while its
 * shape is still the one the stack serves; undefined to serve the request in
 * full. Under the service's own Node server such requests are answered before
 * they get here (`settledLane`); this serves them where the API is mounted in
 * a host app's server.
 */
const servedBefore = (
  context: Context.Context<ActiveServices>,
  url: string,
  headers: Readonly<Record<string, string | undefined>>
): HttpServerResponse.HttpServerResponse | undefined => {
  const answer = answerSettled(Context.get(context, ShapeCache), url, headers["origin"], headers["if-none-match"])
  if (answer === undefined) return undefined
  return answer.body === undefined
    ? HttpServerResponse.empty({ status: answer.status, headers: answer.headers })
    : HttpServerResponse.uint8Array(answer.body, { status: answer.status, contentType: JSON_TYPE, headers: answer.headers })
}

/** The most bytes of rows one subset response holds (it is built in memory). */
const MAX_SUBSET_BYTES = 64 * 1024 * 1024

/** The largest POST body read: a subset is a clause and its parameters. */
const MAX_BODY_BYTES = 1024 * 1024

class BodyTooLarge {
  readonly _tag = "BodyTooLarge"
}

/** A POST body as a JSON object; anything else is the client's error. */
const readJsonBody = (request: HttpServerRequest.HttpServerRequest, origin: string | undefined) =>
  Effect.gen(function*() {
    const declared = Number(request.headers["content-length"] ?? "0")
    const tooLarge = new Reply(
      jsonResponse(413, JSON.stringify({ message: "Request body too large", errors: { body: ["is larger than 1 MiB"] } }), errorHeaders(origin))
    )
    if (declared > MAX_BODY_BYTES) return yield* Effect.fail(tooLarge)
    let size = 0
    const chunks: Array<Uint8Array> = []
    // Past the limit the body is read on and dropped, so that the 413 reaches a client still sending it; a body
    // that goes on much longer is cut off with its connection.
    yield* Stream.runForEach(request.stream, (chunk) => {
      size += chunk.length
      if (size > MAX_BODY_BYTES * 16) return Effect.fail(new BodyTooLarge())
      if (size <= MAX_BODY_BYTES) chunks.push(chunk)
      return Effect.void
    }).pipe(
      Effect.catchTags({
        BodyTooLarge: () => Effect.fail(tooLarge),
        RequestError: () =>
          Effect.fail(badRequest(origin, InvalidRequest.single("body", "the request body could not be read")))
      })
    )
    if (size > MAX_BODY_BYTES) return yield* Effect.fail(tooLarge)
    const text = Buffer.concat(chunks).toString("utf8")
    if (text.trim() === "") return {}
    let decoded: unknown
    try {
      decoded = JSON.parse(text)
    } catch (error) {
      return yield* Effect.fail(
        badRequest(origin, InvalidRequest.single("body", `Invalid JSON in request body: ${(error as Error).message}`))
      )
    }
    if (decoded === null || typeof decoded !== "object" || Array.isArray(decoded)) {
      return yield* Effect.fail(badRequest(origin, InvalidRequest.single("body", "Request body must be a JSON object")))
    }
    return decoded as Record<string, unknown>
  })

/**
 * Answers a subset snapshot request (protocol.md §8.7): the rows of the shape
 * that the subset's clause also selects, ordered and paged as asked, read in
 * one Postgres snapshot, with that snapshot's `xmin`/`xmax`/`xip_list` and the
 * WAL insert position in it (`database_lsn`). The subset's clause goes
 * through the shape clauses' parser (subqueries included) and is rendered
 * anew, and its order through `parseOrderBy`: no client text reaches SQL.
 *
 * `electric-offset` is the request's own offset when it has one: the client
 * takes it as its position, and any change the rows already hold that comes
 * after it is one the client drops by the snapshot's visibility. From `-1` or
 * `now` it is the log's end, read before the snapshot is taken, so every
 * change the snapshot misses lies after it.
 */
const serveSubset = (
  request: ShapeRequest,
  subset: SubsetParams,
  headers: Readonly<Record<string, string | undefined>>,
  settings: StackSettings
) =>
  Effect.gen(function*() {
    const origin = headers["origin"]
    const { shape, log } = yield* activeShape(request, headers)
    // A new shape answers once its own snapshot is complete, so that its log's end is known; a long one is
    // waited for as long as a long-poll, then the client retries.
    const snapshotted = yield* log.awaitDataAfter(LogOffset.beforeAll).pipe(
      Effect.timeoutTo({ duration: settings.longPollTimeoutMs, onSuccess: () => true, onTimeout: () => false })
    )
    if (!snapshotted) return yield* Effect.fail(unavailable(origin, 1, "The shape's snapshot is still being taken"))
    const latest = log.latestOffset()
    if (LogOffset.isBeforeAll(latest)) {
      return yield* Effect.fail(unavailable(origin, 1, "The shape is being removed"))
    }
    const subsetError = (field: string, message: string) => badRequest(origin, InvalidRequest.single(field, message))
    // The client's position must be one the log has reached: it is what the client continues from.
    if (
      request.offset !== "now" && LogOffset.isReal(request.offset) && LogOffset.gt(request.offset, latest) &&
      !isResumeOffset(request.offset, latest)
    ) {
      return yield* Effect.fail(subsetError("offset", "out of bounds for this shape"))
    }

    let subsetSql: string | undefined
    if (subset.where !== undefined) {
      const tables = yield* loadSubqueryTables(yield* Inspector, subset.where).pipe(
        Effect.catchTag("InvalidRequest", (e) => Effect.fail(subsetError("subset__where", e.errors["where"]?.[0] ?? "is invalid")))
      )
      const clause = parseWhere(subset.where, subset.params, shape.table, tables, "subset__params")
      if (Either.isLeft(clause)) return yield* Effect.fail(subsetError("subset__where", clause.left.message))
      subsetSql = clause.right.sql
    }
    let orderBySql: string | undefined
    if (subset.orderBy !== undefined) {
      const order = parseOrderBy(subset.orderBy, shape.table)
      if (Either.isLeft(order)) return yield* Effect.fail(subsetError("subset__order_by", order.left))
      orderBySql = order.right
    }
    const shapeWhereClause = shapeWhere(shape)
    // A restored clause that no longer parses invalidates its shape, which its consumer is removing.
    if (Either.isLeft(shapeWhereClause)) return yield* Effect.fail(unavailable(origin, 1, "The shape is being removed"))
    const shapeSql = shapeWhereClause.right?.sql
    const whereSql = shapeSql === undefined
      ? subsetSql
      : subsetSql === undefined
      ? shapeSql
      : `(${shapeSql}) AND (${subsetSql})`
    const mark = randomInt(1, 2 ** 31)
    const snapshot = yield* Snapshot
    const result = yield* snapshot.subset({
      table: shape.table,
      columns: shape.columns,
      whereSql,
      orderBySql,
      limit: subset.limit,
      offset: subset.offset,
      mark,
      maxBytes: MAX_SUBSET_BYTES
    }).pipe(
      Effect.catchTag("SubsetTooLarge", () =>
        Effect.fail(subsetError("subset__limit", "the subset is larger than 64 MiB: ask for it in pages (order_by, limit, offset)"))),
      // Which of where and order_by Postgres refused (an operator, a type) is only in its message.
      Effect.catchIf(
        (e): e is PostgresError => e instanceof PostgresError && refused(e),
        (e) => Effect.fail(subsetError("subset", `Postgres refused the subset query: ${e.message}`))
      )
    )
    const metadata = `{"xmin":"${result.xmin}","xmax":"${result.xmax}","xip_list":[${
      result.xip.map((x) => `"${x}"`).join(",")
    }],"snapshot_mark":${mark},"database_lsn":"${result.lsn}"}`
    const position = request.offset !== "now" && !LogOffset.isBeforeAll(request.offset) ? request.offset : latest
    return HttpServerResponse.text(`{"metadata":${metadata},"data":[${result.lines.join(",")}]}`, {
      status: 200,
      contentType: JSON_TYPE,
      headers: {
        ...corsHeaders(origin, "shape"),
        ...cacheControl({ _tag: "subset" }),
        "electric-snapshot": "true",
        "electric-handle": shape.handle,
        "electric-schema": schemaOf(shape),
        "electric-offset": LogOffset.format(position)
      }
    })
  }).pipe((effect) => unavailableOnFailure(headers["origin"], effect))

/**
 * Serves a request while another process owns the slot: existing shapes
 * only, from the files; anything that needs a new shape waits for this stack
 * to become active.
 */
const serveReadOnly = (
  request: ShapeRequest,
  headers: Readonly<Record<string, string | undefined>>,
  settings: StackSettings,
  shutdown: ShutdownSignal["Type"],
  waitForActive: Effect.Effect<
    HttpServerResponse.HttpServerResponse,
    Reply,
    Scope.Scope | HttpServerRequest.HttpServerRequest
  >
) =>
  Effect.gen(function*() {
    const origin = headers["origin"]
    const shapes = yield* ReadOnlyShapes
    const resolved = yield* resolvedOrReply(origin, shapes.resolve(specOf(request)))
    const identity = ShapeDefinition.identity(resolved.definition)
    const existing = yield* shapes.byIdentity(identity)
    if (request.handle !== undefined) {
      const requested = yield* shapes.identityOf(request.handle)
      if (Option.isNone(requested) || requested.value !== identity) {
        // A 409 needs the definition's current handle; without one, only the owner can create it.
        if (Option.isNone(existing)) return yield* waitForActive
        return yield* Effect.fail(mustRefetch(origin, existing.value))
      }
    }
    if (Option.isNone(existing)) return yield* waitForActive
    const handle = existing.value
    const reader = yield* shapes.reader(handle)
    const shape = resolved.build(handle)
    const exists = Effect.map(shapes.identityOf(handle), Option.isSome).pipe(Effect.orElseSucceed(() => undefined))
    const source: LogSource = {
      handle,
      schema: () => schemaOf(shape),
      // The registry says this shape's snapshot is complete: a pointer that says otherwise (or is gone) is
      // damage, which only the owner can repair. Until then the request is retried, never told "out of bounds".
      latestOffset: Effect.flatMap(reader.latestOffset, (latest) =>
        LogOffset.isBeforeAll(latest)
          ? Effect.fail(new StorageError({ reason: "Corrupt", handle, message: "its commit pointer is missing" }))
          : Effect.succeed(latest)),
      read: reader.stream,
      awaitDataAfter: (after) =>
        Effect.gen(function*() {
          while (!LogOffset.gt(yield* reader.latestOffset, after)) yield* Effect.sleep(READ_ONLY_POLL)
        }),
      exists,
      currentHandle: unavailableOnFailure(
        origin,
        Effect.map(shapes.byIdentity(identity), Option.getOrUndefined)
      ),
      globalLsn: () => 0n
    }
    return yield* respond(source, request, headers, settings, shutdown)
  }).pipe((effect) => unavailableOnFailure(headers["origin"], effect))

const requestHeaders = (request: HttpServerRequest.HttpServerRequest): Readonly<Record<string, string | undefined>> =>
  request.headers as Readonly<Record<string, string | undefined>>

/** The response a request ends with; the router's last step adds the server header to every one. */
const finish = <R>(response: Effect.Effect<HttpServerResponse.HttpServerResponse, Reply, R>) =>
  Effect.catchAll(response, (reply) => Effect.succeed(reply.response))

/**
 * `GET /v1/shape`, and `POST /v1/shape` (a subset snapshot whose subset is in
 * the JSON body, the shape definition and position staying in the query).
 */
const serveShape = (method: "GET" | "POST") => Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const settings = yield* StackConfig
  const headers = requestHeaders(request)
  const origin = headers["origin"]
  const query = searchParams(request.url)
  // The secret is checked before the body is read: an unauthorized client never has it parsed.
  const early = parseAdminParams(query)
  if (Either.isRight(early) && !isAuthorized(settings.secret, early.right.secret)) return unauthorized()
  const supervisor = yield* StackSupervisor
  if (method === "GET" && Either.isRight(early)) {
    const active = supervisor.activeNow()
    if (Option.isSome(active)) {
      const again = servedBefore(active.value, request.url, headers)
      if (again !== undefined) return again
    }
  }
  const body = method === "POST" ? yield* readJsonBody(request, origin) : undefined
  const parsed = parseShapeParams(query, body)
  if (Either.isLeft(parsed)) return yield* Effect.fail(badRequest(origin, parsed.left))
  if (!isAuthorized(settings.secret, parsed.right.secret)) return unauthorized()
  const subset = parsed.right.subset
  if (subset !== undefined) {
    // A subset is read from Postgres: only the stack that owns the slot answers, once it is active.
    const context = yield* supervisor.active(STACK_WAIT).pipe(Effect.mapError(notReady(origin, supervisor)))
    return yield* Effect.provide(serveSubset(parsed.right, subset, headers, settings), context)
  }
  const shutdown = yield* ShutdownSignal
  const view = yield* supervisor.current(STACK_WAIT).pipe(Effect.mapError(notReady(origin, supervisor)))
  const serveWhenActive = supervisor.active(STACK_WAIT).pipe(
    Effect.mapError(notReady(origin, supervisor)),
    Effect.flatMap((context) => Effect.provide(serveActive(parsed.right, headers, settings, shutdown, request.url), context))
  )
  return yield* view.mode === "active"
    ? Effect.provide(serveActive(parsed.right, headers, settings, shutdown, request.url), view.context)
    : Effect.provide(serveReadOnly(parsed.right, headers, settings, shutdown, serveWhenActive), view.context)
})

const deleteShape = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const settings = yield* StackConfig
  const origin = requestHeaders(request)["origin"]
  const nonGet = { ...corsHeaders(origin, "shape"), ...cacheControl({ _tag: "nonGet" }) }
  const parsed = parseDeleteParams(searchParams(request.url))
  if (Either.isLeft(parsed)) return yield* Effect.fail(badRequest(origin, parsed.left))
  if (!isAuthorized(settings.secret, parsed.right.secret)) return unauthorized()
  if (!settings.enableIntegrationTesting) {
    return jsonResponse(405, JSON.stringify({ message: "DELETE not allowed" }), nonGet)
  }
  const target = parsed.right
  const supervisor = yield* StackSupervisor
  const context = yield* supervisor.active(STACK_WAIT).pipe(Effect.mapError(notReady(origin, supervisor)))
  return yield* Effect.provide(
    Effect.gen(function*() {
      const cache = yield* ShapeCache
      let shape: Option.Option<Shape> = Option.none()
      if (target.definition !== undefined) {
        const resolved = yield* resolvedOrReply(origin, cache.resolve(specOf(target.definition)))
        shape = yield* cache.find(resolved.definition)
        if (target.handle !== undefined && Option.isSome(shape) && shape.value.handle !== target.handle) {
          return yield* Effect.fail(
            new Reply(
              jsonResponse(
                400,
                JSON.stringify({ message: "Invalid request", errors: { handle: ["does not match the shape definition"] } }),
                errorHeaders(origin)
              )
            )
          )
        }
      } else if (target.handle !== undefined) {
        shape = yield* cache.get(target.handle)
      }
      if (Option.isNone(shape)) {
        return jsonResponse(404, JSON.stringify({ message: "No existing shape found" }), nonGet)
      }
      yield* cache.remove(shape.value.handle, "deleted through the API")
      return HttpServerResponse.empty({ status: 202, headers: nonGet })
    }).pipe(
      Effect.catchTags({
        TableAbsent: () => Effect.fail(unavailable(origin, 5, "The stack is restarting")),
        RegistryError: () => Effect.fail(unavailable(origin, 5, "The shape registry is unavailable")),
        StorageError: () => Effect.fail(unavailable(origin, 5, "Shape storage is unavailable"))
      })
    ),
    context
  )
})

const optionsShape = Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
  const headers = requestHeaders(request)
  return HttpServerResponse.empty({
    status: 204,
    headers: { ...corsHeaders(headers["origin"], "shape"), ...optionsHeaders(headers["access-control-request-headers"]) }
  })
})

/** `POST /v1/admin/restart`: closes the stack and builds a new one in this process (integration testing only). */
const restartStack = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const settings = yield* StackConfig
  const parsed = parseAdminParams(searchParams(request.url))
  if (Either.isLeft(parsed)) {
    return jsonResponse(400, invalidRequestBody(parsed.left), cacheControl({ _tag: "error" }))
  }
  // Checked here rather than on the route: the router also sends `/V1/ADMIN/RESTART`, `/v1/admin//restart`
  // and percent-encoded spellings to this handler.
  if (!isAuthorized(settings.secret, parsed.right.secret)) return unauthorized()
  if (!settings.enableIntegrationTesting) {
    return jsonResponse(405, JSON.stringify({ message: "restart not allowed" }), cacheControl({ _tag: "nonGet" }))
  }
  const supervisor = yield* StackSupervisor
  yield* supervisor.restart
  return HttpServerResponse.empty({ status: 202, headers: cacheControl({ _tag: "nonGet" }) })
})

const health = Effect.gen(function*() {
  const supervisor = yield* StackSupervisor
  const status = yield* supervisor.status.get
  const active = status._tag === "Active"
  return jsonResponse(
    active ? 200 : 202,
    JSON.stringify({ status: active ? "active" : status._tag === "ReadOnly" ? "waiting" : "starting" }),
    { "cache-control": "no-cache, no-store, must-revalidate", ...corsHeaders(undefined, "other") }
  )
})

/** Logs an unexpected failure and answers 500 with a generic body; interruption is passed on untouched. */
const internalError = (cause: Cause.Cause<unknown>) =>
  Cause.isInterruptedOnly(cause)
    ? Effect.failCause(cause)
    : Effect.zipRight(
      Effect.logError("request failed", cause),
      Effect.succeed(
        jsonResponse(500, JSON.stringify({ message: "Internal server error" }), cacheControl({ _tag: "error" }))
      )
    )

/**
 * The shape API as a router value, to serve on its own or mount in a host
 * app (`HttpRouter.mount`). It needs `StackConfig` and `StackSupervisor`.
 */
export const ShapeApi = HttpRouter.empty.pipe(
  HttpRouter.get("/v1/shape", finish(serveShape("GET"))),
  HttpRouter.head("/v1/shape", finish(serveShape("GET"))),
  HttpRouter.post("/v1/shape", finish(serveShape("POST"))),
  HttpRouter.del("/v1/shape", finish(deleteShape)),
  HttpRouter.options("/v1/shape", optionsShape),
  HttpRouter.get("/v1/health", health),
  // Explicit: the catch-all below would otherwise answer HEAD before the router falls back to GET.
  HttpRouter.head("/v1/health", health),
  HttpRouter.post("/v1/admin/restart", restartStack),
  HttpRouter.get("/metrics", metricsRoute),
  HttpRouter.get("/v1/status", statusRoute),
  HttpRouter.get("/", Effect.succeed(HttpServerResponse.empty({ status: 200 }))),
  HttpRouter.all("*", Effect.succeed(HttpServerResponse.text("Not found", { status: 404 }))),
  HttpRouter.catchAllCause(internalError),
  HttpRouter.use((app) =>
    Effect.flatMap(StackConfig, (settings) =>
      Effect.flatMap(app, (response) =>
        Effect.as(countResponse(settings.replicationStreamId, response.status), HttpServerResponse.setHeader(response, serverHeader[0], serverHeader[1]))
      ))
  )
)
