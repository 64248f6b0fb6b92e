import { readdir } from "node:fs/promises"
import * as path from "node:path"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest"
import { dropReplication, type RunningSyncline, startSyncline, tempDir, testPool } from "../support/syncline.js"

/**
 * Tables whose changes can never reach a shape: system catalogs, unlogged and temporary
 * tables. Creating a shape on one used to run `ALTER TABLE … REPLICA IDENTITY FULL` on it and
 * then fail to publish it, answering a 503 the client retried for ever. Now it is a 400 on
 * `table`, and nothing in the database is touched.
 */

const STREAM = "unsupported_tables"
const PUBLICATION = `electric_publication_${STREAM}`
const UNLOGGED = "unsupported_unlogged"
const TEMPORARY = "unsupported_temporary"

let server: RunningSyncline
let pool: pg.Pool
/** Another session, which owns a temporary table for the whole file. */
let session: pg.Client
let tempSchema: string

beforeAll(async () => {
  pool = testPool()
  await pool.query(`DROP TABLE IF EXISTS ${UNLOGGED}`)
  await pool.query(`CREATE UNLOGGED TABLE ${UNLOGGED} (id int PRIMARY KEY, v text)`)
  await pool.query(`INSERT INTO ${UNLOGGED} VALUES (1, 'one')`)
  session = new pg.Client({ connectionString: inject("databaseUrl") })
  await session.connect()
  await session.query(`CREATE TEMPORARY TABLE ${TEMPORARY} (id int PRIMARY KEY, v text)`)
  const { rows } = await session.query<{ schema: string }>(`SELECT pg_my_temp_schema()::regnamespace::text AS schema`)
  tempSchema = rows[0]!.schema
  server = await startSyncline({ streamId: STREAM })
})

afterAll(async () => {
  await server?.stop()
  await session?.end()
  await dropReplication(pool, STREAM)
  await pool.end()
})

const shape = async (table: string, on: RunningSyncline = server) => {
  const res = await fetch(`${on.baseUrl}/v1/shape?${new URLSearchParams({ table, offset: "-1" })}`)
  return { status: res.status, body: await res.text(), handle: res.headers.get("electric-handle") }
}

const refusal = (message: string) => ({
  status: 400,
  body: JSON.stringify({ message: "Invalid request", errors: { table: [message] } }),
  handle: null
})

/** What shape creation would change: the replica identity, and membership of any publication. */
const footprint = async (qualified: string) => {
  const { rows } = await pool.query<{ replident: string; publications: Array<string> }>(
    `SELECT c.relreplident AS replident,
            ARRAY(SELECT p.pubname::text FROM pg_catalog.pg_publication_rel r
                    JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
                   WHERE r.prrelid = c.oid ORDER BY 1) AS publications
       FROM pg_catalog.pg_class c WHERE c.oid = $1::regclass`,
    [qualified]
  )
  return rows[0]
}

describe("a shape on a table that is never replicated", () => {
  it("is refused with a 400 on a system catalog, which is left untouched", async () => {
    const before = await footprint("pg_catalog.pg_authid")
    expect(before).toEqual({ replident: "n", publications: [] })
    expect(await shape("pg_catalog.pg_authid")).toEqual(
      refusal(`Table "pg_catalog"."pg_authid" is in the system schema "pg_catalog", whose tables are never replicated`)
    )
    expect(await shape("information_schema.sql_features")).toEqual(
      refusal(
        `Table "information_schema"."sql_features" is in the system schema "information_schema", whose tables are never replicated`
      )
    )
    expect(await footprint("pg_catalog.pg_authid")).toEqual(before)
    expect(await footprint("information_schema.sql_features")).toEqual({ replident: "d", publications: [] })
    const published = await pool.query(
      `SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1`,
      [PUBLICATION]
    )
    expect(published.rows).toEqual([])
  })

  it("is refused with a 400 on an unlogged table, which is left untouched", async () => {
    expect(await shape(UNLOGGED)).toEqual(
      refusal(`Table "public"."${UNLOGGED}" is unlogged: its changes are never written to the WAL, so they cannot be replicated`)
    )
    expect(await footprint(`public.${UNLOGGED}`)).toEqual({ replident: "d", publications: [] })
  })

  it("is refused with a 400 on another session's temporary table, which is left untouched", async () => {
    expect(tempSchema).toMatch(/^pg_temp_\d+$/)
    expect(await shape(`${tempSchema}.${TEMPORARY}`)).toEqual(
      refusal(`Table "${tempSchema}"."${TEMPORARY}" is in the temporary schema "${tempSchema}", whose tables are never replicated`)
    )
    expect(await footprint(`${tempSchema}.${TEMPORARY}`)).toEqual({ replident: "d", publications: [] })
  })

  it("leaves an ordinary table's shape working on the same server", async () => {
    await pool.query(`DROP TABLE IF EXISTS unsupported_logged`)
    await pool.query(`CREATE TABLE unsupported_logged (id int PRIMARY KEY)`)
    expect((await shape("unsupported_logged")).status).toBe(200)
    expect(await footprint("public.unsupported_logged")).toEqual({ replident: "f", publications: [PUBLICATION] })
  })
})

describe("a shape whose table stopped being replicated while the service was down", () => {
  const stream = "unsupported_restore"
  const table = "unsupported_later"

  afterAll(async () => {
    await dropReplication(pool, stream)
  })

  it("is removed when the stack starts, and the stack starts", async () => {
    await pool.query(`DROP TABLE IF EXISTS ${table}`)
    await pool.query(`CREATE TABLE ${table} (id int PRIMARY KEY)`)
    const storageDir = await tempDir(stream)
    const first = await startSyncline({ streamId: stream, storageDir })
    try {
      const created = await shape(table, first)
      expect(created.status).toBe(200)
    } finally {
      await first.stop()
    }
    expect(await readdir(path.join(storageDir, "shapes"))).toHaveLength(1)
    // Postgres keeps a published table logged: it has to leave the publication first.
    await pool.query(`ALTER PUBLICATION electric_publication_${stream} DROP TABLE ${table}`)
    await pool.query(`ALTER TABLE ${table} SET UNLOGGED`)

    const second = await startSyncline({ streamId: stream, storageDir })
    try {
      expect(await shape(table, second)).toEqual(
        refusal(`Table "public"."${table}" is unlogged: its changes are never written to the WAL, so they cannot be replicated`)
      )
      const files = await readdir(path.join(storageDir, "shapes"))
      expect(files).toEqual([])
    } finally {
      await second.stop()
    }
  })
})
