import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import type pg from "pg"
import { to as copyTo } from "pg-copy-streams"
import { PostgresError, SubsetTooLarge } from "../domain/errors.js"
import type { PgType } from "../where/Ast.js"
import { quoteIdent } from "../where/Sql.js"
import { Lsn } from "../domain/Lsn.js"
import { rowKeyPart, rowKeyPrefix } from "../domain/RowKey.js"
import type { ColumnInfo, TableInfo } from "../domain/Table.js"
import { displaySettingsSql } from "./DisplaySettings.js"
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
  /** Receives the rows as complete JSON insert messages, a batch at a time; reading waits while it runs. */
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
 * together in `renderRow`, which is several times faster than building them
 * with `to_json` in SQL and uses the very key function of the replication path.
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
  const valueFields = columns.map((name) => {
    const column = columnOf(name)
    const cast = column.dims === 0 && CAST_TO_TEXT.has(column.baseTypeName)
    return field(cast ? `${ident(name)}::text` : ident(name))
  })
  const keyFields = table.pk.map((name) => field(ident(columnOf(name).name)))
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

const bytesOf = (text: string): Buffer => Buffer.from(text, "utf8")
const NULL_JSON = bytesOf("null")
const KEY_PART_OPEN = bytesOf("/\\\"")
const KEY_PART_CLOSE = bytesOf("\\\"")
const KEY_PART_NULL = bytesOf("/_")

/**
 * Renders complete COPY rows from the bytes Postgres sent into the text of
 * their messages, one per line. A row whose fields hold no backslash (beyond
 * a NULL's `\N`), quote or control character reads the same in COPY text and
 * inside a JSON string, UTF-8 included, so its bytes are copied around the
 * fixed pieces of the message with no string per field; any other row goes
 * through `renderRow`. Both give the same text.
 */
class RowRenderer {
  private out: Buffer = Buffer.allocUnsafe(1 << 18)
  private readonly starts: Int32Array
  private readonly ends: Int32Array
  private readonly fields: Array<string | null>
  private readonly keyFields: Int32Array
  private readonly valueFields: Int32Array
  private readonly keyHead: Buffer
  private readonly valuePrefixes: ReadonlyArray<Buffer>
  private readonly tail: Buffer
  /** The bytes a row writes besides its fields' (each field byte is written at most three times). */
  private readonly fixedBytes: number

  constructor(private readonly plan: SnapshotPlan) {
    this.starts = new Int32Array(plan.fieldCount)
    this.ends = new Int32Array(plan.fieldCount)
    this.fields = new Array<string | null>(plan.fieldCount).fill(null)
    this.keyFields = Int32Array.from(plan.keyFields)
    this.valueFields = Int32Array.from(plan.valueFields)
    // JSON escapes character by character: the key's string is its escaped prefix, then each escaped part.
    const prefixJson = JSON.stringify(plan.keyPrefix)
    this.keyHead = bytesOf(`{"key":${prefixJson.slice(0, -1)}`)
    this.valuePrefixes = plan.valuePrefixes.map(bytesOf)
    this.tail = bytesOf(`${plan.tail}\n`)
    this.fixedBytes = this.keyHead.length + 1 + this.tail.length + plan.keyFields.length * 6 +
      this.valuePrefixes.reduce((n, b) => n + b.length + 4, 0)
  }

  /** The messages of the rows in `buf[0, end)` (which ends with a row's newline), and how many there are. */
  render(buf: Buffer, end: number): RenderedRows {
    const { starts, ends } = this
    const lastField = this.plan.fieldCount - 1
    let out = this.out
    let o = 0
    let pos = 0
    let count = 0
    while (pos < end) {
      count++
      const rowStart = pos
      let clean = true
      for (let f = 0; f <= lastField; f++) {
        const separator = f === lastField ? NEWLINE : TAB
        if (buf[pos] === BACKSLASH && buf[pos + 1] === LETTER_N && buf[pos + 2] === separator) {
          starts[f] = NULL_FIELD
          pos += 3
          continue
        }
        const start = pos
        for (;;) {
          const b = buf[pos]!
          if (b === separator) break
          if (b === NEWLINE) throw new Error("COPY row with too few fields")
          if (b < 0x20 || b === QUOTE || b === BACKSLASH) clean = false
          pos++
        }
        starts[f] = start
        ends[f] = pos
        pos++
      }
      if (out.length - o < this.fixedBytes + 3 * (pos - rowStart)) out = this.grow(o, this.fixedBytes + 3 * (pos - rowStart))
      if (clean) {
        o = this.writeClean(buf, out, o)
      } else {
        // JSON escapes can outgrow the reserve (`\u0001` for one byte): this may replace the buffer.
        o = this.writeEscaped(buf, o)
        out = this.out
      }
    }
    // A copy: the scratch buffer is written again by the next render while these bytes wait to be written.
    return { bytes: Buffer.from(out.subarray(0, o)), count }
  }

  private grow(used: number, needed: number): Buffer {
    let size = this.out.length * 2
    while (size - used < needed) size *= 2
    const grown = Buffer.allocUnsafe(size)
    this.out.copy(grown, 0, 0, used)
    this.out = grown
    return grown
  }

  private writeClean(buf: Buffer, out: Buffer, o: number): number {
    const { starts, ends, keyFields, valueFields, valuePrefixes } = this
    out.set(this.keyHead, o)
    o += this.keyHead.length
    for (let k = 0; k < keyFields.length; k++) {
      const f = keyFields[k]!
      const start = starts[f]!
      if (start === NULL_FIELD) {
        out.set(KEY_PART_NULL, o)
        o += KEY_PART_NULL.length
        continue
      }
      out.set(KEY_PART_OPEN, o)
      o += KEY_PART_OPEN.length
      for (let i = start, e = ends[f]!; i < e; i++) {
        const b = buf[i]!
        out[o++] = b
        if (b === SLASH) out[o++] = SLASH
      }
      out.set(KEY_PART_CLOSE, o)
      o += KEY_PART_CLOSE.length
    }
    out[o++] = QUOTE
    for (let v = 0; v < valueFields.length; v++) {
      const prefix = valuePrefixes[v]!
      out.set(prefix, o)
      o += prefix.length
      const f = valueFields[v]!
      const start = starts[f]!
      if (start === NULL_FIELD) {
        out.set(NULL_JSON, o)
        o += NULL_JSON.length
        continue
      }
      out[o++] = QUOTE
      for (let i = start, e = ends[f]!; i < e; i++) out[o++] = buf[i]!
      out[o++] = QUOTE
    }
    out.set(this.tail, o)
    return o + this.tail.length
  }

  private writeEscaped(buf: Buffer, o: number): number {
    const { starts, ends, fields } = this
    for (let f = 0; f < fields.length; f++) {
      const start = starts[f]!
      fields[f] = start === NULL_FIELD ? null : buf.toString("utf8", start, ends[f]!)
    }
    const line = renderRow(this.plan, fields)
    const needed = Buffer.byteLength(line) + 1
    const out = this.out.length - o < needed ? this.grow(o, needed) : this.out
    o += out.write(line, o)
    out[o++] = NEWLINE
    return o
  }
}

/**
 * Splits COPY text output into rows and renders each as a message, in
 * batches; the stream pauses while a full batch waits to be taken.
 */
class CopyRowReader {
  private pieces: Array<Buffer> = []
  private lines = 0
  private bytes = 0
  private carry: Array<Buffer> = []
  private ended = false
  private failure: unknown = undefined
  private waiter: (() => void) | undefined = undefined
  private readonly renderer: RowRenderer
  count = 0

  constructor(private readonly stream: NodeJS.ReadableStream, plan: SnapshotPlan) {
    this.renderer = new RowRenderer(plan)
    stream.on("data", (chunk: Buffer) => {
      try {
        this.onData(chunk)
      } catch (cause) {
        this.failure ??= cause
        this.wake()
      }
    })
    stream.on("end", () => {
      // COPY ends every row with a newline; a tail without one would be a truncated row.
      if (this.carry.length > 0) this.failure ??= new Error("COPY output ended inside a row")
      this.ended = true
      this.wake()
    })
    stream.on("error", (cause: unknown) => {
      this.failure ??= cause
      this.wake()
    })
  }

  private onData(chunk: Buffer): void {
    const last = chunk.lastIndexOf(NEWLINE)
    if (last === -1) {
      this.carry.push(chunk)
      return
    }
    let buffer = chunk
    let end = last
    if (this.carry.length > 0) {
      this.carry.push(chunk)
      buffer = Buffer.concat(this.carry)
      end = buffer.length - (chunk.length - last)
      this.carry = []
    }
    if (last + 1 < chunk.length) this.carry.push(chunk.subarray(last + 1))
    const rendered = this.renderer.render(buffer, end + 1)
    this.pieces.push(rendered.bytes)
    this.lines += rendered.count
    this.bytes += rendered.bytes.length
    if (this.lines >= BATCH_LINES || this.bytes >= BATCH_BYTES) {
      this.stream.pause()
      this.wake()
    }
  }

  private wake(): void {
    const waiter = this.waiter
    this.waiter = undefined
    waiter?.()
  }

  private ready(): boolean {
    return this.failure !== undefined || this.ended || this.lines >= BATCH_LINES || this.bytes >= BATCH_BYTES
  }

  /**
   * The next batch of at most `BATCH_LINES` rows, cut at a row's end; what is left waits for the next call. Its
   * bytes stay near `BATCH_BYTES`: the stream pauses there, past it by at most one chunk of the socket.
   */
  private takeBatch(): RenderedRows {
    const all = this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces)
    if (this.lines <= BATCH_LINES) {
      const batch = { bytes: all, count: this.lines }
      this.pieces = []
      this.lines = 0
      this.bytes = 0
      return batch
    }
    let cut = -1
    for (let n = 0; n < BATCH_LINES; n++) cut = all.indexOf(NEWLINE, cut + 1)
    const batch = { bytes: all.subarray(0, cut + 1), count: BATCH_LINES }
    const rest = all.subarray(cut + 1)
    this.pieces = [rest]
    this.lines -= BATCH_LINES
    this.bytes = rest.length
    return batch
  }

  /** The next batch, `undefined` once the stream has ended and everything was handed out; resumes the stream. */
  readonly next: Effect.Effect<RenderedRows | undefined, unknown> = Effect.async((resume) => {
    const deliver = () => {
      if (this.failure !== undefined) return resume(Effect.fail(this.failure))
      if (this.lines === 0 && this.ended) return resume(Effect.succeed(undefined))
      // A chunk read after a pause can hold many batches' worth: hand them out one at a time.
      const batch = this.takeBatch()
      this.count += batch.count
      if (this.lines < BATCH_LINES && this.bytes < BATCH_BYTES) this.stream.resume()
      resume(Effect.succeed(batch))
    }
    if (this.ready()) deliver()
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

        const reader = new CopyRowReader(client.query(copyTo(plan.sql)), plan)
        const next = Effect.mapError(reader.next, fail("Snapshot query"))
        for (;;) {
          const rows = yield* next
          if (rows === undefined) break
          yield* onRows(rows)
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
