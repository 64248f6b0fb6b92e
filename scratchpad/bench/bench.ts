import { spawnSync } from "node:child_process"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { REPO_ROOT, startNodeArgs } from "../../test/support/process.js"
import {
  BENCH_DIR,
  dropSlot,
  gitCommit,
  machine,
  onCleanup,
  QUICK,
  type Report,
  type ResultRow,
  runCleanups,
  Service,
  SERVICE_NODE_ARGS,
  servicesStarted,
  startDatabase
} from "./harness.js"
import { chunks } from "./parts/chunks.js"
import { fanout } from "./parts/fanout.js"
import { idle } from "./parts/idle.js"
import { memory } from "./parts/memory.js"
import { catchUpArms, oneShape } from "./parts/oneShape.js"
import type { Part } from "./parts/part.js"
import { startup } from "./parts/startup.js"
import { sync } from "./parts/sync.js"

/*
 * The performance figures of the service, each beside the limit of the same work measured in the
 * same run, with the ratio and its target. The service runs compiled (`npm run build`, then
 * `dist/main.js` with the node flags `npm start` gives it) as a child process on an embedded Postgres the bench starts; every limit
 * runs in a child process too, so client and server never share an event loop.
 *
 *   npm run bench                       every part (about 10 minutes)
 *   npm run bench -- fanout startup     only these parts
 *   BENCH_QUICK=1 npm run bench         smaller sizes, a quick check that everything runs
 *
 * The table is printed as Markdown and written to scratchpad/bench/results.md (BENCH_OUT=<file>
 * to write it elsewhere). Sizes: BENCH_ROUNDS, BENCH_FANOUT (e.g. 200,1000), BENCH_ROWS,
 * BENCH_CHUNK_BYTES, BENCH_CHUNK_CHANGES, BENCH_LOAD_SECONDS, BENCH_TXNS, BENCH_IDLE_SHAPES,
 * BENCH_MEMORY_SHAPES, BENCH_STARTUP_SHAPES (e.g. 3000,10000), BENCH_STARTUP_RUNS.
 * BENCH_SKIP_BUILD=1 uses dist/ as it is. BENCH_NODE_ARGS="<flags>" starts every service process with
 * these node flags (a profiler, V8 flags), and the header says so. BENCH_CATCHUP_ROUNDS sets the one-shape
 * catch-up's rounds; BENCH_CATCHUP_ARMS="a=<dir>[ <flags>]; b=…" runs each of them on every arm, other builds or
 * flags, in turns (see parts/oneShape.ts), and the header says so.
 */

const PARTS: ReadonlyArray<Part> = [fanout, sync, chunks, oneShape, idle, memory, startup]

const usage = () =>
  `usage: npm run bench [-- <part> …]\nparts:\n${PARTS.map((p) => `  ${p.name.padEnd(10)} ${p.describe}`).join("\n")}`

const main = async (): Promise<number> => {
  const args = process.argv.slice(2)
  if (args.includes("--help") || args.includes("-h")) {
    console.log(usage())
    return 0
  }
  const unknown = args.filter((a) => !PARTS.some((p) => p.name === a))
  if (unknown.length > 0) {
    console.error(`unknown part ${unknown.join(", ")}\n${usage()}`)
    return 2
  }
  const selected = args.length === 0 ? PARTS : PARTS.filter((p) => args.includes(p.name))
  const started = performance.now()
  const date = new Date()
  const loadBefore = os.loadavg()[0]!

  if (process.env["BENCH_SKIP_BUILD"] !== "1") {
    console.log("building (npm run build)…")
    const build = spawnSync("npm", ["run", "build"], { cwd: REPO_ROOT, encoding: "utf8" })
    if (build.status !== 0) throw new Error(`npm run build failed:\n${build.stdout}\n${build.stderr}`)
  }

  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-bench-"))
  onCleanup(() => fs.rm(dir, { recursive: true, force: true }))
  // As root the embedded Postgres runs as another user, which must be able to enter the directory.
  await fs.chmod(dir, 0o755)
  const db = await startDatabase(dir)
  const report: Report = { rows: [], notes: [] }
  const failures: Array<string> = []
  const context = {
    db,
    dir,
    report,
    startService: (options: Parameters<typeof Service.start>[1]) => Service.start(db.postgres.url, options)
  }
  for (const part of selected) {
    const partStarted = performance.now()
    const firstService = servicesStarted.length
    console.log(`${part.name}: ${part.describe}…`)
    try {
      await part.run(context)
    } catch (error) {
      // Stopped by a signal: the cleanup is under way.
      if (exiting) return 130
      console.error(`${part.name} FAILED:`, error)
      for (const service of servicesStarted.slice(firstService)) {
        const lines = service.child.output().split("\n").filter((l) => /error|warn|fatal|fail/i.test(l))
        if (lines.length > 0) console.error(`service ${service.baseUrl} logged:\n${lines.slice(-30).join("\n")}`)
      }
      failures.push(part.name)
      report.rows.push({ figure: `${part.name}: FAILED`, syncline: String((error as Error).message).split("\n")[0]!.slice(0, 200), limit: "", ratio: "", target: "", met: false })
    }
    if (exiting) return 130
    // Slots of stopped services would hold WAL back for the parts after them.
    const { rows } = await db.pool.query<{ slot_name: string }>(`SELECT slot_name FROM pg_replication_slots WHERE NOT active`)
    for (const { slot_name } of rows) await dropSlot(db.pool, slot_name)
    console.log(`${part.name}: ${((performance.now() - partStarted) / 1000).toFixed(0)} s`)
  }

  const seconds = (performance.now() - started) / 1000
  const markdown = render(report, {
    date,
    parts: selected.map((p) => p.name),
    seconds,
    postgres: db.version,
    load: [loadBefore, os.loadavg()[0]!]
  })
  console.log(`\n${markdown}`)
  const out = process.env["BENCH_OUT"] ?? path.join(BENCH_DIR, "results.md")
  await fs.writeFile(out, markdown)
  console.log(`written to ${path.relative(process.cwd(), out)}`)
  if (failures.length > 0) {
    console.error(`failed: ${failures.join(", ")}`)
    return 1
  }
  return 0
}

const render = (
  report: Report,
  run: { date: Date; parts: ReadonlyArray<string>; seconds: number; postgres: string; load: [number, number] }
): string => {
  const cell = (s: string) => s.replace(/\|/g, "\\|")
  const met = (r: ResultRow) => (r.met === undefined ? "—" : r.met ? "yes" : "**no**")
  const lines = [
    `Benchmark of ${run.date.toISOString().slice(0, 16).replace("T", " ")} UTC, commit ${gitCommit()}: ${machine()}; ` +
      `Postgres ${run.postgres} (embedded; fsync=off, synchronous_commit=on, off for the writers of the txn figures, wal_writer_delay=10ms); load average ${run.load[0].toFixed(2)} before, ` +
      `${run.load[1].toFixed(2)} after; ${run.parts.length === 7 ? "all parts" : `parts ${run.parts.join(", ")}`}` +
      `${QUICK ? " (BENCH_QUICK: sizes scaled down, ratios not comparable)" : ""}` +
      `; the service as \`${["node", ...startNodeArgs(), ...SERVICE_NODE_ARGS, "dist/main.js"].join(" ")}\`` +
      `${SERVICE_NODE_ARGS.length > 0 ? ` (with BENCH_NODE_ARGS, not as npm start runs it)` : ""}` +
      `${run.parts.includes(oneShape.name) && catchUpArms[0]!.label !== undefined ? `, the one-shape catch-up in arms (BENCH_CATCHUP_ARMS): ${process.env["BENCH_CATCHUP_ARMS"]!.replace(/[;\s]+$/, "").trim()}` : ""}; ` +
      `${run.seconds.toFixed(0)} s.`,
    "",
    "| figure | Syncline | limit, same run | ratio | target | met |",
    "|---|---|---|---|---|---|",
    ...report.rows.map((r) => `| ${[r.figure, r.syncline, r.limit, r.ratio, r.target, met(r)].map(cell).join(" | ")} |`),
    "",
    ...report.notes.map((n) => `- ${n}`),
    ""
  ]
  return lines.join("\n")
}

let exiting = false
const finish = async (code: number) => {
  if (exiting) return
  exiting = true
  await runCleanups()
  process.exit(code)
}
// A request failing while the bench stops everything is expected; any other is a failure, but
// the children and Postgres are still stopped.
process.on("unhandledRejection", (error) => {
  if (exiting) return
  console.error("unhandled rejection:", error)
  void finish(1)
})
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.error(`${signal}: stopping the service, the bare servers and Postgres`)
    void finish(130)
  })
}

main().then(
  (code) => finish(code),
  async (error) => {
    console.error(error)
    await finish(1)
  }
)
