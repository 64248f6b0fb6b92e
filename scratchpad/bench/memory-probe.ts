import * as fs from "node:fs"
import * as path from "node:path"
import * as v8 from "node:v8"

/*
 * Preloaded (`--import`) into a service child process started with `--expose-gc` by
 * scratchpad/bench/subqueries.ts: on SIGUSR2 it runs full garbage collections and writes
 * `process.memoryUsage()` as one JSON line to `BENCH_MEMORY_FILE`, so the parent can read the
 * live heap of the service, not just whatever RSS the allocator happens to keep. With
 * `BENCH_HEAP_SNAPSHOT_DIR` it also writes a heap snapshot there each time, to see what the heap
 * holds.
 */

const target = process.env["BENCH_MEMORY_FILE"]
const snapshots = process.env["BENCH_HEAP_SNAPSHOT_DIR"]
const gc = (globalThis as { gc?: () => void }).gc

if (target !== undefined && gc !== undefined) {
  let n = 0
  process.on("SIGUSR2", () => {
    // Several passes: weak references and finalizers freed by one pass release more in the next.
    for (let i = 0; i < 3; i++) gc()
    const usage = process.memoryUsage()
    if (snapshots !== undefined) v8.writeHeapSnapshot(path.join(snapshots, `${String(++n).padStart(2, "0")}.heapsnapshot`))
    fs.appendFileSync(target, `${JSON.stringify({ at: Date.now(), ...usage })}\n`)
  })
}
