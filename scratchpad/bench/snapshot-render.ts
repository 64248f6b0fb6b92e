import { createHash } from "node:crypto"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { EventEmitter } from "node:events"
import { Effect, Layer } from "effect"
import type { TableInfo } from "../../src/domain/Table.js"
import { PgPool } from "../../src/postgres/PgPool.js"
import { Snapshot } from "../../src/postgres/Snapshot.js"
import { ShapeLogFiles } from "../../src/storage/internal/ShapeLogFiles.js"

/*
 * The snapshot's own work without Postgres or HTTP: the protocol messages of a COPY of the bench
 * table (100k rows, 64 kB chunks as the socket delivers them) go through `Snapshot.take` (a fake
 * connection) into a real shape log directory (or nowhere, with `BENCH_STORAGE=0`). Prints
 * the wall and CPU time of each round and their medians, in ms.
 * Run with `node --import tsx scratchpad/bench/snapshot-render.ts`.
 */

const ROWS = Number(process.env["BENCH_ROWS"] ?? 100_000)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 7)
const CHUNK = 65_536
/** `0`: the lines are dropped instead of written, to time the rendering alone. */
const STORAGE = process.env["BENCH_STORAGE"] !== "0"

const column = (name: string, attnum: number, typeName: string) => ({
  name, attnum, typeName, typeOid: 0, elementTypeOid: 0, typeKind: "b", baseTypeName: typeName, dims: 0, typeMod: -1, notNull: true
})
const table = {
  oid: 1,
  schema: "public",
  name: "bench_items",
  columns: [column("id", 1, "int4"), column("title", 2, "text"), column("n", 3, "int4"), column("created_at", 4, "timestamptz"), column("done", 5, "bool")],
  pk: ["id"]
} as unknown as TableInfo

const copyText = (): Buffer => {
  const parts: Array<string> = []
  const base = Date.parse("2026-11-30T23:59:59Z")
  for (let i = 1; i <= ROWS; i++) {
    const at = new Date(base - i * 1000).toISOString().replace("T", " ").replace("Z", "+00")
    parts.push(`${i}\titem number ${i}\t${(i * 7919) % 100000}\t${at}\t${i % 3 === 0 ? "true" : "false"}\n`)
  }
  return Buffer.from(parts.join(""))
}

/** The backend's messages of a COPY of `copy` (one CopyData per row), then CommandComplete and ReadyForQuery. */
const copyMessages = (copy: Buffer): Buffer => {
  const message = (type: string, body: Buffer): Buffer => {
    const header = Buffer.alloc(5)
    header.write(type, 0, "latin1")
    header.writeUInt32BE(body.length + 4, 1)
    return Buffer.concat([header, body])
  }
  const parts: Array<Buffer> = [message("H", Buffer.from([0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))]
  let rows = 0
  for (let start = 0; start < copy.length; rows++) {
    const end = copy.indexOf(10, start) + 1
    parts.push(message("d", copy.subarray(start, end)))
    start = end
  }
  parts.push(message("c", Buffer.alloc(0)), message("C", Buffer.from(`COPY ${rows}\0`)), message("Z", Buffer.from("I")))
  return Buffer.concat(parts)
}

/**
 * A connection whose socket delivers `bytes` in chunks as the network would, honouring pause and resume. The
 * driver's own handler reads what the COPY gives back: CommandComplete and ReadyForQuery, reported to the query.
 */
const fakeConnection = (bytes: Buffer) => {
  const stream = new EventEmitter() as EventEmitter & { pause(): void; resume(): void }
  let paused = false
  let at = 0
  let query: { handleCommandComplete(m: { text: string }): void; handleReadyForQuery(): void } | undefined
  const driver = (chunk: Buffer) => {
    for (let pos = 0; pos < chunk.length;) {
      const type = String.fromCharCode(chunk[pos]!)
      const end = pos + 1 + chunk.readUInt32BE(pos + 1)
      if (type === "C") query!.handleCommandComplete({ text: chunk.toString("utf8", pos + 5, end - 1) })
      if (type === "Z") query!.handleReadyForQuery()
      pos = end
    }
  }
  const flow = () => {
    while (!paused && at < bytes.length && stream.listeners("data")[0] !== driver) {
      const chunk = Buffer.from(bytes.subarray(at, at + CHUNK))
      at += chunk.length
      stream.emit("data", chunk)
    }
  }
  stream.pause = () => {
    paused = true
  }
  stream.resume = () => {
    paused = false
    setImmediate(flow)
  }
  stream.on("data", driver)
  return {
    stream,
    query: () => setImmediate(flow),
    attach: (q: typeof query) => {
      query = q
    }
  }
}

const main = async () => {
  const messages = copyMessages(copyText())
  const fakeClient = {
    on: () => {},
    off: () => {},
    release: () => {},
    query: (q: unknown) => {
      if (typeof q === "string") {
        if (q.startsWith("BEGIN")) return Promise.resolve([{ rows: [] }, { rows: [{ snapshot: "10:10:", lsn: "0/1" }] }])
        return Promise.resolve({ rows: [] })
      }
      const copy = q as { submit(c: unknown): Error | undefined; handleCommandComplete(m: { text: string }): void; handleReadyForQuery(): void }
      const connection = fakeConnection(messages)
      connection.attach(copy)
      const error = copy.submit(connection)
      if (error !== undefined) throw error
      return copy
    }
  }
  const pool = Layer.succeed(PgPool, { pool: { connect: () => Promise.resolve(fakeClient) }, connectionString: "" } as unknown as PgPool["Type"])
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-render-"))
  const timings: Array<number> = []
  const cpu: Array<number> = []
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const files = await ShapeLogFiles.create(path.join(dir, String(round)), String(round), 10 * 1024 * 1024)
      const started = performance.now()
      const cpuStarted = process.cpuUsage()
      const info = await Effect.runPromise(
        Effect.flatMap(Snapshot, (s) =>
          s.take(table, {
            whereSql: undefined,
            columns: table.columns.map((c) => c.name),
            onRows: (rows) => (STORAGE ? Effect.promise(() => files.appendSnapshotRows(rows.bytes)) : Effect.void)
          })).pipe(Effect.provide(Snapshot.layer), Effect.provide(pool))
      )
      await files.completeSnapshot()
      timings.push(performance.now() - started)
      const used = process.cpuUsage(cpuStarted)
      cpu.push((used.user + used.system) / 1000)
      if (info.rows !== ROWS) throw new Error(`${info.rows} rows`)
      await files.shutdown("closed")
    }
    const hash = createHash("sha256")
    const sizes: Array<number> = []
    for (let n = 0; ; n++) {
      const data = await fs.readFile(path.join(dir, "0", `snapshot.${n}.jsonl`)).catch(() => undefined)
      if (data === undefined) break
      sizes.push(data.length)
      hash.update(data)
    }
    const median = (xs: Array<number>) => xs.sort((a, b) => a - b)[xs.length >> 1]!
    console.log(`wall ${timings.map((t) => t.toFixed(0)).join(" ")}; cpu ${cpu.map((t) => t.toFixed(0)).join(" ")}`)
    console.log(`wall median ${median(timings).toFixed(0)} ms, best ${timings[0]!.toFixed(0)} ms; cpu median ${median(cpu).toFixed(0)} ms, best ${cpu[0]!.toFixed(0)} ms; chunks ${sizes.join(" ")} bytes, sha256 ${hash.digest("hex").slice(0, 16)}`)
  } finally {
    await fs.rm(dir, { recursive: true, force: true })
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
