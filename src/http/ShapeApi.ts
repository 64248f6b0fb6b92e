import { HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Cause, Effect, Either, Option, Redacted } from "effect"
import { StackConfig, type StackSettings } from "../config/StackConfig.js"
import { LogOffset } from "../domain/LogOffset.js"
import { ShapeDefinition } from "../domain/ShapeDefinition.js"
import type { InvalidRequest } from "../domain/errors.js"
import { schemaHeader } from "../postgres/SchemaHeader.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import { ShapeLogCollector } from "../replication/ShapeLogCollector.js"
import type { Shape } from "../shapes/Shape.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import { type StackServices, StackSupervisor } from "../stack/StackSupervisor.js"
import { ShapeLogStorage } from "../storage/ShapeLogStorage.js"
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
import { ShutdownSignal } from "./ShutdownSignal.js"
import { invalidRequestBody, parseDeleteParams, parseShapeParams, type ShapeRequest } from "./ShapeParams.js"

const JSON_TYPE = "application/json; charset=utf-8"
/** How long a request waits for a stack that is starting before it gets a 503. */
const STACK_WAIT = "5 seconds"

const encoder = new TextEncoder()
const OPEN = encoder.encode("[")
const CLOSE = encoder.encode("]")
const COMMA = encoder.encode(",")

/** `[`, the stored lines, an optional trailing message, `]` — stored bytes are never re-encoded. */
const arrayBody = (stored: Uint8Array, count: number, trailing: string | undefined): Uint8Array => {
  const parts: Array<Uint8Array> = [OPEN, stored]
  if (trailing !== undefined) {
    if (count > 0) parts.push(COMMA)
    parts.push(encoder.encode(trailing))
  }
  parts.push(CLOSE)
  return Buffer.concat(parts)
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

const mustRefetch = (origin: string | undefined, handle: string | undefined) =>
  new Reply(
    jsonResponse(409, mustRefetchBody, {
      ...corsHeaders(origin, "shape"),
      ...cacheControl({ _tag: "mustRefetch", hasNewHandle: handle !== undefined }),
      ...(handle === undefined ? {} : { "electric-handle": handle })
    })
  )

const authorized = (settings: StackSettings, request: { readonly secret?: string }): boolean =>
  Option.isNone(settings.secret) || request.secret === Redacted.value(settings.secret.value)

const unauthorized = () =>
  jsonResponse(401, JSON.stringify({ message: "Unauthorized - Invalid API secret" }), {})

const searchParams = (url: string) => new URL(url, "http://localhost").searchParams

/**
 * Serves one `GET /v1/shape` inside the current stack: resolve the shape,
 * read from its log, long-poll when live and caught up.
 */
const serveShape = (
  request: ShapeRequest,
  headers: Readonly<Record<string, string | undefined>>,
  settings: StackSettings,
  shutdown: ShutdownSignal["Type"]
) =>
  Effect.gen(function*() {
    const origin = headers["origin"]
    const cache = yield* ShapeCache
    const storage = yield* ShapeLogStorage
    const collector = yield* ShapeLogCollector
    yield* FlushTracker

    const resolved = yield* cache.resolve({
      table: request.table,
      where: request.where,
      params: request.params,
      columns: request.columns,
      replica: request.replica,
      log: request.log
    }).pipe(
      Effect.catchTags({
        InvalidRequest: (e) => Effect.fail(badRequest(origin, e)),
        PostgresError: (e) => Effect.fail(unavailable(origin, 1, e.message))
      })
    )
    const identity = ShapeDefinition.identity(resolved.definition)

    const currentHandle = Effect.flatMap(cache.find(resolved.definition), (found) =>
      Option.isSome(found) ? Effect.succeed(found.value.handle as string) : Effect.map(cache.getOrCreate(resolved), (s) => s.handle as string)
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
    // A log closed under a request: removed (the definition has a new shape) or its stack is stopping.
    return yield* Effect.gen(function*() {
      const handle = shape.handle
      const log = yield* storage.open(handle)
      const live = request.live
      const cursorHeader: HeaderRecord = live
        ? { "electric-cursor": nextCursor(Date.now(), settings.longPollTimeoutMs, request.cursor, Math.random) }
        : {}
      const baseHeaders: HeaderRecord = {
        ...corsHeaders(origin, "shape"),
        "electric-handle": handle,
        ...cursorHeader
      }

      if (request.offset === "now") {
        const latest = log.latestOffset()
        const lsn = collector.lastRoutedLsn()
        return jsonResponse(200, `[${upToDateMessage(lsn > latest.tx ? lsn : latest.tx)}]`, {
          ...baseHeaders,
          ...cacheControl({ _tag: "catchUp", maxAge: settings.cacheMaxAge, staleAge: settings.cacheStaleAge }),
          "electric-offset": LogOffset.format(latest),
          "electric-schema": schemaOf(shape),
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

      // An offset past the end of the log is only legal if the log catches up with it soon.
      if (LogOffset.isReal(offset) && LogOffset.gt(offset, log.latestOffset())) {
        const caughtUp = yield* log.awaitDataAfter(LogOffset.make(offset.tx, -1)).pipe(
          Effect.timeoutOption(Math.max(1, Math.floor(settings.longPollTimeoutMs / 2)))
        )
        if (Option.isNone(caughtUp) && LogOffset.gt(offset, log.latestOffset())) {
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

      let read = yield* log.read(offset)
      if (live && read.count === 0) {
        // Nothing new: hold the request until data, the long-poll timeout, or the server stopping.
        const noChange = (extra: HeaderRecord) => {
          const lsn = offset.tx > 0n ? offset.tx : collector.lastRoutedLsn()
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
        const outcome = yield* Effect.raceFirst(
          log.awaitDataAfter(LogOffset.max(offset, read.nextOffset)).pipe(
            Effect.as("data" as const),
            Effect.timeoutTo({
              duration: settings.longPollTimeoutMs,
              onSuccess: (o) => o,
              onTimeout: () => "timeout" as const
            })
          ),
          Effect.as(shutdown.await, "shutdown" as const)
        )
        if (outcome === "shutdown") return noChange({ connection: "close" })
        // A stack that stopped during the wait has closed its registry and logs: the client simply polls again.
        const still = yield* Effect.either(cache.get(handle))
        if (Either.isLeft(still)) return noChange({})
        if (Option.isNone(still.right)) return yield* Effect.fail(mustRefetch(origin, yield* currentHandle))
        if (outcome === "timeout") return noChange({})
        const again = yield* Effect.either(log.read(offset))
        if (Either.isLeft(again)) {
          if (again.left.reason === "Closed") return noChange({})
          return yield* again.left
        }
        read = again.right
      }

      const upToDate = read.reachedEnd && !isInitial
      const responseEtag = etag(handle, offset, read.nextOffset)
      const headers2: HeaderRecord = {
        ...baseHeaders,
        ...cacheControl(cacheKind),
        "electric-offset": LogOffset.format(read.nextOffset),
        ...(live ? {} : { "electric-schema": schemaOf(shape) }),
        ...(upToDate ? { "electric-up-to-date": "" } : {}),
        "electric-has-data": "true",
        etag: responseEtag
      }
      if (ifNoneMatchMatches(headers["if-none-match"], responseEtag)) {
        const { "electric-schema": _schema, ...notModified } = headers2
        return HttpServerResponse.empty({ status: 304, headers: notModified })
      }
      let trailing: string | undefined
      if (upToDate) {
        const chunkEnd = read.nextOffset.tx > 0n ? read.nextOffset.tx : 0n
        const global = collector.lastRoutedLsn()
        trailing = upToDateMessage(live ? (chunkEnd > 0n ? chunkEnd : global) : chunkEnd > global ? chunkEnd : global)
      }
      return HttpServerResponse.uint8Array(arrayBody(read.body, read.count, trailing), {
        status: 200,
        contentType: JSON_TYPE,
        headers: headers2
      })
    }).pipe(
      Effect.catchTag("StorageError", (e) =>
        e.reason === "Removed"
          ? Effect.flatMap(currentHandle, (current) => Effect.fail(mustRefetch(origin, current)))
          : Effect.fail(unavailable(origin, 5, e.reason === "Closed" ? "The stack is restarting" : "Shape storage is unavailable"))
      )
    )
  }).pipe(
    Effect.catchTags({
      TableAbsent: () => Effect.fail(unavailable(headers["origin"], 5, "The stack is restarting")),
      PostgresError: (e) => Effect.fail(unavailable(headers["origin"], 10, e.message)),
      RegistryError: () => Effect.fail(unavailable(headers["origin"], 5, "The shape registry is unavailable")),
      StorageError: () => Effect.fail(unavailable(headers["origin"], 5, "Shape storage is unavailable"))
    })
  )

/** Runs an effect against the current stack, or answers 503 when none becomes active in time. */
const withStack = <A, E>(
  origin: string | undefined,
  f: Effect.Effect<A, E, StackServices>
): Effect.Effect<A, E | Reply, StackSupervisor> =>
  Effect.flatMap(StackSupervisor, (supervisor) =>
    supervisor.current(STACK_WAIT).pipe(
      Effect.mapError(() => unavailable(origin, 5, "The stack is starting")),
      Effect.flatMap((context) => Effect.provide(f, context))
    )
  )

const requestHeaders = (request: HttpServerRequest.HttpServerRequest): Readonly<Record<string, string | undefined>> =>
  request.headers as Readonly<Record<string, string | undefined>>

const finish = <R>(response: Effect.Effect<HttpServerResponse.HttpServerResponse, Reply, R>) =>
  response.pipe(
    Effect.catchAll((reply) => Effect.succeed(reply.response)),
    Effect.map(HttpServerResponse.setHeader(serverHeader[0], serverHeader[1]))
  )

const getShape = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const settings = yield* StackConfig
  const headers = requestHeaders(request)
  const origin = headers["origin"]
  const parsed = parseShapeParams(searchParams(request.url))
  if (Either.isLeft(parsed)) return yield* Effect.fail(badRequest(origin, parsed.left))
  if (!authorized(settings, parsed.right)) return unauthorized()
  if (parsed.right.subset) {
    return yield* Effect.fail(
      new Reply(
        jsonResponse(
          400,
          JSON.stringify({ message: "Invalid request", errors: { subset: ["subset snapshots are not supported yet"] } }),
          errorHeaders(origin)
        )
      )
    )
  }
  const shutdown = yield* ShutdownSignal
  return yield* withStack(origin, serveShape(parsed.right, headers, settings, shutdown))
})

const deleteShape = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const settings = yield* StackConfig
  const origin = requestHeaders(request)["origin"]
  const nonGet = { ...corsHeaders(origin, "shape"), ...cacheControl({ _tag: "nonGet" }) }
  const parsed = parseDeleteParams(searchParams(request.url))
  if (Either.isLeft(parsed)) return yield* Effect.fail(badRequest(origin, parsed.left))
  if (!authorized(settings, parsed.right)) return unauthorized()
  if (!settings.enableIntegrationTesting) {
    return jsonResponse(405, JSON.stringify({ message: "DELETE not allowed" }), nonGet)
  }
  const target = parsed.right
  return yield* withStack(
    origin,
    Effect.gen(function*() {
      const cache = yield* ShapeCache
      let shape: Option.Option<Shape> = Option.none()
      if (target.definition !== undefined) {
        const def = target.definition
        const resolved = yield* cache.resolve({
          table: def.table,
          where: def.where,
          params: def.params,
          columns: def.columns,
          replica: def.replica,
          log: def.log
        }).pipe(
          Effect.catchTags({
            InvalidRequest: (e) => Effect.fail(badRequest(origin, e)),
            PostgresError: (e) => Effect.fail(unavailable(origin, 1, e.message))
          })
        )
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
    )
  )
})

const optionsShape = Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
  const headers = requestHeaders(request)
  return HttpServerResponse.empty({
    status: 204,
    headers: { ...corsHeaders(headers["origin"], "shape"), ...optionsHeaders(headers["access-control-request-headers"]) }
  })
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
  HttpRouter.get("/v1/shape", finish(getShape)),
  HttpRouter.head("/v1/shape", finish(getShape)),
  HttpRouter.del("/v1/shape", finish(deleteShape)),
  HttpRouter.options("/v1/shape", optionsShape),
  HttpRouter.get("/v1/health", health),
  HttpRouter.get("/", Effect.succeed(HttpServerResponse.empty({ status: 200 }))),
  HttpRouter.all("*", Effect.succeed(HttpServerResponse.text("Not found", { status: 404 }))),
  HttpRouter.catchAllCause(internalError),
  HttpRouter.use((app) => Effect.map(app, HttpServerResponse.setHeader(serverHeader[0], serverHeader[1])))
)
