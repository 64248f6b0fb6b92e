import type * as http from "node:http"
import * as Context from "effect/Context"
import * as Option from "effect/Option"
import { countResponseNow } from "../observability/Metrics.js"
import type { Shape } from "../shapes/Shape.js"
import { ShapeCache } from "../shapes/ShapeCache.js"
import type { StackSupervisor } from "../stack/StackSupervisor.js"
import { corsHeaders, type HeaderRecord, ifNoneMatchMatches, serverHeader } from "./ResponseHeaders.js"

/** A catch-up response that never changes: its bytes and every header but the CORS ones. */
export interface SettledResponse {
  readonly shape: Shape
  readonly headers: HeaderRecord
  readonly etag: string
  readonly body: Uint8Array
}

/** What an entry costs besides its body. */
const ENTRY_BYTES = 512

/**
 * The catch-up responses of one stack whose bytes never change (a snapshot
 * chunk, a closed log chunk), by the request's URL: the next request for the
 * same URL is answered from here while its shape lives, without resolving its
 * definition or reading its log again. Catch-up clients and the caches in
 * front of them ask for the same chunks over and over. Least recently used
 * responses go first once the bodies held pass `maxBytes`.
 */
export class SettledResponses {
  private readonly entries = new Map<string, SettledResponse>()
  private bytes = 0
  /** The URLs asked for (or answered) since the last `sweep`. */
  private used = new Set<string>()

  constructor(private readonly maxBytes: number) {}

  get(url: string): SettledResponse | undefined {
    const entry = this.entries.get(url)
    if (entry === undefined) return undefined
    this.entries.delete(url)
    this.entries.set(url, entry)
    this.used.add(url)
    return entry
  }

  set(url: string, entry: SettledResponse): void {
    this.delete(url)
    this.entries.set(url, entry)
    this.used.add(url)
    this.bytes += entry.body.length + ENTRY_BYTES
    for (const [key, old] of this.entries) {
      if (this.bytes <= this.maxBytes) break
      this.entries.delete(key)
      this.bytes -= old.body.length + ENTRY_BYTES
    }
  }

  /**
   * Forgets the responses no one asked for since the previous sweep: what catch-up clients go through again and
   * again stays, and a response asked for once (the first one of each new shape) is not kept for good.
   */
  sweep(): void {
    for (const url of this.entries.keys()) if (!this.used.has(url)) this.delete(url)
    this.used = new Set()
  }

  /** Forgets a response whose shape is gone. */
  delete(url: string): void {
    const entry = this.entries.get(url)
    if (entry === undefined) return
    this.entries.delete(url)
    this.bytes -= entry.body.length + ENTRY_BYTES
  }
}

/** The bodies of settled responses a stack keeps to serve again. */
const SETTLED_RESPONSE_BYTES = 32 * 1024 * 1024

/** Each stack's settled responses, by its shape cache: a new stack starts with none. */
const byStack = new WeakMap<ShapeCache["Type"], SettledResponses>()

/** How often the settled responses no one asked for meanwhile are forgotten (`SettledResponses.sweep`). */
const SETTLED_SWEEP_MS = 10_000

/** The settled responses of the stack whose shape cache is `cache`. */
export const settledResponsesOf = (cache: ShapeCache["Type"]): SettledResponses => {
  let responses = byStack.get(cache)
  if (responses === undefined) {
    responses = new SettledResponses(SETTLED_RESPONSE_BYTES)
    byStack.set(cache, responses)
    // The sweep holds them weakly: they go with their stack, and the sweep with them.
    const held = new WeakRef(responses)
    const sweep: NodeJS.Timeout = setInterval(() => {
      const live = held.deref()
      if (live === undefined) clearInterval(sweep)
      else live.sweep()
    }, SETTLED_SWEEP_MS)
    sweep.unref()
  }
  return responses
}

/** A settled response as one request gets it: its status, its headers (with its own CORS ones) and body. */
export interface SettledAnswer {
  readonly status: 200 | 304
  readonly headers: HeaderRecord
  readonly body: Uint8Array | undefined
}

/**
 * The answer to a GET of `url` that an earlier request with the same URL got,
 * while its shape is still the one the stack serves; undefined to serve the
 * request in full. The URL carries everything the first request was
 * authorized and resolved by, so the same URL gets the same bytes.
 */
export const answerSettled = (
  cache: ShapeCache["Type"],
  url: string,
  origin: string | undefined,
  ifNoneMatch: string | undefined
): SettledAnswer | undefined => {
  const responses = byStack.get(cache)
  const entry = responses?.get(url)
  if (entry === undefined) return undefined
  if (cache.peek(entry.shape.handle) !== entry.shape) {
    responses!.delete(url)
    return undefined
  }
  const cors = corsHeaders(origin, "shape")
  if (ifNoneMatchMatches(ifNoneMatch, entry.etag)) {
    const { "electric-schema": _schema, ...notModified } = entry.headers
    return { status: 304, headers: { ...cors, ...notModified }, body: undefined }
  }
  return { status: 200, headers: { ...cors, ...entry.headers }, body: entry.body }
}

const JSON_TYPE = "application/json; charset=utf-8"

/**
 * Answers a request for a settled response straight from the Node server's
 * request listener, before the Effect handler: a catch-up client walking
 * through closed chunks, or a cache in front revalidating them, costs a map
 * lookup instead of a request fiber, the router and its middleware. The
 * answer is the one the shape API gives (`answerSettled`), with the headers
 * the router adds and the response counted alike; anything else is left to
 * the API. Off while requests are traced, so that every request has its span.
 */
export const settledLane = (
  supervisor: StackSupervisor["Type"],
  source: string
) =>
(request: http.IncomingMessage, response: http.ServerResponse): boolean => {
  if (request.method !== "GET" || request.url === undefined) return false
  const active = supervisor.activeNow()
  if (Option.isNone(active)) return false
  const answer = answerSettled(
    Context.get(active.value, ShapeCache),
    request.url,
    request.headers.origin,
    request.headers["if-none-match"]
  )
  if (answer === undefined) return false
  const headers: Record<string, string | number> = { ...answer.headers, [serverHeader[0]]: serverHeader[1] }
  try {
    if (answer.body === undefined) {
      response.writeHead(answer.status, headers)
      response.end()
    } else {
      headers["content-type"] = JSON_TYPE
      headers["content-length"] = answer.body.length
      response.writeHead(answer.status, headers)
      response.end(answer.body)
    }
  } catch {
    // Outside any fiber nothing would catch it: before the headers the API answers; after, the connection goes.
    if (!response.headersSent) return false
    response.destroy()
    return true
  }
  countResponseNow(source, answer.status)
  return true
}
