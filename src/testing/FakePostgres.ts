import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Stream from "effect/Stream"
import type { Change, Relation, ReplicationEvent, Row, Transaction } from "../domain/Change.js"
import { ReplicationError } from "../domain/errors.js"
import type { Lsn } from "../domain/Lsn.js"
import type { ColumnInfo, TableInfo, TableRef } from "../domain/Table.js"
import type { SnapshotInfo } from "../postgres/Snapshot.js"
import { Intercept } from "./Intercept.js"

const TEXT_OID = 25

/** A table whose columns are all `text`, keyed by its first column: what the fakes need of a catalog entry. */
export const textTable = (oid: number, name: string, columns: ReadonlyArray<string>): TableInfo => ({
  oid,
  schema: "public",
  name,
  columns: columns.map((column, i): ColumnInfo => ({
    name: column,
    attnum: i + 1,
    typeName: "text",
    typeOid: TEXT_OID,
    elementTypeOid: TEXT_OID,
    typeKind: "b",
    baseTypeName: "text",
    dims: 0,
    typeMod: -1,
    notNull: i === 0,
    pkIndex: i === 0 ? 0 : undefined
  })),
  pk: [columns[0]!]
})

/** One write of a fake transaction. */
export type FakeWrite =
  | { readonly kind: "insert"; readonly table: string; readonly row: Row }
  | { readonly kind: "update"; readonly table: string; readonly row: Row }
  | { readonly kind: "delete"; readonly table: string; readonly key: string }
  | { readonly kind: "truncate"; readonly table: string }

interface FakeTable {
  readonly info: TableInfo
  readonly relation: Relation
  readonly rows: Map<string, Row>
}

/** The gap between two non-adjacent commits, and the size of a commit record. */
const WAL_GAP = 0x100n
const COMMIT_RECORD = 0x30n

/** What the fake slot streams: transactions, keepalive positions, or a poison pill that makes the stream die. */
type SlotEvent = ReplicationEvent | { readonly kind: "defect" }

/**
 * An in-memory Postgres that outlives the stacks built on it: tables of text
 * rows, an xid counter (with transactions that can stay in progress across a
 * snapshot), a WAL position, one logical slot and the slot's advisory lock.
 * The slot follows Postgres's rule on every (re)connection: it sends, in
 * commit order, every committed transaction whose commit LSN is at or above
 * `confirmed_flush_lsn`, then new commits as they happen.
 *
 * `events` records what the fakes see, in order (connections, acks, lock,
 * releases): teardown-order tests read it.
 */
export class FakePostgres {
  /** What the fakes saw, in order. */
  readonly events: Array<string> = []
  /** Every ack the slot received (from every connection), in order. */
  readonly acks: Array<Lsn> = []
  /**
   * Interceptions tests arm: the next ack, the next catalog load, the next snapshot, the next query of
   * rows (`Snapshot.rows`, keyed by its table), the next SQLite statement of the registry, the next commit of a
   * shape log, the next opening of one.
   */
  readonly intercept = {
    ack: new Intercept<Lsn>(),
    load: new Intercept<TableRef>(),
    snapshot: new Intercept<TableRef>(),
    rows: new Intercept<TableRef>(),
    sql: new Intercept<string>(),
    /** The next commit of a shape log (keyed by its handle): what makes a batch durable. */
    commit: new Intercept<string>(),
    /** The next opening of an existing shape log (keyed by its handle), as a consumer or a request opens it. */
    open: new Intercept<string>()
  }
  /** When true, acks are recorded but never reach `confirmedFlush` (as if the standby status was lost). */
  dropAcks = false
  /** What `IDENTIFY_SYSTEM` reports. */
  systemId = "7000000000000000001"
  timeline = 1
  /** Whether the slot exists (`dropSlot` / `createSlot`). */
  slotExists = true
  /** How many replication connection attempts still fail (as if the server were down). */
  refuseConnections = 0
  /** The clock time (ms) of every replication connection attempt. */
  readonly connectionAttempts: Array<number> = []
  /**
   * What `pg_log_standby_snapshot()` does when a stop asks for it: "unavailable" (a server before 16, or a role
   * without the grant), "keepalive" (the log is written and the slot then sends a keepalive past it, as a
   * walsender does once it has decoded it) or "silent" (written, and nothing sent).
   */
  runningTransactionsLog: "unavailable" | "keepalive" | "silent" = "unavailable"
  /** The position of every log of the running transactions written. */
  readonly runningTransactionsLogs: Array<Lsn> = []

  private readonly tables = new Map<string, FakeTable>()
  private readonly committed: Array<Transaction> = []
  private readonly slotEvents: Array<SlotEvent> = []
  private readonly inProgress = new Set<number>()
  private readonly hidden = new Map<number, Array<() => void>>()
  private pausedAfter: Lsn | undefined
  private broken = Deferred.unsafeMake<never, ReplicationError>(FiberId.none)
  private confirmed: Lsn = 0n
  private nextXid = 1000
  private wal: Lsn = 0x1000000n
  private lastEnd: Lsn = 0n
  private paused = false
  private lockHolder: string | undefined
  private changed = Deferred.unsafeMake<void>(FiberId.none)

  constructor(tables: ReadonlyArray<TableInfo>) {
    for (const info of tables) {
      this.tables.set(info.name, {
        info,
        rows: new Map(),
        relation: {
          oid: info.oid,
          schema: info.schema,
          name: info.name,
          replicaIdentity: "f",
          columns: info.columns.map((c) => ({ name: c.name, typeOid: c.typeOid, typeMod: c.typeMod, isKey: true }))
        }
      })
    }
  }

  /** The catalog: every table this database has. */
  get catalog(): ReadonlyArray<TableInfo> {
    return [...this.tables.values()].map((t) => t.info)
  }

  /** The slot's `confirmed_flush_lsn`. */
  get confirmedFlush(): Lsn {
    return this.confirmed
  }

  /** Every committed transaction, in commit order. */
  get transactions(): ReadonlyArray<Transaction> {
    return this.committed
  }

  record(event: string): void {
    this.events.push(event)
  }

  /** The current rows of a table. */
  rows(table: string): ReadonlyArray<Row> {
    return [...this.table(table).rows.values()]
  }

  /** The catalog entry of a table. */
  info(table: string): TableInfo {
    return this.table(table).info
  }

  /**
   * Commits `writes` as one transaction and appends it to the slot. With
   * `adjacent`, its commit LSN is the previous commit's end LSN, as Postgres
   * does when this transaction's data was written before the previous commit.
   * With `xid`, it is that transaction (from `begin`); with `hidden` as well,
   * its commit record is in the WAL but snapshots still see it in progress
   * (a synchronous-replication wait) until `reveal`.
   */
  commit(
    writes: ReadonlyArray<FakeWrite>,
    options: { readonly adjacent?: boolean; readonly xid?: number; readonly hidden?: boolean } = {}
  ): Effect.Effect<Transaction> {
    return Effect.sync(() => {
      const changes: Array<Change> = []
      // What the writes do to the rows snapshots see: at once, or when a hidden commit is revealed.
      const apply: Array<() => void> = []
      for (const w of writes) {
        const t = this.table(w.table)
        const pk = t.info.pk[0]!
        if (w.kind === "truncate") {
          apply.push(() => t.rows.clear())
          changes.push({ kind: "truncate", relations: [t.relation] })
          continue
        }
        if (w.kind === "delete") {
          const old = t.rows.get(w.key)
          if (old === undefined) throw new Error(`no row ${w.key} in ${w.table}`)
          apply.push(() => t.rows.delete(w.key))
          changes.push({ kind: "delete", relation: t.relation, old })
          continue
        }
        const key = w.row[pk]
        if (typeof key !== "string") throw new Error(`a ${w.kind} into ${w.table} needs a text ${pk}`)
        const old = t.rows.get(key)
        const row = { ...old, ...w.row }
        apply.push(() => t.rows.set(key, row))
        if (w.kind === "insert") changes.push({ kind: "insert", relation: t.relation, new: row })
        else changes.push({ kind: "update", relation: t.relation, old, new: row })
      }
      if (options.hidden === true) {
        if (options.xid === undefined) throw new Error("a hidden commit needs the xid of a transaction in progress")
        this.hidden.set(options.xid, apply)
      } else {
        for (const f of apply) f()
      }
      const commitLsn = options.adjacent === true && this.lastEnd > 0n ? this.lastEnd : this.wal + WAL_GAP
      const endLsn = commitLsn + COMMIT_RECORD
      this.wal = endLsn
      this.lastEnd = endLsn
      let xid = this.nextXid++
      if (options.xid !== undefined) {
        if (!this.inProgress.has(options.xid)) throw new Error(`xid ${options.xid} is not in progress`)
        if (options.hidden !== true) this.inProgress.delete(options.xid)
        this.nextXid--
        xid = options.xid
      }
      const txn: Transaction = {
        xid,
        commitLsn,
        endLsn,
        commitTime: 0n,
        changes,
        relations: []
      }
      this.committed.push(txn)
      this.slotEvents.push(txn)
      this.notify()
      return txn
    })
  }

  /** A hidden commit becomes visible to snapshots. */
  reveal(xid: number): Effect.Effect<void> {
    return Effect.sync(() => {
      const apply = this.hidden.get(xid)
      if (apply === undefined) throw new Error(`xid ${xid} has no hidden commit`)
      this.hidden.delete(xid)
      this.inProgress.delete(xid)
      for (const f of apply) f()
    })
  }

  /** Starts a transaction that stays in progress (in `xip` of snapshots) until `commit(…, { xid })`. */
  begin(): number {
    const xid = this.nextXid++
    this.inProgress.add(xid)
    return xid
  }

  /** Sends a keepalive carrying the WAL position after `bytes` more of WAL no shape's table wrote. */
  keepalive(bytes = 0x1000n): Effect.Effect<Lsn> {
    return Effect.sync(() => {
      this.wal += bytes
      this.slotEvents.push({ kind: "position", lsn: this.wal })
      this.notify()
      return this.wal
    })
  }

  /** Writes a log of the running transactions (recorded as `running transactions: log asked for`); see `runningTransactionsLog`. */
  logRunningTransactions(): Effect.Effect<Lsn | undefined> {
    return Effect.sync(() => {
      this.record("running transactions: log asked for")
      if (this.runningTransactionsLog === "unavailable") return undefined
      this.wal += 0x100n
      const logged = this.wal
      this.runningTransactionsLogs.push(logged)
      if (this.runningTransactionsLog === "keepalive") {
        this.slotEvents.push({ kind: "position", lsn: logged })
        this.notify()
      }
      return logged
    })
  }

  /** Puts a poison pill in the slot: the stream that reads it dies with a defect, as a bug would make it. */
  poison(): Effect.Effect<void> {
    return Effect.sync(() => {
      this.slotEvents.push({ kind: "defect" })
      this.notify()
    })
  }

  /** Ends every open replication stream with a connection error, as a terminated walsender does. */
  breakStreams(): Effect.Effect<void> {
    return Effect.sync(() => {
      const old = this.broken
      this.broken = Deferred.unsafeMake<never, ReplicationError>(FiberId.none)
      Deferred.unsafeDone(
        old,
        Exit.fail(new ReplicationError({ reason: "Connection", message: "terminating connection due to administrator command" }))
      )
    })
  }

  /** One replication connection attempt: recorded, and refused while `refuseConnections` is above zero. */
  get connectReplication(): Effect.Effect<void, ReplicationError> {
    return Effect.flatMap(Clock.currentTimeMillis, (now) => {
      this.connectionAttempts.push(now)
      if (this.refuseConnections <= 0) return Effect.void
      this.refuseConnections--
      return Effect.fail(new ReplicationError({ reason: "Connection", message: "connection refused" }))
    })
  }

  /** Drops the slot: its position is gone. */
  dropSlot(): void {
    this.slotExists = false
  }

  /** Creates the slot anew: it starts at the current end of WAL. */
  createSlot(): void {
    if (this.slotExists) return
    this.slotExists = true
    this.confirmed = this.wal
  }

  /** What `pg_current_snapshot()` and `pg_current_wal_lsn()` say now: every committed transaction is visible. */
  snapshotInfo(rows: number): SnapshotInfo {
    const next = BigInt(this.nextXid)
    const xip = [...this.inProgress].sort((a, b) => a - b).map(BigInt)
    return { xmin: xip[0] ?? next, xmax: next, xip, lsn: this.wal, rows }
  }

  /**
   * One connection's stream: from the first transaction whose commit LSN is at
   * or above `confirmed_flush_lsn` when the stream starts, then live commits.
   * Nothing is sent while the slot is paused.
   */
  stream(): Stream.Stream<ReplicationEvent, ReplicationError> {
    return Stream.suspend(() => {
      const self = this
      let i = this.slotEvents.findIndex((e) => e.kind === undefined && e.commitLsn >= this.confirmed)
      if (i < 0) i = this.slotEvents.length
      const pull: Effect.Effect<ReplicationEvent> = Effect.suspend(function loop(): Effect.Effect<ReplicationEvent> {
        const next = self.slotEvents[i]
        const held = self.paused &&
          (self.pausedAfter === undefined || next === undefined || next.kind !== undefined || next.commitLsn > self.pausedAfter)
        if (!held && next !== undefined) {
          i++
          const event = next
          if (event.kind === "defect") return Effect.dieMessage("a defect in the replication stream")
          return Effect.succeed(event)
        }
        return Effect.flatMap(Deferred.await(self.changed), loop)
      })
      return Stream.repeatEffect(pull).pipe(Stream.interruptWhen(Deferred.await(this.broken)))
    })
  }

  /** Records an ack; `confirmed_flush_lsn` only moves forward. */
  ack(endLsn: Lsn): void {
    this.acks.push(endLsn)
    if (!this.dropAcks && endLsn > this.confirmed) this.confirmed = endLsn
    this.notify()
  }

  /** Waits until `confirmed_flush_lsn` reaches `lsn`. */
  awaitConfirmed(lsn: Lsn): Effect.Effect<void> {
    const self = this
    return Effect.suspend(function loop(): Effect.Effect<void> {
      return self.confirmed >= lsn ? Effect.void : Effect.flatMap(Deferred.await(self.changed), loop)
    })
  }

  /** Waits until the slot has received an ack of `lsn` or above (whether or not it counted). */
  awaitAck(lsn: Lsn): Effect.Effect<void> {
    const self = this
    return Effect.suspend(function loop(): Effect.Effect<void> {
      return self.acks.some((a) => a >= lsn) ? Effect.void : Effect.flatMap(Deferred.await(self.changed), loop)
    })
  }

  /**
   * Stops (or resumes) sending transactions on every connection; with `after`, transactions with commit LSNs
   * up to it are still sent.
   */
  pause(paused: boolean, options: { readonly after?: Lsn } = {}): Effect.Effect<void> {
    return Effect.sync(() => {
      this.paused = paused
      this.pausedAfter = options.after
      this.notify()
    })
  }

  /** Takes the slot's advisory lock for `holder`, waiting while another holder has it. */
  lock(holder: string): Effect.Effect<void> {
    const self = this
    return Effect.suspend(function loop(): Effect.Effect<void> {
      if (self.lockHolder === undefined) {
        self.lockHolder = holder
        return Effect.void
      }
      return Effect.flatMap(Deferred.await(self.changed), loop)
    })
  }

  /** Releases the advisory lock if `holder` has it. */
  unlock(holder: string): Effect.Effect<void> {
    return Effect.sync(() => {
      if (this.lockHolder !== holder) return
      this.lockHolder = undefined
      this.notify()
    })
  }

  /** Who holds the advisory lock. */
  get lockedBy(): string | undefined {
    return this.lockHolder
  }

  private table(name: string): FakeTable {
    const t = this.tables.get(name)
    if (t === undefined) throw new Error(`no table ${name}`)
    return t
  }

  private notify(): void {
    const old = this.changed
    this.changed = Deferred.unsafeMake<void>(FiberId.none)
    Deferred.unsafeDone(old, Exit.void)
  }
}
