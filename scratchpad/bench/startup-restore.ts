import * as fs from "node:fs/promises"
import * as path from "node:path"
import { createShapes, mb, startPostgres, startService } from "./memory-service.js"

/*
 * Start-up to active with shapes on disk, for growing numbers of shapes (BENCH_LEVELS, default
 * 0,1000,3000,10000): at each level the shapes missing are created (`where id = k`), the service
 * stops (SIGTERM) and starts again BENCH_RESTARTS (3) times on the same storage; each start is
 * timed from spawn to the first 200 of /v1/health, and the restored shapes are checked to be
 * served under the same handle (no 409). BENCH_CPU_PROFILE=<dir> profiles the last start of the
 * last level (`--cpu-prof`, written when it stops). BENCH_BUILDS=dist-a,dist-b starts each build in turn
 * on the same storage at every restart (shapes are created by the first), one row per build: builds
 * compared in the same run, on the same load.
 * Run `npm run build` first, then `node --import tsx scratchpad/bench/startup-restore.ts`.
 */

const LEVELS = (process.env["BENCH_LEVELS"] ?? "0,1000,3000,10000").split(",").map(Number)
const RESTARTS = Number(process.env["BENCH_RESTARTS"] ?? 3)
const PROFILE_DIR = process.env["BENCH_CPU_PROFILE"]
const TABLE = "startup_items"
const BUILDS = (process.env["BENCH_BUILDS"] ?? process.env["BENCH_DIST"] ?? "dist").split(",")

const main = async () => {
  const max = Math.max(...LEVELS)
  const bench = await startPostgres(TABLE, max + 10)
  const storageDir = path.join(bench.dir, "syncline")
  const handles: Array<string> = []
  const rows: Array<string> = []
  try {
    for (const [li, level] of LEVELS.entries()) {
      if (handles.length < level) {
        const service = await startService(bench, storageDir, [], BUILDS[0])
        const t0 = performance.now()
        handles.push(
          ...await createShapes(service.baseUrl, TABLE, Array.from({ length: level - handles.length }, (_, i) => handles.length + i + 1))
        )
        console.log(`created ${handles.length} shapes (${((performance.now() - t0) / 1000).toFixed(1)} s)`)
        await service.stop()
      }
      const times = BUILDS.map((): Array<number> => [])
      const cpu = BUILDS.map((): Array<number> => [])
      const vmRsses = BUILDS.map(() => 0)
      for (let r = 0; r < RESTARTS; r++) for (const [b, build] of BUILDS.entries()) {
        const profile = PROFILE_DIR !== undefined && li === LEVELS.length - 1 && r === RESTARTS - 1
        const service = await startService(
          bench,
          storageDir,
          profile ? ["--cpu-prof", `--cpu-prof-dir=${path.resolve(PROFILE_DIR, build.replaceAll("/", "_"))}`] : [],
          build
        )
        times[b]!.push(service.startMs)
        cpu[b]!.push(service.startCpuMs)
        vmRsses[b] = Number((/VmRSS:\s+(\d+)/.exec(await fs.readFile(`/proc/${service.child.pid}/status`, "utf8")) ?? [0, 0])[1]) * 1024
        // A few restored shapes, asked for by handle at their end: served, not 409.
        for (const handle of handles.filter((_, i) => i % Math.max(1, Math.floor(handles.length / 5)) === 0)) {
          const k = handles.indexOf(handle) + 1
          const res = await fetch(
            `${service.baseUrl}/v1/shape?table=${TABLE}&where=${encodeURIComponent(`id = ${k}`)}&handle=${handle}&offset=0_inf`
          )
          await res.arrayBuffer()
          if (res.status !== 200) throw new Error(`restored shape ${handle}: ${res.status}`)
        }
        await service.stop()
      }
      for (const [b, build] of BUILDS.entries()) {
        const sorted = [...times[b]!].sort((x, y) => x - y)
        const cpuSorted = [...cpu[b]!].sort((x, y) => x - y)
        const vmRss = vmRsses[b]!
        const row = `${BUILDS.length > 1 ? `${build}: ` : ""}${String(level).padStart(6)} shapes: start-up to active ${sorted.map((t) => t.toFixed(0)).join(" / ")} ms` +
          ` (median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(0)}), CPU to active ${cpuSorted.map((t) => t.toFixed(0)).join(" / ")} ms` +
          `, VmRSS at active ${mb(vmRss)} MB`
        console.log(row)
        rows.push(row)
      }
    }
    console.log(rows.join("\n"))
  } finally {
    await bench.stop()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
