import type { Domain, PgType } from "./Ast.js"
import { formatDateTime, inRange, type Micros, parseDateTime, type TimeKind } from "./DateTime.js"

/**
 * Postgres values in their text form: reading literals the way Postgres's
 * input functions do (to canonical text), converting row values into the
 * representation of a comparison domain, and comparing them with Postgres's
 * semantics.
 *
 * Text ordering is plain code-point order, which is Postgres's `C` collation
 * for UTF-8 databases. A database or column with another collation orders
 * text differently; equality is exact either way.
 */

/** A literal that Postgres's input function for its type would reject. */
export class InputError extends Error {}

/** How Postgres names a type in its messages. */
export const displayType = (type: PgType): string => {
  switch (type) {
    case "int2":
      return "smallint"
    case "int4":
      return "integer"
    case "int8":
      return "bigint"
    case "float4":
      return "real"
    case "float8":
      return "double precision"
    case "bool":
      return "boolean"
    case "varchar":
      return "character varying"
    case "bpchar":
      return "character"
    case "timestamp":
      return "timestamp without time zone"
    case "timestamptz":
      return "timestamp with time zone"
    default:
      return type
  }
}

const invalid = (type: PgType, raw: string): InputError =>
  new InputError(`invalid input syntax for type ${displayType(type)}: "${raw}"`)

const outOfRange = (type: PgType, raw: string): InputError =>
  type === "float4" || type === "float8"
    ? new InputError(`"${raw}" is out of range for type ${displayType(type)}`)
    : new InputError(`value "${raw}" is out of range for type ${displayType(type)}`)

const INT_RANGES = {
  int2: [-32768n, 32767n],
  int4: [-2147483648n, 2147483647n],
  int8: [-9223372036854775808n, 9223372036854775807n]
} as const

/** Whether an integer fits a Postgres integer type. */
export const fitsInt = (value: bigint, type: "int2" | "int4" | "int8"): boolean =>
  value >= INT_RANGES[type][0] && value <= INT_RANGES[type][1]

const INT_INPUT = /^\s*[+-]?\d+(?:_\d+)*\s*$/
const FLOAT_INPUT = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/
const NUMERIC_INPUT = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/
const UUID_INPUT = /^\{?[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}\}?$/
const MAX_NUMERIC_EXPONENT = 16383

/** Canonical text of an integer, or throws `InputError` when Postgres's `int*in` would. */
const inputInt = (raw: string, type: "int2" | "int4" | "int8"): string => {
  if (!INT_INPUT.test(raw)) throw invalid(type, raw)
  const value = BigInt(raw.trim().replace(/_/g, ""))
  if (!fitsInt(value, type)) throw outOfRange(type, raw)
  return value.toString()
}

/** The shortest text that reads back as exactly this float4 (or float8) value. */
export const formatFloat = (value: number, type: "float4" | "float8"): string => {
  if (Number.isNaN(value)) return "NaN"
  if (value === Infinity) return "Infinity"
  if (value === -Infinity) return "-Infinity"
  if (type === "float8") return String(value)
  for (let p = 1; p <= 9; p++) {
    const s = String(Number(value.toPrecision(p)))
    if (Math.fround(Number(s)) === value) return s
  }
  return String(value)
}

/** Canonical text of a float, or throws `InputError` when Postgres's `float*in` would. */
export const inputFloat = (raw: string, type: "float4" | "float8"): string => {
  const s = raw.trim()
  switch (s.toLowerCase()) {
    case "nan":
      return "NaN"
    case "infinity":
    case "+infinity":
    case "inf":
    case "+inf":
      return "Infinity"
    case "-infinity":
    case "-inf":
      return "-Infinity"
  }
  if (!FLOAT_INPUT.test(s)) throw invalid(type, raw)
  const double = Number(s)
  const value = type === "float4" ? Math.fround(double) : double
  if (!Number.isFinite(value)) throw outOfRange(type, raw)
  if (value === 0 && /[1-9]/.test(s.replace(/[eE].*$/, ""))) throw outOfRange(type, raw)
  return formatFloat(value, type)
}

/**
 * Normalises a numeric text (digits, optional fraction and exponent, `NaN`,
 * `Infinity`) to the form the comparisons use: no exponent, no leading zeros in
 * the integer part, no trailing zeros in the fraction, no `-` on zero. Returns
 * `undefined` for text that is not a number.
 */
export const normalizeNumeric = (text: string): string | undefined => {
  const m = NUMERIC_INPUT.exec(text)
  if (m === null) {
    switch (text.trim().toLowerCase()) {
      case "nan":
        return "NaN"
      case "infinity":
      case "+infinity":
      case "inf":
      case "+inf":
        return "Infinity"
      case "-infinity":
      case "-inf":
        return "-Infinity"
      default:
        return text !== text.trim() ? normalizeNumeric(text.trim()) : undefined
    }
  }
  const intDigits = m[2]!
  const fracDigits = m[3] ?? ""
  if (intDigits.length === 0 && fracDigits.length === 0) return undefined
  let intPart: string
  let fracPart: string
  if (m[4] === undefined) {
    intPart = intDigits
    fracPart = fracDigits
  } else {
    const exponent = Number(m[4])
    if (!Number.isSafeInteger(exponent) || Math.abs(exponent) > MAX_NUMERIC_EXPONENT) return undefined
    const digits = intDigits + fracDigits
    const point = intDigits.length + exponent
    if (point <= 0) {
      intPart = ""
      fracPart = "0".repeat(-point) + digits
    } else if (point >= digits.length) {
      intPart = digits + "0".repeat(point - digits.length)
      fracPart = ""
    } else {
      intPart = digits.slice(0, point)
      fracPart = digits.slice(point)
    }
  }
  let a = 0
  while (a < intPart.length - 1 && intPart.charCodeAt(a) === 48) a++
  if (a > 0) intPart = intPart.slice(a)
  let b = fracPart.length
  while (b > 0 && fracPart.charCodeAt(b - 1) === 48) b--
  if (b < fracPart.length) fracPart = fracPart.slice(0, b)
  if (intPart === "") intPart = "0"
  const body = fracPart === "" ? intPart : `${intPart}.${fracPart}`
  return m[1] === "-" && body !== "0" ? "-" + body : body
}

/** Canonical text of a numeric, or throws `InputError` when Postgres's `numeric_in` would. */
const inputNumeric = (raw: string): string => {
  const n = normalizeNumeric(raw.trim())
  if (n === undefined) throw invalid("numeric", raw)
  return n
}

const specialRank = (n: string): number =>
  n === "NaN" ? 3 : n === "Infinity" ? 2 : n === "-Infinity" ? -2 : 0

const compareAbs = (a: string, aStart: number, b: string, bStart: number): number => {
  let aDot = a.indexOf(".", aStart)
  let bDot = b.indexOf(".", bStart)
  if (aDot < 0) aDot = a.length
  if (bDot < 0) bDot = b.length
  const aInt = aDot - aStart
  const bInt = bDot - bStart
  if (aInt !== bInt) return aInt < bInt ? -1 : 1
  for (let i = 0; i < aInt; i++) {
    const x = a.charCodeAt(aStart + i)
    const y = b.charCodeAt(bStart + i)
    if (x !== y) return x < y ? -1 : 1
  }
  let i = aDot + 1
  let j = bDot + 1
  for (; i < a.length && j < b.length; i++, j++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(j)
    if (x !== y) return x < y ? -1 : 1
  }
  const aRest = i < a.length
  const bRest = j < b.length
  return aRest === bRest ? 0 : aRest ? 1 : -1
}

/**
 * Compares two normalised numerics exactly, with Postgres's order: `NaN`
 * above `Infinity` above every number, and `NaN` equal to itself.
 */
export const compareNumeric = (a: string, b: string): number => {
  if (a === b) return 0
  const ra = specialRank(a)
  const rb = specialRank(b)
  if (ra !== 0 || rb !== 0) return ra === rb ? 0 : ra < rb ? -1 : 1
  const negA = a.charCodeAt(0) === 45
  const negB = b.charCodeAt(0) === 45
  if (negA !== negB) return negA ? -1 : 1
  const c = compareAbs(a, negA ? 1 : 0, b, negB ? 1 : 0)
  return negA ? -c : c
}

/** Compares floats with Postgres's order: `NaN` equals itself and sorts above `Infinity`; `-0 = 0`. */
export const compareFloat = (a: number, b: number): number => {
  if (a < b) return -1
  if (a > b) return 1
  if (a === b) return 0
  const na = Number.isNaN(a)
  const nb = Number.isNaN(b)
  return na === nb ? 0 : na ? 1 : -1
}

/** Compares numbers, bigints, or a mix of the two, exactly. */
const compareOrdered = (a: number | bigint, b: number | bigint): number => (a < b ? -1 : a > b ? 1 : 0)

/** Compares two strings by Unicode code point (UTF-16 code-unit order differs above U+FFFF). */
export const compareText = (a: string, b: string): number => {
  if (a === b) return 0
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i)
    let y = b.charCodeAt(i)
    if (x !== y) {
      if (x >= 0xd800 && y >= 0xd800) {
        x = x >= 0xe000 ? x - 0x800 : x + 0x2000
        y = y >= 0xe000 ? y - 0x800 : y + 0x2000
      }
      return x < y ? -1 : 1
    }
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1
}

/** Compares booleans: `false < true`. */
const compareBool = (a: boolean, b: boolean): number => (a === b ? 0 : a ? 1 : -1)

/** Canonical text of a boolean (`true`/`false`), or throws `InputError` when Postgres's `boolin` would. */
export const inputBool = (raw: string): string => {
  const s = raw.trim().toLowerCase()
  if (s.length > 0) {
    if ("true".startsWith(s) || "yes".startsWith(s) || s === "on" || s === "1") return "true"
    if ("false".startsWith(s) || "no".startsWith(s) || (s.length >= 2 && "off".startsWith(s)) || s === "0") {
      return "false"
    }
  }
  throw invalid("bool", raw)
}

/** Canonical (lower-case, hyphenated) text of a uuid, or throws `InputError` when `uuid_in` would. */
export const inputUuid = (raw: string): string => {
  if (!UUID_INPUT.test(raw) || raw.startsWith("{") !== raw.endsWith("}")) throw invalid("uuid", raw)
  const hex = raw.replace(/[{}-]/g, "").toLowerCase()
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

/** Canonical text of a date or timestamp, or throws `InputError` for forms this module does not read. */
const inputDateTime = (raw: string, kind: TimeKind): string => {
  const value = parseDateTime(raw, kind)
  if (value === undefined) throw invalid(kind, raw)
  if (!inRange(value, kind)) throw new InputError(`${kind === "date" ? "date" : "timestamp"} out of range: "${raw}"`)
  return formatDateTime(value, kind)
}

/**
 * Reads a literal as Postgres's input function for `type` would, returning
 * the canonical text of the value; throws `InputError` when Postgres would
 * refuse it (or, for dates, when it is not in an ISO form).
 */
export const inputValue = (type: PgType, raw: string): string => {
  switch (type) {
    case "int2":
    case "int4":
    case "int8":
      return inputInt(raw, type)
    case "float4":
    case "float8":
      return inputFloat(raw, type)
    case "numeric":
      return inputNumeric(raw)
    case "bool":
      return inputBool(raw)
    case "uuid":
      return inputUuid(raw)
    case "date":
    case "timestamp":
    case "timestamptz":
      return inputDateTime(raw, type)
    case "text":
    case "varchar":
    case "bpchar":
    case "name":
      return raw
  }
}

/** A value converted into a comparison domain's representation. */
export type DomainValue = number | bigint | string | boolean

const toInt4 = (s: string): number | null => {
  const n = +s
  return n === n ? n : null
}

const toInt8 = (s: string): number | bigint | null => {
  if (s.length <= 15) return toInt4(s)
  try {
    return BigInt(s)
  } catch {
    return null
  }
}

const toFloat8 = (s: string): number | null => {
  const n = Number(s)
  return n === n || s === "NaN" ? n : null
}

const toFloat4 = (s: string): number | null => {
  const n = Math.fround(Number(s))
  return n === n || s === "NaN" ? n : null
}

const toNumeric = (s: string): string | null => normalizeNumeric(s) ?? null

/** Drops trailing spaces, as a `character(n)` value is compared and cast to text. */
export const trimSpaces = (s: string): string => {
  let end = s.length
  while (end > 0 && s.charCodeAt(end - 1) === 32) end--
  return end === s.length ? s : s.slice(0, end)
}

const identity = (s: string): string => s

const toBool = (s: string): boolean | null =>
  s === "t" || s === "true" ? true : s === "f" || s === "false" ? false : null

const toUuid = (s: string): string | null => (s.length === 36 ? s.toLowerCase() : null)

const toTime =
  (kind: TimeKind) =>
  (s: string): Micros | null =>
    parseDateTime(s, kind) ?? null

/**
 * The converter from a `type` value's text form to `domain`'s representation:
 * the per-row hot path. Returns `null` for text it cannot read, which the
 * evaluator treats like SQL NULL rather than throwing.
 */
export const converter = (domain: Domain, type: PgType): ((text: string) => DomainValue | null) => {
  switch (domain) {
    case "int4":
      return toInt4
    case "int8":
      return toInt8
    case "float":
      return type === "float4" ? toFloat4 : toFloat8
    case "numeric":
      return toNumeric
    case "text":
      return type === "bpchar" ? trimSpaces : identity
    case "bpchar":
      return trimSpaces
    case "bool":
      return toBool
    case "uuid":
      return toUuid
    case "time":
      return toTime(type as TimeKind)
  }
}

/** The ordering of a domain's representation. */
export const comparator = (domain: Domain): ((a: never, b: never) => number) => {
  switch (domain) {
    case "int4":
    case "int8":
    case "time":
      return compareOrdered
    case "float":
      return compareFloat
    case "numeric":
      return compareNumeric
    case "text":
    case "bpchar":
    case "uuid":
      return compareText
    case "bool":
      return compareBool
  }
}

/** Whether `===` is equality in a domain (every domain but float, where `NaN = NaN`). */
export const identityEquality = (domain: Domain): boolean => domain !== "float"

const isArraySpace = (c: string): boolean => c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\v" || c === "\f"

/**
 * The elements of a one-dimensional array literal in Postgres's syntax
 * (`{1,"a b",NULL}`): quoted elements keep their text, unquoted ones lose the
 * spaces around them and `NULL` is SQL NULL; a backslash takes the next
 * character as it is. Throws `InputError` where `array_in` would reject the
 * text, and for more than one dimension.
 */
export const parseArrayLiteral = (text: string): Array<string | null> => {
  const malformed = (detail: string) => new InputError(`malformed array literal: "${text}" (${detail})`)
  let i = 0
  while (i < text.length && isArraySpace(text[i]!)) i++
  if (text[i] !== "{") throw malformed(text[i] === "[" ? "dimension decorations are not supported" : "array value must start with \"{\"")
  i++
  const items: Array<string | null> = []
  let expectElement = true
  for (;;) {
    while (i < text.length && isArraySpace(text[i]!)) i++
    if (i >= text.length) throw malformed("unexpected end of input")
    const c = text[i]!
    if (c === "}" && items.length === 0 && expectElement) {
      i++
      break
    }
    if (!expectElement) {
      if (c === ",") {
        expectElement = true
        i++
        continue
      }
      if (c === "}") {
        i++
        break
      }
      throw malformed("unexpected character after an element")
    }
    if (c === "{") throw new InputError("multidimensional arrays are not supported")
    if (c === "," || c === "}") throw malformed("unexpected delimiter")
    if (c === "\"") {
      let value = ""
      i++
      for (;;) {
        if (i >= text.length) throw malformed("unterminated quoted element")
        const q = text[i]!
        if (q === "\\") {
          if (i + 1 >= text.length) throw malformed("unexpected end of input")
          value += text[i + 1]
          i += 2
        } else if (q === "\"") {
          i++
          break
        } else {
          value += q
          i++
        }
      }
      items.push(value)
    } else {
      let value = ""
      let escaped = false
      let trailing = 0
      while (i < text.length) {
        const u = text[i]!
        if (u === "," || u === "}") break
        if (u === "{" || u === "\"") throw malformed("unexpected character in an unquoted element")
        if (u === "\\") {
          if (i + 1 >= text.length) throw malformed("unexpected end of input")
          value += text[i + 1]
          escaped = true
          trailing = 0
          i += 2
          continue
        }
        value += u
        trailing = isArraySpace(u) ? trailing + 1 : 0
        i++
      }
      value = value.slice(0, value.length - trailing)
      items.push(!escaped && value.toUpperCase() === "NULL" ? null : value)
    }
    expectElement = false
  }
  while (i < text.length && isArraySpace(text[i]!)) i++
  if (i < text.length) throw malformed("junk after closing right brace")
  return items
}
