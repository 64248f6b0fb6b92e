import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as Schedule from "effect/Schedule"
import type { Change, Row, Transaction } from "../domain/Change.js"
import { LogOffset } from "../domain/LogOffset.js"
import { rowKey } from "../domain/RowKey.js"
import type { Lsn } from "../domain/Lsn.js"
import type { RegistryError, StorageError, TableAbsent } from "../domain/errors.js"
import { refused } from "../postgres/PgPool.js"
import type { Snapshot } from "../postgres/Snapshot.js"
import type { FlushTracker } from "../replication/FlushTracker.js"
import type { Delivery } from "../replication/ShapeLogCollector.js"
import { LogLines } from "../storage/LogLines.js"
import type { ShapeLog } from "../storage/ShapeLogStorage.js"
import { closeTransaction, finishTransaction, makeShapeEncoder, type PendingEntry, type ShapeEncoder, transactionHeaders } from "./LogItems.js"
import { type LoggedTransaction, type Materializer, MaterializerInvariant, parseLogLines } from "./Materializer.js"
import type { Shape } from "./Shape.js"
import type { RecordedMove, SnapshotMark } from "./ShapeStatus.js"
import { type DependencyLink, heldKeys, moveKept, readLog, restoredMoves, SubqueryState } from "./Subqueries.js"
import { visibleInSnapshot, widenXid } from "./Visibility.js"

/** One routed transaction waiting in a consumer's queue, or a wake-up (`txn` undefined) to load its materializer. */
export interface Work {
  readonly txn: Transaction | undefined
  readonly delivery: Delivery | undefined
  /** For a shape with subqueries: per dependency, the last transaction routed to it with this one. */
  readonly needs?: ReadonlyArray<Lsn> | undefined
}

/**
 * The most work a consumer takes for one batch (one append, one commit). Large: what queued up while the last
 * commit ran goes in the next one, so that a long catch-up pays few rounds of fsyncs.
 */
const MAX_BATCH = 16_384
/**
 * The most work a consumer that was waiting takes for its first batch, encoded in one go before its commit starts.
 * Small: what queued up beyond it (a restored shape meeting a catch-up) is encoded while that commit runs, a slice
 * at a time, so the commit's writes start at once and the event loop is never held for a whole queue. A batch that
 * wrote nothing (transactions the log or the snapshot already holds, sent again after a restart) has no commit to
 * encode the rest during: the next batch is taken whole.
 */
const FIRST_BATCH = 1_024
/**
 * How long a batch encoded during a commit runs between turns of the event loop (checked every `ENCODE_CHECK`
 * transactions): long enough that encoding keeps up with the reading of the slot, which takes its own turns, and
 * short enough that the commit in flight moves on between slices.
 */
const ENCODE_SLICE_MS = 4
const ENCODE_CHECK = 32

const NO_WORK: ReadonlyArray<Work> = []
/** What `entries` is between batches: a consumer waiting for work holds no lines, nor their buffer. Never added to. */
const NO_LINES = new LogLines()

/** Resumes after the event loop's next turn: I/O callbacks waiting meanwhile run first. */
const nextTurn: Effect.Effect<void> = Effect.async<void>((resume) => {
  const timer = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(timer))
})

/** A batch encoded while the previous one was being committed, for a shape without subqueries or a materializer. */
interface Encoded {
  /** How much work it took. The work itself is not kept: its transactions are garbage once encoded. */
  readonly taken: number
  readonly entries: LogLines
  readonly lastCommit: Lsn
  readonly passedSnapshot: boolean
  /** Why the shape must be invalidated, when some work it took says so: nothing is taken after that work. */
  readonly invalidated: string | undefined
}

/**
 * A consumer's mailbox: work in commit order, offered a batch at a time and taken a batch at a time, with no
 * per-item cost beyond an array slot. One reader.
 */
export class WorkQueue {
  private items: Array<Work> = []
  private reader: Deferred.Deferred<void> | undefined = undefined

  offer(work: Work): void {
    this.items.push(work)
    this.wake()
  }

  offerAll(works: ReadonlyArray<Work>): void {
    if (this.items.length === 0) this.items = works.slice()
    else for (const w of works) this.items.push(w)
    this.wake()
  }

  /** Between one and `max` items in order, once there is one. */
  take(max: number): Effect.Effect<ReadonlyArray<Work>> {
    return Effect.suspend(() => {
      if (this.items.length === 0) {
        const waiting = this.reader ?? (this.reader = Deferred.unsafeMake<void>(FiberId.none))
        return Effect.flatMap(Deferred.await(waiting), () => this.take(max))
      }
      if (this.items.length <= max) {
        const all = this.items
        this.items = []
        return Effect.succeed(all)
      }
      return Effect.succeed(this.items.splice(0, max))
    })
  }

  /**
   * Completes once there is work, `done()` holds, or on the next `nudge`. Both are looked at in the step that
   * starts the wait: a `nudge` that comes after the look finds the wait to wake, never a reader about to wait.
   */
  awaitWorkUnless(done: () => boolean): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.items.length > 0 || done()) return Effect.void
      return Deferred.await(this.reader ?? (this.reader = Deferred.unsafeMake<void>(FiberId.none)))
    })
  }

  /** Wakes whoever waits for work, with or without any: the reader looks again. */
  nudge(): void {
    this.wake()
  }

  /** Up to `max` items in order that are already there, without waiting: empty when there are none. */
  takeNow(max: number): ReadonlyArray<Work> {
    if (this.items.length === 0) return NO_WORK
    if (this.items.length <= max) {
      const all = this.items
      this.items = []
      return all
    }
    return this.items.splice(0, max)
  }

  private wake(): void {
    const waiting = this.reader
    if (waiting === undefined) return
    this.reader = undefined
    Deferred.unsafeDone(waiting, Effect.void)
  }
}

/** How a consumer takes part in subquery shapes: reading its dependencies, and being read. */
export interface SubqueryRole {
  /** The shapes its subqueries read (none for a plain shape). */
  readonly links: ReadonlyArray<DependencyLink>
  /** This shape's materializer when other shapes read it: loaded by the consumer, then fed what it writes. */
  readonly own: () => Materializer | undefined
  /** The materializer is loaded: dependents may read it. */
  readonly loaded: (materializer: Materializer) => Effect.Effect<void>
  /** Every transaction up to `lsn` routed to the shape is durable in its log (or needed nothing written). */
  readonly durable: (lsn: Lsn) => void
  /** Transactions at or below it will not come again: the commit LSN the stack started from. */
  readonly replayFloor: Lsn
  readonly rows: Snapshot["Type"]["rows"]
  /** The registry's record of the shape's moves (`RecordedMove`). */
  readonly moves: {
    readonly load: Effect.Effect<ReadonlyArray<RecordedMove>, RegistryError | TableAbsent>
    readonly record: (moves: ReadonlyArray<RecordedMove>) => Effect.Effect<void, RegistryError | TableAbsent>
    readonly forget: (lsns: ReadonlyArray<Lsn>) => Effect.Effect<void, RegistryError | TableAbsent>
  }
}

/** Why a consumer stopped on its own: its shape must be removed. */
export interface Invalidation {
  readonly handle: Shape["handle"]
  readonly reason: string
}

export { visibleInSnapshot, widenXid } from "./Visibility.js"

const NOTHING_WRITTEN = { old: false, new: false } as const

/**
 * Which sides of a change of the shape's own rows a move already wrote, from a snapshot holding the change's
 * transaction (an insert has only a new side, a delete an old one; an update without its old row counts as one
 * row). For each side written, the change goes to `ahead` as the shape's row before and after it (each side only
 * if the shape's clause holds for it at this commit, when `judged`): what Postgres moved in the shape with this
 * transaction, which the shapes reading this one must see move here.
 */
const writtenAhead = (
  sub: SubqueryState,
  change: Exclude<Change, { readonly kind: "truncate" }>,
  ahead: Array<readonly [Row | undefined, Row | undefined]>,
  judged: boolean
): { readonly old: boolean; readonly new: boolean } => {
  const table = sub.shape.table
  // Unjudged (a transaction sent again, whose dependencies may not be at it yet), both sides are reported.
  const inShape = (row: Row | undefined) => (row !== undefined && (!judged || sub.matches(row)) ? row : undefined)
  switch (change.kind) {
    case "insert": {
      if (!sub.written(rowKey(table, change.new))) return NOTHING_WRITTEN
      ahead.push([undefined, inShape(change.new)])
      return { old: true, new: true }
    }
    case "delete": {
      if (!sub.written(rowKey(table, change.old))) return NOTHING_WRITTEN
      ahead.push([inShape(change.old), undefined])
      return { old: true, new: true }
    }
    case "update": {
      const old = change.old
      // Unchanged TOASTed values are absent from the new row.
      const after = old === undefined ? change.new : { ...old, ...definedValues(change.new) }
      if (old === undefined) {
        if (!sub.written(rowKey(table, change.new))) return NOTHING_WRITTEN
        // Only the row after is known.
        ahead.push([undefined, inShape(after)])
        return { old: true, new: true }
      }
      const written = { old: sub.written(rowKey(table, old)), new: sub.written(rowKey(table, change.new)) }
      if (!judged) {
        // Whether each side is in the shape is unknown: each is reported on its own, so that neither is taken for
        // a row that stayed in unchanged.
        if (written.old) ahead.push([old, undefined])
        if (written.new) ahead.push([undefined, after])
      } else if (written.old || written.new) {
        ahead.push([written.old ? inShape(old) : undefined, written.new ? inShape(after) : undefined])
      }
      return written
    }
  }
}

const definedValues = (row: Row): Row => {
  const out: Row = {}
  for (const column in row) if (row[column] !== undefined) out[column] = row[column]
  return out
}

/** The first wait after a failed write, doubled up to the last one while writes keep failing. */
const RETRY_FIRST = Duration.millis(100)
const RETRY_MAX = Duration.seconds(10)
const RETRY = Schedule.exponential(RETRY_FIRST).pipe(Schedule.union(Schedule.spaced(RETRY_MAX)))

/**
 * The loop that owns one shape's log: takes routed transactions in order,
 * drops replays (commit LSN at or below its durable offset) and transactions
 * its snapshot already holds, encodes the rest and appends them with one
 * commit (fsync) per batch — group commit — then reports the batch durable to
 * the flush tracker.
 *
 * Snapshot visibility is tested for every transaction until the first whose
 * xid is at or above the snapshot's xmax (DESIGN.md, "Shape creation"): a
 * transaction in progress at snapshot time can commit earlier in the WAL than
 * one the snapshot holds. That point is recorded (its commit LSN,
 * `pastSnapshotAt`): after a restart, the transactions from it on are not
 * tested, and those before it that come again are tested again (the snapshot
 * may hold them while the log shows nothing of them).
 *
 * Faults stay with the shape. Files found damaged (or gone) invalidate it; a
 * write that fails (a full disk) is retried with backoff on the log reopened,
 * holding the acknowledgement meanwhile, while other shapes go on. It returns
 * when the shape must go (damaged files, a truncate, changed columns), after
 * reporting that through `invalidate`; the batch holding that transaction is
 * not reported durable, so acknowledgements wait for the removal.
 */
export const runConsumer = (options: {
  readonly shape: Shape
  /** Opens (or reopens, after a failed write) the shape's log. */
  readonly openLog: Effect.Effect<ShapeLog, StorageError>
  readonly queue: WorkQueue
  /** Where the shape's snapshot ended; waits while it is being taken. */
  readonly snapshot: Effect.Effect<SnapshotMark>
  readonly tracker: FlushTracker["Type"]
  readonly invalidate: (reason: string) => Effect.Effect<void>
  /** Records durably where the shape passed its snapshot; a failure is only logged (the test would run again). */
  readonly markPastSnapshot: (at: Lsn) => Effect.Effect<void>
  readonly subqueries?: SubqueryRole | undefined
}): Effect.Effect<void> => {
  const { shape, queue, tracker } = options
  const role = options.subqueries
  let encoder: ShapeEncoder = makeShapeEncoder(shape)
  const handle = shape.handle
  const tableOid = shape.table.oid

  /** A storage failure the shape cannot get past: its reason for the invalidation, or undefined to retry. */
  const fatalFor = (error: StorageError): string | undefined => {
    if (error.reason === "Corrupt") return `its files are damaged (${error.message})`
    if (error.reason === "Removed") return "its files are missing"
    return undefined
  }

  return Effect.gen(function*() {
    const mark = yield* options.snapshot
    let log: ShapeLog | undefined = undefined
    let failures = 0

    /** Waits before the next attempt, then forgets the failed log: the next one is recovered from disk. */
    const backOff = (error: StorageError) =>
      Effect.gen(function*() {
        const wait = Duration.min(Duration.times(RETRY_FIRST, 2 ** Math.min(failures, 16)), RETRY_MAX)
        if (failures === 0) {
          yield* Effect.logWarning(`shape ${handle}: cannot write its log (${error.message}); retrying, its acknowledgement waits`)
        }
        failures++
        log = undefined
        yield* Effect.sleep(wait)
      })

    /** Runs a registry call the consumer cannot go on without: retried while the registry fails, a stop once it is closed. */
    const persistently = <A>(call: Effect.Effect<A, RegistryError | TableAbsent>): Effect.Effect<A> => {
      let attempts = 0
      return call.pipe(
        Effect.tapError((e) =>
          e._tag === "RegistryError" && attempts++ === 0
            ? Effect.logWarning(`shape ${handle}: the registry failed; retrying, its acknowledgement waits`, e)
            : Effect.void
        ),
        Effect.retry({ schedule: RETRY, while: (e) => e._tag === "RegistryError" }),
        Effect.catchTag("TableAbsent", () => Effect.interrupt),
        // The schedule never ends: a registry error cannot remain.
        Effect.orDie
      )
    }

    /** Forgets moves that no longer matter; one left behind only costs a row (it holds back no transaction). */
    const forgetMoves = (lsns: ReadonlyArray<Lsn>): Effect.Effect<void> =>
      role!.moves.forget(lsns).pipe(
        Effect.catchAll((e) =>
          e._tag === "TableAbsent" ? Effect.void : Effect.logWarning(`shape ${handle}: could not forget moves of its subqueries`, e)
        )
      )

    /** The log, opened if needed; `Left` with the invalidation reason when the files cannot be used. */
    const currentLog: Effect.Effect<Either.Either<ShapeLog, string>> = Effect.suspend(function attempt(): Effect.Effect<
      Either.Either<ShapeLog, string>
    > {
      if (log !== undefined) return Effect.succeed(Either.right(log))
      return options.openLog.pipe(
        Effect.map((opened) => {
          log = opened
          return Either.right(opened)
        }),
        Effect.catchAll((error) => {
          if (error.reason === "Closed") return Effect.interrupt
          const fatal = fatalFor(error)
          return fatal !== undefined ? Effect.succeed(Either.left(fatal)) : Effect.zipRight(backOff(error), attempt())
        })
      )
    })

    /** The log's committed transactions; `Left` with the invalidation reason when its files cannot be read. */
    const readOwnLog = (log: ShapeLog): Effect.Effect<Either.Either<Array<LoggedTransaction>, string>> =>
      readLog(log).pipe(
        Effect.map((t) => Either.right(t)),
        Effect.catchAll((error) => {
          if (error.reason === "Closed") return Effect.interrupt
          const fatal = fatalFor(error)
          return fatal !== undefined ? Effect.succeed(Either.left(fatal)) : Effect.zipRight(backOff(error), readOwnLog(log))
        })
      )

    const first = yield* currentLog
    if (Either.isLeft(first)) return yield* options.invalidate(first.left)
    /** The commit LSN from which transactions are past the snapshot, once met (`SnapshotMark.pastSnapshotAt`). */
    let pastSnapshotAt = mark.pastSnapshotAt

    /** The lines of the batch being written. */
    let entries = NO_LINES
    const pending: Array<PendingEntry> = []
    /** The commit LSN of the last transaction taken in this run. */
    let lastTaken = 0n
    /** The xids of the last transactions written: a move's query must see them all. */
    const recentXids: Array<number> = []

    // A shape with subqueries reads its dependencies' materializers and decides by the rows it holds.
    let sub: SubqueryState | undefined
    if (role !== undefined && role.links.length > 0) {
      const materializers = yield* Effect.either(Effect.forEach(role.links, (l) => l.materializer))
      if (Either.isLeft(materializers)) return yield* options.invalidate(`the shape its subquery reads (${materializers.left.handle}) is gone`)
      const recorded = yield* persistently(role.moves.load)
      const durableLsn = first.right.latestOffset().tx
      // Only keys are kept: the parsed log would stay reachable from this generator for the consumer's life.
      const restored = yield* Effect.map(
        readOwnLog(first.right),
        Either.map((logged) => ({ held: heldKeys(logged), moves: restoredMoves(logged, recorded, durableLsn, role.replayFloor) }))
      )
      if (Either.isLeft(restored)) return yield* options.invalidate(restored.left)
      // A move recorded past the log's end lost its rows with a crash (or, writing none, its transaction comes
      // again): it is queried again.
      const lost = recorded.filter((m) => !moveKept(m, durableLsn, role.replayFloor)).map((m) => m.lsn)
      if (lost.length > 0) yield* forgetMoves(lost)
      sub = new SubqueryState(shape, restored.right.held, role.links, materializers.right, role.rows, restored.right.moves)
      encoder = makeShapeEncoder(shape, { held: sub.held, matches: sub.matches })
    }

    /** Loads this shape's own materializer when one is wanted and not loaded: at a batch boundary, all it handled is in the log. */
    const loadOwn = (log: ShapeLog): Effect.Effect<string | undefined> =>
      Effect.gen(function*() {
        const own = role?.own()
        if (own === undefined || own.loaded) return undefined
        const logged = yield* readOwnLog(log)
        if (Either.isLeft(logged)) return logged.left
        try {
          own.load(logged.right, lastTaken > role!.replayFloor ? lastTaken : role!.replayFloor)
        } catch (error) {
          if (error instanceof MaterializerInvariant) return `its rows contradict its log: ${error.message}`
          throw error
        }
        own.loaded = true
        yield* role!.loaded(own)
        return undefined
      })

    /** Handles a transaction the log already holds or the snapshot already has: nothing is written. */
    const skip = (txn: Transaction, delivery: Delivery | undefined) => {
      const own = role?.own()
      if (own?.loaded === true) {
        own.catchUp(txn.commitLsn)
        // Sent again after a restart: the shapes reading this one are told again what moved ahead of its log.
        if (sub !== undefined && delivery !== undefined) {
          sub.at = txn.commitLsn
          sub.begin(txn.xid)
          if (sub.holding) {
            const ahead: Array<readonly [Row | undefined, Row | undefined]> = []
            for (const i of delivery.changes) {
              const change = txn.changes[i]!
              if (change.kind !== "truncate" && change.relation.oid === tableOid) writtenAhead(sub, change, ahead, false)
            }
            if (ahead.length > 0) own.touch(txn.commitLsn, ahead)
          }
        }
      }
      sub?.handled(txn.commitLsn)
    }
    /** Some transaction was applied since the start: a later one in the snapshot may still move rows. */
    let applied = false

    /** Feeds this shape's materializer the messages just written for a transaction; a contradiction is returned. */
    const feedOwn = (own: Materializer, lsn: Lsn, texts: ReadonlyArray<string>): string | undefined => {
      try {
        if (texts.length === 0) own.catchUp(lsn)
        else {
          const logged: Array<LoggedTransaction> = []
          parseLogLines(texts, logged)
          own.apply({ lsn, operations: logged.flatMap((t) => t.operations) })
        }
      } catch (error) {
        if (error instanceof MaterializerInvariant) return `its subquery values broke an invariant: ${error.message}`
        throw error
      }
      return undefined
    }

    /** Whether a transaction is skipped as already in the snapshot (testing until the first xid ≥ xmax). */
    const inSnapshot = (txn: Transaction): boolean => {
      if (pastSnapshotAt !== undefined && txn.commitLsn >= pastSnapshotAt) return false
      if (widenXid(txn.xid, mark) >= mark.xmax) {
        if (pastSnapshotAt === undefined) {
          pastSnapshotAt = txn.commitLsn
          passedSnapshot = true
        }
        return false
      }
      return visibleInSnapshot(txn.xid, mark)
    }

    const encodeChanges = (txn: Transaction, delivery: Delivery, txHeaders: string) => {
      pending.length = 0
      for (const i of delivery.changes) {
        const change = txn.changes[i]!
        if (change.kind !== "truncate" && change.relation.oid !== tableOid) continue
        encoder.encode(change, txn.commitLsn, i * 2, txHeaders, pending)
      }
    }

    /** Appends a transaction's lines for the shape to `out`, the last one marked. */
    const appendChanges = (txn: Transaction, delivery: Delivery, out: LogLines) => {
      const from = out.count
      const txHeaders = transactionHeaders(txn.xid, txn.commitLsn)
      for (const i of delivery.changes) {
        const change = txn.changes[i]!
        if (change.kind !== "truncate" && change.relation.oid !== tableOid) continue
        encoder.append(change, txn.commitLsn, i * 2, txHeaders, out)
      }
      closeTransaction(out, from)
    }

    /** The batch's entries for a shape that reads or is read through subqueries; a reason to invalidate, if any. */
    const encodeLinked = (batch: ReadonlyArray<Work>, durableAt: LogOffset) =>
      Effect.gen(function*() {
        for (const { delivery, txn, needs } of batch) {
          if (txn === undefined || delivery === undefined) continue
          lastCommit = txn.commitLsn
          lastTaken = txn.commitLsn
          const replayed = txn.commitLsn <= durableAt.tx
          // A transaction the snapshot holds has its changes there; its moves too, unless one the snapshot does not
          // hold came first in the WAL (mixed synchronous_commit) and was evaluated with the values before them.
          const held = !replayed && inSnapshot(txn)
          if (replayed || (held && !(sub !== undefined && applied))) {
            skip(txn, replayed ? delivery : undefined)
            continue
          }
          if (!held) applied = true
          const txHeaders = transactionHeaders(txn.xid, txn.commitLsn)
          if (sub !== undefined) {
            const ready = yield* Effect.either(sub.awaitDependencies(needs))
            if (Either.isLeft(ready)) return `the shape its subquery reads (${ready.left.handle}) is gone`
            sub.at = txn.commitLsn
          }
          ahead.length = 0
          if (sub === undefined) encodeChanges(txn, delivery, txHeaders)
          else {
            sub.begin(txn.xid)
            pending.length = 0
            for (const i of held ? [] : delivery.changes) {
              const change = txn.changes[i]!
              if (change.kind === "truncate" || change.relation.oid !== tableOid) continue
              // A row a move wrote from a snapshot holding this transaction already has its change. An update that
              // changes the key has two rows: the side the move did not write is still applied.
              const written = sub.holding ? writtenAhead(sub, change, ahead, true) : NOTHING_WRITTEN
              if (written.old && written.new) continue
              if (change.kind === "update" && change.old !== undefined && (written.old || written.new)) {
                if (!written.old) encoder.encode({ kind: "delete", relation: change.relation, old: change.old }, txn.commitLsn, i * 2, txHeaders, pending)
                if (!written.new) encoder.encode({ kind: "insert", relation: change.relation, new: change.new }, txn.commitLsn, i * 2 + 1, txHeaders, pending)
                continue
              }
              encoder.encode(change, txn.commitLsn, i * 2, txHeaders, pending)
            }
          }
          if (sub !== undefined) {
            recentXids.push(txn.xid)
            if (recentXids.length > 64) recentXids.shift()
            const moves = sub.movesAt(txn.commitLsn)
            if (moves !== undefined) {
              // Postgres unreachable or busy: retried, the acknowledgement waits. A query Postgres refuses (a column
              // dropped or retyped since) will never succeed: the shape goes.
              const moved = yield* sub.reconcile(moves, recentXids, encoder, txn.commitLsn, txn.changes.length * 2, txHeaders, pending, ahead).pipe(
                Effect.tapError((e) =>
                  refused(e) ? Effect.void : Effect.logWarning(`shape ${handle}: the query for a move of its subquery values failed; retrying`, e)
                ),
                Effect.retry({ schedule: RETRY, while: (e) => !refused(e) }),
                Effect.either
              )
              if (Either.isLeft(moved)) return `the query for a move of its subquery values was refused: ${moved.left.message}`
            }
          }
          const own = role?.own()
          if (own?.loaded === true) {
            const texts: Array<string> = []
            finishTransaction(pending, entries, texts)
            const contradiction = feedOwn(own, txn.commitLsn, texts)
            if (contradiction !== undefined) return contradiction
          } else {
            finishTransaction(pending, entries)
          }
          if (ahead.length > 0 && own?.loaded === true) own.touch(txn.commitLsn, ahead)
          sub?.handled(txn.commitLsn)
        }
        return undefined
      })

    let lastCommit = 0n
    let passedSnapshot = false
    /** The rows of the transaction being encoded that moves wrote ahead of it (`writtenAhead`). */
    const ahead: Array<readonly [Row | undefined, Row | undefined]> = []

    /** Whether batches are encoded alone, with no subquery or materializer state to keep in step. */
    const plain = () => sub === undefined && role?.own() === undefined
    /** The next batch, encoded while the last commit ran; written as soon as that commit is done. */
    let encoded: Encoded | undefined = undefined

    /**
     * Takes the work already queued and encodes it after `into` (what was encoded before it during the same
     * commit), a slice at a time so that the commit in flight moves on between slices. Nothing of it is written: it
     * waits for the commit before it. Undefined when there is no work, or work the plain path does not handle.
     */
    const encodeAhead = (durableAt: LogOffset, into: Encoded | undefined): Effect.Effect<Encoded | undefined> =>
      Effect.gen(function*() {
        if (!plain() || into?.invalidated !== undefined) return into
        const room = MAX_BATCH - (into?.taken ?? 0)
        const batch = room > 0 ? queue.takeNow(room) : NO_WORK
        if (batch.length === 0) return into
        const out = into?.entries ?? new LogLines()
        const current = { lastCommit, passedSnapshot }
        lastCommit = into?.lastCommit ?? 0n
        passedSnapshot = into?.passedSnapshot ?? false
        let invalidated: string | undefined
        let sliceStart = performance.now()
        for (let i = 0; i < batch.length; i++) {
          const { delivery, txn } = batch[i]!
          invalidated ??= delivery?.invalidated
          if (invalidated !== undefined || txn === undefined || delivery === undefined) continue
          lastCommit = txn.commitLsn
          lastTaken = txn.commitLsn
          if (txn.commitLsn > durableAt.tx && !inSnapshot(txn)) appendChanges(txn, delivery, out)
          if (i % ENCODE_CHECK === ENCODE_CHECK - 1 && performance.now() - sliceStart >= ENCODE_SLICE_MS) {
            yield* nextTurn
            sliceStart = performance.now()
          }
        }
        const next: Encoded = { taken: (into?.taken ?? 0) + batch.length, entries: out, lastCommit, passedSnapshot, invalidated }
        lastCommit = current.lastCommit
        passedSnapshot = current.passedSnapshot
        return next
      })

    /**
     * Encodes the work that arrives while a commit runs, until it is done (`committed()`): what queued up meanwhile
     * goes in the next commit whole, so that a burst costs one round of fsyncs per commit, not per `MAX_BATCH`.
     */
    const encodeWhileCommitting = (durableAt: LogOffset, committed: () => boolean): Effect.Effect<Encoded | undefined> =>
      Effect.suspend(function gather(into: Encoded | undefined = undefined): Effect.Effect<Encoded | undefined> {
        return Effect.flatMap(encodeAhead(durableAt, into), (next) => {
          if (committed() || !plain() || next?.invalidated !== undefined || (next?.taken ?? 0) >= MAX_BATCH) {
            return Effect.succeed(next)
          }
          return Effect.zipRight(queue.awaitWorkUnless(committed), Effect.suspend(() => (committed() ? Effect.succeed(next) : gather(next))))
        })
      })

    /** Whether the last batch wrote nothing (see `FIRST_BATCH`). */
    let wroteNothing = false
    for (;;) {
      let durableAt: LogOffset | undefined
      const early = encoded
      encoded = undefined
      let batch = early === undefined ? yield* queue.take(plain() && !wroteNothing ? FIRST_BATCH : MAX_BATCH) : NO_WORK
      // A truncate or a change of columns: nothing after it fits the shape, and its removal drops the rest.
      const invalidated = early !== undefined
        ? early.invalidated
        : batch.find(({ delivery }) => delivery?.invalidated !== undefined)?.delivery!.invalidated
      if (invalidated !== undefined) return yield* options.invalidate(invalidated)
      if (early !== undefined) {
        // Encoded against a durable offset no later than the log's now; the log skips what it already holds.
        lastCommit = early.lastCommit
        passedSnapshot = early.passedSnapshot
        entries = early.entries
      } else {
        entries = new LogLines()
        lastCommit = 0n
        passedSnapshot = false
      }

      for (;;) {
        const opened = yield* currentLog
        if (Either.isLeft(opened)) return yield* options.invalidate(opened.left)
        const target = opened.right
        if (early !== undefined && durableAt === undefined) durableAt = target.latestOffset()
        if (durableAt === undefined) {
          const notLoaded = yield* loadOwn(target)
          if (notLoaded !== undefined) return yield* options.invalidate(notLoaded)
          durableAt = target.latestOffset()
          if (sub !== undefined || role?.own() !== undefined) {
            const contradiction = yield* encodeLinked(batch, durableAt)
            if (contradiction !== undefined) return yield* options.invalidate(contradiction)
          } else {
            for (const { delivery, txn } of batch) {
              if (txn === undefined || delivery === undefined) continue
              lastCommit = txn.commitLsn
              lastTaken = txn.commitLsn
              if (txn.commitLsn <= durableAt.tx || inSnapshot(txn)) continue
              appendChanges(txn, delivery, entries)
            }
          }
          // Encoded once: a write tried again writes the same entries, and the transactions are garbage now.
          batch = NO_WORK
        }
        // The moves whose rows the batch holds are recorded first: a log holding such rows always has their
        // record. A record whose rows a crash then loses is forgotten at the next start.
        if (sub !== undefined && sub.unrecordedMoves.length > 0) {
          yield* persistently(role!.moves.record(sub.unrecordedMoves))
          sub.movesRecorded()
        }
        wroteNothing = entries.count === 0
        // One step, never cut by a stop: the stack closing waits for the batch to be durable.
        const write = Effect.uninterruptible(
          entries.count === 0 ? Effect.void : Effect.zipRight(target.appendLines(entries), target.commit)
        ).pipe(Effect.either)
        let written: Either.Either<unknown, StorageError>
        if (entries.count > 0 && encoded === undefined && plain()) {
          // The next batch is encoded while this one's writes and syncs run; it is reported durable only after
          // its own commit, which follows this one.
          let committed = false
          const committing = yield* Effect.fork(Effect.ensuring(write, Effect.sync(() => {
            committed = true
            queue.nudge()
          })))
          // A stop meanwhile waits for the commit, as it waits for any write.
          const settle = Effect.onInterrupt(() => Fiber.await(committing))
          encoded = yield* Effect.zipRight(nextTurn, encodeWhileCommitting(durableAt, () => committed)).pipe(settle)
          written = yield* Fiber.join(committing).pipe(settle)
        } else {
          written = yield* write
        }
        if (Either.isRight(written)) {
          entries = NO_LINES
          break
        }
        const error = written.left
        if (error.reason === "Closed") return yield* Effect.interrupt
        const fatal = fatalFor(error)
        if (fatal !== undefined) return yield* options.invalidate(fatal)
        yield* backOff(error)
      }
      if (failures > 0) {
        yield* Effect.logInfo(`shape ${handle}: its log is written again after ${failures} failed attempt(s)`)
        failures = 0
      }
      if (passedSnapshot && pastSnapshotAt !== undefined) yield* options.markPastSnapshot(pastSnapshotAt)
      if (lastCommit > 0n) {
        yield* tracker.durable(handle, lastCommit)
        // Only now may readers go past these transactions: a shape is durable no later than the shapes that read
        // it, so after a crash none of them holds a move its dependency would write differently.
        role?.durable(lastCommit)
      }
      // After the acknowledgement, and only once it has passed the transaction that made a move obsolete: until
      // then a restart may send that transaction again, to this shape or to a shape reading it (which the move's
      // record tells what moved ahead). What is persisted counts, not what is durable in memory: the registry's
      // position is what a restart drops replays by. A record left behind costs a row and holds nothing back.
      if (sub !== undefined) {
        const obsolete = sub.takeObsolete(tracker.persistedProcessedLsn())
        if (obsolete.length > 0) yield* forgetMoves(obsolete)
      }
    }
  })
}
