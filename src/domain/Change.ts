import type { Lsn } from "./Lsn.js"

/**
 * Decoded logical replication data, as the replication connection hands it to
 * the collector. Column values are Postgres's text form, verbatim.
 */

/** A column value: its text form, `null` for SQL NULL, `undefined` for an unchanged TOASTed value. */
export type ColumnValue = string | null | undefined

/** A row as `column name -> value`. */
export type Row = Record<string, ColumnValue>

export interface RelationColumn {
  readonly name: string
  readonly typeOid: number
  readonly typeMod: number
  /** Part of the replica identity (with `REPLICA IDENTITY FULL`, every column). */
  readonly isKey: boolean
}

/** A pgoutput Relation message: the table's shape at this point of the stream. */
export interface Relation {
  readonly oid: number
  readonly schema: string
  readonly name: string
  /** `d` default, `n` nothing, `f` full, `i` index. */
  readonly replicaIdentity: string
  readonly columns: ReadonlyArray<RelationColumn>
}

/**
 * A change's rows as pgoutput sent them, when it was read from the wire: the new row is the tuple in `tupleData`
 * from byte `tupleAt` (its column count), with its unchanged TOASTed values taken from the old row's tuple at
 * `oldTupleAt` when that was sent whole (`REPLICA IDENTITY FULL`; -1 when not). A log line can be written straight
 * from these bytes (`readTupleSlots`), with no string made of its values.
 */
export interface TupleSource {
  readonly tupleData?: Buffer | undefined
  readonly tupleAt?: number
  readonly oldTupleAt?: number
}

export type Change =
  | { readonly kind: "insert"; readonly relation: Relation; readonly new: Row } & TupleSource
  | { readonly kind: "update"; readonly relation: Relation; readonly old: Row | undefined; readonly new: Row } & TupleSource
  | { readonly kind: "delete"; readonly relation: Relation; readonly old: Row }
  | { readonly kind: "truncate"; readonly relations: ReadonlyArray<Relation> }

/**
 * One committed transaction, whole (pgoutput protocol v1 never streams
 * in-progress transactions).
 */
export interface Transaction {
  readonly kind?: undefined
  /** The 32-bit xid from Begin. */
  readonly xid: number
  /** Begin's `final_lsn`: the LSN of the commit record; the `tx` part of the changes' offsets. */
  readonly commitLsn: Lsn
  /** Commit's `end_lsn`: what the slot is acknowledged with once the transaction is durable. */
  readonly endLsn: Lsn
  readonly commitTime: bigint
  readonly changes: ReadonlyArray<Change>
  /** Relation messages seen since the previous transaction (schema changes). */
  readonly relations: ReadonlyArray<Relation>
}

/**
 * A point of the replication stream past every transaction sent before it:
 * the WAL position of a keepalive. Nothing the publication carries committed
 * below it without having been sent, so once everything before it is durable
 * the slot may be acknowledged up to it.
 */
export interface WalPosition {
  readonly kind: "position"
  readonly lsn: Lsn
}

/** What the replication stream delivers, in order. */
export type ReplicationEvent = Transaction | WalPosition

/** Whether a replication event is a transaction (not a keepalive position). */
export const isTransaction = (event: ReplicationEvent): event is Transaction => event.kind === undefined
