/**
 * Dates and timestamps as the evaluator compares them: microseconds since
 * 1970-01-01 00:00 UTC. The value is a `number` when it is a safe integer and a
 * `bigint` otherwise (only for dates centuries away), so the representation of
 * one instant is unique and `===` is equality; `±Infinity` stand for Postgres's
 * `infinity`/`-infinity`. Relational operators compare mixed number/bigint
 * values exactly.
 *
 * `timestamp` values and `date`s are read as UTC, and a `timestamptz` literal
 * without an offset is UTC too: the snapshot and replication sessions run with
 * `TimeZone=UTC`, which is the zone Postgres uses for those conversions.
 */

/** Microseconds since the Unix epoch (see the module comment). */
export type Micros = number | bigint

/** Which of the three date/time types a text is read as. */
export type TimeKind = "date" | "timestamp" | "timestamptz"

const US_PER_DAY = 86_400_000_000
const US_PER_DAY_N = 86_400_000_000n
const SAFE_DAYS = 100_000
const MAX_SAFE_N = BigInt(Number.MAX_SAFE_INTEGER)

const floorDiv = (a: number, b: number): number => Math.floor(a / b)

/** Days since 1970-01-01 of a proleptic Gregorian date; `year` is astronomical (1 BC = 0). */
export const daysFromCivil = (year: number, month: number, day: number): number => {
  const y = month <= 2 ? year - 1 : year
  const era = floorDiv(y, 400)
  const yoe = y - era * 400
  const mp = (month + 9) % 12
  const doy = Math.floor((153 * mp + 2) / 5) + day - 1
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
}

const civilFromDays = (days: number): readonly [number, number, number] => {
  const z = days + 719468
  const era = floorDiv(z, 146097)
  const doe = z - era * 146097
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365)
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100))
  const mp = Math.floor((5 * doy + 2) / 153)
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1
  const month = mp < 10 ? mp + 3 : mp - 9
  return [yoe + era * 400 + (month <= 2 ? 1 : 0), month, day]
}

const isLeap = (y: number): boolean => (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0
const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

const combine = (days: number, timeUs: number): Micros => {
  if (days < SAFE_DAYS && days > -SAFE_DAYS) return days * US_PER_DAY + timeUs
  const big = BigInt(days) * US_PER_DAY_N + BigInt(timeUs)
  return big <= MAX_SAFE_N && big >= -MAX_SAFE_N ? Number(big) : big
}

const isDigit = (c: number): boolean => c >= 48 && c <= 57

/**
 * Reads a date or timestamp text: Postgres's ISO output (`2024-01-02`,
 * `2024-01-02 03:04:05.123`, `2024-01-02 01:04:05+05:30`, a trailing ` BC`,
 * `infinity`, `-infinity`) and the ISO 8601 input variants (`T` separator, `Z`,
 * `+hhmm`, `epoch`). A `timestamp` ignores an offset, as Postgres does; a
 * `date` ignores the time. Returns `undefined` for anything else, or for an
 * invalid calendar date.
 */
export const parseDateTime = (text: string, kind: TimeKind): Micros | undefined => {
  if (text === "infinity") return Infinity
  if (text === "-infinity") return -Infinity
  const n = text.length
  let i = 0
  while (i < n && text.charCodeAt(i) === 32) i++
  if (i < n && !isDigit(text.charCodeAt(i))) return parseSpecial(text.trim().toLowerCase())
  let year = 0
  let digits = 0
  while (i < n && isDigit(text.charCodeAt(i))) {
    year = year * 10 + (text.charCodeAt(i++) - 48)
    digits++
  }
  if (digits === 0 || digits > 7 || text.charCodeAt(i++) !== 45) return undefined
  let month = 0
  digits = 0
  while (i < n && isDigit(text.charCodeAt(i)) && digits < 2) {
    month = month * 10 + (text.charCodeAt(i++) - 48)
    digits++
  }
  if (digits === 0 || text.charCodeAt(i++) !== 45) return undefined
  let day = 0
  digits = 0
  while (i < n && isDigit(text.charCodeAt(i)) && digits < 2) {
    day = day * 10 + (text.charCodeAt(i++) - 48)
    digits++
  }
  if (digits === 0) return undefined
  let timeUs = 0
  let offsetUs = 0
  const sep = text.charCodeAt(i)
  if ((sep === 32 || sep === 84 || sep === 116) && isDigit(text.charCodeAt(i + 1))) {
    i++
    const hour = twoDigits(text, i)
    if (hour < 0 || text.charCodeAt(i + 2) !== 58) return undefined
    const minute = twoDigits(text, i + 3)
    if (minute < 0 || minute > 59) return undefined
    i += 5
    let second = 0
    let micros = 0
    if (text.charCodeAt(i) === 58) {
      second = twoDigits(text, i + 1)
      if (second < 0 || second > 60) return undefined
      i += 3
      if (text.charCodeAt(i) === 46) {
        i++
        let count = 0
        let roundUp = false
        while (i < n && isDigit(text.charCodeAt(i))) {
          const d = text.charCodeAt(i++) - 48
          if (count < 6) micros = micros * 10 + d
          else if (count === 6) roundUp = d >= 5
          count++
        }
        if (count === 0) return undefined
        for (let k = count; k < 6; k++) micros *= 10
        if (roundUp) micros++
      }
    }
    if (hour > 24 || (hour === 24 && (minute !== 0 || second !== 0 || micros !== 0))) return undefined
    timeUs = ((hour * 60 + minute) * 60 + second) * 1_000_000 + micros
    while (i < n && text.charCodeAt(i) === 32 && (text.charCodeAt(i + 1) === 43 || text.charCodeAt(i + 1) === 45 || text.charCodeAt(i + 1) === 90)) i++
    const sign = text.charCodeAt(i)
    if (sign === 90 || sign === 122) {
      i++
    } else if (sign === 43 || sign === 45) {
      const oh = twoDigits(text, i + 1)
      if (oh < 0 || oh > 15) return undefined
      i += 3
      let om = 0
      let os = 0
      if (text.charCodeAt(i) === 58) {
        om = twoDigits(text, i + 1)
        if (om < 0 || om > 59) return undefined
        i += 3
        if (text.charCodeAt(i) === 58) {
          os = twoDigits(text, i + 1)
          if (os < 0 || os > 59) return undefined
          i += 3
        }
      } else if (isDigit(text.charCodeAt(i))) {
        om = twoDigits(text, i)
        if (om < 0 || om > 59) return undefined
        i += 2
      }
      offsetUs = ((oh * 60 + om) * 60 + os) * 1_000_000 * (sign === 45 ? -1 : 1)
    }
  }
  let astroYear = year
  if (i < n) {
    const rest = text.slice(i).trim()
    if (rest === "BC" || rest === "bc") astroYear = 1 - year
    else if (rest !== "" && rest !== "AD" && rest !== "ad") return undefined
  }
  if (year === 0 || month < 1 || month > 12 || day < 1) return undefined
  const maxDay = month === 2 && isLeap(astroYear) ? 29 : DAYS_IN_MONTH[month - 1]!
  if (day > maxDay) return undefined
  const days = daysFromCivil(astroYear, month, day)
  if (kind === "date") return combine(days, 0)
  return combine(days, kind === "timestamptz" ? timeUs - offsetUs : timeUs)
}

const twoDigits = (text: string, i: number): number => {
  const a = text.charCodeAt(i)
  const b = text.charCodeAt(i + 1)
  return isDigit(a) && isDigit(b) ? (a - 48) * 10 + (b - 48) : -1
}

const parseSpecial = (lower: string): Micros | undefined => {
  switch (lower) {
    case "infinity":
    case "+infinity":
      return Infinity
    case "-infinity":
      return -Infinity
    case "epoch":
      return 0
    default:
      return undefined
  }
}

const pad = (n: number, width: number): string => String(n).padStart(width, "0")

/**
 * Formats a value as Postgres prints it under `DateStyle=ISO` and
 * `TimeZone=UTC`: the canonical text of a constant of that type.
 */
export const formatDateTime = (value: Micros, kind: TimeKind): string => {
  if (value === Infinity) return "infinity"
  if (value === -Infinity) return "-infinity"
  const us = BigInt(value)
  let days = us / US_PER_DAY_N
  let rem = us % US_PER_DAY_N
  if (rem < 0n) {
    days -= 1n
    rem += US_PER_DAY_N
  }
  const [astroYear, month, day] = civilFromDays(Number(days))
  const bc = astroYear <= 0
  const date = `${pad(bc ? 1 - astroYear : astroYear, 4)}-${pad(month, 2)}-${pad(day, 2)}`
  if (kind === "date") return bc ? `${date} BC` : date
  const r = Number(rem)
  const micros = r % 1_000_000
  const secs = (r - micros) / 1_000_000
  let time = `${pad(Math.floor(secs / 3600), 2)}:${pad(Math.floor(secs / 60) % 60, 2)}:${pad(secs % 60, 2)}`
  if (micros !== 0) time += "." + pad(micros, 6).replace(/0+$/, "")
  const zone = kind === "timestamptz" ? "+00" : ""
  return `${date} ${time}${zone}${bc ? " BC" : ""}`
}

/** Lowest and highest instants Postgres accepts for each kind (4713 BC to 5874897 / 294276 AD). */
export const inRange = (value: Micros, kind: TimeKind): boolean => {
  if (value === Infinity || value === -Infinity) return true
  const min = BigInt(daysFromCivil(-4712, 11, 24)) * US_PER_DAY_N
  const max =
    kind === "date"
      ? BigInt(daysFromCivil(5874898, 1, 1)) * US_PER_DAY_N
      : BigInt(daysFromCivil(294277, 1, 1)) * US_PER_DAY_N
  const v = BigInt(value)
  return v >= min && v < max
}
