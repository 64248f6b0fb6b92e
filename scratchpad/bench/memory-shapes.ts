import * as path from "node:path"
import { createShapes, mb, type Memory, startPostgres, startService } from "./memory-service.js"

/*
 * Idle memory of the service process and memory per idle shape:
 *   idle      the service (as `npm start` runs it) active, no shape: VmRSS as it runs, then RSS and heap after full GCs;
 *   warm-up   a few shapes created (code paths loaded, pools opened);
 *   shapes    BENCH_SHAPES (2,000) shapes `where id = k`, each created with one request; the
 *             difference to the warm-up, divided by their number, is the figure per shape.
 * Run `npm run build` first, then `node --import tsx scratchpad/bench/memory-shapes.ts`.
 * BENCH_HEAP_SNAPSHOT_DIR=<dir> writes a heap snapshot of the service at each reading.
 */

const SHAPES = Number(process.env["BENCH_SHAPES"] ?? 2_000)
const WARM = 20
const TABLE = "mem_items"

const row = (label: string, m: Memory) =>
  `${label.padEnd(34)} VmRSS ${mb(m.vmRss).padStart(6)} MB  rss(gc) ${mb(m.rss).padStart(6)} MB  heap ${
    mb(m.heapUsed).padStart(6)
  } MB  external ${mb(m.external).padStart(6)} MB  arrayBuffers ${mb(m.arrayBuffers).padStart(6)} MB`

const main = async () => {
  const bench = await startPostgres(TABLE, SHAPES + WARM + 10)
  const storageDir = path.join(bench.dir, "syncline")
  let service = await startService(bench, storageDir)
  try {
    console.log(`active after ${service.startMs.toFixed(0)} ms`)
    const idle = await service.memory()
    console.log(row("idle, no shapes", idle))
    await createShapes(service.baseUrl, TABLE, Array.from({ length: WARM }, (_, i) => SHAPES + 1 + i), 4)
    const warm = await service.memory()
    console.log(row(`+ ${WARM} shapes (warm-up)`, warm))
    const t0 = performance.now()
    await createShapes(service.baseUrl, TABLE, Array.from({ length: SHAPES }, (_, i) => i + 1))
    const took = performance.now() - t0
    const full = await service.memory()
    console.log(row(`+ ${SHAPES} shapes (${(took / 1000).toFixed(1)} s)`, full))
    const per = (a: number, b: number) => `${((b - a) / SHAPES / 1024).toFixed(2)} kB`
    console.log(
      `per shape: heap ${per(warm.heapUsed, full.heapUsed)}, rss(gc) ${per(warm.rss, full.rss)}, VmRSS ${per(warm.vmRss, full.vmRss)}, ` +
        `external ${per(warm.external, full.external)}`
    )
    // The same shapes restored at boot: none of them has been asked for since.
    await service.stop()
    service = await startService(bench, storageDir)
    console.log(`restarted: active after ${service.startMs.toFixed(0)} ms`)
    const restored = await service.memory()
    console.log(row(`restored ${SHAPES + WARM} shapes`, restored))
    const perRestored = (a: number, b: number) => `${((b - a) / (SHAPES + WARM) / 1024).toFixed(2)} kB`
    console.log(
      `per restored shape (beside the idle service): heap ${perRestored(idle.heapUsed, restored.heapUsed)}, ` +
        `rss(gc) ${perRestored(idle.rss, restored.rss)}, VmRSS ${perRestored(idle.vmRss, restored.vmRss)}`
    )
  } finally {
    await service.stop()
    await bench.stop()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
