import { startEmbeddedPostgres } from "../../src/postgres/EmbeddedPostgres.js"

/*
 * Child process for the orphan test: starts an embedded Postgres on the data directory given
 * as the first argument, prints its port as one JSON line, and waits to be killed.
 */
const dataDir = process.argv[2]
if (dataDir === undefined) throw new Error("usage: postgresChild.ts <dataDir>")
const running = await startEmbeddedPostgres({ dataDir, settings: { fsync: "off" } })
process.stdout.write(`${JSON.stringify({ port: running.port })}\n`)
setInterval(() => {}, 60_000)
