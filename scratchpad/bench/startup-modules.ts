import * as path from "node:path"
import { startPostgres, startService } from "./memory-service.js"

/*
 * Starts the service once (no shapes) with the given extra node arguments, waits until it is active and
 * stops it: for module-loading hooks and profiles of one start.
 *   node --import tsx scratchpad/bench/startup-modules.ts -- --import /path/to/hook.mjs
 */
const main = async () => {
  const args = process.argv.slice(2).filter((a) => a !== "--")
  const bench = await startPostgres("startup_modules", 10)
  try {
    const service = await startService(bench, path.join(bench.dir, "syncline"), args)
    console.log(`active after ${service.startMs.toFixed(0)} ms (CPU ${service.startCpuMs} ms)`)
    await service.stop()
  } finally {
    await bench.stop()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
