import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Exit, FastCheck, Fiber, Layer } from "effect"
import pg from "pg"
import { inject } from "vitest"
import type { Row } from "../../src/domain/Change.js"
import { rowKey } from "../../src/domain/RowKey.js"
import type { TableInfo } from "../../src/domain/Table.js"
import { displaySettingsSql } from "../../src/postgres/DisplaySettings.js"
import { Inspector } from "../../src/postgres/Inspector.js"
import { PgPool } from "../../src/postgres/PgPool.js"
import { linesOf, parsePgSnapshot, Snapshot } from "../../src/postgres/Snapshot.js"
import { splittingProxy } from "../support/splittingProxy.js"

const url = inject("databaseUrl")
const Live = Layer.mergeAll(Snapshot.layer, Inspector.layer).pipe(Layer.provideMerge(PgPool.layer({ connectionString: url, max: 4 })))

const exec = (sql: string, params?: ReadonlyArray<unknown>) => Effect.flatMap(PgPool, (db) => db.query(sql, params))
const load = (name: string) => Effect.flatMap(Inspector, (i) => i.load({ schema: "public", name }))

/** Takes a snapshot of every column and collects its lines. */
const collect = (table: TableInfo, whereSql?: string, columns = table.columns.map((c) => c.name)) =>
  Effect.gen(function*() {
    const lines: Array<string> = []
    const batches: Array<number> = []
    const info = yield* Effect.flatMap(Snapshot, (s) =>
      s.take(table, {
        whereSql,
        columns,
        onRows: (batch) => Effect.sync(() => {
          const batchLines = linesOf(batch)
          expect(batchLines.length).toBe(batch.count)
          batches.push(batch.count)
          lines.push(...batchLines)
        })
      }))
    return { info, lines, batches }
  })

/**
 * Rows as pgoutput would carry them: every value in its type's output text.
 * The extended protocol without type parsers gives exactly that.
 */
const rowsAsReplicated = (sql: string) =>
  Effect.promise(async () => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      const result = await client.query({ text: sql, types: { getTypeParser: () => (value: string) => value } })
      return result.rows as Array<Row>
    } finally {
      await client.end()
    }
  })

/** A query's rows as text, read under the display settings snapshots are taken with. */
const displayed = (sql: string) =>
  Effect.promise(async () => {
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      await client.query(displaySettingsSql("session"))
      const result = await client.query({ text: sql, types: { getTypeParser: () => (value: string) => value } })
      return result.rows as Array<Record<string, string>>
    } finally {
      await client.end()
    }
  })

const checkedOut = Effect.map(PgPool, ({ pool }) => pool.totalCount - pool.idleCount)

layer(Live, { excludeTestServices: true })("Snapshot", (it) => {
  it.effect("renders rows as the exact JSON insert messages of the protocol", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS snapshot_values;
        CREATE TABLE snapshot_values (
          id int8 PRIMARY KEY, name text, code char(4), ok bool, data bytea, f float8,
          at timestamptz, span interval, doc jsonb, xs int4[], "we""ird / name" text NOT NULL DEFAULT 'w'
        );
        INSERT INTO snapshot_values VALUES
          (1, 'plain', 'ab', true, '\\xdeadbeef', 1.1, '2024-01-02 03:04:05.123+02', '1 day 2 hours 3 minutes',
           '{"b": [1, 2], "a": "x\\\\y"}', '{1,NULL,3}', 'w'),
          (2, E'back\\\\slash "quoted" \\n new\\tline \\u00e9\\U0001F600 \\\\\\\\', NULL, false, NULL, 'NaN', NULL, NULL, NULL, NULL, 'z'),
          (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '');`)
      const table = yield* load("snapshot_values")
      const { info, lines } = yield* collect(table)
      expect(info.rows).toBe(3)
      const byId = new Map(lines.map((line) => [JSON.parse(line).value.id as string, line]))
      expect(byId.get("1")).toBe(
        `{"key":"\\"public\\".\\"snapshot_values\\"/\\"1\\"","value":{"id":"1","name":"plain","code":"ab  ","ok":"true",` +
          `"data":"\\\\xdeadbeef","f":"1.1","at":"2024-01-02 01:04:05.123+00","span":"P1DT2H3M",` +
          `"doc":"{\\"a\\": \\"x\\\\\\\\y\\", \\"b\\": [1, 2]}","xs":"{1,NULL,3}","we\\"ird / name":"w"},` +
          `"headers":{"operation":"insert","relation":["public","snapshot_values"]}}`
      )
      const second = JSON.parse(byId.get("2")!)
      expect(second.value.name).toBe("back\\slash \"quoted\" \n new\tline é😀 \\\\")
      expect(second.value.code).toBeNull()
      expect(second.value.ok).toBe("false")
      expect(second.value.f).toBe("NaN")
      expect(second.key).toBe(`"public"."snapshot_values"/"2"`)
      const third = JSON.parse(byId.get("3")!)
      expect(Object.keys(third.value)).toEqual(table.columns.map((c) => c.name))
      expect(third.value["we\"ird / name"]).toBe("")
      expect(third.value.name).toBeNull()
    }))

  it.effect("writes every character exactly as Postgres's to_json would", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS snapshot_chars;
        CREATE TABLE snapshot_chars (id int PRIMARY KEY, v text, c "char", ok bool, ip inet);
        INSERT INTO snapshot_chars SELECT g, chr(g), chr(g)::"char", g % 2 = 0, '10.0.0.1' FROM generate_series(1, 300) g;
        INSERT INTO snapshot_chars VALUES
          (1000, E'\\N', 'N', NULL, '::1'), (1001, E'\\\\N', NULL, true, NULL), (1002, E'a\tb\nc\rd\\e"f\u2028\u0007\u000b', 'x', false, NULL),
          (1003, '', '', NULL, NULL), (1004, NULL, NULL, NULL, NULL), (1005, E'😀 é /slash/', '"', true, '192.168.0.0/16');`)
      const table = yield* load("snapshot_chars")
      const { lines } = yield* collect(table)
      const expected = (yield* exec(`
        SELECT concat('{"key":', to_json('"public"."snapshot_chars"/"' || id::text || '"')::text, ',"value":{"id":', to_json(id::text)::text,
                      ',"v":', coalesce(to_json(v::text)::text, 'null'), ',"c":', coalesce(to_json(c::text)::text, 'null'),
                      ',"ok":', coalesce(to_json(ok::text)::text, 'null'), ',"ip":', coalesce(to_json(ip::text)::text, 'null'),
                      '},"headers":{"operation":"insert","relation":["public","snapshot_chars"]}}') AS line
          FROM snapshot_chars`)).map((r) => r.line as string)
      expect(lines.length).toBe(306)
      expect([...lines].sort()).toEqual([...expected].sort())
    }))

  it.effect("renders random text, long and short, exactly as Postgres's to_json would", () =>
    Effect.gen(function*() {
      // Random code points mixed with the characters COPY and JSON escape, in rows of very different widths,
      // so fast-path rows, escaped rows and rows spanning network chunks meet in one stream.
      const special = FastCheck.constantFrom("\\", "\"", "\n", "\t", "\r", "\u0001", "\u007f", "\\N", "/", "é", "😀", "\u2028")
      const piece = FastCheck.oneof(FastCheck.string({ unit: "grapheme", maxLength: 8 }), special)
      const text = FastCheck.array(piece, { maxLength: 40 }).map((parts) => parts.join(""))
      const values = FastCheck.sample(
        FastCheck.oneof({ weight: 6, arbitrary: text }, { weight: 1, arbitrary: FastCheck.constant(null) }, {
          weight: 1,
          arbitrary: text.map((t) => t.repeat(2000))
        }),
        { numRuns: 400, seed: 20261201 }
      )
      yield* exec(`DROP TABLE IF EXISTS snapshot_random; CREATE TABLE snapshot_random (id int PRIMARY KEY, v text)`)
      for (let i = 0; i < values.length; i += 100) {
        const batch = values.slice(i, i + 100)
        yield* exec(
          `INSERT INTO snapshot_random SELECT ${i} + n, v FROM unnest($1::text[]) WITH ORDINALITY AS t(v, n)`,
          [batch.map((v) => (v === null ? null : v.replaceAll("\u0000", "")))]
        )
      }
      const table = yield* load("snapshot_random")
      const { lines } = yield* collect(table)
      const expected = (yield* exec(`
        SELECT concat('{"key":', to_json('"public"."snapshot_random"/"' || id::text || '"')::text, ',"value":{"id":', to_json(id::text)::text,
                      ',"v":', coalesce(to_json(v)::text, 'null'),
                      '},"headers":{"operation":"insert","relation":["public","snapshot_random"]}}') AS line
          FROM snapshot_random`)).map((r) => r.line as string)
      expect(lines.length).toBe(values.length)
      expect([...lines].sort()).toEqual([...expected].sort())
    }))

  it.effect("prints values of every kind of type as their output text, keys and values alike", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS snapshot_types;
        DROP TYPE IF EXISTS snapshot_mood;
        CREATE TYPE snapshot_mood AS ENUM ('happy', 'sad "quoted" \\ / mood');
        CREATE TABLE snapshot_types (
          id uuid, k text, n numeric, n2 numeric(10, 3), i2 int2, i8 int8, f4 float4, f8 float8, d date, t time,
          tz timetz, ts timestamp, tstz timestamptz, iv interval, j json, jb jsonb, tx text[], b bytea,
          m snapshot_mood, c char(5), vc varchar(10), ch "char", bo bool, ip inet, net cidr, mac macaddr, p point,
          bits varbit, tv tsvector, r int4range, ia int[], ba bool[], PRIMARY KEY (id, k));
        INSERT INTO snapshot_types VALUES
          ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'k/1', 12345678901234567890.123456789, 1.5, -32768, 9223372036854775807,
           1.1, 0.1, '2024-02-29', '23:59:59.999999', '12:00+05:30', '2024-01-01 00:00:00.5', '1999-12-31 23:59:59-08',
           '-1 year 2 mons -3 days 04:05:06.7', '{"a": "é\\n\\"x\\"", "b": [1, 2.50]}', '{"z": "\\u00e9 \\t", "a": null}',
           ARRAY['plain', 'with "quotes"', E'back\\\\slash', NULL, '', 'comma,brace}'], '\\x00ff0a5c22',
           'sad "quoted" \\ / mood', 'ab', 'v/c', 'q', true, '10.1.2.3', '10.0.0.0/8', '08:00:2b:01:02:03', '(1.5,-2)',
           B'1011', 'the fat:1 cat', '[1,10)', '{{1,2},{3,NULL}}', '{t,f,NULL}'),
          ('00000000-0000-0000-0000-000000000000', '', 'NaN', NULL, 0, -1, 'Infinity', '-Infinity', 'infinity', '00:00',
           NULL, '-infinity', 'infinity', '0', 'null', '"a string"', '{}', '', 'happy', NULL, NULL, NULL, false, '::1',
           '2001:db8::/32', NULL, NULL, B'', '', 'empty', '{}', '{}'),
          ('ffffffff-ffff-ffff-ffff-ffffffffffff', E'tab\\there "q" \\\\N', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL);`)
      const table = yield* load("snapshot_types")
      const { lines } = yield* collect(table)
      // The output text of each value, printed by Postgres itself: concat() calls each type's output function.
      const asText = (name: string) => ["bo", "ip", "net", "ch"].includes(name) ? `${name}::text` : `concat(${name})`
      const values = table.columns.map((c, i) =>
        `'${i === 0 ? "" : ","}"${c.name}":', CASE WHEN ${c.name} IS NULL THEN 'null' ELSE to_json(${asText(c.name)})::text END`
      )
      const expected = (yield* displayed(`
        SELECT concat('{"key":', to_json(concat('"public"."snapshot_types"/"', replace(id::text, '/', '//'), '"/"',
                      replace(k, '/', '//'), '"'))::text, ',"value":{', ${values.join(", ")},
                      '},"headers":{"operation":"insert","relation":["public","snapshot_types"]}}') AS line
          FROM snapshot_types`)).map((r) => r["line"]!)
      expect(lines.length).toBe(3)
      expect([...lines].sort()).toEqual([...expected].sort())
      const first = JSON.parse(lines.find((l) => l.includes("a0eebc99"))!)
      expect(first.value.c).toBe("ab   ")
      expect(first.value.tx).toBe(`{plain,"with \\"quotes\\"","back\\\\slash",NULL,"","comma,brace}"}`)
      expect(first.value.b).toBe("\\x00ff0a5c22")
    }))

  it.scoped("reads the rows however the network splits the COPY's messages", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS snapshot_split;
        CREATE TABLE snapshot_split (id int PRIMARY KEY, v text, w text);
        INSERT INTO snapshot_split SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE repeat(chr(g + 32), g % 23) END,
          CASE WHEN g % 5 = 0 THEN E'q"\\\\\n' ELSE 'é😀' END FROM generate_series(1, 300) g;
        INSERT INTO snapshot_split VALUES (0, repeat('wide/', 1000), NULL);`)
      const table = yield* load("snapshot_split")
      const direct = (yield* collect(table)).lines
      expect(direct.length).toBe(301)
      for (const seed of [1, 2, 3]) {
        const proxy = yield* splittingProxy(url, seed)
        const split = yield* collect(table).pipe(
          Effect.provide(Snapshot.layer.pipe(Layer.provide(PgPool.layer({ connectionString: proxy.url, max: 1 }))))
        )
        expect(proxy.pieces()).toBeGreaterThan(2000)
        expect(split.info.rows).toBe(301)
        expect(split.lines).toEqual(direct)
      }
    }))

  it.effect("selects the given columns in the given order and applies the where clause", () =>
    Effect.gen(function*() {
      const table = yield* load("snapshot_values")
      const { lines } = yield* collect(table, `id >= 2 AND "we""ird / name" = 'z'`, ["id", "ok"])
      expect(lines).toEqual([
        `{"key":"\\"public\\".\\"snapshot_values\\"/\\"2\\"","value":{"id":"2","ok":"false"},` +
        `"headers":{"operation":"insert","relation":["public","snapshot_values"]}}`
      ])
    }))

  it.effect("builds the same row keys in SQL as rowKey does from replicated rows", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS "Snapshot ""Keys""/x";
        CREATE TABLE "Snapshot ""Keys""/x" (a text, b bool, c inet, d char(3), v int, PRIMARY KEY (a, b, c, d));
        INSERT INTO "Snapshot ""Keys""/x" VALUES
          ('sl/ash//es', true, '10.0.0.1', 'x', 1),
          ('quo"te"', false, '10.0.0.0/8', 'yz', 2),
          ('ünï😀code', true, '::1', 'abc', 3),
          ('/', false, '2001:db8::/32', '', 4);
        DROP TABLE IF EXISTS snapshot_nopk;
        CREATE TABLE snapshot_nopk (z text, a int, m text);
        INSERT INTO snapshot_nopk VALUES ('p/q', 1, NULL), (NULL, NULL, 'x"y'), ('', 2, '');`)
      for (const name of [`Snapshot "Keys"/x`, "snapshot_nopk"]) {
        const table = yield* load(name)
        const { lines } = yield* collect(table)
        const sqlKeys = lines.map((line) => JSON.parse(line).key as string).sort()
        const replicated = yield* rowsAsReplicated(`SELECT * FROM "${name.replaceAll("\"", "\"\"")}"`)
        const tsKeys = replicated.map((row) => rowKey(table, row)).sort()
        expect(sqlKeys).toEqual(tsKeys)
        expect(new Set(sqlKeys).size).toBe(replicated.length)
      }
      const keys = yield* load(`Snapshot "Keys"/x`)
      expect(rowKey(keys, { a: "sl/ash//es", b: "t", c: "10.0.0.1", d: "x  " }))
        .toBe(`"public"."Snapshot ""Keys""/x"/"sl//ash////es"/"t"/"10.0.0.1"/"x  "`)
      const nopk = yield* load("snapshot_nopk")
      expect(nopk.pk).toEqual(["a", "m", "z"])
      expect(rowKey(nopk, { z: null, a: null, m: "x\"y" })).toBe(`"public"."snapshot_nopk"/_/"x"y"/_`)
    }))

  it.effect("hands over lines in bounded batches and reads rows wider than a network chunk", () =>
    Effect.gen(function*() {
      yield* exec(`
        DROP TABLE IF EXISTS snapshot_many;
        CREATE TABLE snapshot_many (id int PRIMARY KEY, body text);
        INSERT INTO snapshot_many SELECT g, 'row ' || g FROM generate_series(1, 5000) g;
        INSERT INTO snapshot_many VALUES (0, repeat('é😀\\', 60000));`)
      const table = yield* load("snapshot_many")
      const { info, lines, batches } = yield* collect(table)
      expect(info.rows).toBe(5001)
      expect(lines.length).toBe(5001)
      expect(batches.length).toBeGreaterThanOrEqual(6)
      expect(Math.max(...batches)).toBeLessThanOrEqual(1000)
      const wide = lines.map((l) => JSON.parse(l)).find((m) => m.value.id === "0")
      expect(wide.value.body).toBe("é😀\\".repeat(60000))
      expect(new Set(lines.map((l) => JSON.parse(l).value.id)).size).toBe(5001)
    }))

  it.effect("records the snapshot: in-progress transactions are in xip, the LSN is current", () =>
    Effect.gen(function*() {
      yield* exec(`DROP TABLE IF EXISTS snapshot_xip; CREATE TABLE snapshot_xip (id int PRIMARY KEY);`)
      const other = new pg.Client({ connectionString: url })
      yield* Effect.promise(() => other.connect())
      const xid = yield* Effect.promise(async () => {
        await other.query("BEGIN")
        await other.query("INSERT INTO snapshot_xip VALUES (1)")
        const { rows } = await other.query("SELECT pg_current_xact_id()::text AS xid")
        return BigInt(rows[0].xid)
      })
      // A later transaction that commits moves xmax past the one still open, which must be listed in xip.
      yield* exec("INSERT INTO snapshot_xip VALUES (2)")
      const before = yield* exec("SELECT pg_current_wal_lsn()::text AS lsn")
      const table = yield* load("snapshot_xip")
      const { info, lines } = yield* collect(table)
      yield* Effect.promise(async () => {
        await other.query("COMMIT")
        await other.end()
      })
      expect(lines).toEqual([`{"key":"\\"public\\".\\"snapshot_xip\\"/\\"2\\"","value":{"id":"2"},"headers":{"operation":"insert","relation":["public","snapshot_xip"]}}`])
      expect(info.rows).toBe(1)
      expect(info.xip).toContain(xid)
      expect(info.xmin).toBeLessThanOrEqual(xid)
      expect(info.xmax).toBeGreaterThan(xid)
      const [hi, lo] = (before[0]!.lsn as string).split("/")
      expect(info.lsn).toBeGreaterThanOrEqual((BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`))
    }))

  it.effect("fails with a Snapshot error on a bad query and returns the connection", () =>
    Effect.gen(function*() {
      const table = yield* load("snapshot_many")
      const error = yield* Effect.flip(collect(table, "1 / (id - 1500) > 0"))
      expect(error._tag).toBe("PostgresError")
      expect(error.reason).toBe("Snapshot")
      expect(error.message).toContain("division by zero")
      expect(yield* checkedOut).toBe(0)
      expect((yield* collect(table, "id < 10")).lines.length).toBe(10)
    }))

  it.effect("passes the consumer's failure through and returns the connection", () =>
    Effect.gen(function*() {
      const table = yield* load("snapshot_many")
      const snapshot = yield* Snapshot
      const error = yield* Effect.flip(
        snapshot.take(table, { whereSql: undefined, columns: ["id"], onRows: () => Effect.fail("disk full" as const) })
      )
      expect(error).toBe("disk full")
      expect(yield* checkedOut).toBe(0)
    }))

  it.effect("ends the transaction and returns the connection when interrupted mid-stream", () =>
    Effect.gen(function*() {
      const table = yield* load("snapshot_many")
      const snapshot = yield* Snapshot
      let calls = 0
      const fiber = yield* Effect.fork(
        snapshot.take(table, {
          whereSql: undefined,
          columns: ["id", "body"],
          onRows: () => Effect.zipRight(Effect.sync(() => calls++), Effect.never)
        })
      )
      while (calls === 0) yield* Effect.sleep("10 millis")
      const exit = yield* Fiber.interrupt(fiber)
      expect(Exit.isInterrupted(exit)).toBe(true)
      expect(calls).toBe(1)
      expect(yield* checkedOut).toBe(0)
      expect((yield* collect(table, "id < 5")).lines.length).toBe(5)
    }))
})

describe("parsePgSnapshot", () => {
  it("parses 64-bit xids and the in-progress list", () => {
    expect(parsePgSnapshot("10:20:")).toEqual({ xmin: 10n, xmax: 20n, xip: [] })
    expect(parsePgSnapshot("4294967300:4294967310:4294967301,4294967305")).toEqual({
      xmin: 4294967300n,
      xmax: 4294967310n,
      xip: [4294967301n, 4294967305n]
    })
  })
})
