import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import { ShapeDefinition } from "../domain/ShapeDefinition.js"
import type { ShapeHandle } from "../domain/ShapeHandle.js"
import type { Row } from "../domain/Change.js"
import type { TableInfo, TableRef } from "../domain/Table.js"
import {
  InvalidRequest,
  type PostgresError,
  type RegistryError,
  type StorageError,
  TableAbsent
} from "../domain/errors.js"
import { Inspector } from "../postgres/Inspector.js"
import { PgAdmin } from "../postgres/PgAdmin.js"
import { FlushTracker } from "../replication/FlushTracker.js"
import { columnSignature, ShapeLogCollector } from "../replication/ShapeLogCollector.js"
import { ShapeLogStorage } from "../storage/ShapeLogStorage.js"
import { ConsumerSupervisor } from "./ConsumerSupervisor.js"
import type { Shape } from "./Shape.js"
import {
  buildShape,
  loadSubqueryTables,
  resolveSpec,
  type ResolvedSpec,
  restoreShape,
  shapeWhere,
  type ShapeSpec,
  whereCompiled
} from "./ShapeResolver.js"

export type { ResolvedSpec, ShapeSpec } from "./ShapeResolver.js"
import { type ShapeRecord, type ShapeRouting, ShapeStatus, type SnapshotMark } from "./ShapeStatus.js"
import { Snapshotter } from "./Snapshotter.js"
import { logWhenStopped } from "../domain/Lifecycle.js"

export type CreateError = PostgresError | StorageError | RegistryError | TableAbsent

/**
 * What routing evaluates per row for a shape it cannot find by an equality. A restored shape's where is parsed
 * when the first row of its table comes, not at start-up; one that no longer parses lets every row through (its
 * consumer, which cannot parse it either, has the shape removed): routing may deliver too much, never too little.
 */
const matcherOf = (shape: Shape): ((row: Row) => boolean) | undefined => {
  if (shape.definition.where === undefined) return undefined
  if (whereCompiled(shape)) return shape.where?.matches
  let matches: ((row: Row) => boolean) | undefined
  return (row) => {
    if (matches === undefined) {
      const where = shapeWhere(shape)
      matches = Either.isRight(where) && where.right !== undefined ? where.right.matches : () => true
    }
    return matches(row)
  }
}

/** How often restoring the shapes at start-up says how far it got. */
const RESTORE_PROGRESS_EVERY_MS = 5_000

/**
 * Creates, finds and removes shapes, in the order that loses nothing
 * (DESIGN.md, "Shape creation"), and seeds the routing index and the consumer
 * registry with the persisted shapes when the stack starts.
 */
export class ShapeCache extends Context.Tag("syncline/ShapeCache")<ShapeCache, {
  /** Checks a spec against the catalog: unknown table, columns or a bad where become `InvalidRequest`. */
  readonly resolve: (spec: ShapeSpec) => Effect.Effect<ResolvedSpec, InvalidRequest | PostgresError>
  /** The shape of a definition, created (and its snapshot written) if needed. */
  readonly getOrCreate: (spec: ResolvedSpec) => Effect.Effect<Shape, CreateError>
  /** A registered shape whose snapshot is complete. */
  readonly get: (handle: string) => Effect.Effect<Option.Option<Shape>, TableAbsent>
  /**
   * The shape object served under a handle right now, without a registry look-up: for a caller that
   * holds a shape and only asks whether it is still the one served.
   */
  readonly peek: (handle: string) => Shape | undefined
  /** The current shape of a definition, if any. */
  readonly find: (definition: ShapeDefinition) => Effect.Effect<Option.Option<Shape>, TableAbsent>
  /**
   * Removes a shape for an explicit cause (DELETE, truncate, an invalidation), with a log line saying why:
   * registry mark, routing, consumer, storage, row. Idempotent.
   */
  readonly remove: (handle: ShapeHandle, reason: string) => Effect.Effect<void, StorageError | RegistryError | TableAbsent>
  /** Fails when the removal of invalidated shapes hits a defect: the stack must restart (the ack waits for them). */
  readonly failure: Effect.Effect<never>
  /** How many shapes are served now. */
  readonly count: Effect.Effect<number>
  /** Every shape served now, with its table (name and oid) and its `where`. */
  readonly list: Effect.Effect<
    ReadonlyArray<
      { readonly handle: ShapeHandle; readonly table: TableRef; readonly tableOid: number; readonly where: string | undefined }
    >
  >
}>() {
  static readonly layer: Layer.Layer<
    ShapeCache,
    PostgresError | StorageError | RegistryError | TableAbsent,
    | ShapeStatus
    | ShapeLogStorage
    | ShapeLogCollector
    | ConsumerSupervisor
    | FlushTracker
    | Snapshotter
    | Inspector
    | PgAdmin
  > = Layer.scoped(
    ShapeCache,
    Effect.gen(function*() {
      yield* logWhenStopped("ShapeCache")
      const status = yield* ShapeStatus
      const storage = yield* ShapeLogStorage
      const collector = yield* ShapeLogCollector
      const consumers = yield* ConsumerSupervisor
      const snapshotter = yield* Snapshotter
      const inspector = yield* Inspector
      const admin = yield* PgAdmin

      const shapes = new Map<ShapeHandle, Shape>()
      const creating = new Map<string, Deferred.Deferred<Shape, CreateError>>()

      // One signature per table, shared by its shapes' routing entries.
      const signatures = new WeakMap<TableInfo, string>()
      const signatureOf = (table: TableInfo): string => {
        let signature = signatures.get(table)
        if (signature === undefined) signatures.set(table, signature = columnSignature(table.columns))
        return signature
      }

      const route = (shape: Shape, routing: ShapeRouting) =>
        collector.addShape({
          handle: shape.handle,
          tableOid: shape.table.oid,
          equality: routing ?? undefined,
          matches: routing === null ? matcherOf(shape) : undefined,
          columns: signatureOf(shape.table),
          dependencies: shape.dependencies
        })

      const dependentsOf = (handle: ShapeHandle): ReadonlyArray<ShapeHandle> => {
        const out: Array<ShapeHandle> = []
        for (const s of shapes.values()) if (s.dependencies.includes(handle)) out.push(s.handle)
        return out
      }
      /** Shapes a client asked for itself; the others exist for other shapes' subqueries. */
      const requested = new Set<ShapeHandle>()
      /** Per dependency, the shapes being created that will read it. */
      const readersCreating = new Map<ShapeHandle, number>()
      /** A shape made only for subqueries that no shape reads, or is about to read, any more. */
      const unread = (handle: ShapeHandle): boolean =>
        shapes.has(handle) && !requested.has(handle) && dependentsOf(handle).length === 0 &&
        (readersCreating.get(handle) ?? 0) === 0

      /**
       * Shapes whose removal has begun and is not done, with how many removals of each run: still in `shapes` while
       * the shapes reading them are removed first, and given out meanwhile to a creation that reads them. Such a
       * creation is refused (see `create` and `register`): the removal took the readers it found when it began.
       */
      const doomed = new Map<ShapeHandle, number>()
      const isDoomed = (handle: ShapeHandle) => doomed.has(handle)
      // One operation, never split by an interruption: mark, unroute, stop, delete files, delete the row last.
      // A crash half way leaves the row marked, and the next boot finishes it. The shapes that read this one
      // through a subquery go first; a dependency no shape reads any more goes after it.
      const removeNow = (handle: ShapeHandle): Effect.Effect<void, StorageError | RegistryError | TableAbsent> =>
        Effect.suspend(() => removeWith(handle, new Set()))
      const removeWith = (handle: ShapeHandle, removing: Set<ShapeHandle>): Effect.Effect<
        void,
        StorageError | RegistryError | TableAbsent
      > =>
        Effect.uninterruptible(Effect.suspend(() => {
          if (removing.has(handle)) return Effect.void
          removing.add(handle)
          doomed.set(handle, (doomed.get(handle) ?? 0) + 1)
          return Effect.ensuring(
            removeSteps(handle, removing),
            Effect.sync(() => {
              const n = doomed.get(handle) ?? 1
              if (n > 1) doomed.set(handle, n - 1)
              else doomed.delete(handle)
            })
          )
        }))
      const removeSteps = (handle: ShapeHandle, removing: Set<ShapeHandle>) =>
        Effect.gen(function*() {
          for (const dependent of dependentsOf(handle)) {
            yield* Effect.logInfo(`removing shape ${dependent}: its subquery's shape ${handle} is removed`)
            yield* removeWith(dependent, removing)
          }
          const dependencies = shapes.get(handle)?.dependencies ?? []
          yield* status.markRemoving(handle)
          shapes.delete(handle)
          requested.delete(handle)
          collector.removeShape(handle)
          yield* consumers.unregister(handle)
          yield* storage.remove(handle)
          yield* status.delete(handle)
          for (const dependency of dependencies) {
            if (!unread(dependency)) continue
            yield* Effect.logInfo(`removing shape ${dependency}: no shape reads it through a subquery any more`)
            yield* removeWith(dependency, removing)
          }
        })

      // Removals decided but not finished (an interrupted removal, a shape invalidated at activation) and
      // snapshots that never completed are finished first.
      for (const handle of yield* status.unfinished) {
        yield* storage.remove(handle)
        yield* status.delete(handle)
        yield* Effect.logInfo(`finished the removal of shape ${handle}`)
      }

      // Files no registered shape owns (a crash between creating a shape's directory and its row, or
      // after the row of a removal was deleted) are left-overs.
      const registered = new Set<string>((yield* status.all).map((r) => r.handle))
      for (const handle of yield* storage.list) {
        if (registered.has(handle)) continue
        yield* storage.remove(handle)
        yield* Effect.logInfo(`removed the files of shape ${handle}, which is not registered`)
      }

      // Dependencies first: a shape is restored once every shape its subqueries read is, and removed when one is not.
      let waiting = [...(yield* status.all)]
      // The routing of shapes registered before it was recorded: derived from their parsed where, and stored.
      const derived: Array<readonly [ShapeHandle, ShapeRouting]> = []
      // Each table is looked up once, however many shapes it has.
      // By schema, then name: a lookup per restored shape builds no key.
      const tablesLoaded = new Map<string, Map<string, Either.Either<TableInfo, PostgresError>>>()
      const decided = new Set<ShapeHandle>()
      const total = waiting.length
      const clock = yield* Effect.clock
      const restoring = clock.unsafeCurrentTimeMillis()
      let reported = restoring
      if (total > 0) yield* Effect.logInfo(`restoring ${total} shape(s)`)
      // Restored shapes are handed to the consumers together, one effect for many. Before a restore that may wait:
      // a removal it makes unregisters shapes, which the consumers must know by then. At the end of each pass: a
      // shape of the next pass reads through its subqueries shapes of this one, registered before it.
      let awaitingRegistration: Array<{ readonly shape: Shape; readonly snapshot: SnapshotMark | undefined }> = []
      const registerRestored = Effect.suspend(() => {
        if (awaitingRegistration.length === 0) return Effect.void
        const batch = awaitingRegistration
        awaitingRegistration = []
        return consumers.register(batch)
      })
      while (waiting.length > 0) {
        const pending = new Set(waiting.map((r) => r.handle))
        const ready = waiting.filter((r) => r.dependencies.every((d) => decided.has(d) || !pending.has(d)))
        const next = ready.length > 0 ? ready : [waiting[0]!]
        for (const record of next) {
          const now = clock.unsafeCurrentTimeMillis()
          if (now - reported >= RESTORE_PROGRESS_EVERY_MS) {
            reported = now
            yield* Effect.logInfo(`restoring shapes: ${decided.size} of ${total} done`)
          }
          decided.add(record.handle)
          let restored = restoreNow(record)
          if (restored === undefined) {
            yield* registerRestored
            restored = yield* restore(record)
            if (restored === undefined) continue
          }
          if (record.requested) requested.add(record.handle)
          shapes.set(record.handle, restored.shape)
          route(restored.shape, restored.routing)
          awaitingRegistration.push({ shape: restored.shape, snapshot: record.snapshot })
          if (record.routing === undefined) derived.push([record.handle, restored.routing])
        }
        yield* registerRestored
        waiting = waiting.filter((r) => !decided.has(r.handle))
      }
      // What is derived again at the next start if it cannot be stored now.
      yield* status.setRouting(derived).pipe(
        Effect.catchAll((error) => Effect.logWarning("the routing of restored shapes could not be stored", error))
      )
      if (total > 0) {
        const took = clock.unsafeCurrentTimeMillis() - restoring
        yield* Effect.logInfo(`restored ${shapes.size} of ${total} shape(s) in ${took} ms`)
      }
      // A shape made for subqueries whose last reader went while its own removal did not finish (a crash between
      // the two, or a reader whose snapshot never completed).
      for (let orphan = [...shapes.keys()].find(unread); orphan !== undefined; orphan = [...shapes.keys()].find(unread)) {
        yield* Effect.logInfo(`removing shape ${orphan}: no shape reads it through a subquery any more`)
        yield* removeNow(orphan)
      }

      function tableLoaded(ref: TableRef): Either.Either<TableInfo, PostgresError> | undefined {
        return tablesLoaded.get(ref.schema)?.get(ref.name)
      }

      /**
       * The common case without a step that waits: a shape without subqueries, its routing recorded, on a table
       * already loaded and unchanged. Undefined when `restore` must decide.
       */
      function restoreNow(record: ShapeRecord): { readonly shape: Shape; readonly routing: ShapeRouting } | undefined {
        if (record.dependencies.length !== 0 || record.routing === undefined || record.snapshot === undefined) return undefined
        const table = tableLoaded(record.definition.table)
        if (table === undefined || Either.isLeft(table)) return undefined
        if (record.snapshot.tableOid !== undefined && record.snapshot.tableOid !== table.right.oid) return undefined
        if (record.snapshot.columns !== signatureOf(table.right)) return undefined
        return { shape: restoreShape(table.right, record.definition, record.handle, record.dependencies), routing: record.routing }
      }

      function loadTable(ref: TableRef) {
        return Effect.suspend(() => {
          const known = tableLoaded(ref)
          if (known !== undefined) return Effect.succeed(known)
          return Effect.tap(Effect.either(inspector.load(ref)), (loaded) =>
            Effect.sync(() => {
              let names = tablesLoaded.get(ref.schema)
              if (names === undefined) tablesLoaded.set(ref.schema, names = new Map())
              names.set(ref.name, loaded)
            }))
        })
      }

      function restore(record: ShapeRecord): Effect.Effect<
        { readonly shape: Shape; readonly routing: ShapeRouting } | undefined,
        PostgresError | StorageError | RegistryError | TableAbsent
      > {
        return Effect.gen(function*() {
          const table = yield* loadTable(record.definition.table)
          if (Either.isLeft(table)) {
            const error = table.left
            if (error.reason === "TableNotFound") {
              yield* Effect.logWarning(`shape ${record.handle}: table ${record.definition.table.name} is gone; removing it`)
            } else if (error.reason === "UnsupportedTable") {
              // The table stopped being replicated while the service was down (made unlogged, say):
              // no change will ever reach the shape again.
              yield* Effect.logWarning(`shape ${record.handle}: ${error.message}; removing it`)
            } else {
              return yield* error
            }
            yield* removeNow(record.handle)
            return undefined
          }
          // A table of the same name created since is another table: the shape's rows are not its rows.
          if (record.snapshot?.tableOid !== undefined && record.snapshot.tableOid !== table.right.oid) {
            yield* Effect.logInfo(`removing shape ${record.handle}: its table was dropped and created again`)
            yield* removeNow(record.handle)
            return undefined
          }
          // A table whose columns changed while the service was stopped no longer fits the shape's log.
          if (record.snapshot !== undefined && record.snapshot.columns !== signatureOf(table.right)) {
            yield* Effect.logInfo(`removing shape ${record.handle}: its table's columns changed`)
            yield* removeNow(record.handle)
            return undefined
          }
          // Without subqueries, and with its routing recorded, nothing at start-up needs its where parsed.
          if (record.dependencies.length === 0 && record.routing !== undefined) {
            return {
              shape: restoreShape(table.right, record.definition, record.handle, record.dependencies),
              routing: record.routing
            }
          }
          const tables = yield* Effect.either(loadSubqueryTables(inspector, record.definition.where))
          if (Either.isLeft(tables)) {
            if (tables.left._tag === "PostgresError") return yield* tables.left
            yield* Effect.logWarning(`shape ${record.handle}: ${tables.left.message}; removing it`)
            yield* removeNow(record.handle)
            return undefined
          }
          const built = buildShape(table.right, record.definition, {}, tables.right)
          if (Either.isLeft(built)) {
            yield* Effect.logWarning(`shape ${record.handle}: ${built.left.message}; removing it`)
            yield* removeNow(record.handle)
            return undefined
          }
          // Each subquery must still read the shape registered for it.
          const wanted = built.right.dependencies
          const mismatch = wanted.length !== record.dependencies.length || wanted.some((dep, i) => {
            const restored = shapes.get(record.dependencies[i]!)
            return restored === undefined ||
              ShapeDefinition.identity(restored.definition) !== ShapeDefinition.identity(dep.definition)
          })
          if (mismatch) {
            yield* Effect.logWarning(`removing shape ${record.handle}: a shape its subqueries read is gone`)
            yield* removeNow(record.handle)
            return undefined
          }
          return { shape: built.right.build(record.handle, record.dependencies), routing: built.right.routing }
        })
      }

      // The ack waits for an invalidated shape's removal (its last transaction was not reported durable), so a
      // removal that fails is tried again until it succeeds rather than left for the next start.
      const retryRemoval = Schedule.exponential("100 millis").pipe(Schedule.either(Schedule.spaced("10 seconds")))
      const failed = yield* Deferred.make<never>()
      yield* Queue.take(consumers.invalidations).pipe(
        Effect.flatMap(({ handle, reason }) =>
          Effect.gen(function*() {
            yield* Effect.logInfo(`removing shape ${handle}: ${reason}`)
            // The table may have changed: the next shape on it must see the catalog as it is now.
            const table = shapes.get(handle)?.table
            if (table !== undefined) yield* inspector.invalidate(table.oid)
            yield* removeNow(handle).pipe(
              Effect.tapError((e) => Effect.logWarning(`removal of shape ${handle} failed; trying again`, e)),
              Effect.retry({ schedule: retryRemoval, while: (e) => e._tag !== "TableAbsent" }),
              Effect.catchAll(() => Effect.void)
            )
          })
        ),
        Effect.forever,
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause)
            ? Effect.failCause(cause)
            : Effect.zipRight(
              Effect.logError("removing invalidated shapes failed; restarting the stack", cause),
              Deferred.failCause(failed, cause)
            )
        ),
        Effect.forkScoped
      )

      const create = (spec: ResolvedSpec, asked: boolean) =>
        Effect.gen(function*() {
          // Shapes taken while the table was out of the publication (or without REPLICA IDENTITY FULL) may
          // have missed changes: putting it back for this one invalidates them (DESIGN.md, invariant 8).
          const before = [...shapes.values()].filter((s) => s.table.oid === spec.table.oid).map((s) => s.handle)
          if (yield* admin.addTable(spec.table)) {
            for (const handle of before) {
              yield* Effect.logWarning(
                `removing shape ${handle}: its table ${spec.table.schema}.${spec.table.name} was not in the publication ` +
                  "with REPLICA IDENTITY FULL, so changes may have been missed"
              )
              yield* removeNow(handle)
            }
          }
          // The shapes its subqueries read exist (their snapshots written) before it is registered, and are not
          // removed as unread while it is being created.
          const dependencies: Array<ShapeHandle> = []
          const release = Effect.sync(() => {
            for (const d of dependencies) readersCreating.set(d, (readersCreating.get(d) ?? 1) - 1)
          })
          return yield* Effect.gen(function*() {
            for (const dependency of spec.dependencies) {
              const handle = (yield* obtain(dependency, false)).handle
              dependencies.push(handle)
              readersCreating.set(handle, (readersCreating.get(handle) ?? 0) + 1)
            }
            // Refused before its snapshot too, when it can be told already.
            if (dependencies.some(isDoomed)) {
              return yield* new TableAbsent({ operation: "getOrCreate: a subquery's shape is being removed" })
            }
            return yield* register(spec, asked, dependencies)
          }).pipe(Effect.ensuring(release))
        })

      const register = (spec: ResolvedSpec, asked: boolean, dependencies: ReadonlyArray<ShapeHandle>) =>
        Effect.gen(function*() {
          const record = yield* status.add(spec.definition, dependencies, asked, spec.routing)
          const shape = spec.build(record.handle, dependencies)
          yield* consumers.register([{ shape, snapshot: undefined }])
          route(shape, spec.routing)
          const complete = yield* Effect.flatMap(storage.create(record.handle), (log) => snapshotter.run(shape, log)).pipe(
            Effect.flatMap((mark) => status.markSnapshotComplete(record.handle, mark)),
            // A failed snapshot leaves nothing behind; an interrupted one (the stack stopping) is removed at the next boot.
            Effect.tapErrorCause((cause) =>
              Cause.isInterruptedOnly(cause)
                ? Effect.void
                : removeNow(record.handle).pipe(Effect.catchAll((e) => Effect.logWarning("clean-up failed", e)))
            )
          )
          // A shape its subqueries read was removed meanwhile (truncated, say), or is being removed: this one cannot
          // follow it.
          const gone = dependencies.find((d) => !shapes.has(d) || isDoomed(d))
          if (gone !== undefined) {
            yield* Effect.logInfo(`removing shape ${record.handle}: its subquery's shape ${gone} was removed while it was created`)
            yield* removeNow(record.handle)
            return yield* new TableAbsent({ operation: "getOrCreate: a subquery's shape was removed meanwhile" })
          }
          if (asked) requested.add(record.handle)
          // From here on the shape is kept as a restart restores it: its where is parsed again when a transaction
          // or a request first needs it, so that an idle shape does not hold its parse tree and evaluator.
          const kept = dependencies.length === 0 ? restoreShape(spec.table, complete.definition, record.handle, dependencies) : shape
          shapes.set(record.handle, kept)
          yield* consumers.snapshotReady(record.handle, complete.snapshot!, kept)
          yield* Effect.logInfo(`created shape ${record.handle} on ${spec.table.schema}.${spec.table.name}`)
          return kept
        })

      // Creations run in the cache's own scope, not in the request that asked: a client that goes away
      // must not cut a snapshot short and leave a routed shape whose consumer waits for it forever.
      const cacheScope = yield* Effect.scope
      yield* Effect.addFinalizer(() =>
        Effect.forEach(creating.values(), (d) => Deferred.fail(d, new TableAbsent({ operation: "getOrCreate" })), {
          discard: true
        })
      )

      /** A client asked for a shape: it is kept when the last shape reading it through a subquery goes. */
      const markAsked = (shape: Shape) =>
        requested.has(shape.handle) || !shapes.has(shape.handle)
          ? Effect.succeed(shape)
          : Effect.as(
            Effect.tap(status.markRequested(shape.handle), () => Effect.sync(() => requested.add(shape.handle))),
            shape
          )

      /** The shape of a spec, created if needed; `asked` when a client asked for it, not a subquery. */
      function obtain(spec: ResolvedSpec, asked: boolean): Effect.Effect<Shape, CreateError> {
        return Effect.gen(function*() {
          const identity = ShapeDefinition.identity(spec.definition)
          const existing = yield* status.byIdentity(identity)
          if (Option.isSome(existing)) {
            const shape = shapes.get(existing.value.handle)
            if (shape !== undefined) return asked ? yield* markAsked(shape) : shape
          }
          let inFlight = creating.get(identity)
          if (inFlight === undefined) {
            const deferred = yield* Deferred.make<Shape, CreateError>()
            creating.set(identity, deferred)
            inFlight = deferred
            yield* create(spec, asked).pipe(
              Effect.tapErrorCause((cause) => Effect.logWarning("shape creation failed", cause)),
              Effect.exit,
              Effect.flatMap((exit) =>
                Effect.zipRight(Effect.sync(() => creating.delete(identity)), Deferred.done(deferred, exit))
              ),
              Effect.forkIn(cacheScope)
            )
          }
          const shape = yield* Deferred.await(inFlight)
          return asked ? yield* markAsked(shape) : shape
        })
      }

      return ShapeCache.of({
        resolve: (spec) => resolveSpec(inspector, spec),
        getOrCreate: (spec) => obtain(spec, true),
        get: (handle) =>
          Effect.map(status.get(handle), (record) =>
            Option.flatMap(record, (r) => Option.fromNullable(shapes.get(r.handle)))
          ),
        peek: (handle) => shapes.get(handle as ShapeHandle),
        find: (definition) =>
          Effect.map(
            status.byIdentity(ShapeDefinition.identity(definition)),
            (record) => Option.flatMap(record, (r) => Option.fromNullable(shapes.get(r.handle)))
          ),
        remove: (handle, reason) =>
          Effect.zipRight(Effect.logInfo(`removing shape ${handle}: ${reason}`), removeNow(handle)),
        failure: Deferred.await(failed),
        count: Effect.sync(() => shapes.size),
        list: Effect.sync(() =>
          [...shapes.values()].map((s) => ({ handle: s.handle, table: s.table, tableOid: s.table.oid, where: s.definition.where }))
        )
      })
    })
  )
}
