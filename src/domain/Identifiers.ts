import * as Either from "effect/Either"
import type { TableRef } from "./Table.js"

/** Postgres truncates longer names (NAMEDATALEN − 1); we reject them instead, so a name never means two things. */
const MAX_IDENTIFIER_BYTES = 63

/** Postgres's lexer rule: any non-ASCII character counts as a letter. */
const UNQUOTED_IDENTIFIER = /^[A-Za-z_\u{80}-\u{10FFFF}][A-Za-z0-9_$\u{80}-\u{10FFFF}]*$/u

const QUOTE = 34 // "
const DOT = 46 // .
const COMMA = 44 // ,

const ZERO_LENGTH = "Invalid zero-length delimited identifier"

const utf8Length = (text: string): number => {
  let bytes = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c < 0x80) bytes += 1
    else if (c < 0x800) bytes += 2
    else if (c >= 0xd800 && c <= 0xdbff) {
      bytes += 4
      i++
    } else bytes += 3
  }
  return bytes
}

/** Postgres folds only ASCII letters when the server encoding is multi-byte. */
const foldAscii = (text: string): string => {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c >= 65 && c <= 90) return text.replace(/[A-Z]+/g, (m) => m.toLowerCase())
  }
  return text
}

/**
 * Parses one identifier in Postgres syntax: a double-quoted identifier keeps
 * its case and reads `""` as one quote; an unquoted one must be a plain name
 * and is lower-cased.
 */
export const parseIdentifier = (text: string): Either.Either<string, string> => {
  let name: string
  if (text.length >= 2 && text.charCodeAt(0) === QUOTE && text.charCodeAt(text.length - 1) === QUOTE) {
    const inner = text.slice(1, -1)
    if (inner.length === 0) return Either.left(ZERO_LENGTH)
    let out = ""
    let start = 0
    for (let i = 0; i < inner.length; i++) {
      if (inner.charCodeAt(i) !== QUOTE) continue
      if (inner.charCodeAt(i + 1) !== QUOTE) {
        return Either.left(`Invalid identifier with unescaped quote: ${inner}`)
      }
      out += inner.slice(start, i + 1)
      i++
      start = i + 1
    }
    name = start === 0 ? inner : out + inner.slice(start)
  } else {
    if (text.length === 0) return Either.left(ZERO_LENGTH)
    if (!UNQUOTED_IDENTIFIER.test(text)) {
      return Either.left(`Invalid unquoted identifier contains special characters: ${text}`)
    }
    name = foldAscii(text)
  }
  if (utf8Length(name) > MAX_IDENTIFIER_BYTES) {
    return Either.left(`Identifier is too long (max length is ${MAX_IDENTIFIER_BYTES})`)
  }
  return Either.right(name)
}

/**
 * Splits `text` at every `separator` that is outside double quotes. A quote
 * toggles the state, so the two quotes of an escaped `""` cancel out.
 */
const splitOutsideQuotes = (text: string, separator: number): Array<string> => {
  const parts: Array<string> = []
  let inQuotes = false
  let start = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c === QUOTE) inQuotes = !inQuotes
    else if (c === separator && !inQuotes) {
      parts.push(text.slice(start, i))
      start = i + 1
    }
  }
  parts.push(text.slice(start))
  return parts
}

/**
 * Parses the `table` request parameter: a relation name, optionally
 * schema-qualified with one dot outside quotes; the schema defaults to
 * `public`. The left side is the message for `errors.table`.
 */
export const parseTableIdentifier = (text: string): Either.Either<TableRef, string> => {
  const parts = splitOutsideQuotes(text, DOT)
  if (parts.length > 2) {
    return Either.left(`Invalid relation identifier, too many delimiters: ${text}`)
  }
  if (parts.length === 1) {
    return Either.map(parseIdentifier(parts[0]!), (name) => ({ schema: "public", name }))
  }
  const schema = parseIdentifier(parts[0]!)
  if (Either.isLeft(schema)) return Either.left(schema.left)
  const name = parseIdentifier(parts[1]!)
  if (Either.isLeft(name)) return Either.left(name.left)
  return Either.right({ schema: schema.right, name: name.right })
}

/**
 * Parses the `columns` request parameter: identifiers separated by commas
 * outside double quotes, in the order given. The left side is the message
 * for `errors.columns`.
 */
export const parseColumnsParam = (text: string): Either.Either<ReadonlyArray<string>, string> => {
  const parts = splitOutsideQuotes(text, COMMA)
  const columns: Array<string> = new Array(parts.length)
  for (let i = 0; i < parts.length; i++) {
    const column = parseIdentifier(parts[i]!)
    if (Either.isLeft(column)) return Either.left(column.left)
    columns[i] = column.right
  }
  return Either.right(columns)
}

/** Quotes a name for SQL: always double-quoted, inner quotes doubled, so any name is safe to splice into a query. */
export const quoteIdentifier = (name: string): string => `"${name.replaceAll('"', '""')}"`

/** Renders a table as `"schema"."name"`, the form Postgres and Electric's messages use. */
export const quoteTable = (table: TableRef): string => `${quoteIdentifier(table.schema)}.${quoteIdentifier(table.name)}`
