// Preloaded (`--import`) into a process started with `--expose-gc`: on SIGUSR2 it runs full
// garbage collections and appends `process.memoryUsage()` as one JSON line to BENCH_MEMORY_FILE,
// so the bench reads memory that is held, not garbage the collector has not reached yet.
import * as fs from "node:fs"

const target = process.env.BENCH_MEMORY_FILE
const gc = globalThis.gc

if (target !== undefined && gc !== undefined) {
  process.on("SIGUSR2", () => {
    // Several passes: weak references and finalizers freed by one pass release more in the next.
    for (let i = 0; i < 3; i++) gc()
    fs.appendFileSync(target, `${JSON.stringify({ at: Date.now(), ...process.memoryUsage() })}\n`)
  })
}
