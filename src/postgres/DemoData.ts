import * as Effect from "effect/Effect"
import pg from "pg"
import { PostgresError } from "../domain/errors.js"

/** The table the zero-config mode creates, so a first request has something to sync. */
export const DEMO_TABLE = "items"

/**
 * Creates the demo table with a few rows, once: an existing table (and the
 * user's edits to it) is left as it is.
 */
export const ensureDemoData = (connectionString: string): Effect.Effect<void, PostgresError> =>
  Effect.tryPromise({
    try: async () => {
      const client = new pg.Client({ connectionString })
      await client.connect()
      try {
        await client.query(`
          CREATE TABLE IF NOT EXISTS ${DEMO_TABLE} (
            id serial PRIMARY KEY,
            title text NOT NULL,
            done boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now()
          )`)
        const { rows } = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${DEMO_TABLE}`)
        if (rows[0]!.n === "0") {
          await client.query(`
            INSERT INTO ${DEMO_TABLE} (title, done) VALUES
              ('Install Syncline', true),
              ('Sync a table to the client', false),
              ('Restart the service and keep syncing', false)`)
        }
      } finally {
        await client.end()
      }
    },
    catch: (cause) => new PostgresError({ reason: "Query", message: `could not create the demo table: ${String(cause)}`, cause })
  })
