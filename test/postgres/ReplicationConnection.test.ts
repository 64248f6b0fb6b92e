import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Queue, Scope, Stream } from "effect"
import pg from "pg"
import { inject } from "vitest"
import { type Change, isTransaction, type Transaction } from "../../src/domain/Change.js"
import { Lsn } from "../../src/domain/Lsn.js"
import { make } from "../../src/postgres/ReplicationConnection.js"
import { splittingProxy } from "../support/splittingProxy.js"

const url = inject("databaseUrl")
const prefix = `rc_${process.pid}_${Date.now().toString(36)}`

/** Runs `use` with a fresh ordinary (non-replication) connection. */
const withAdmin = <A>(use: (client: pg.Client) => Effect.Effect<A>): Effect.Effect<A> =>
  Effect.acquireUseRelease(
    Effect.promise(async () => {
      const client = new pg.Client({ connectionString: url })
      await client.connect()
      return client
    }),
    use,
    (client) => Effect.promise(() => client.end())
  )

const sql = (text: string, params: Array<unknown> = []) =>
  withAdmin((c) => Effect.promise(() => c.query(text, params).then((r) => r.rows as Array<Record<string, unknown>>)))

const slotState = (slot: string) =>
  sql("SELECT confirmed_flush_lsn::text AS flush, active FROM pg_replication_slots WHERE slot_name = $1", [slot]).pipe(
    Effect.map((rows) => rows[0] as { flush: string; active: boolean })
  )

/** Polls (bounded) until `check` holds for the slot's row; fails the test otherwise. */
const waitForSlot = (slot: string, check: (row: { flush: string; active: boolean }) => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200; i++) {
      const row = yield* slotState(slot)
      if (check(row)) return row
      yield* Effect.sleep("50 millis")
    }
    return yield* Effect.dieMessage(`slot ${slot} never reached the expected state`)
  })

const setup = (name: string, columns: string) =>
  sql(
    `CREATE TABLE ${name} (${columns});
     ALTER TABLE ${name} REPLICA IDENTITY FULL;
     CREATE PUBLICATION ${name}_pub FOR TABLE ${name};`
  ).pipe(
    // A slot cannot be created in the (implicit) transaction that wrote the DDL.
    Effect.zipRight(sql(`SELECT pg_create_logical_replication_slot('${name}_slot', 'pgoutput')`))
  )

const teardown = (name: string) =>
  Effect.gen(function*() {
    yield* waitForSlot(`${name}_slot`, (row) => !row.active)
    yield* sql(`SELECT pg_drop_replication_slot('${name}_slot')`)
    yield* sql(`DROP PUBLICATION ${name}_pub; DROP TABLE ${name}`)
  })

const options = (name: string, statusIntervalMs?: number) => ({
  connectionString: url,
  slotName: `${name}_slot`,
  publicationName: `${name}_pub`,
  ...(statusIntervalMs === undefined ? {} : { statusIntervalMs })
})

/** Opens a connection in a fresh scope and forwards its transactions into a queue the test reads. */
const open = (name: string, bufferSize?: number, connectionString = url) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const conn = yield* make({ ...options(name), connectionString, ...(bufferSize === undefined ? {} : { bufferSize }) }).pipe(
      Scope.extend(scope)
    )
    const received = yield* Queue.unbounded<Transaction>()
    yield* Stream.runForEach(Stream.filter(conn.events, isTransaction), (tx) => Queue.offer(received, tx)).pipe(
      Effect.forkIn(scope)
    )
    const next = Queue.take(received).pipe(
      Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error("no transaction within 30 s") }),
      Effect.orDie
    )
    return { conn, scope, received, next, close: Scope.close(scope, Exit.void) } as const
  })

const insertRow = (change: Change | undefined) => {
  expect(change?.kind).toBe("insert")
  return change?.kind === "insert" ? change.new : {}
}

describe("ReplicationConnection", () => {
  it.live("streams decoded transactions with values as Postgres text", () =>
    Effect.gen(function*() {
      const name = `${prefix}_types`
      yield* setup(
        name,
        `id int PRIMARY KEY, flag bool, at timestamptz, amount numeric(10,2), tags text[], doc jsonb,
         note text, data bytea, big int8`
      )
      const { next, close } = yield* open(name)

      // The writer's session uses another time zone and date style: the replication
      // connection's own settings decide the text.
      const xids = yield* withAdmin((c) => Effect.promise(async () => {
        await c.query("SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, MDY'")
        const ids: Array<number> = []
        const tx = async (statements: Array<string>) => {
          await c.query("BEGIN")
          for (const s of statements) await c.query(s)
          const r = await c.query("SELECT pg_current_xact_id()::text AS xid")
          await c.query("COMMIT")
          ids.push(Number(BigInt(r.rows[0].xid) & 0xffff_ffffn))
        }
        await tx([
          `INSERT INTO ${name} VALUES (1, true, '2024-01-02 03:04:05.25+02', 12.5, '{a,"b c"}', '{"k": [1, 2]}',
             NULL, '\\x0102ff', 9007199254740993)`,
          `INSERT INTO ${name} (id, flag) VALUES (2, false)`
        ])
        await tx([`UPDATE ${name} SET flag = false, note = 'it''s' WHERE id = 1`])
        await tx([`DELETE FROM ${name} WHERE id = 2`])
        await tx([`TRUNCATE ${name}`])
        return ids
      }))

      const txs = [yield* next, yield* next, yield* next, yield* next]
      yield* close
      yield* teardown(name)

      expect(txs.map((t) => t.xid)).toEqual(xids)
      for (const t of txs) expect(t.commitLsn).toBeLessThan(t.endLsn)
      for (let i = 1; i < txs.length; i++) expect(txs[i]!.commitLsn).toBeGreaterThanOrEqual(txs[i - 1]!.endLsn)

      const [ins, upd, del, trunc] = txs as [Transaction, Transaction, Transaction, Transaction]
      // pgoutput sends a Relation again whenever the relation cache entry is invalidated, which DDL by
      // other test files running at the same time can cause: the same relation may come more than once.
      expect([...new Set(ins.relations.map((r) => r.name))]).toEqual([name])
      expect(ins.relations[0]!.replicaIdentity).toBe("f")
      expect(ins.relations[0]!.columns.map((c) => c.name)).toEqual(
        ["id", "flag", "at", "amount", "tags", "doc", "note", "data", "big"]
      )
      expect(ins.changes).toHaveLength(2)
      expect(insertRow(ins.changes[0])).toEqual({
        id: "1",
        flag: "t",
        at: "2024-01-02 01:04:05.25+00",
        amount: "12.50",
        tags: "{a,\"b c\"}",
        doc: "{\"k\": [1, 2]}",
        note: null,
        data: "\\x0102ff",
        big: "9007199254740993"
      })
      expect(insertRow(ins.changes[1])).toMatchObject({ id: "2", flag: "f", at: null })

      // Without a schema change the relation is not sent again (unless a cache invalidation resends it as is).
      expect(upd.relations.every((r) => r.name === name)).toBe(true)
      const u = upd.changes[0]
      expect(u?.kind).toBe("update")
      if (u?.kind === "update") {
        // A change refers to the last Relation message of its table: the one in this transaction if any.
        expect(u.relation).toBe(upd.relations.at(-1) ?? ins.relations.at(-1))
        expect(u.old).toMatchObject({ id: "1", flag: "t", note: null })
        expect(u.new).toMatchObject({ id: "1", flag: "f", note: "it's", at: "2024-01-02 01:04:05.25+00" })
      }

      const d = del.changes[0]
      expect(d?.kind).toBe("delete")
      if (d?.kind === "delete") expect(d.old).toMatchObject({ id: "2", flag: "f", note: null })

      expect(trunc.changes).toHaveLength(1)
      const t = trunc.changes[0]
      expect(t?.kind).toBe("truncate")
      if (t?.kind === "truncate") expect(t.relations.map((r) => r.name)).toEqual([name])
    }))

  it.live("decodes messages however the socket splits them, headers and values included", () =>
    Effect.scoped(Effect.gen(function*() {
      const name = `${prefix}_split`
      yield* setup(name, "id int PRIMARY KEY, note text")
      const proxy = yield* splittingProxy(url, 7)
      const { next, close } = yield* open(name, undefined, proxy.url)
      // Values shorter and longer than the pieces, of one to four bytes a character, NULLs, and every kind of change.
      const notes = ["", "a", "é", "日本語の値", "🙂".repeat(40), "x".repeat(3000), null]
      yield* withAdmin((c) => Effect.promise(async () => {
        for (const [i, note] of notes.entries()) await c.query(`INSERT INTO ${name} VALUES ($1, $2)`, [i, note])
        await c.query(`UPDATE ${name} SET note = note || '!' WHERE id < 3`)
        await c.query(`DELETE FROM ${name} WHERE id = 5`)
      }))
      const txs: Array<Transaction> = []
      for (let i = 0; i < notes.length + 2; i++) txs.push(yield* next)
      yield* close
      yield* teardown(name)

      expect(proxy.pieces()).toBeGreaterThan(500)
      expect(txs.slice(0, notes.length).map((t) => insertRow(t.changes[0]))).toEqual(notes.map((note, i) => ({ id: String(i), note })))
      const update = txs[notes.length]!
      expect(update.changes.map((c) => c.kind === "update" ? [c.old?.["note"], c.new["note"]] : c.kind)).toEqual([
        ["", "!"],
        ["a", "a!"],
        ["é", "é!"]
      ])
      const del = txs[notes.length + 1]!.changes[0]
      expect(del?.kind === "delete" ? del.old : del).toEqual({ id: "5", note: "x".repeat(3000) })
      for (let i = 1; i < txs.length; i++) expect(txs[i]!.commitLsn).toBeGreaterThan(txs[i - 1]!.commitLsn)
    })))

  it.live("acknowledges exactly the end LSN, so an adjacent next commit is redelivered", () =>
    Effect.gen(function*() {
      const name = `${prefix}_ack`
      const slot = `${name}_slot`
      yield* setup(name, "id int PRIMARY KEY")
      const first = yield* open(name)

      // Interleave two transactions so that T2's commit record starts exactly where
      // T1's ends; retry if some other WAL record slipped in between.
      let pair: readonly [Transaction, Transaction] | undefined
      for (let attempt = 0; attempt < 10 && pair === undefined; attempt++) {
        yield* withAdmin((c1) =>
          withAdmin((c2) => Effect.promise(async () => {
            await c1.query("BEGIN")
            await c1.query(`INSERT INTO ${name} VALUES (${attempt * 2 + 1})`)
            await c2.query("BEGIN")
            await c2.query(`INSERT INTO ${name} VALUES (${attempt * 2 + 2})`)
            await c1.query("COMMIT")
            await c2.query("COMMIT")
          }))
        )
        const t1 = yield* first.next
        const t2 = yield* first.next
        expect(insertRow(t1.changes[0])).toEqual({ id: String(attempt * 2 + 1) })
        expect(insertRow(t2.changes[0])).toEqual({ id: String(attempt * 2 + 2) })
        if (t2.commitLsn === t1.endLsn) pair = [t1, t2]
      }
      expect(pair).toBeDefined()
      const [t1, t2] = pair!

      expect(yield* first.conn.acknowledged).toBe(0n)
      yield* first.conn.ack(t1.endLsn)
      yield* first.conn.ack(t1.commitLsn) // lower values are ignored
      expect(yield* first.conn.acknowledged).toBe(t1.endLsn)
      yield* waitForSlot(slot, (row) => Lsn.fromPg(row.flush) === t1.endLsn)
      yield* first.close

      const second = yield* open(name)
      const again = yield* second.next
      expect(again.xid).toBe(t2.xid)
      expect(again.commitLsn).toBe(t2.commitLsn)
      expect(again.endLsn).toBe(t2.endLsn)
      yield* second.close

      const row = yield* waitForSlot(slot, (r) => !r.active)
      expect(Lsn.fromPg(row.flush)).toBe(t1.endLsn)
      yield* teardown(name)
    }))

  it.live("delivers every transaction in order while back-pressured", () =>
    Effect.gen(function*() {
      const name = `${prefix}_bp`
      yield* setup(name, "id int PRIMARY KEY")
      const total = 60
      yield* withAdmin((c) => Effect.promise(async () => {
        for (let i = 1; i <= total; i++) await c.query(`INSERT INTO ${name} VALUES (${i})`)
      }))
      const scope = yield* Scope.make()
      const conn = yield* make({ ...options(name), bufferSize: 1 }).pipe(Scope.extend(scope))
      const txs = yield* conn.events.pipe(
        Stream.filter(isTransaction),
        Stream.tap(() => Effect.sleep("2 millis")),
        Stream.take(total),
        Stream.runCollect,
        Effect.timeout("60 seconds")
      )
      yield* Scope.close(scope, Exit.void)
      yield* teardown(name)
      const ids = Chunk.toArray(txs).map((t) => insertRow(t.changes[0])["id"])
      expect(ids).toEqual(Array.from({ length: total }, (_, i) => String(i + 1)))
    }))

  it.live("fails the stream with a Connection error when the server ends the connection", () =>
    Effect.gen(function*() {
      const name = `${prefix}_kill`
      const slot = `${name}_slot`
      yield* setup(name, "id int PRIMARY KEY")
      const scope = yield* Scope.make()
      const conn = yield* make(options(name)).pipe(Scope.extend(scope))
      const consumer = yield* Stream.runDrain(conn.events).pipe(Effect.either, Effect.fork)
      yield* waitForSlot(slot, (row) => row.active)
      yield* sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1", [slot])
      const result = yield* consumer.await.pipe(Effect.flatten, Effect.timeout("30 seconds"))
      yield* Scope.close(scope, Exit.void)
      yield* teardown(name)
      expect(result._tag).toBe("Left")
      if (result._tag === "Left") {
        expect(result.left._tag).toBe("ReplicationError")
        expect(result.left.reason).toBe("Connection")
      }
    }))

  it.live("reports the WAL position of keepalives, past writes to tables outside the publication", () =>
    Effect.gen(function*() {
      const name = `${prefix}_keepalive`
      yield* setup(name, "id int PRIMARY KEY")
      yield* sql(`CREATE TABLE ${name}_other (id int)`)
      const scope = yield* Scope.make()
      const conn = yield* make(options(name)).pipe(Scope.extend(scope))
      const positions = yield* Queue.unbounded<bigint>()
      yield* Stream.runForEach(conn.events, (e) => (e.kind === "position" ? Queue.offer(positions, e.lsn) : Effect.void)).pipe(
        Effect.forkIn(scope)
      )
      yield* sql(`INSERT INTO ${name}_other SELECT generate_series(1, 1000)`)
      const written = Lsn.fromPg(String((yield* sql("SELECT pg_current_wal_lsn()::text AS lsn"))[0]!["lsn"]))
      const reached = yield* Queue.take(positions).pipe(
        Effect.repeat({ until: (lsn) => lsn >= written }),
        Effect.timeout("20 seconds")
      )
      expect(reached).toBeGreaterThanOrEqual(written)
      yield* Scope.close(scope, Exit.void)
      yield* sql(`DROP TABLE ${name}_other`)
      yield* teardown(name)
    }))

  it.live("fails with a Slot error when the slot does not exist", () =>
    Effect.gen(function*() {
      const name = `${prefix}_noslot`
      yield* sql(`CREATE PUBLICATION ${name}_pub`)
      const exit = yield* make(options(name)).pipe(Effect.scoped, Effect.exit)
      yield* sql(`DROP PUBLICATION ${name}_pub`)
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit)) {
        const error = exit.cause._tag === "Fail" ? exit.cause.error : undefined
        expect(error?._tag).toBe("ReplicationError")
        expect(error?.reason).toBe("Slot")
      }
    }))
})
