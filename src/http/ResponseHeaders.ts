import { LogOffset } from "../domain/LogOffset.js"

/** Response headers by lower-case name. */
export type HeaderRecord = Record<string, string>

/**
 * Which caching rule a response falls under (protocol.md §9.1); the handler
 * picks the first that applies, in this order: `nonGet`, `subset`,
 * `mustRefetch`, `error`, `initial`, `liveSse`, `live`, `catchUp`.
 */
export type CacheKind =
  | { readonly _tag: "nonGet" }
  | { readonly _tag: "subset" }
  | { readonly _tag: "mustRefetch"; readonly hasNewHandle: boolean }
  | { readonly _tag: "error" }
  | { readonly _tag: "initial" }
  | { readonly _tag: "liveSse"; readonly sseTimeoutMs: number }
  | { readonly _tag: "live" }
  | { readonly _tag: "catchUp"; readonly maxAge: number; readonly staleAge: number }

/**
 * The cache headers for a response. Long lifetimes on `offset=-1` let
 * browsers keep the first chunk; short public ones on live responses let a
 * CDN collapse identical long-polls.
 */
export const cacheControl = (kind: CacheKind): HeaderRecord => {
  switch (kind._tag) {
    case "nonGet":
    case "subset":
      return { "cache-control": "no-cache" }
    case "mustRefetch":
      // Without a new handle a 409 redirects nowhere useful: cache it only long enough to coalesce.
      return { "cache-control": `public, max-age=${kind.hasNewHandle ? 60 : 1}, must-revalidate` }
    case "error":
      return { "cache-control": "no-store", "surrogate-control": "no-store" }
    case "initial":
      return { "cache-control": "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746" }
    case "liveSse":
      return { "cache-control": `public, max-age=${Math.max(1, Math.floor(kind.sseTimeoutMs / 1000) - 1)}` }
    case "live":
      return { "cache-control": "public, max-age=5, stale-while-revalidate=5" }
    case "catchUp":
      return { "cache-control": `public, max-age=${kind.maxAge}, stale-while-revalidate=${kind.staleAge}` }
  }
}

/** 2024-10-09T00:00:00Z, the epoch of Electric's live cursors. */
const CURSOR_EPOCH_MS = Date.UTC(2024, 9, 9)

const DECIMAL = /^[0-9]+$/

/**
 * The `electric-cursor` of a live response: the current time in seconds
 * since 2024-10-09, rounded up to a multiple of the long-poll timeout, so
 * every client polling in the same window sends the same URL and a CDN can
 * collapse them. If that would not move past the client's cursor, a random
 * 1..3600 s jump keeps the next URL distinct from the one just cached.
 * `random` returns a number in [0, 1).
 */
export const nextCursor = (
  nowMs: number,
  longPollTimeoutMs: number,
  clientCursor: string | undefined,
  random: () => number
): string => {
  const interval = Math.floor(longPollTimeoutMs / 1000)
  if (interval <= 0) return "0"
  const seconds = Math.trunc((nowMs - CURSOR_EPOCH_MS) / 1000)
  const next = BigInt(Math.ceil(seconds / interval) * interval)
  if (clientCursor === undefined || !DECIMAL.test(clientCursor)) return next.toString()
  const previous = BigInt(clientCursor)
  if (next > previous) return next.toString()
  return (previous + BigInt(1 + Math.floor(random() * 3600))).toString()
}

/**
 * The etag of a shape response: handle, requested offset and response
 * offset, quoted. Responses without changes get a `noChangeSuffix` (e.g. a
 * monotonic time) so a CDN can never revalidate an empty long-poll.
 */
export const etag = (
  handle: string,
  requestOffset: LogOffset | "now",
  responseOffset: LogOffset,
  noChangeSuffix?: string
): string => {
  const request = requestOffset === "now" ? "now" : LogOffset.format(requestOffset)
  const base = `${handle}:${request}:${LogOffset.format(responseOffset)}`
  return noChangeSuffix === undefined ? `"${base}"` : `"${base}:${noChangeSuffix}"`
}

const stripQuotes = (value: string): string => {
  // A weak validator (`W/"…"`, as a compressing proxy sends it) names the same response for a GET.
  if (value.startsWith("W/")) value = value.slice(2)
  let start = 0
  let end = value.length
  while (start < end && value.charCodeAt(start) === 34) start++
  while (end > start && value.charCodeAt(end - 1) === 34) end--
  return value.slice(start, end)
}

/** Whether an `If-None-Match` header names `etag`: its comma-separated entries are compared without spaces or quotes. */
export const ifNoneMatchMatches = (headerValue: string | undefined, etag: string): boolean => {
  if (headerValue === undefined) return false
  const wanted = stripQuotes(etag)
  for (const entry of headerValue.split(",")) {
    if (stripQuotes(entry.trim()) === wanted) return true
  }
  return false
}

/** The headers a browser must be allowed to read, or the client fails with `MissingHeadersError`. */
const EXPOSED_HEADERS =
  "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after,electric-snapshot"

/**
 * The CORS headers of every response on a route: the request's origin is
 * echoed when there is exactly one (Node joins repeated headers with commas,
 * and an origin never contains one), else `*`. An echoed origin comes with
 * `Vary: Origin`, so that a shared cache never hands one site's answer to
 * another.
 */
export const corsHeaders = (originHeader: string | undefined, route: "shape" | "other"): HeaderRecord => {
  const methods = route === "shape" ? "GET, POST, HEAD, DELETE, OPTIONS" : "GET, HEAD"
  if (originHeader === undefined || originHeader.length === 0 || originHeader.includes(",")) {
    return {
      "access-control-allow-origin": "*",
      "access-control-expose-headers": EXPOSED_HEADERS,
      "access-control-allow-methods": methods
    }
  }
  return {
    "access-control-allow-origin": originHeader,
    "access-control-expose-headers": EXPOSED_HEADERS,
    "access-control-allow-methods": methods,
    vary: "origin"
  }
}

// `content-type`: a subset sent as a JSON body makes the browser ask first.
const ALLOWED_REQUEST_HEADERS: ReadonlySet<string> = new Set(["if-none-match", "traceparent", "content-type"])

/**
 * The extra headers of the `OPTIONS /v1/shape` 204: a day-long preflight
 * cache, and of the requested headers only those the server reads itself
 * (others, such as `authorization`, are for a proxy in front to allow).
 */
export const optionsHeaders = (requestedHeaders: string | undefined): HeaderRecord => {
  const headers: HeaderRecord = { "access-control-max-age": "86400", connection: "keep-alive" }
  if (requestedHeaders === undefined) return headers
  const allowed: Array<string> = []
  for (const entry of requestedHeaders.split(",")) {
    const name = entry.trim().toLowerCase()
    if (ALLOWED_REQUEST_HEADERS.has(name) && !allowed.includes(name)) allowed.push(name)
  }
  if (allowed.length > 0) headers["access-control-allow-headers"] = allowed.join(",")
  return headers
}

/** The `electric-server` header every response carries: name and value. */
export const serverHeader = ["electric-server", "Syncline/0.1.0"] as const

/** The body of a 409: the client never parses it, but proxies and tests read it. */
export const mustRefetchBody = `[{"headers":{"control":"must-refetch"}}]`

/** The up-to-date control message as JSON text: the last element of a response that reaches the end of the log, or one SSE event. */
export const upToDateMessage = (globalLastSeenLsn: bigint): string =>
  `{"headers":{"control":"up-to-date","global_last_seen_lsn":"${globalLastSeenLsn}"}}`
