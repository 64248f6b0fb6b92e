import * as Either from "effect/Either"
import { InvalidRequest } from "../domain/errors.js"
import { parseColumnsParam, parseTableIdentifier } from "../domain/Identifiers.js"
import { LogOffset } from "../domain/LogOffset.js"
import type { TableRef } from "../domain/Table.js"

/**
 * The shape-definition part of a request, as the client wrote it: the table
 * parsed, `where` still raw text, `params` keyed by placeholder number
 * (`"1"` for `$1`), and `columns` in the order given.
 */
export interface ShapeDefinitionParams {
  readonly table: TableRef
  readonly where?: string
  readonly params: Readonly<Record<string, string>>
  readonly columns?: ReadonlyArray<string>
  readonly replica: "default" | "full"
  readonly log: "full" | "changes_only"
}

/**
 * The subset of a subset snapshot request, as the client wrote it: `where` and
 * `orderBy` still raw text (checked against the table later), `params` keyed
 * by placeholder number.
 */
export interface SubsetParams {
  readonly where?: string
  readonly params: Readonly<Record<string, string>>
  readonly orderBy?: string
  readonly limit?: number
  readonly offset?: number
}

/**
 * A validated `GET /v1/shape` request (or `POST`, whose JSON body adds to the
 * subset). `handle` is absent when `offset` is `-1` or `now` (the client sends
 * a stale one there as a cache buster); `subset` is set when any `subset__*`
 * parameter was sent, or a subset key in the body.
 */
export interface ShapeRequest extends ShapeDefinitionParams {
  readonly offset: LogOffset | "now"
  readonly handle?: string
  readonly live: boolean
  readonly sse: boolean
  readonly cursor?: string
  readonly secret?: string
  readonly subset: SubsetParams | undefined
}

/**
 * A validated `DELETE /v1/shape` request: a handle, a shape definition, or
 * both (then they must name the same shape, which the handler checks).
 */
export interface DeleteRequest {
  readonly handle?: string
  readonly definition?: ShapeDefinitionParams
  readonly secret?: string
}

/** A validated `POST /v1/admin/restart` request. */
export interface AdminRequest {
  readonly secret?: string
}

type Errors = Record<string, Array<string>>

const addError = (errors: Errors, field: string, message: string): void => {
  const list = errors[field]
  if (list === undefined) errors[field] = [message]
  else list.push(message)
}

/** Plug decodes repeated keys last-wins; we do the same so both servers read a URL alike. */
const lastValue = (query: URLSearchParams, key: string): string | undefined => {
  const all = query.getAll(key)
  return all.length === 0 ? undefined : all[all.length - 1]
}

/** Ecto casts blank strings to nil, so Electric treats `table=` like no `table`. */
const nonBlank = (value: string | undefined): string | undefined =>
  value === undefined || value.trim().length === 0 ? undefined : value

/** `live`, `live_sse`: present with any value but `false` (an empty one included) is true. */
const flag = (value: string | undefined): boolean => value !== undefined && value !== "false"

const POSITIVE_INTEGER = /^[1-9][0-9]*$/
const PARAMS_KEY = /^params\[(.*)\]$/

const invalidParamKey = (key: string): string => `parameter names must be positive integers, got: ${key}`

const NUL = "\u0000"
const NUL_IN_VALUE = "must not contain a NUL byte"
const NUL_IN_NAME = "parameter names must not contain a NUL byte"
const nulInParamValue = (key: string): string => `parameter values must not contain a NUL byte, got one for ${key}`

/**
 * The errors of every parameter with a NUL byte in its name or value, known
 * to the protocol or not; `undefined` when there is none. libpg-query reads the where clause as a C string, so a NUL
 * would silently end the clause (and a filter a proxy appended after it), and
 * Postgres refuses NUL in any text, so one reaching it would look like an
 * outage. Nothing holding a NUL is interpreted further.
 */
const nulErrors = (query: URLSearchParams): Errors | undefined => {
  let errors: Errors | undefined
  for (const [key, value] of query) {
    const inName = key.includes(NUL)
    if (!inName && !value.includes(NUL)) continue
    errors ??= {}
    const isParam = key.startsWith("params[")
    const field = isParam ? "params" : key
    if (inName) addError(errors, field, NUL_IN_NAME)
    else if (isParam) addError(errors, field, nulInParamValue(PARAMS_KEY.exec(key)?.[1] ?? key))
    else addError(errors, field, NUL_IN_VALUE)
  }
  return errors
}

const parseJsonParams = (
  text: string,
  params: Record<string, string>,
  errors: Errors,
  field: string,
  allowArray: boolean
): void => {
  let decoded: unknown
  try {
    decoded = JSON.parse(text)
  } catch {
    addError(errors, field, `${field} must be valid JSON`)
    return
  }
  readParamsObject(decoded, params, errors, field, allowArray)
}

/**
 * Reads decoded JSON params: an object keyed by placeholder number, or (for a
 * subset, which the client may send as a list) an array for `$1`, `$2`, ….
 */
const readParamsObject = (
  decoded: unknown,
  params: Record<string, string>,
  errors: Errors,
  field: string,
  allowArray: boolean
): void => {
  if (decoded === null || typeof decoded !== "object" || (Array.isArray(decoded) && !allowArray)) {
    addError(errors, field, `${field} must be a JSON object`)
    return
  }
  const entries = Array.isArray(decoded)
    ? decoded.map((value, i) => [String(i + 1), value] as const)
    : Object.entries(decoded)
  for (const [key, value] of entries) {
    if (!POSITIVE_INTEGER.test(key)) {
      addError(errors, field, invalidParamKey(key))
    } else if (typeof value === "string") {
      // A JSON escape (`\u0000`) gets past the check on the raw query.
      if (value.includes(NUL)) addError(errors, field, nulInParamValue(key))
      else params[key] = value
    } else if (typeof value === "number" || typeof value === "boolean") {
      params[key] = String(value)
    } else {
      addError(errors, field, `parameter values must be strings, got: ${JSON.stringify(value)} for ${key}`)
    }
  }
}

/** The shape's params: `params` as JSON, and the `params[N]` entries, which win. */
const scanParams = (query: URLSearchParams, errors: Errors): Record<string, string> => {
  const params: Record<string, string> = {}
  const json = nonBlank(lastValue(query, "params"))
  if (json !== undefined) parseJsonParams(json, params, errors, "params", false)
  for (const [key, value] of query) {
    if (!key.startsWith("params[")) continue
    const m = PARAMS_KEY.exec(key)
    const n = m === null ? key : m[1]!
    if (m === null || !POSITIVE_INTEGER.test(n)) addError(errors, "params", invalidParamKey(n))
    else params[n] = value
  }
  return params
}

const parseDefinition = (
  query: URLSearchParams,
  errors: Errors,
  params: Record<string, string>
): ShapeDefinitionParams | undefined => {
  let table: TableRef | undefined
  const tableText = nonBlank(lastValue(query, "table"))
  if (tableText === undefined) {
    addError(errors, "table", "can't be blank")
  } else {
    const parsed = parseTableIdentifier(tableText)
    if (Either.isLeft(parsed)) addError(errors, "table", parsed.left)
    else table = parsed.right
  }

  let columns: ReadonlyArray<string> | undefined
  const columnsText = nonBlank(lastValue(query, "columns"))
  if (columnsText !== undefined) {
    const parsed = parseColumnsParam(columnsText)
    if (Either.isLeft(parsed)) addError(errors, "columns", parsed.left)
    else columns = parsed.right
  }

  let replica: "default" | "full" = "default"
  const replicaText = nonBlank(lastValue(query, "replica"))
  if (replicaText === "full") replica = "full"
  else if (replicaText !== undefined && replicaText !== "default") addError(errors, "replica", "is invalid")

  let log: "full" | "changes_only" = "full"
  const logText = nonBlank(lastValue(query, "log"))
  if (logText === "changes_only") log = "changes_only"
  else if (logText !== undefined && logText !== "full") addError(errors, "log", "is invalid")

  if (table === undefined) return undefined
  const where = nonBlank(lastValue(query, "where"))
  return {
    table,
    ...(where !== undefined ? { where } : {}),
    params,
    ...(columns !== undefined ? { columns } : {}),
    replica,
    log
  }
}

const SUBSET_PREFIX = "subset__"

/** The keys a subset may have, in the query (`subset__<key>`) or a POST body; the `_expr` forms are ignored. */
const SUBSET_KEYS: ReadonlySet<string> = new Set(["where", "params", "order_by", "limit", "offset", "where_expr", "order_by_expr"])

/** A POST body's subset: its keys at the top level, or under `subset`. */
const bodySubset = (body: Readonly<Record<string, unknown>>, errors: Errors): Record<string, unknown> => {
  const found: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(body)) {
    if (key === "subset" && value !== null && typeof value === "object" && !Array.isArray(value)) {
      for (const [inner, v] of Object.entries(value)) {
        if (SUBSET_KEYS.has(inner)) found[inner] = v
        else addError(errors, "body", `unknown subset key: ${inner}`)
      }
    } else if (SUBSET_KEYS.has(key)) {
      found[key] = value
    } else {
      // A shape definition or position sent here would be a different request than the one answered: refused.
      addError(errors, "body", `only a subset (where, params, order_by, limit, offset) may be sent in the body, got: ${key}`)
    }
  }
  return found
}

const integerValue = (value: unknown): number | undefined => {
  if (typeof value === "number") return Number.isSafeInteger(value) ? value : undefined
  if (typeof value === "string" && /^\s*[+-]?\d+\s*$/.test(value)) {
    const n = Number(value)
    return Number.isSafeInteger(n) ? n : undefined
  }
  return undefined
}

/**
 * The subset of a request: `subset__*` query parameters, overridden by the
 * body's subset keys. Rules and messages follow Electric's; each error names
 * the `subset__*` parameter.
 */
const parseSubset = (
  query: URLSearchParams,
  body: Readonly<Record<string, unknown>> | undefined,
  errors: Errors
): SubsetParams | undefined => {
  const raw: Record<string, unknown> = {}
  let present = false
  for (const key of query.keys()) {
    if (!key.startsWith(SUBSET_PREFIX)) continue
    present = true
    const name = key.slice(SUBSET_PREFIX.length)
    if (SUBSET_KEYS.has(name)) raw[name] = lastValue(query, key)
  }
  if (body !== undefined) {
    const fromBody = bodySubset(body, errors)
    for (const [key, value] of Object.entries(fromBody)) {
      present = true
      raw[key] = value
    }
  }
  if (!present) return undefined

  const text = (name: string): string | undefined => {
    const value = raw[name]
    if (value === undefined || value === null) return undefined
    if (typeof value !== "string") {
      addError(errors, `${SUBSET_PREFIX}${name}`, "must be a string")
      return undefined
    }
    return nonBlank(value)
  }
  const count = (name: string, min: number): number | undefined => {
    const value = raw[name]
    if (value === undefined || value === null || value === "") return undefined
    const n = integerValue(value)
    if (n === undefined) addError(errors, `${SUBSET_PREFIX}${name}`, "is invalid")
    else if (n < min) {
      addError(errors, `${SUBSET_PREFIX}${name}`, min === 1 ? "must be greater than 0" : "must be greater than or equal to 0")
    } else return n
    return undefined
  }

  const params: Record<string, string> = {}
  const field = `${SUBSET_PREFIX}params`
  const rawParams = raw["params"]
  if (typeof rawParams === "string") {
    if (nonBlank(rawParams) !== undefined) parseJsonParams(rawParams, params, errors, field, true)
  } else if (rawParams !== undefined && rawParams !== null) {
    readParamsObject(rawParams, params, errors, field, true)
  }
  const where = text("where")
  const orderBy = text("order_by")
  const limit = count("limit", 1)
  const offset = count("offset", 0)
  const given = (name: string) => raw[name] !== undefined && raw[name] !== null && raw[name] !== ""
  if ((given("limit") || given("offset")) && orderBy === undefined) {
    addError(errors, `${SUBSET_PREFIX}order_by`, "order_by is required when limit or offset is present")
  }
  return {
    ...(where !== undefined ? { where } : {}),
    params,
    ...(orderBy !== undefined ? { orderBy } : {}),
    ...(limit !== undefined ? { limit } : {}),
    ...(offset !== undefined ? { offset } : {})
  }
}

/**
 * Parameters of the protocol this server does not implement: refused, so a
 * client never gets an answer to a different question than it asked.
 */
const unsupportedParams = (query: URLSearchParams, errors: Errors): void => {
  if (nonBlank(lastValue(query, "queryable_columns")) !== undefined) {
    addError(errors, "queryable_columns", "is not supported by this server")
  }
  const compaction = nonBlank(lastValue(query, "experimental_compaction"))
  if (compaction !== undefined && compaction !== "false" && compaction !== "0") {
    addError(errors, "experimental_compaction", "log compaction is not supported by this server")
  }
}

const readSecret = (query: URLSearchParams): string | undefined =>
  nonBlank(lastValue(query, "secret")) ?? nonBlank(lastValue(query, "api_secret"))

const hasErrors = (errors: Errors): boolean => {
  for (const _ in errors) return true
  return false
}

/**
 * Validates the query string of `GET /v1/shape` (and of `POST`, whose shape
 * definition stays in the query and whose JSON `body` holds the subset) with
 * Electric's rules and messages. Every failing rule is reported, each under
 * its parameter's name; unknown parameters are ignored, as the client adds its
 * own, and protocol parameters this server does not implement are refused. A
 * NUL byte in any query parameter is refused before any other rule is checked.
 */
export const parseShapeParams = (
  query: URLSearchParams,
  body?: Readonly<Record<string, unknown>>
): Either.Either<ShapeRequest, InvalidRequest> => {
  const nul = nulErrors(query)
  if (nul !== undefined) return Either.left(new InvalidRequest({ errors: nul }))
  const errors: Errors = {}

  let offset: LogOffset | "now" | undefined
  const offsetText = nonBlank(lastValue(query, "offset"))
  if (offsetText === undefined) addError(errors, "offset", "can't be blank")
  else if (offsetText === "now") offset = "now"
  else {
    offset = LogOffset.parse(offsetText)
    if (offset === undefined) addError(errors, "offset", "has invalid format")
  }
  const startsFresh = offset === "now" || (offset !== undefined && LogOffset.isBeforeAll(offset))

  let handle = nonBlank(lastValue(query, "handle"))
  if (startsFresh) handle = undefined
  else if (offset !== undefined && handle === undefined) {
    addError(errors, "handle", "can't be blank when offset != -1")
  }

  const live = flag(lastValue(query, "live"))
  if (live && offset === "now") addError(errors, "live", "can't be true when offset is 'now'")
  else if (live && startsFresh) addError(errors, "live", "can't be true when offset == -1")

  const sse = flag(query.has("live_sse") ? lastValue(query, "live_sse") : lastValue(query, "experimental_live_sse"))
  if (sse && !live) addError(errors, "live_sse", "can't be true unless live is also true")

  const definition = parseDefinition(query, errors, scanParams(query, errors))
  const subset = parseSubset(query, body, errors)
  if (subset !== undefined && live) addError(errors, "live", "can't be true for a subset snapshot")
  if (body !== undefined && subset === undefined) {
    addError(errors, "body", "a POST request must carry a subset (where, params, order_by, limit or offset)")
  }
  unsupportedParams(query, errors)

  if (definition === undefined || offset === undefined || hasErrors(errors)) {
    return Either.left(new InvalidRequest({ errors }))
  }
  const cursor = lastValue(query, "cursor")
  const secret = readSecret(query)
  return Either.right({
    ...definition,
    offset,
    ...(handle !== undefined ? { handle } : {}),
    live,
    sse,
    ...(cursor !== undefined ? { cursor } : {}),
    ...(secret !== undefined ? { secret } : {}),
    subset
  })
}

/**
 * Validates the query string of `DELETE /v1/shape`: with a `table`, the shape
 * definition is validated as for GET and a `handle` is optional; without
 * one, a `handle` alone is required. NUL bytes are refused as for GET.
 */
export const parseDeleteParams = (query: URLSearchParams): Either.Either<DeleteRequest, InvalidRequest> => {
  const nul = nulErrors(query)
  if (nul !== undefined) return Either.left(new InvalidRequest({ errors: nul }))
  const errors: Errors = {}
  const handle = nonBlank(lastValue(query, "handle"))
  const secret = readSecret(query)
  const common = {
    ...(handle !== undefined ? { handle } : {}),
    ...(secret !== undefined ? { secret } : {})
  }
  if (nonBlank(lastValue(query, "table")) === undefined) {
    if (handle === undefined) {
      return Either.left(InvalidRequest.single("handle", "can't be blank when shape definition is missing"))
    }
    return Either.right(common)
  }
  const definition = parseDefinition(query, errors, scanParams(query, errors))
  if (definition === undefined || hasErrors(errors)) return Either.left(new InvalidRequest({ errors }))
  return Either.right({ ...common, definition })
}

/**
 * Validates the query string of `POST /v1/admin/restart`, which reads only
 * the secret; other parameters are ignored, but none may hold a NUL byte.
 */
export const parseAdminParams = (query: URLSearchParams): Either.Either<AdminRequest, InvalidRequest> => {
  const nul = nulErrors(query)
  if (nul !== undefined) return Either.left(new InvalidRequest({ errors: nul }))
  const secret = readSecret(query)
  return Either.right(secret !== undefined ? { secret } : {})
}

/** The 400 body for an `InvalidRequest`, as Electric writes it and the client's tests read it. */
export const invalidRequestBody = (e: InvalidRequest): string =>
  JSON.stringify({ message: "Invalid request", errors: e.errors })
