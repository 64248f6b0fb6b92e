import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Scope } from "effect"
import pg from "pg"
import { inject } from "vitest"
import { Lsn } from "../../src/domain/Lsn.js"
import { Inspector } from "../../src/postgres/Inspector.js"
import { PgAdmin } from "../../src/postgres/PgAdmin.js"
import { PgPool } from "../../src/postgres/PgPool.js"

const url = inject("databaseUrl")
const names = { publicationName: "electric_publication_pgadmin_test", slotName: "electric_slot_pgadmin_test" }
const Db = PgPool.layer({ connectionString: url, max: 4 })
const Live = Layer.mergeAll(PgAdmin.layer(names), Inspector.layer).pipe(Layer.provideMerge(Db))

const exec = (sql: string, params?: ReadonlyArray<unknown>) => Effect.flatMap(PgPool, (db) => db.query(sql, params))

/** A plain connection outside the services, to look at the lock from another session. */
const otherSession = Effect.acquireRelease(
  Effect.promise(async () => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    return client
  }),
  (client) => Effect.promise(() => client.end())
)

const lockFreeFrom = (client: pg.Client, slot: string) =>
  Effect.promise(async () => {
    const { rows } = await client.query("SELECT pg_try_advisory_lock(hashtext($1)) AS got", [slot])
    if (rows[0].got === true) await client.query("SELECT pg_advisory_unlock(hashtext($1))", [slot])
    return rows[0].got as boolean
  })

layer(Live, { excludeTestServices: true })("PgAdmin", (it) => {
  it.effect("accepts a server with wal_level = logical and a superuser", () =>
    Effect.flatMap(PgAdmin, (admin) => admin.checkPrerequisites))

  it.effect("creates the publication once", () =>
    Effect.gen(function*() {
      const admin = yield* PgAdmin
      yield* exec(`DROP PUBLICATION IF EXISTS ${names.publicationName}`)
      yield* Effect.all([admin.ensurePublication, admin.ensurePublication], { concurrency: 2 })
      yield* admin.ensurePublication
      const rows = yield* exec("SELECT puballtables FROM pg_publication WHERE pubname = $1", [names.publicationName])
      expect(rows).toEqual([{ puballtables: false }])
    }))

  it.effect("creates a persistent pgoutput slot once, reads its state and drops it", () =>
    Effect.gen(function*() {
      const admin = yield* PgAdmin
      yield* exec("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", [names.slotName])
      expect(yield* admin.slotState).toEqual({ _tag: "Missing" })
      yield* admin.createSlot
      yield* admin.createSlot
      const rows = yield* exec(
        "SELECT plugin, slot_type, temporary, confirmed_flush_lsn::text AS flush FROM pg_replication_slots WHERE slot_name = $1",
        [names.slotName]
      )
      expect(rows).toMatchObject([{ plugin: "pgoutput", slot_type: "logical", temporary: false }])
      expect(yield* admin.slotState).toEqual({ _tag: "Usable", confirmedFlushLsn: Lsn.fromPg(String(rows[0]!["flush"])) })
      // A slot keeps WAL while it exists: do not leave it behind.
      yield* admin.dropSlot
      yield* admin.dropSlot
      expect(yield* admin.slotState).toEqual({ _tag: "Missing" })
    }))

  it.effect("identifies the system: its system identifier and timeline", () =>
    Effect.gen(function*() {
      const admin = yield* PgAdmin
      const identity = yield* admin.identifySystem
      const rows = yield* exec("SELECT system_identifier::text AS id, timeline_id FROM pg_control_system(), pg_control_checkpoint()")
      expect(identity).toEqual({ systemId: rows[0]!["id"], timeline: rows[0]!["timeline_id"] })
    }))

  it.effect("writes a log of the running transactions and returns the position after it", () =>
    Effect.gen(function*() {
      const admin = yield* PgAdmin
      const before = Lsn.fromPg(String((yield* exec("SELECT pg_current_wal_insert_lsn()::text AS lsn"))[0]!["lsn"]))
      const logged = yield* admin.logRunningTransactions(5_000)
      const after = Lsn.fromPg(String((yield* exec("SELECT pg_current_wal_insert_lsn()::text AS lsn"))[0]!["lsn"]))
      expect(logged).toBeDefined()
      expect(logged!).toBeGreaterThan(before)
      expect(logged!).toBeLessThanOrEqual(after)
    }))

  it.effect("adds tables with REPLICA IDENTITY FULL, idempotently and concurrently", () =>
    Effect.gen(function*() {
      const admin = yield* PgAdmin
      const other = yield* PgAdmin.make(names)
      yield* admin.ensurePublication
      yield* exec(`
        DROP TABLE IF EXISTS pgadmin_one, "PgAdmin Two";
        CREATE TABLE pgadmin_one (id int PRIMARY KEY);
        CREATE TABLE "PgAdmin Two" (id int PRIMARY KEY);`)
      const inspector = yield* Inspector
      const one = yield* inspector.load({ schema: "public", name: "pgadmin_one" })
      const two = yield* inspector.load({ schema: "public", name: "PgAdmin Two" })
      yield* Effect.all(
        [admin.addTable(one), other.addTable(one), admin.addTable(two), other.addTable(two), admin.addTable(one)],
        { concurrency: "unbounded" }
      )
      yield* admin.addTable(one)
      const published = yield* exec(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY tablename",
        [names.publicationName]
      )
      expect(published).toEqual([{ tablename: "PgAdmin Two" }, { tablename: "pgadmin_one" }])
      const identities = yield* exec(
        "SELECT relname, relreplident FROM pg_class WHERE oid = ANY($1::oid[]) ORDER BY relname",
        [[one.oid, two.oid]]
      )
      expect(identities).toEqual([
        { relname: "PgAdmin Two", relreplident: "f" },
        { relname: "pgadmin_one", relreplident: "f" }
      ])
    }))

  it.effect("fixes the replica identity of a table that is already published", () =>
    Effect.gen(function*() {
      const admin = yield* PgAdmin
      yield* admin.ensurePublication
      yield* exec(`
        DROP TABLE IF EXISTS pgadmin_three;
        CREATE TABLE pgadmin_three (id int PRIMARY KEY);
        ALTER PUBLICATION ${names.publicationName} ADD TABLE pgadmin_three;`)
      const three = yield* Effect.flatMap(Inspector, (i) => i.load({ schema: "public", name: "pgadmin_three" }))
      expect(yield* admin.publicationStates([three.oid])).toEqual(new Map([[three.oid, { published: true, replicaFull: false }]]))
      expect(yield* admin.addTable(three)).toBe(true)
      expect(yield* exec("SELECT relreplident FROM pg_class WHERE oid = $1", [three.oid])).toEqual([{ relreplident: "f" }])
      expect(yield* admin.publicationStates([three.oid])).toEqual(new Map([[three.oid, { published: true, replicaFull: true }]]))
      // Nothing left to change.
      expect(yield* admin.addTable(three)).toBe(false)
      yield* exec(`ALTER PUBLICATION ${names.publicationName} DROP TABLE pgadmin_three`)
      expect(yield* admin.publicationStates([three.oid, 1])).toEqual(new Map([[three.oid, { published: false, replicaFull: true }]]))
      expect(yield* admin.addTable(three)).toBe(true)
    }))

  it.scoped("holds the slot's advisory lock for the scope and hands it over when released", () =>
    Effect.gen(function*() {
      const slot = "electric_slot_pgadmin_lock"
      const first = yield* PgAdmin.make({ ...names, slotName: slot })
      const second = yield* PgAdmin.make({ ...names, slotName: slot })
      const observer = yield* otherSession

      const firstScope = yield* Scope.make()
      yield* Scope.extend(first.acquireLock, firstScope)
      expect(yield* first.isLockHeld).toBe(true)
      expect(yield* lockFreeFrom(observer, slot)).toBe(false)

      const secondScope = yield* Scope.make()
      const waiting = yield* Effect.fork(Scope.extend(second.acquireLock, secondScope))
      yield* Effect.sleep("1200 millis")
      expect(waiting.unsafePoll()).toBeNull()
      expect(yield* second.isLockHeld).toBe(false)

      yield* Scope.close(firstScope, Exit.void)
      expect(yield* first.isLockHeld).toBe(false)
      yield* Fiber.join(waiting).pipe(Effect.timeout("10 seconds"))
      expect(yield* second.isLockHeld).toBe(true)
      expect(yield* lockFreeFrom(observer, slot)).toBe(false)

      yield* Scope.close(secondScope, Exit.void)
      expect(yield* second.isLockHeld).toBe(false)
      expect(yield* lockFreeFrom(observer, slot)).toBe(true)
    }))

  it.scoped("stops waiting for the lock when interrupted, without keeping it", () =>
    Effect.gen(function*() {
      const slot = "electric_slot_pgadmin_interrupt"
      const holder = yield* PgAdmin.make({ ...names, slotName: slot })
      const waiter = yield* PgAdmin.make({ ...names, slotName: slot })
      const observer = yield* otherSession

      const holderScope = yield* Scope.make()
      yield* Scope.extend(holder.acquireLock, holderScope)
      const waiterScope = yield* Scope.make()
      const waiting = yield* Effect.fork(Scope.extend(waiter.acquireLock, waiterScope))
      yield* Effect.sleep("700 millis")
      const exit = yield* Fiber.interrupt(waiting)
      expect(Exit.isInterrupted(exit)).toBe(true)

      yield* Scope.close(holderScope, Exit.void)
      // Nobody holds it now: the interrupted waiter did not take it on its way out.
      yield* Effect.sleep("700 millis")
      expect(yield* lockFreeFrom(observer, slot)).toBe(true)
      expect(yield* waiter.isLockHeld).toBe(false)
      yield* Scope.close(waiterScope, Exit.void)
    }))

  it.scoped("lockLost fails when the lock's connection is terminated, and only then", () =>
    Effect.gen(function*() {
      const slot = "electric_slot_pgadmin_lost"
      const admin = yield* PgAdmin.make({ ...names, slotName: slot })
      const observer = yield* otherSession

      // Released normally: not a loss.
      const before = yield* Effect.fork(Effect.flip(admin.lockLost))
      const firstScope = yield* Scope.make()
      yield* Scope.extend(admin.acquireLock, firstScope)
      const duringFirst = yield* Effect.fork(Effect.flip(admin.lockLost))
      yield* Scope.close(firstScope, Exit.void)
      expect(yield* lockFreeFrom(observer, slot)).toBe(true)
      yield* Effect.sleep("300 millis")
      expect(before.unsafePoll()).toBeNull()
      expect(duringFirst.unsafePoll()).toBeNull()
      yield* Fiber.interrupt(before)
      yield* Fiber.interrupt(duringFirst)

      const scope = yield* Scope.make()
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      yield* Scope.extend(admin.acquireLock, scope)
      const lost = yield* Effect.fork(Effect.flip(admin.lockLost))
      // A one-key advisory lock shows its key's high half in classid and its low half in objid.
      const holders = yield* Effect.promise(() =>
        observer.query<{ pid: number }>(
          `SELECT pid FROM pg_catalog.pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 1
              AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
              AND ((classid::int8 << 32) | objid::int8) = hashtext($1)::int8`,
          [slot]
        )
      )
      expect(holders.rows).toHaveLength(1)
      expect(lost.unsafePoll()).toBeNull()
      yield* Effect.promise(() => observer.query("SELECT pg_terminate_backend($1)", [holders.rows[0]!.pid]))

      const error = yield* Fiber.join(lost).pipe(Effect.timeout("10 seconds"))
      expect(error._tag).toBe("PostgresError")
      expect(error.reason).toBe("Connection")
      expect(error.message).toContain(slot)
      expect(yield* admin.isLockHeld).toBe(false)
      // A later look at the lost lock fails at once.
      expect((yield* Effect.flip(admin.lockLost)).reason).toBe("Connection")
      // The terminated backend releases its locks as it exits, a moment after the client saw the connection end.
      const freed = yield* lockFreeFrom(observer, slot).pipe(
        Effect.tap((free) => (free ? Effect.void : Effect.sleep("50 millis"))),
        Effect.repeat({ until: (free) => free }),
        Effect.timeout("10 seconds")
      )
      expect(freed).toBe(true)
    }))
})

describe("PgAdmin prerequisites", () => {
  const fakePool = (row: Record<string, unknown>) =>
    Layer.succeed(PgPool, {
      pool: undefined as unknown as pg.Pool,
      connectionString: "postgresql://u:secret@db.example:6543/app",
      query: <A>() => Effect.succeed([row] as unknown as ReadonlyArray<A>)
    } as PgPool["Type"])

  const check = (row: Record<string, unknown>) =>
    Effect.flatMap(PgAdmin, (admin) => admin.checkPrerequisites).pipe(
      Effect.provide(PgAdmin.layer(names).pipe(Layer.provide(fakePool(row))))
    )

  it.effect("rejects wal_level other than logical", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(check({ wal_level: "replica", rolname: "app", rolreplication: true, rolsuper: false }))
      expect(error.reason).toBe("WalLevel")
      expect(error.message).toBe(
        `Postgres wal_level is "replica"; Syncline needs wal_level = logical (set it in postgresql.conf and restart Postgres)`
      )
    }))

  it.effect("rejects a role that may not replicate, naming the fix", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(check({ wal_level: "logical", rolname: "app", rolreplication: false, rolsuper: false }))
      expect(error.reason).toBe("Permission")
      expect(error.message).toContain(`"app"`)
      expect(error.message).toContain("ALTER ROLE app WITH REPLICATION")
      const quoted = yield* Effect.flip(check({ wal_level: "logical", rolname: "App", rolreplication: false, rolsuper: false }))
      expect(quoted.message).toContain(`ALTER ROLE "App" WITH REPLICATION`)
    }))

  it.effect("accepts a replication role that is not a superuser", () =>
    check({ wal_level: "logical", rolname: "app", rolreplication: true, rolsuper: false }))

  const logRunningTransactionsFailing = (code: string) =>
    Effect.flatMap(PgAdmin, (admin) => admin.logRunningTransactions(1_000)).pipe(
      Effect.provide(PgAdmin.layer(names).pipe(Layer.provide(Layer.succeed(PgPool, {
        pool: { query: () => Promise.reject(Object.assign(new Error(`failed with ${code}`), { code })) } as unknown as pg.Pool,
        connectionString: "postgresql://u:secret@db.example:6543/app",
        query: () => Effect.die("not used")
      } as PgPool["Type"]))))
    )

  it.effect("logs no running transactions where the server has no pg_log_standby_snapshot, the role may not call it or the server is a standby", () =>
    Effect.gen(function*() {
      // Postgres before 16; a role without EXECUTE on it; a server in recovery.
      for (const code of ["42883", "42501", "55000"]) expect(yield* logRunningTransactionsFailing(code)).toBeUndefined()
      const error = yield* Effect.flip(logRunningTransactionsFailing("XX000"))
      expect(error.message).toBe("Logging the running transactions failed: failed with XX000")
    }))
})

describe("PgPool", () => {
  it.effect("reports an unreachable server as a Connection error without the password", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(
        Effect.scoped(PgPool.make({ connectionString: "postgresql://someone:hunter2@127.0.0.1:1/nowhere" }))
      )
      expect(error.reason).toBe("Connection")
      expect(error.message).toMatch(/^Cannot connect to Postgres at 127\.0\.0\.1:1: /)
      expect(error.message).not.toContain("hunter2")
      expect(error.message).not.toContain("\n")
    }))
})
