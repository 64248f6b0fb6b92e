import type { Change, ColumnValue, Relation, RelationColumn, Row, Transaction } from "../domain/Change.js"
import type { Lsn } from "../domain/Lsn.js"
import { int16, int32, int64, uint32, uint64 } from "./internal/BigEndian.js"

/**
 * A pure decoder for pgoutput protocol v1 (the messages inside XLogData), the
 * standby status update of the streaming replication protocol, and an assembler that turns the message sequence
 * into whole `Transaction`s. Column values stay Postgres's text form.
 */

/** One decoded tuple: values in relation column order (`undefined` = unchanged TOAST). */
export type TupleData = Array<ColumnValue>

/** A decoded pgoutput v1 message; tuples are positional, matched to columns by the Relation. */
export type PgOutputMessage =
  | { readonly tag: "begin"; readonly finalLsn: Lsn; readonly commitTime: bigint; readonly xid: number }
  | {
    readonly tag: "commit"
    readonly flags: number
    readonly commitLsn: Lsn
    readonly endLsn: Lsn
    readonly commitTime: bigint
  }
  | { readonly tag: "origin"; readonly originLsn: Lsn; readonly name: string }
  | { readonly tag: "relation"; readonly relation: Relation }
  | { readonly tag: "type"; readonly oid: number; readonly schema: string; readonly name: string }
  | { readonly tag: "insert"; readonly relationOid: number; readonly new: TupleData }
  | {
    readonly tag: "update"
    readonly relationOid: number
    /** `K` (replica identity key only), `O` (whole old row) or absent. */
    readonly oldKind: "K" | "O" | undefined
    readonly old: TupleData | undefined
    readonly new: TupleData
  }
  | { readonly tag: "delete"; readonly relationOid: number; readonly oldKind: "K" | "O"; readonly old: TupleData }
  | {
    readonly tag: "truncate"
    /** Bit 1: CASCADE, bit 2: RESTART IDENTITY. */
    readonly options: number
    readonly relationOids: ReadonlyArray<number>
  }
  | {
    readonly tag: "message"
    readonly transactional: boolean
    readonly lsn: Lsn
    readonly prefix: string
    readonly content: Buffer
  }

/** The message could not be decoded: unknown type, bad tuple kind, or truncated. */
export class PgOutputDecodeError extends Error {
  override readonly name = "PgOutputDecodeError"
}

// The decoder keeps its read position in a module-level cursor rather than
// allocating a reader object per message: decoding is synchronous and never re-entrant.
const EMPTY = Buffer.alloc(0)
let buf: Buffer = EMPTY
let pos = 0
/** Where the message being read ends in `buf`: a socket chunk holds the messages before and after it too. */
let limit = 0

const u8 = (): number => buf[pos++]!
/** A byte for an error message; a read past the end of the bytes gives none. */
const byteText = (byte: number | undefined): string =>
  byte === undefined ? "nothing (the message is cut short)" : `0x${byte.toString(16)}`
const i16 = (): number => {
  const v = int16(buf, pos)
  pos += 2
  return v
}
const i32 = (): number => {
  const v = int32(buf, pos)
  pos += 4
  return v
}
const u32 = (): number => {
  const v = uint32(buf, pos)
  pos += 4
  return v
}
const u64 = (): bigint => {
  const v = uint64(buf, pos)
  pos += 8
  return v
}
const i64 = (): bigint => {
  const v = int64(buf, pos)
  pos += 8
  return v
}
const cstring = (): string => {
  const end = buf.indexOf(0, pos)
  if (end < 0 || end >= limit) throw new PgOutputDecodeError("unterminated string")
  const s = buf.toString("utf8", pos, end)
  pos = end + 1
  return s
}

const tuple = (): TupleData => {
  const n = i16()
  // Each column takes a byte at least: a count past the message's end is a message cut short (or garbage).
  if (n < 0 || pos + n > limit) throw new PgOutputDecodeError("truncated tuple")
  const values: TupleData = new Array(n)
  for (let i = 0; i < n; i++) {
    const kind = u8()
    if (kind === 0x74 /* t */) {
      const len = i32()
      const end = pos + len
      if (end > limit || end < pos) throw new PgOutputDecodeError("truncated column value")
      values[i] = buf.toString("utf8", pos, end)
      pos = end
    } else if (kind === 0x6e /* n */) {
      values[i] = null
    } else if (kind === 0x75 /* u */) {
      values[i] = undefined
    } else if (kind === 0x62 /* b */) {
      // Binary values only appear with the `binary` option, which we never request.
      throw new PgOutputDecodeError("binary column values are not supported")
    } else {
      throw new PgOutputDecodeError(`unknown tuple column kind ${byteText(kind)}`)
    }
  }
  return values
}

const relation = (): Relation => {
  const oid = u32()
  const schema = cstring()
  const name = cstring()
  const replicaIdentity = String.fromCharCode(u8())
  const n = i16()
  if (n < 0 || pos + n > limit) throw new PgOutputDecodeError("truncated relation message")
  const columns: Array<RelationColumn> = new Array(n)
  for (let i = 0; i < n; i++) {
    const flags = u8()
    const colName = cstring()
    const typeOid = u32()
    const typeMod = i32()
    columns[i] = { name: colName, typeOid, typeMod, isKey: (flags & 1) === 1 }
  }
  // pgoutput sends an empty namespace for pg_catalog.
  return { oid, schema: schema === "" ? "pg_catalog" : schema, name, replicaIdentity, columns }
}

const oldKindOf = (byte: number): "K" | "O" => {
  if (byte === 0x4b /* K */) return "K"
  if (byte === 0x4f /* O */) return "O"
  throw new PgOutputDecodeError(`unexpected tuple marker ${byteText(byte)}`)
}

const expectNew = (): void => {
  const b = u8()
  if (b !== 0x4e /* N */) throw new PgOutputDecodeError(`expected new tuple marker, got ${byteText(b)}`)
}

const decodeAt = (): PgOutputMessage => {
  const type = u8()
  switch (type) {
    case 0x42 /* B */: {
      const finalLsn = u64()
      const commitTime = i64()
      const xid = u32()
      return { tag: "begin", finalLsn, commitTime, xid }
    }
    case 0x43 /* C */: {
      const flags = u8()
      const commitLsn = u64()
      const endLsn = u64()
      const commitTime = i64()
      return { tag: "commit", flags, commitLsn, endLsn, commitTime }
    }
    case 0x4f /* O */: {
      const originLsn = u64()
      return { tag: "origin", originLsn, name: cstring() }
    }
    case 0x52 /* R */:
      return { tag: "relation", relation: relation() }
    case 0x59 /* Y */: {
      const oid = u32()
      const schema = cstring()
      return { tag: "type", oid, schema: schema === "" ? "pg_catalog" : schema, name: cstring() }
    }
    case 0x49 /* I */: {
      const relationOid = u32()
      expectNew()
      return { tag: "insert", relationOid, new: tuple() }
    }
    case 0x55 /* U */: {
      const relationOid = u32()
      let marker = u8()
      let oldKind: "K" | "O" | undefined
      let old: TupleData | undefined
      if (marker !== 0x4e /* N */) {
        oldKind = oldKindOf(marker)
        old = tuple()
        marker = u8()
        if (marker !== 0x4e) throw new PgOutputDecodeError(`expected new tuple marker, got ${byteText(marker)}`)
      }
      return { tag: "update", relationOid, oldKind, old, new: tuple() }
    }
    case 0x44 /* D */: {
      const relationOid = u32()
      const oldKind = oldKindOf(u8())
      return { tag: "delete", relationOid, oldKind, old: tuple() }
    }
    case 0x54 /* T */: {
      const n = i32()
      if (n < 0 || pos + 1 + 4 * n > limit) throw new PgOutputDecodeError("truncated truncate message")
      const options = u8()
      const relationOids: Array<number> = new Array(n)
      for (let i = 0; i < n; i++) relationOids[i] = u32()
      return { tag: "truncate", options, relationOids }
    }
    case 0x4d /* M */: {
      const flags = u8()
      const lsn = u64()
      const prefix = cstring()
      const len = i32()
      if (len < 0 || pos + len > limit) throw new PgOutputDecodeError("truncated message content")
      const content = buf.subarray(pos, pos + len)
      pos += len
      return { tag: "message", transactional: (flags & 1) === 1, lsn, prefix, content }
    }
    default:
      throw new PgOutputDecodeError(`unknown pgoutput message type ${byteText(type)}`)
  }
}

/**
 * Decodes the pgoutput message that starts at `offset` in `data` (the XLogData
 * payload starts at byte 25 of a CopyData chunk). Throws `PgOutputDecodeError`
 * on malformed input.
 */
export const decode = (data: Buffer, offset = 0, end = data.length): PgOutputMessage => {
  buf = data
  pos = offset
  limit = end
  try {
    const message = decodeAt()
    if (pos > limit) throw new PgOutputDecodeError("truncated message")
    return message
  } finally {
    buf = EMPTY
  }
}

/** Byte offset of the pgoutput message inside an XLogData ('w') CopyData chunk. */
export const XLOG_DATA_HEADER_BYTES = 25

/** Byte offset of the server's WAL end (int64) inside a primary keepalive ('k') CopyData chunk. */
export const KEEPALIVE_WAL_END_OFFSET = 1

/** Byte offset of the reply-requested flag inside a primary keepalive ('k') CopyData chunk. */
export const KEEPALIVE_REPLY_FLAG_OFFSET = 17

/** Milliseconds between the Unix epoch and the Postgres epoch (2000-01-01 UTC). */
const PG_EPOCH_MS = 946_684_800_000

/** Microseconds since 2000-01-01 UTC, the clock the replication protocol uses. */
export const pgClockNow = (nowMs: number = Date.now()): bigint => BigInt(nowMs - PG_EPOCH_MS) * 1000n

/**
 * Encodes a 34-byte standby status update ('r') reporting `lsn` as the
 * written, flushed and applied position.
 */
export const encodeStandbyStatus = (lsn: Lsn, clock: bigint, replyRequested = false): Buffer => {
  const out = Buffer.allocUnsafe(34)
  out[0] = 0x72 /* r */
  out.writeBigUInt64BE(lsn, 1)
  out.writeBigUInt64BE(lsn, 9)
  out.writeBigUInt64BE(lsn, 17)
  out.writeBigInt64BE(clock, 25)
  out[33] = replyRequested ? 1 : 0
  return out
}

/** A change or transaction boundary arrived in an order pgoutput never produces. */
export class TransactionAssemblyError extends Error {
  override readonly name = "TransactionAssemblyError"
}

const toRow = (rel: Relation, values: TupleData): Row => {
  const cols = rel.columns
  if (values.length !== cols.length) {
    throw new TransactionAssemblyError(
      `tuple of ${values.length} columns for relation ${rel.schema}.${rel.name} of ${cols.length}`
    )
  }
  const row: Row = {}
  for (let i = 0; i < cols.length; i++) row[cols[i]!.name] = values[i]
  return row
}

// A 'K' tuple carries every column, with nulls outside the replica identity:
// only the key columns mean anything.
const toKeyRow = (rel: Relation, values: TupleData): Row => {
  const cols = rel.columns
  if (values.length !== cols.length) {
    throw new TransactionAssemblyError(
      `tuple of ${values.length} columns for relation ${rel.schema}.${rel.name} of ${cols.length}`
    )
  }
  const row: Row = {}
  for (let i = 0; i < cols.length; i++) {
    const col = cols[i]!
    if (col.isKey) row[col.name] = values[i]
  }
  return row
}

/**
 * The longest value read character by character: below it a short ASCII value (a key, a number, a flag) is made
 * in JavaScript faster than by a call into the UTF-8 decoder, and is still a flat string.
 */
const SHORT_TEXT = 12

/** The UTF-8 text of `buf[start..end)`. */
const text = (start: number, end: number): string => {
  if (end - start > SHORT_TEXT) return buf.toString("utf8", start, end)
  let s = ""
  for (let i = start; i < end; i++) {
    const c = buf[i]!
    if (c > 0x7f) return buf.toString("utf8", start, end)
    s += String.fromCharCode(c)
  }
  return s
}

/** One column value of a tuple at the cursor: its text, null, or undefined for an unchanged TOASTed value. */
const columnValue = (): ColumnValue => {
  const kind = u8()
  if (kind === 0x74 /* t */) {
    const len = i32()
    const end = pos + len
    if (end > limit || end < pos) throw new PgOutputDecodeError("truncated column value")
    const value = text(pos, end)
    pos = end
    return value
  }
  if (kind === 0x6e /* n */) return null
  if (kind === 0x75 /* u */) return undefined
  if (kind === 0x62 /* b */) throw new PgOutputDecodeError("binary column values are not supported")
  throw new PgOutputDecodeError(`unknown tuple column kind ${byteText(kind)}`)
}

const tupleColumns = (rel: Relation): ReadonlyArray<RelationColumn> => {
  const n = i16()
  if (pos > limit) throw new PgOutputDecodeError("truncated tuple")
  const cols = rel.columns
  if (n !== cols.length) {
    throw new TransactionAssemblyError(`tuple of ${n} columns for relation ${rel.schema}.${rel.name} of ${cols.length}`)
  }
  return cols
}

/** The tuple at the cursor as a row; unchanged TOASTed values are taken from `toastFrom` when given. */
const readRow = (rel: Relation, toastFrom: Row | undefined): Row => {
  const cols = tupleColumns(rel)
  const row: Row = {}
  for (let i = 0; i < cols.length; i++) {
    const name = cols[i]!.name
    const value = columnValue()
    row[name] = value === undefined && toastFrom !== undefined ? toastFrom[name] : value
  }
  return row
}

/** Steps over the tuple at the cursor, checking it as `readRow` reads it, without making its values. */
const skipTuple = (rel: Relation): void => {
  const cols = tupleColumns(rel)
  for (let i = 0; i < cols.length; i++) {
    const kind = u8()
    if (kind === 0x74 /* t */) {
      const len = i32()
      const end = pos + len
      if (end > limit || end < pos) throw new PgOutputDecodeError("truncated column value")
      pos = end
    } else if (kind !== 0x6e /* n */ && kind !== 0x75 /* u */) {
      if (kind === 0x62 /* b */) throw new PgOutputDecodeError("binary column values are not supported")
      throw new PgOutputDecodeError(`unknown tuple column kind ${byteText(kind)}`)
    }
  }
}

/** The row of the tuple at `data[at]`, read when asked for (after the message it is in was read, like any). */
const rowAt = (rel: Relation, data: Buffer, at: number, toastFrom: Row | undefined): Row => {
  buf = data
  pos = at
  limit = data.length
  try {
    return readRow(rel, toastFrom)
  } finally {
    buf = EMPTY
  }
}

/**
 * Value `column` of the tuple at `data[at]` (one a `TransactionAssembler` read and checked, see `TupleSource`), as
 * its row would have it: text, null, or undefined for an unchanged TOASTed value. Routing a change by one column
 * reads that value only, not its row.
 */
export const tupleValue = (data: Buffer, at: number, column: number): ColumnValue => {
  buf = data
  pos = at + 2
  limit = data.length
  try {
    for (let i = 0; i < column; i++) {
      // Checked by the assembler already: a text value's length, and `n` or `u` otherwise.
      if (u8() !== 0x74 /* t */) continue
      const len = i32()
      pos += len
    }
    return columnValue()
  } finally {
    buf = EMPTY
  }
}

/**
 * An insert as read from the wire. Its row is made from the tuple's bytes the first time it is asked for: a change
 * routed to shapes that select it whole, and written to their logs straight from the bytes, never needs its values
 * as strings. The bytes are the socket chunk's until `ownTupleBytes` copies them.
 */
class WireInsert {
  readonly kind = "insert"
  readonly oldTupleAt = -1
  private row: Row | undefined = undefined
  constructor(readonly relation: Relation, public tupleData: Buffer, public tupleAt: number, public tupleEnd: number) {}
  get new(): Row {
    return this.row ??= rowAt(this.relation, this.tupleData, this.tupleAt, undefined)
  }
  /** Where its tuple's bytes start. */
  get bytesAt(): number {
    return this.tupleAt
  }
  /** Its tuple's bytes are now `data` from `at` on. */
  moveBytes(data: Buffer, at: number): void {
    this.tupleEnd = at + this.tupleEnd - this.tupleAt
    this.tupleAt = at
    this.tupleData = data
  }
}

/**
 * An update as read from the wire, its rows made when first asked for (see `WireInsert`). An old row sent whole is
 * read from its tuple too, and fills in the new row's unchanged TOASTed values; one of the key only is kept as read.
 * The old tuple, when there is one, lies right before the new (with the new one's marker between them).
 */
class WireUpdate {
  readonly kind = "update"
  private newRow: Row | undefined = undefined
  private oldRow: Row | undefined
  constructor(
    readonly relation: Relation,
    public tupleData: Buffer,
    public tupleAt: number,
    public tupleEnd: number,
    public oldTupleAt: number,
    keyRow: Row | undefined
  ) {
    this.oldRow = keyRow
  }
  get old(): Row | undefined {
    if (this.oldRow === undefined && this.oldTupleAt >= 0) this.oldRow = rowAt(this.relation, this.tupleData, this.oldTupleAt, undefined)
    return this.oldRow
  }
  get new(): Row {
    return this.newRow ??= rowAt(this.relation, this.tupleData, this.tupleAt, this.oldTupleAt >= 0 ? this.old : undefined)
  }
  get bytesAt(): number {
    return this.oldTupleAt >= 0 ? this.oldTupleAt : this.tupleAt
  }
  moveBytes(data: Buffer, at: number): void {
    const shift = at - this.bytesAt
    if (this.oldTupleAt >= 0) this.oldTupleAt += shift
    this.tupleAt += shift
    this.tupleEnd += shift
    this.tupleData = data
  }
}

/** What `ownTupleBytes` copies the tuples of transactions into, a slab at a time. */
const SLAB_BYTES = 2048
let slab: Buffer = Buffer.alloc(0)
let slabUsed = 0

/**
 * Copies the tuples the changes of `txn` were read from out of the socket chunks they lie in, into a slab of their
 * own (one of their own when large). A transaction handed to consumers may wait in a queue for long (a shape whose
 * snapshot is being taken, a write backing off); it then keeps its own bytes, not the whole chunks it was read
 * from: at most a slab per transaction, where a chunk is up to 64 kB, most of it other transactions'.
 */
export const ownTupleBytes = (txn: Transaction): void => {
  const changes = txn.changes
  for (let i = 0; i < changes.length; i++) {
    const change = changes[i]
    if (!(change instanceof WireInsert || change instanceof WireUpdate)) continue
    const start = change.bytesAt
    const length = change.tupleEnd - start
    const from = change.tupleData
    let to: Buffer
    let at: number
    if (length > SLAB_BYTES / 4) {
      to = Buffer.allocUnsafeSlow(length)
      at = 0
    } else {
      if (slabUsed + length > slab.length) {
        slab = Buffer.allocUnsafeSlow(SLAB_BYTES)
        slabUsed = 0
      }
      to = slab
      at = slabUsed
      slabUsed += length
    }
    from.copy(to, at, start, start + length)
    change.moveBytes(to, at)
  }
}

/** The key columns of a 'K' tuple at the cursor (see `toKeyRow`). */
const readKeyRow = (rel: Relation): Row => {
  const cols = tupleColumns(rel)
  const row: Row = {}
  for (let i = 0; i < cols.length; i++) {
    const col = cols[i]!
    const value = columnValue()
    if (col.isKey) row[col.name] = value
  }
  return row
}

/** In `TupleSlots.ends`: the value is SQL NULL. */
export const NULL_VALUE = -1
/** In `TupleSlots.ends`: the value is an unchanged TOASTed one, not sent. */
export const UNCHANGED_VALUE = -2

/** Where the values of one tuple lie in its bytes: value `i` is `[starts[i], ends[i])`, or `ends[i]` says it has none. */
export interface TupleSlots {
  readonly starts: Int32Array
  readonly ends: Int32Array
}

/** Postgres's limit on the columns of a tuple (`MaxTupleAttributeNumber`): slots this long hold any. */
export const MAX_TUPLE_COLUMNS = 1664

/**
 * Reads where the values of the tuple at `data[at]` (its column count) lie, into `slots`; returns how many there
 * are. The tuple is one a `TransactionAssembler` read and checked (`TupleSource`).
 */
export const readTupleSlots = (data: Buffer, at: number, slots: TupleSlots): number => {
  const n = int16(data, at)
  const { starts, ends } = slots
  let p = at + 2
  for (let i = 0; i < n; i++) {
    const kind = data[p++]!
    if (kind === 0x74 /* t */) {
      const len = int32(data, p)
      p += 4
      starts[i] = p
      p += len
      ends[i] = p
    } else {
      ends[i] = kind === 0x6e /* n */ ? NULL_VALUE : UNCHANGED_VALUE
    }
  }
  return n
}

/** Relation messages are rare (a connection's first change of a table, a schema change): most transactions share this. */
const NO_RELATIONS: ReadonlyArray<Relation> = []

/**
 * Groups decoded pgoutput messages into whole transactions: remembers Relation
 * messages by oid (later changes refer to them), turns tuples into rows, and
 * fills an update's unchanged-TOAST columns from its old row when the old row
 * was sent (`REPLICA IDENTITY FULL`). One instance per replication connection.
 */
export class TransactionAssembler {
  private readonly relationsByOid = new Map<number, Relation>()
  /** Between a Begin and its Commit, and the xid that Begin gave. */
  private inTransaction = false
  private xid = 0
  private changes: Array<Change> = []
  /** Never changed in place: a transaction keeps the list it was given. */
  private newRelations: ReadonlyArray<Relation> = NO_RELATIONS

  /** The relation last announced under `oid`, if any. */
  relation(oid: number): Relation | undefined {
    return this.relationsByOid.get(oid)
  }

  /**
   * Decodes the pgoutput message in `data[offset, end)` and feeds it; returns the transaction its Commit completes.
   * The rest of `data` may hold other messages: it is read where it lies, never copied.
   */
  pushBuffer(data: Buffer, offset = 0, end = data.length): Transaction | undefined {
    const type = data[offset]
    // The messages of every transaction are read straight into its rows and boundaries, with no message object
    // or value array in between; the rest go through `decode`.
    if (type !== 0x42 && type !== 0x43 && type !== 0x49 && type !== 0x55 && type !== 0x44) return this.push(decode(data, offset, end))
    buf = data
    pos = offset + 1
    limit = end
    try {
      const txn = this.readMessage(type)
      // Fixed-width fields are read without a check each: one look at the end catches a message cut short.
      if (pos > limit) throw new PgOutputDecodeError("truncated message")
      return txn
    } finally {
      buf = EMPTY
    }
  }

  private readMessage(type: number): Transaction | undefined {
    switch (type) {
      case 0x42 /* B */: {
        if (this.inTransaction) throw new TransactionAssemblyError("Begin inside a transaction")
        // The final LSN and commit time come again in the Commit, which is what the transaction takes them from.
        pos += 16
        this.inTransaction = true
        this.xid = u32()
        return undefined
      }
      case 0x43 /* C */: {
        if (!this.inTransaction) throw new TransactionAssemblyError("Commit without Begin")
        pos++ // flags
        const commitLsn = u64()
        const endLsn = u64()
        const commitTime = i64()
        // Checked before the transaction is handed on, not after.
        if (pos > limit) throw new PgOutputDecodeError("truncated message")
        return this.finish(commitLsn, endLsn, commitTime)
      }
      case 0x49 /* I */: {
        const rel = this.changeRelation(u32())
        expectNew()
        const tupleAt = pos
        skipTuple(rel)
        this.changes.push(new WireInsert(rel, buf, tupleAt, pos))
        return undefined
      }
      case 0x55 /* U */: {
        const rel = this.changeRelation(u32())
        let marker = u8()
        let keyRow: Row | undefined
        let oldTupleAt = -1
        if (marker !== 0x4e /* N */) {
          if (oldKindOf(marker) === "K") keyRow = readKeyRow(rel)
          else {
            oldTupleAt = pos
            skipTuple(rel)
          }
          marker = u8()
          if (marker !== 0x4e) throw new PgOutputDecodeError(`expected new tuple marker, got ${byteText(marker)}`)
        }
        const tupleAt = pos
        skipTuple(rel)
        this.changes.push(new WireUpdate(rel, buf, tupleAt, pos, oldTupleAt, keyRow))
        return undefined
      }
      default: /* D */ {
        const rel = this.changeRelation(u32())
        const old = oldKindOf(u8()) === "K" ? readKeyRow(rel) : readRow(rel, undefined)
        this.changes.push({ kind: "delete", relation: rel, old })
        return undefined
      }
    }
  }

  /** The transaction a Commit ends, with the changes gathered since its Begin; the next one starts empty. */
  private finish(commitLsn: Lsn, endLsn: Lsn, commitTime: bigint): Transaction {
    const tx: Transaction = { xid: this.xid, commitLsn, endLsn, commitTime, changes: this.changes, relations: this.newRelations }
    this.inTransaction = false
    this.changes = []
    this.newRelations = NO_RELATIONS
    return tx
  }

  /** Feeds one message; returns the finished transaction when `msg` is its Commit. */
  push(msg: PgOutputMessage): Transaction | undefined {
    switch (msg.tag) {
      case "begin":
        if (this.inTransaction) throw new TransactionAssemblyError("Begin inside a transaction")
        this.inTransaction = true
        this.xid = msg.xid
        return undefined
      case "commit": {
        if (!this.inTransaction) throw new TransactionAssemblyError("Commit without Begin")
        return this.finish(msg.commitLsn, msg.endLsn, msg.commitTime)
      }
      case "relation":
        this.relationsByOid.set(msg.relation.oid, msg.relation)
        this.newRelations = [...this.newRelations, msg.relation]
        return undefined
      case "insert": {
        const rel = this.changeRelation(msg.relationOid)
        this.changes.push({ kind: "insert", relation: rel, new: toRow(rel, msg.new) })
        return undefined
      }
      case "update": {
        const rel = this.changeRelation(msg.relationOid)
        const values = msg.new
        let old: Row | undefined
        if (msg.old !== undefined) {
          const oldValues = msg.old
          old = msg.oldKind === "K" ? toKeyRow(rel, oldValues) : toRow(rel, oldValues)
          if (msg.oldKind === "O") {
            for (let i = 0; i < values.length; i++) {
              if (values[i] === undefined) values[i] = oldValues[i]
            }
          }
        }
        this.changes.push({ kind: "update", relation: rel, old, new: toRow(rel, values) })
        return undefined
      }
      case "delete": {
        const rel = this.changeRelation(msg.relationOid)
        const old = msg.oldKind === "K" ? toKeyRow(rel, msg.old) : toRow(rel, msg.old)
        this.changes.push({ kind: "delete", relation: rel, old })
        return undefined
      }
      case "truncate": {
        if (!this.inTransaction) throw new TransactionAssemblyError("Truncate outside a transaction")
        const relations = msg.relationOids.map((oid) => this.changeRelation(oid))
        this.changes.push({ kind: "truncate", relations })
        return undefined
      }
      case "origin":
      case "type":
      case "message":
        return undefined
    }
  }

  private changeRelation(oid: number): Relation {
    if (!this.inTransaction) throw new TransactionAssemblyError("change outside a transaction")
    // An oid read past the message's end is no oid: the message is cut short.
    if (pos > limit) throw new PgOutputDecodeError("truncated message")
    const rel = this.relationsByOid.get(oid)
    if (rel === undefined) throw new TransactionAssemblyError(`change for unknown relation oid ${oid}`)
    return rel
  }
}
