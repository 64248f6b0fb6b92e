import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type pg from "pg"
import { PostgresError, SubsetTooLarge } from "../domain/errors.js"
import type { PgType } from "../where/Ast.js"
import { quoteIdent } from "../where/Sql.js"
import { Lsn } from "../domain/Lsn.js"
import { rowKeyPart, rowKeyPrefix } from "../domain/RowKey.js"
import type { ColumnInfo, TableInfo } from "../domain/Table.js"
import { displaySettingsSql } from "./DisplaySettings.js"
import { HEADER_BYTES, MessageFramer } from "./internal/MessageFramer.js"
import { PgPool, toPostgresError } from "./PgPool.js"

/** What a snapshot saw: `pg_current_snapshot()` (64-bit xids), the WAL position inside it, and how many rows it read. */
export interface SnapshotInfo {
  readonly xmin: bigint
  readonly xmax: bigint
  readonly xip: ReadonlyArray<bigint>
  /** `pg_current_wal_lsn()` taken inside the snapshot. */
  readonly lsn: Lsn
  readonly rows: number
}

/** Which rows `Snapshot.rows` reads, and the clause each is tested against. */
export interface RowsRequest {
  readonly table: TableInfo
  readonly columns: ReadonlyArray<string>
  /** The clause (canonical SQL, subqueries included) each row is tested against: `RowsResult.rows[i].included`. */
  readonly whereSql: string
  /**
   * Only rows whose values in some filter's columns are among that filter's values (texts of `types`, one
   * array per value); every row when undefined.
   */
  readonly filters: ReadonlyArray<RowsFilter> | undefined
  /** Besides, only rows for which this condition holds (SQL), when given. */
  readonly condition?: string | undefined
}

export interface RowsFilter {
  readonly columns: ReadonlyArray<string>
  readonly types: ReadonlyArray<PgType>
  readonly values: ReadonlyArray<ReadonlyArray<string>>
}

/** What `Snapshot.rows` returns: the rows, each with whether the clause holds for it, and the snapshot read. */
export interface RowsResult {
  readonly xmin: bigint
  readonly xmax: bigint
  readonly xip: ReadonlyArray<bigint>
  /** Each row's key (as the log writes it), its selected values (as a snapshot writes them), and the clause's truth. */
  readonly rows: ReadonlyArray<{ readonly key: string; readonly row: Record<string, string | null>; readonly included: boolean }>
}

const INCLUDED = "syncline.included"

/**
 * The query of a `RowsRequest`, with its parameters. Values are read as a
 * snapshot reads them (`::text` where that differs from the output text), and
 * each key column once more as its output text, for the row's key.
 */
export const rowsQuery = (request: RowsRequest): { readonly sql: string; readonly params: ReadonlyArray<unknown> } => {
  const { table } = request
  const byName = new Map(table.columns.map((c) => [c.name, c]))
  const fields = request.columns.map((name) => {
    const column = byName.get(name)
    const cast = column !== undefined && column.dims === 0 && CAST_TO_TEXT.has(column.baseTypeName)
    return `${quoteIdent(name)}${cast ? "::text" : ""} AS ${quoteIdent(name)}`
  })
  const keys = table.pk.map((name, i) => `${quoteIdent(name)} AS ${quoteIdent(`syncline.key.${i}`)}`)
  const select = `SELECT ${[...fields, ...keys].join(", ")}, (${request.whereSql}) IS TRUE AS ${
    quoteIdent(INCLUDED)
  } FROM ${quoteIdent(table.schema)}.${quoteIdent(table.name)}`
  const params: Array<unknown> = []
  const where: Array<string> = []
  if (request.filters !== undefined) {
    const conditions = request.filters.map((f) => {
      const arrays = f.columns.map((_, i) => {
        params.push(f.values.map((v) => v[i]!))
        return `$${params.length}::${f.types[i]!}[]`
      })
      if (f.columns.length === 1) return `${quoteIdent(f.columns[0]!)} = ANY(${arrays[0]})`
      return `(${f.columns.map(quoteIdent).join(", ")}) IN (SELECT * FROM unnest(${arrays.join(", ")}))`
    })
    where.push(conditions.length === 0 ? "false" : `(${conditions.join(" OR ")})`)
  }
  if (request.condition !== undefined) where.push(`(${request.condition})`)
  return { sql: where.length === 0 ? select : `${select} WHERE ${where.join(" AND ")}`, params }
}

/** What to read and where the lines go. */
export interface SnapshotOptions<E> {
  /** A boolean SQL expression over the table's columns, or `undefined` for every row. */
  readonly whereSql: string | undefined
  /** The selected columns, in table order. */
  readonly columns: ReadonlyArray<string>
  /**
   * Receives the rows as complete JSON insert messages, a batch at a time; the batch's bytes are written over by
   * later batches once the effect completes. Reading goes on while it runs, up to two batches ahead.
   */
  readonly onRows: (rows: RenderedRows) => Effect.Effect<void, E>
}

/** Rows rendered as their messages: UTF-8, one per line, each ended by a newline. */
export interface RenderedRows {
  readonly bytes: Buffer
  readonly count: number
}

/** The messages of rendered rows, one string each. */
export const linesOf = (rows: RenderedRows): Array<string> => {
  if (rows.count === 0) return []
  const lines = rows.bytes.toString("utf8").split("\n")
  lines.pop()
  return lines
}

const BATCH_LINES = 1000
const BATCH_BYTES = 256 * 1024
const NEWLINE = 0x0a

const ident = (name: string): string => `"${name.replaceAll("\"", "\"\"")}"`

/**
 * Base types whose `::text` cast differs from their output function (the
 * protocol sends `::text`: `true`, not `t`; `10.0.0.1/32`, not `10.0.0.1`).
 * Every other type, `char(n)` included, is read raw, which is the same text.
 */
const CAST_TO_TEXT = new Set(["bool", "inet", "cidr", "char"])

/**
 * How a snapshot reads a table: the `COPY` statement, which fields hold the
 * key parts and the values, and the fixed pieces of each message.
 */
export interface SnapshotPlan {
  readonly sql: string
  readonly fieldCount: number
  /** For each primary-key column (key order), the field with its output text. */
  readonly keyFields: ReadonlyArray<number>
  /** For each selected column, the field with its `::text` form. */
  readonly valueFields: ReadonlyArray<number>
  /** `,"value":{"<col>":` … per selected column: what precedes its value. */
  readonly valuePrefixes: ReadonlyArray<string>
  readonly tail: string
  readonly keyPrefix: string
}

/**
 * Plans the snapshot of `columns` (table order) of the rows matching
 * `whereSql`. Postgres only prints the fields; the JSON messages are put
 * together by `RowRenderer` (and `renderRow`, which uses the very key function
 * of the replication path), several times faster than building them with
 * `to_json` in SQL.
 */
export const snapshotPlan = (
  table: TableInfo,
  columns: ReadonlyArray<string>,
  whereSql: string | undefined,
  subset?: SubsetShape
): SnapshotPlan => {
  const byName = new Map(table.columns.map((c) => [c.name, c]))
  const select: Array<string> = []
  const fieldOf = new Map<string, number>()
  const field = (expr: string): number => {
    let index = fieldOf.get(expr)
    if (index === undefined) {
      index = select.length
      select.push(expr)
      fieldOf.set(expr, index)
    }
    return index
  }
  const columnOf = (name: string): ColumnInfo => {
    const column = byName.get(name)
    if (column === undefined) throw new Error(`Column "${name}" is not in "${table.schema}"."${table.name}"`)
    return column
  }
  // The key fields come first: a row's message, key first, is written in one pass over its fields.
  const keyFields = table.pk.map((name) => field(ident(columnOf(name).name)))
  const valueFields = columns.map((name) => {
    const column = columnOf(name)
    const cast = column.dims === 0 && CAST_TO_TEXT.has(column.baseTypeName)
    return field(cast ? `${ident(name)}::text` : ident(name))
  })
  const valuePrefixes = columns.map((name, i) => `${i === 0 ? ",\"value\":{" : ","}${JSON.stringify(name)}:`)
  const relation = JSON.stringify([table.schema, table.name])
  const order = subset?.orderBySql === undefined ? "" : ` ORDER BY ${subset.orderBySql}`
  const limit = subset?.limit === undefined ? "" : ` LIMIT ${subset.limit}`
  const offset = subset?.offset === undefined ? "" : ` OFFSET ${subset.offset}`
  const mark = subset === undefined ? "" : `,"snapshot_mark":${subset.mark}`
  return {
    sql: `COPY (SELECT ${select.join(", ")} FROM ${ident(table.schema)}.${ident(table.name)}${
      whereSql === undefined ? "" : ` WHERE (${whereSql})`
    }${order}${limit}${offset}) TO STDOUT`,
    fieldCount: select.length,
    keyFields,
    valueFields,
    valuePrefixes,
    tail: `${columns.length === 0 ? ",\"value\":{" : ""}},"headers":{"operation":"insert","relation":${relation}${mark}}}`,
    keyPrefix: rowKeyPrefix(table)
  }
}

/**
 * What makes a read a subset snapshot: an order (SQL `parseOrderBy` wrote),
 * a page, and the mark every row's headers carry.
 */
export interface SubsetShape {
  readonly orderBySql: string | undefined
  readonly limit: number | undefined
  readonly offset: number | undefined
  readonly mark: number
}

/** A subset snapshot to read: the table's `columns` of the rows matching `whereSql` (shape and subset together). */
export interface SubsetRequest extends SubsetShape {
  readonly table: TableInfo
  readonly columns: ReadonlyArray<string>
  readonly whereSql: string | undefined
  /** The most bytes of rows the result may hold: a larger one fails with `SubsetTooLarge`. */
  readonly maxBytes: number
}

/** A subset snapshot: its rows as insert messages, and the snapshot and WAL position they were read at. */
export interface SubsetResult {
  readonly xmin: bigint
  readonly xmax: bigint
  readonly xip: ReadonlyArray<bigint>
  /**
   * `pg_current_wal_insert_lsn()` inside the snapshot: past the commit record of every transaction the snapshot
   * sees, so a change at or above it is one the rows do not hold.
   */
  readonly lsn: Lsn
  readonly lines: ReadonlyArray<string>
}

const COPY_ESCAPE = /\\(.)/gs
const unescapeChar = (_: string, c: string): string => {
  switch (c) {
    case "n": return "\n"
    case "t": return "\t"
    case "r": return "\r"
    case "b": return "\b"
    case "f": return "\f"
    case "v": return "\v"
    default: return c
  }
}

/** Undoes COPY text-format escaping of one field (`\\N`, NULL, is handled by the caller). */
export const unescapeCopyField = (field: string): string =>
  field.includes("\\") ? field.replace(COPY_ESCAPE, unescapeChar) : field

// What JSON escapes in a string.
const JSON_SPECIAL = /["\x00-\x1f]/

/**
 * A COPY field (escaped, `null` for `\N`) as a JSON string. A field without
 * a backslash, a quote or a control character reads the same in both
 * syntaxes and is used as it is; `clean` says the caller already knows it has
 * no quote or control character.
 */
const fieldJson = (raw: string | null, clean: boolean): string => {
  if (raw === null) return "null"
  if (!raw.includes("\\") && (clean || !JSON_SPECIAL.test(raw))) return `"${raw}"`
  return JSON.stringify(unescapeCopyField(raw))
}

/**
 * One row's COPY fields (still escaped; `null` for NULL) to its JSON insert
 * message; `clean` as for `fieldJson`.
 */
export const renderRow = (plan: SnapshotPlan, fields: ReadonlyArray<string | null>, clean = false): string => {
  let key = plan.keyPrefix
  const keyFields = plan.keyFields
  for (let i = 0; i < keyFields.length; i++) {
    const raw = fields[keyFields[i]!]
    key += rowKeyPart(raw === null || raw === undefined ? null : unescapeCopyField(raw))
  }
  let line = `{"key":${JSON.stringify(key)}`
  const valueFields = plan.valueFields
  const prefixes = plan.valuePrefixes
  for (let i = 0; i < valueFields.length; i++) line += prefixes[i]! + fieldJson(fields[valueFields[i]!] ?? null, clean)
  return line + plan.tail
}

/** Parses `pg_current_snapshot()`'s text form, `xmin:xmax:xip,xip,…`. */
export const parsePgSnapshot = (text: string): Pick<SnapshotInfo, "xmin" | "xmax" | "xip"> => {
  const [xmin, xmax, xip] = text.split(":")
  if (xmin === undefined || xmax === undefined || xip === undefined) throw new Error(`Invalid snapshot: ${text}`)
  return { xmin: BigInt(xmin), xmax: BigInt(xmax), xip: xip === "" ? [] : xip.split(",").map((x) => BigInt(x)) }
}

const TAB = 0x09
const QUOTE = 0x22
const SLASH = 0x2f
const BACKSLASH = 0x5c
const LETTER_N = 0x4e
const NULL_FIELD = -1

/** COPY's text NULL (`\N`) is the whole field at `p`: the next byte ends the field (a tab) or the row. */
const isNullAt = (buf: Uint8Array, p: number): boolean =>
  buf[p] === BACKSLASH && buf[p + 1] === LETTER_N && buf[p + 2]! <= NEWLINE && buf[p + 2]! >= TAB

const bytesOf = (text: string): Buffer => Buffer.from(text, "utf8")
const KEY_PART_OPEN = bytesOf("/\\\"")
const KEY_PART_NULL = bytesOf("/_")

/** The size of a batch's buffer: a batch closes past `BATCH_BYTES`, and a row that does not fit starts the next. */
const OUT_BYTES = BATCH_BYTES + 64 * 1024
/** How many buffers a reader keeps for its next batches: as many as can be out at once (two waiting, one taken). */
const SPARE_BUFFERS = 3

/**
 * Renders COPY rows, one at a time as they arrive, into the text of their
 * messages, one per line, in batches of at most `BATCH_LINES` rows. The plan
 * puts the key fields first, so a row is read once, front to back, and its
 * message written as it is read: its bytes are copied around the fixed pieces
 * of the message with no string per field. A field holding a backslash (beyond
 * a NULL's `\N`), a quote or a control character reads differently in COPY
 * text and in a JSON string; a row with one is written again through
 * `renderRow`, over what the copy wrote. Both give the same text.
 */
class RowRenderer {
  private out: Buffer = Buffer.allocUnsafe(OUT_BYTES)
  private used = 0
  private count = 0
  /** Closed batches, oldest first. */
  readonly batches: Array<RenderedRows> = []
  /** Buffers of batches handed out and given back (`reuse`), for the next batches. */
  private readonly spare: Array<Buffer> = []
  private readonly starts: Int32Array
  private readonly ends: Int32Array
  private readonly fields: Array<string | null>
  private readonly keyCount: number
  private readonly valueFields: Int32Array
  private readonly keyHead: Buffer
  /** What precedes each value with its opening quote: `,"<col>":"` (`,"value":{"<col>":"` for the first). */
  private readonly valueOpens: ReadonlyArray<Buffer>
  /** Each value's prefix followed by `null`, for a NULL. */
  private readonly nullOpens: ReadonlyArray<Buffer>
  /** The end of every message, its newline included. */
  private readonly tail: Buffer
  /** The bytes a row writes besides its fields'; a field's byte is written at most three times (a key's `/`, then its value). */
  private readonly fixedBytes: number

  constructor(private readonly plan: SnapshotPlan) {
    this.starts = new Int32Array(plan.fieldCount)
    this.ends = new Int32Array(plan.fieldCount)
    this.fields = new Array<string | null>(plan.fieldCount).fill(null)
    this.keyCount = plan.keyFields.length
    plan.keyFields.forEach((f, k) => {
      if (f !== k) throw new Error("the key fields must come first in a snapshot plan")
    })
    let next = this.keyCount
    for (const f of plan.valueFields) {
      if (f >= this.keyCount && f !== next++) throw new Error("the value fields must follow the key fields in order")
    }
    if (next !== plan.fieldCount) throw new Error("a snapshot plan's fields must all be keys or values")
    this.valueFields = Int32Array.from(plan.valueFields)
    // JSON escapes character by character: the key's string is its escaped prefix, then each escaped part.
    const prefixJson = JSON.stringify(plan.keyPrefix)
    this.keyHead = bytesOf(`{"key":${prefixJson.slice(0, -1)}`)
    this.valueOpens = plan.valuePrefixes.map((p) => bytesOf(`${p}"`))
    this.nullOpens = plan.valuePrefixes.map((p) => bytesOf(`${p}null`))
    this.tail = bytesOf(`${plan.tail}\n`)
    this.fixedBytes = this.keyHead.length + 1 + this.tail.length + this.keyCount * 5 +
      this.valueOpens.reduce((n, b) => n + b.length + 5, 0)
  }

  /** Renders the COPY row `buf[start, end)`, which ends with its newline. */
  row(buf: Buffer, start: number, end: number): void {
    // Every field ends at a tab or at this newline: no read goes past the row.
    if (end <= start || buf[end - 1] !== NEWLINE) throw new Error("COPY row without its newline")
    const reserve = this.fixedBytes + 3 * (end - start)
    if (this.out.length - this.used < reserve) this.startBatch(reserve)
    const { starts, ends, keyCount, valueFields } = this
    const out = this.out
    const rowStart = this.used
    let o = rowStart
    let p = start
    // Set by a byte that JSON escapes or COPY escaped: the row is written again by `renderRow`.
    let dirty = false
    out.set(this.keyHead, o)
    o += this.keyHead.length
    for (let k = 0; k < keyCount; k++) {
      if (p >= end) throw new Error("COPY row with too few fields")
      if (isNullAt(buf, p)) {
        starts[k] = NULL_FIELD
        p += 3
        out.set(KEY_PART_NULL, o)
        o += KEY_PART_NULL.length
        continue
      }
      out.set(KEY_PART_OPEN, o)
      o += KEY_PART_OPEN.length
      starts[k] = p
      for (;;) {
        const b = buf[p]!
        if (b < 0x23) {
          if (b === TAB || b === NEWLINE) break
          if (b < 0x20 || b === QUOTE) dirty = true
        } else if (b === BACKSLASH) {
          dirty = true
        } else if (b === SLASH) {
          out[o++] = SLASH
        }
        out[o++] = b
        p++
      }
      ends[k] = p++
      out[o++] = BACKSLASH
      out[o++] = QUOTE
    }
    out[o++] = QUOTE
    for (let v = 0; v < valueFields.length; v++) {
      const f = valueFields[v]!
      if (f < keyCount) {
        const s = starts[f]!
        if (s === NULL_FIELD) {
          const open = this.nullOpens[v]!
          out.set(open, o)
          o += open.length
          continue
        }
        const open = this.valueOpens[v]!
        out.set(open, o)
        o += open.length
        for (let i = s, e = ends[f]!; i < e; i++) out[o++] = buf[i]!
        out[o++] = QUOTE
        continue
      }
      if (p >= end) throw new Error("COPY row with too few fields")
      if (isNullAt(buf, p)) {
        starts[f] = NULL_FIELD
        p += 3
        const open = this.nullOpens[v]!
        out.set(open, o)
        o += open.length
        continue
      }
      const open = this.valueOpens[v]!
      out.set(open, o)
      o += open.length
      starts[f] = p
      for (;;) {
        const b = buf[p]!
        if (b < 0x23) {
          if (b === TAB || b === NEWLINE) break
          if (b < 0x20 || b === QUOTE) dirty = true
        } else if (b === BACKSLASH) {
          dirty = true
        }
        out[o++] = b
        p++
      }
      ends[f] = p++
      out[o++] = QUOTE
    }
    // A row of no fields is its newline alone.
    if (this.plan.fieldCount === 0) p++
    if (p !== end) throw new Error("COPY row with too many fields")
    out.set(this.tail, o)
    o += this.tail.length
    this.used = dirty ? this.writeEscaped(buf, rowStart) : o
    if (++this.count >= BATCH_LINES || this.used >= BATCH_BYTES) this.closeBatch()
  }

  /**
   * Takes back the buffer of a batch whose bytes are read no more, for a later batch: buffers reused while
   * they are hot in the cache cost neither new pages nor collections.
   */
  reuse(bytes: Buffer): void {
    if (bytes.byteOffset !== 0 || bytes.buffer.byteLength !== OUT_BYTES || this.spare.length >= SPARE_BUFFERS) return
    this.spare.push(Buffer.from(bytes.buffer, 0, OUT_BYTES))
  }

  /** Closes the batch being written, if it holds a row. */
  closeBatch(): void {
    if (this.count === 0) return
    this.batches.push({ bytes: this.out.subarray(0, this.used), count: this.count })
    this.out = this.spare.pop() ?? Buffer.allocUnsafe(OUT_BYTES)
    this.used = 0
    this.count = 0
  }

  /** Makes room for `needed` bytes: closes the batch, then gives the next a buffer large enough. */
  private startBatch(needed: number): void {
    this.closeBatch()
    if (this.out.length < needed) this.out = Buffer.allocUnsafe(needed)
  }

  /** Writes the row whose fields were just read at `rowStart`, through `renderRow`; where it ends. */
  private writeEscaped(buf: Buffer, rowStart: number): number {
    const { starts, ends, fields } = this
    for (let f = 0; f < fields.length; f++) {
      const start = starts[f]!
      fields[f] = start === NULL_FIELD ? null : buf.toString("utf8", start, ends[f]!)
    }
    const line = renderRow(this.plan, fields)
    const needed = Buffer.byteLength(line) + 1
    if (this.out.length - rowStart < needed) {
      // JSON escapes can outgrow the reserve (`\u0001` for one byte): the row starts the next batch.
      this.used = rowStart
      this.startBatch(needed)
      rowStart = 0
    }
    const o = rowStart + this.out.write(line, rowStart)
    this.out[o] = NEWLINE
    return o + 1
  }
}

// Backend message types read during COPY OUT.
const COPY_DATA = 0x64 // d
const COPY_DONE = 0x63 // c
const COPY_OUT_RESPONSE = 0x48 // H
const ERROR_RESPONSE = 0x45 // E
const NOTICE_RESPONSE = 0x4e // N
const PARAMETER_STATUS = 0x53 // S
const NOTIFICATION_RESPONSE = 0x41 // A

/** `CopyRows.endedBy` for a COPY that ended at its CopyDone. */
const COPY_DONE_ENDED = Symbol("CopyDone")

/** What `CopyRows` needs of a connection of `pg`. */
interface CopyConnection {
  readonly stream: NodeJS.ReadableStream
  query(text: string): void
}

/**
 * A `COPY … TO STDOUT` submitted to a `pg` client, read straight from its
 * socket: while the COPY runs, the connection's data goes to `onChunk`, which
 * takes the messages apart itself and hands each row (Postgres sends one per
 * CopyData message) to the renderer where it lies in the socket's buffer;
 * everything after `CopyDone`, or from an `ErrorResponse` on, goes back to
 * `pg`. The socket pauses while two batches wait to be taken.
 */
class CopyRows {
  private readonly renderer: RowRenderer
  private connection: CopyConnection | undefined = undefined
  private pgOnData: ((chunk: Buffer) => void) | undefined = undefined
  private readonly framer = new MessageFramer()
  private paused = false
  private done = false
  private ended = false
  private failure: unknown = undefined
  private waiter: (() => void) | undefined = undefined
  private rendered = 0
  /** Rows handed out by `next`. */
  count = 0

  constructor(private readonly sql: string, plan: SnapshotPlan) {
    this.renderer = new RowRenderer(plan)
  }

  /** Called by `pg` when the query's turn comes. */
  submit(connection: CopyConnection): Error | undefined {
    const listeners = connection.stream.listeners("data")
    if (listeners.length !== 1) return new Error(`the connection has ${listeners.length} data listeners, not pg's one`)
    this.connection = connection
    this.pgOnData = listeners[0] as (chunk: Buffer) => void
    connection.stream.removeListener("data", this.pgOnData)
    connection.stream.on("data", this.onChunk)
    connection.query(this.sql)
    return undefined
  }

  handleError(cause: unknown): void {
    this.fail(cause)
  }

  handleCommandComplete(message: { readonly text?: string }): void {
    const match = /^COPY (\d+)$/.exec(message.text ?? "")
    if (match === null || Number(match[1]) !== this.rendered) {
      this.fail(new Error(`COPY rendered ${this.rendered} rows; Postgres says ${message.text}`))
    }
  }

  handleReadyForQuery(): void {
    this.renderer.closeBatch()
    this.ended = true
    this.wake()
  }

  private readonly onChunk = (chunk: Buffer): void => {
    if (this.done) return
    try {
      this.read(chunk)
    } catch (cause) {
      this.done = true
      this.fail(cause)
      return
    }
    if (!this.done && this.renderer.batches.length >= 2 && !this.paused) {
      this.paused = true
      this.connection!.stream.pause()
    }
    if (this.renderer.batches.length > 0) this.wake()
  }

  private read(chunk: Buffer): void {
    const rest = this.framer.feed(chunk, this.onMessage)
    const endedBy = this.endedBy
    if (endedBy === undefined) return
    this.endedBy = undefined
    // After CopyDone pg reads what follows it; from an ErrorResponse on, pg reads the error and hands it to `handleError`.
    if (endedBy === COPY_DONE_ENDED) this.detach(chunk.subarray(rest))
    else this.detach(rest < chunk.length ? Buffer.concat([endedBy, chunk.subarray(rest)]) : endedBy)
  }

  /** How the COPY ended in the chunk being read: at its CopyDone, or with an ErrorResponse (its bytes). */
  private endedBy: Buffer | typeof COPY_DONE_ENDED | undefined = undefined

  /** One whole message, `data[start, end)`; whether the COPY is over. */
  private readonly onMessage = (data: Buffer, start: number, end: number): boolean => {
    switch (data[start]) {
      case COPY_DATA:
        this.renderer.row(data, start + HEADER_BYTES, end)
        this.rendered++
        return false
      case COPY_OUT_RESPONSE:
      case NOTICE_RESPONSE:
      case PARAMETER_STATUS:
      case NOTIFICATION_RESPONSE:
        return false
      case COPY_DONE:
        this.endedBy = COPY_DONE_ENDED
        return true
      case ERROR_RESPONSE:
        this.endedBy = data.subarray(start, end)
        return true
      default:
        throw new Error(`unexpected message ${String.fromCharCode(data[start]!)} during COPY`)
    }
  }

  /** Gives the connection back to `pg`, with the bytes it is to read first. */
  private detach(rest: Buffer): void {
    this.done = true
    const connection = this.connection!
    connection.stream.removeListener("data", this.onChunk)
    connection.stream.on("data", this.pgOnData!)
    if (rest.length > 0) this.pgOnData!(rest)
    if (this.paused) {
      this.paused = false
      connection.stream.resume()
    }
  }

  private fail(cause: unknown): void {
    this.failure ??= cause
    this.wake()
  }

  private wake(): void {
    const waiter = this.waiter
    this.waiter = undefined
    waiter?.()
  }

  /** Gives back a batch `next` handed out, whose bytes are read no more. */
  reuse(batch: RenderedRows): void {
    this.renderer.reuse(batch.bytes)
  }

  /** The next batch, `undefined` once the COPY has ended and everything was handed out; resumes the socket. */
  readonly next: Effect.Effect<RenderedRows | undefined, unknown> = Effect.async((resume) => {
    const deliver = () => {
      if (this.failure !== undefined) return resume(Effect.fail(this.failure))
      const batch = this.renderer.batches.shift()
      if (batch === undefined) {
        if (this.ended) resume(Effect.succeed(undefined))
        else this.waiter = deliver
        return
      }
      this.count += batch.count
      if (this.paused && this.renderer.batches.length < 2) {
        this.paused = false
        this.connection!.stream.resume()
      }
      resume(Effect.succeed(batch))
    }
    if (this.failure !== undefined || this.renderer.batches.length > 0 || this.ended) deliver()
    else this.waiter = deliver
    return Effect.sync(() => {
      this.waiter = undefined
    })
  })
}

const noop = () => {}

/**
 * Takes initial snapshots: one `REPEATABLE READ READ ONLY` transaction per
 * call on a pooled connection, which records `pg_current_snapshot()` and the
 * WAL position, then streams the rows through `COPY … TO STDOUT` and renders
 * each as the shape log's JSON insert message.
 */
export class Snapshot extends Context.Tag("syncline/Snapshot")<Snapshot, {
  /**
   * Reads the table's rows matching `whereSql` and hands them to `onRows`.
   * The transaction always ends and the connection always returns to the
   * pool (or is closed, after a failure or interruption).
   */
  readonly take: <E>(table: TableInfo, options: SnapshotOptions<E>) => Effect.Effect<SnapshotInfo, PostgresError | E>
  /**
   * Rows of a table, every value in its text form (as COPY and pgoutput print it), each with whether a clause
   * holds for it, read in a `REPEATABLE READ READ ONLY` transaction, with that transaction's snapshot: what a
   * move of a subquery's values brings in or takes out.
   */
  readonly rows: (request: RowsRequest) => Effect.Effect<RowsResult, PostgresError>
  /**
   * A subset snapshot (the protocol's `subset__*` requests): the rows a shape's clause and a subset's clause
   * both select, ordered and paged as asked, read in a `REPEATABLE READ READ ONLY` transaction whose snapshot
   * is returned with them.
   */
  readonly subset: (request: SubsetRequest) => Effect.Effect<SubsetResult, PostgresError | SubsetTooLarge>
}>() {
  /** The service over `PgPool`. */
  static readonly make: Effect.Effect<Snapshot["Type"], never, PgPool> = Effect.gen(function*() {
    const { pool, connectionString } = yield* PgPool
    const fail = (operation: string) => (cause: unknown) => toPostgresError(cause, operation, connectionString, "Snapshot")

    const withConnection = <A, E>(
      span: string,
      table: TableInfo,
      use: (client: pg.PoolClient) => Effect.Effect<A, E>
    ): Effect.Effect<A, PostgresError | E> =>
      Effect.acquireUseRelease(
        Effect.tryPromise({ try: () => pool.connect(), catch: fail("Snapshot connection") }).pipe(
          Effect.tap((client) => Effect.sync(() => client.on("error", noop)))
        ),
        use,
        (client, exit) =>
          Effect.sync(() => {
            client.off("error", noop)
            // Closing the connection is the one way to end a transaction that may be mid-COPY.
            client.release(Exit.isSuccess(exit) ? undefined : true)
          })
      ).pipe(Effect.withSpan(span, { attributes: { table: `${table.schema}.${table.name}` } }))

    const take = <E>(table: TableInfo, options: SnapshotOptions<E>): Effect.Effect<SnapshotInfo, PostgresError | E> =>
      withConnection("Snapshot.take", table, (client) =>
        Effect.flatMap(
          Effect.try({ try: () => snapshotPlan(table, options.columns, options.whereSql), catch: fail("Snapshot query") }),
          (plan) => run(client, plan, "write", options.onRows)
        ))

    const subset = (request: SubsetRequest): Effect.Effect<SubsetResult, PostgresError | SubsetTooLarge> =>
      withConnection("Snapshot.subset", request.table, (client) =>
        Effect.gen(function*() {
          const plan = yield* Effect.try({
            try: () => snapshotPlan(request.table, request.columns, request.whereSql, request),
            catch: fail("Subset query")
          })
          const lines: Array<string> = []
          let bytes = 0
          // Past the cap the query is abandoned (its connection closed), not read to the end.
          const info = yield* run(client, plan, "insert", (batch) =>
            Effect.suspend(() => {
              bytes += batch.bytes.length
              if (bytes > request.maxBytes) return Effect.fail(new SubsetTooLarge({ maxBytes: request.maxBytes }))
              for (const line of linesOf(batch)) lines.push(line)
              return Effect.void
            }))
          return { xmin: info.xmin, xmax: info.xmax, xip: info.xip, lsn: info.lsn, lines }
        }))

    const run = <E>(
      client: pg.PoolClient,
      plan: SnapshotPlan,
      lsnPosition: "write" | "insert",
      onRows: (rows: RenderedRows) => Effect.Effect<void, E>
    ) =>
      Effect.gen(function*() {
        const results = yield* Effect.tryPromise({
          try: () =>
            client.query(
              "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; " +
                `SELECT pg_current_snapshot()::text AS snapshot, ${
                  lsnPosition === "insert" ? "pg_current_wal_insert_lsn()" : "pg_current_wal_lsn()"
                }::text AS lsn; ` +
                displaySettingsSql("local")
            ) as unknown as Promise<ReadonlyArray<pg.QueryResult<{ snapshot: string; lsn: string }>>>,
          catch: fail("Snapshot start")
        })
        const row = results[1]?.rows[0]
        if (row === undefined) return yield* new PostgresError({ reason: "Snapshot", message: "Snapshot start returned no row" })
        const snapshot = parsePgSnapshot(row.snapshot)
        const lsn = Lsn.fromPg(row.lsn)

        const reader = client.query(new CopyRows(plan.sql, plan))
        const next = Effect.mapError(reader.next, fail("Snapshot query"))
        for (;;) {
          const rows = yield* next
          if (rows === undefined) break
          yield* onRows(rows)
          reader.reuse(rows)
        }
        yield* Effect.tryPromise({ try: () => client.query("COMMIT"), catch: fail("Snapshot commit") })
        return { ...snapshot, lsn, rows: reader.count } satisfies SnapshotInfo
      })

    const textTypes = { getTypeParser: () => (value: string) => value }
    const rows = (request: RowsRequest): Effect.Effect<RowsResult, PostgresError> =>
      Effect.acquireUseRelease(
        Effect.tryPromise({ try: () => pool.connect(), catch: fail("Query connection") }).pipe(
          Effect.tap((client) => Effect.sync(() => client.on("error", noop)))
        ),
        (client) =>
          Effect.tryPromise({
            try: async () => {
              // The display settings make each value the text the log holds for it.
              await client.query(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; ${displaySettingsSql("local")}`)
              const snap = await client.query<{ snapshot: string }>("SELECT pg_current_snapshot()::text AS snapshot")
              const { sql, params } = rowsQuery(request)
              const result = await client.query<Record<string, string | null>>({ text: sql, values: [...params], types: textTypes })
              await client.query("COMMIT")
              const prefix = rowKeyPrefix(request.table)
              const found = result.rows.map((fields) => {
                let key = prefix
                const row: Record<string, string | null> = {}
                for (const name of request.columns) row[name] = fields[name] ?? null
                for (let i = 0; i < request.table.pk.length; i++) key += rowKeyPart(fields[`syncline.key.${i}`])
                return { key, row, included: fields[INCLUDED] === "t" }
              })
              return { ...parsePgSnapshot(snap.rows[0]!.snapshot), rows: found }
            },
            catch: fail("Query")
          }),
        (client, exit) =>
          Effect.sync(() => {
            client.off("error", noop)
            client.release(Exit.isSuccess(exit) ? undefined : true)
          })
      ).pipe(Effect.withSpan("Snapshot.rows"))

    return { take, subset, rows }
  })

  /** The service as a layer over `PgPool`. */
  static readonly layer: Layer.Layer<Snapshot, never, PgPool> = Layer.effect(Snapshot, Snapshot.make)
}
