/**
 * JSON written as UTF-8 bytes straight from Postgres's text values as pgoutput sends them, giving the bytes
 * `JSON.stringify` would give once encoded, with no string in between. Each writer takes the output buffer and the
 * position to write at, and returns the position after what it wrote; the caller has made room for the most it can
 * write (`MAX_BYTES_PER_BYTE` per byte of value, and the quotes).
 *
 * Only ASCII is copied byte by byte. A value with any other byte is given up on (-1 is returned, and the caller
 * writes it from a string): what `JSON.stringify` makes of it depends on its bytes being valid UTF-8, which a
 * database in `SQL_ASCII` does not promise.
 */

/** The most bytes one byte of a value becomes: a control character is `\u00XX`. */
export const MAX_BYTES_PER_BYTE = 6

const QUOTE = 0x22
const BACKSLASH = 0x5c
const SLASH = 0x2f
const HEX = Buffer.from("0123456789abcdef", "latin1")

/** The escape of a control character, `"` or `\`, as `JSON.stringify` writes it. */
const escapeByte = (out: Buffer, p: number, c: number): number => {
  out[p++] = BACKSLASH
  switch (c) {
    case QUOTE:
    case BACKSLASH:
      out[p++] = c
      return p
    case 0x08:
      out[p++] = 0x62 // b
      return p
    case 0x09:
      out[p++] = 0x74 // t
      return p
    case 0x0a:
      out[p++] = 0x6e // n
      return p
    case 0x0c:
      out[p++] = 0x66 // f
      return p
    case 0x0d:
      out[p++] = 0x72 // r
      return p
    default:
      out[p++] = 0x75 // u
      out[p++] = 0x30
      out[p++] = 0x30
      out[p++] = HEX[c >> 4]!
      out[p++] = HEX[c & 15]!
      return p
  }
}

/** `data[start, end)` as a JSON string, quotes included; -1 if it holds a byte that is not ASCII. */
export const writeJsonText = (out: Buffer, p: number, data: Buffer, start: number, end: number): number => {
  out[p++] = QUOTE
  for (let i = start; i < end; i++) {
    const c = data[i]!
    if (c >= 0x80) return -1
    if (c < 0x20 || c === QUOTE || c === BACKSLASH) p = escapeByte(out, p, c)
    else out[p++] = c
  }
  out[p++] = QUOTE
  return p
}

/**
 * One primary-key value inside a row key that is itself a JSON string: `\"<value, / doubled>\"` (see `rowKeyPart`),
 * escaped; -1 if it holds a byte that is not ASCII.
 */
export const writeJsonKeyPart = (out: Buffer, p: number, data: Buffer, start: number, end: number): number => {
  out[p++] = SLASH
  out[p++] = BACKSLASH
  out[p++] = QUOTE
  for (let i = start; i < end; i++) {
    const c = data[i]!
    if (c >= 0x80) return -1
    if (c === SLASH) {
      out[p++] = SLASH
      out[p++] = SLASH
    } else if (c < 0x20 || c === QUOTE || c === BACKSLASH) p = escapeByte(out, p, c)
    else out[p++] = c
  }
  out[p++] = BACKSLASH
  out[p++] = QUOTE
  return p
}

/**
 * Longer runs of bytes known in advance are copied with `set`, one native copy, where a loop pays a bounds check per
 * byte: the headers and the key's opening of every line are 30 to 80 bytes. Shorter ones (column names, `null`) are
 * cheaper in the loop than in the call.
 */
const COPY_AT_LEAST = 24

/** Bytes known in advance (names, headers). */
export const writeBytes = (out: Buffer, p: number, bytes: Uint8Array): number => {
  const n = bytes.length
  if (n >= COPY_AT_LEAST) {
    out.set(bytes, p)
    return p + n
  }
  for (let i = 0; i < n; i++) out[p + i] = bytes[i]!
  return p + n
}

/** An ASCII string (headers made of numbers and names already escaped); the caller knows it is ASCII. */
export const writeAscii = (out: Buffer, p: number, text: string): number => {
  const n = text.length
  for (let i = 0; i < n; i++) out[p + i] = text.charCodeAt(i)
  return p + n
}

/** A non-negative integer below 2^53, in decimal. */
export const writeInteger = (out: Buffer, p: number, n: number): number => {
  if (n < 10) {
    out[p] = 0x30 + n
    return p + 1
  }
  let digits = 1
  for (let m = n; m >= 10; m = Math.floor(m / 10)) digits++
  let q = p + digits
  for (let m = n; q > p; m = Math.floor(m / 10)) out[--q] = 0x30 + (m % 10)
  return p + digits
}
