import { execFileSync } from "node:child_process"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { createShapes, mb, startPostgres, startService } from "./memory-service.js"

/*
 * Whether what the memory bench counts per shape is paid per shape or once: after a warm-up of WARM shapes and
 * BENCH_IDLE_S (25) seconds idle, BENCH_BATCHES (2) batches of BENCH_SHAPES (2,000) shapes `where id = k`, each read
 * BENCH_IDLE_S after its creations (after full GCs): the RSS each batch added, per shape, split by kind of mapping in
 * /proc/<pid>/smaps, beside the V8 heap's spaces and code. A later batch costing much less than the first means
 * the first carried one-time costs. BENCH_MALLOC_TRIM=1 also has the service call malloc_trim(0) (through gdb) at the
 * end. Run `npm run build` first, then
 *   node --import tsx scratchpad/bench/memory-batches.ts
 */

const SHAPES = Number(process.env["BENCH_SHAPES"] ?? 2_000)
const BATCHES = Number(process.env["BENCH_BATCHES"] ?? 2)
const IDLE_S = Number(process.env["BENCH_IDLE_S"] ?? 25)
const WARM = Number(process.env["BENCH_WARM"] ?? 100)
const TABLE = "mem_items"

const maps = async (pid: number): Promise<Map<string, number>> => {
  const text = await fs.readFile(`/proc/${pid}/smaps`, "utf8")
  const out = new Map<string, number>()
  let kind = ""
  for (const line of text.split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (head !== null) {
      const size = parseInt(head[2]!, 16) - parseInt(head[1]!, 16)
      const name = head[4]!.trim()
      kind = name === "" ? `anon ${head[3]} ${size >= 60 * 1024 * 1024 ? "≥60MB" : size >= 1024 * 1024 ? "1-60MB" : size >= 256 * 1024 ? "256k-1MB" : "<256k"}` :
        name.startsWith("/") ? `file ${path.basename(name)}` : name
      continue
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line)
    if (rss !== null) out.set(kind, (out.get(kind) ?? 0) + Number(rss[1]) * 1024)
  }
  return out
}

const spacesPreload = (file: string) => `
import * as fs from "node:fs"
import * as v8 from "node:v8"
process.on("SIGUSR2", () => setImmediate(() => {
  const spaces = Object.fromEntries(v8.getHeapSpaceStatistics().map((s) => [s.space_name, { size: s.space_size, used: s.space_used_size, physical: s.physical_space_size }]))
  fs.appendFileSync(${JSON.stringify(file)}, JSON.stringify({ spaces, code: v8.getHeapCodeStatistics(), heap: v8.getHeapStatistics() }) + "\\n")
}))
`

const main = async () => {
  const bench = await startPostgres(TABLE, SHAPES * BATCHES + WARM + 10)
  const spacesFile = path.join(bench.dir, "spaces.jsonl")
  const preload = path.join(bench.dir, "spaces-preload.mjs")
  await fs.writeFile(preload, spacesPreload(spacesFile))
  const service = await startService(bench, path.join(bench.dir, "syncline"), ["--import", preload])
  const spaces = async () => {
    await new Promise((r) => setTimeout(r, 300))
    const lines = (await fs.readFile(spacesFile, "utf8")).split("\n").filter((l) => l !== "")
    return JSON.parse(lines[lines.length - 1]!) as { spaces: Record<string, { size: number; used: number; physical: number }>; code: Record<string, number>; heap: Record<string, number> }
  }
  // malloc_stats() prints each arena's system and in-use bytes to the service's stderr: arena 0 is the main heap.
  const mallocStats = async (): Promise<{ system0: number; inUse0: number; systemOther: number; inUseOther: number; registry: number }> => {
    const registry = (await fs.stat(path.join(bench.dir, "syncline", "meta", "shapes.sqlite")).catch(() => ({ size: 0 }))).size
    if (process.env["BENCH_MALLOC_STATS"] !== "1") return { system0: 0, inUse0: 0, systemOther: 0, inUseOther: 0, registry }
    const before = service.child.output().length
    execFileSync("gdb", ["-p", String(service.child.pid), "-batch", "-ex", "call (void)malloc_stats()"], { stdio: "ignore" })
    await new Promise((r) => setTimeout(r, 300))
    const text = service.child.output().slice(before)
    const out = { system0: 0, inUse0: 0, systemOther: 0, inUseOther: 0, registry }
    for (const m of text.matchAll(/Arena (\d+):\s*system bytes\s*=\s*(\d+)\s*in use bytes\s*=\s*(\d+)/g)) {
      if (m[1] === "0") { out.system0 += Number(m[2]); out.inUse0 += Number(m[3]) } else { out.systemOther += Number(m[2]); out.inUseOther += Number(m[3]) }
    }
    return out
  }
  try {
    await createShapes(service.baseUrl, TABLE, Array.from({ length: WARM }, (_, i) => SHAPES * BATCHES + 1 + i), 8)
    await new Promise((r) => setTimeout(r, IDLE_S * 1_000))
    const readings = [{ m: await service.memory(), s: await maps(service.child.pid), v: await spaces(), a: await mallocStats() }]
    for (let b = 0; b < BATCHES; b++) {
      const t0 = performance.now()
      await createShapes(service.baseUrl, TABLE, Array.from({ length: SHAPES }, (_, i) => b * SHAPES + i + 1), 8)
      const ms = performance.now() - t0
      await new Promise((r) => setTimeout(r, IDLE_S * 1_000))
      readings.push({ m: await service.memory(), s: await maps(service.child.pid), v: await spaces(), a: await mallocStats() })
      console.log(`batch ${b + 1}: created in ${(ms / 1000).toFixed(1)} s`)
    }
    if (process.env["BENCH_MALLOC_TRIM"] === "1") {
      execFileSync("gdb", ["-p", String(service.child.pid), "-batch", "-ex", "call (int)malloc_trim(0)"], { stdio: "ignore" })
      readings.push({ m: await service.memory(), s: await maps(service.child.pid), v: await spaces(), a: await mallocStats() })
      console.log(`(last column: after malloc_trim(0))`)
    }
    const per = (a: number, b: number) => ((b - a) / SHAPES / 1024).toFixed(2)
    const line = (label: string, f: (r: typeof readings[number]) => number) => {
      const vals = readings.map(f)
      const diffs = vals.slice(1).map((v, i) => per(vals[i]!, v).padStart(7))
      console.log(`  ${label.padEnd(34)} ${vals.map((v) => mb(v).padStart(7)).join(" ")}   kB/shape: ${diffs.join(" ")}`)
    }
    console.log("value (MB) per reading; then kB per shape added by each batch")
    line("rss (after gc)", (r) => r.m.rss)
    line("vmRss (before gc)", (r) => r.m.vmRss)
    line("heapUsed", (r) => r.m.heapUsed)
    line("heapTotal", (r) => r.m.heapTotal)
    line("external", (r) => r.m.external)
    line("arrayBuffers", (r) => r.m.arrayBuffers)
    line("malloc arena 0 system", (r) => r.a.system0)
    line("malloc arena 0 in use", (r) => r.a.inUse0)
    line("malloc other arenas system", (r) => r.a.systemOther)
    line("malloc other arenas in use", (r) => r.a.inUseOther)
    line("registry file size", (r) => r.a.registry)
    line("v8 total_physical_size", (r) => r.v.heap["total_physical_size"]!)
    line("v8 malloced_memory", (r) => r.v.heap["malloced_memory"]!)
    line("v8 code_and_metadata", (r) => r.v.code["code_and_metadata_size"]!)
    line("v8 bytecode_and_metadata", (r) => r.v.code["bytecode_and_metadata_size"]!)
    for (const name of Object.keys(readings[0]!.v.spaces)) {
      line(`space ${name} physical`, (r) => r.v.spaces[name]?.physical ?? 0)
      line(`space ${name} used`, (r) => r.v.spaces[name]?.used ?? 0)
    }
    const kinds = new Set(readings.flatMap((r) => [...r.s.keys()]))
    const rows = [...kinds].map((k) => [k, readings.map((r) => r.s.get(k) ?? 0)] as const)
      .sort((a, b) => Math.abs(b[1][b[1].length - 1]! - b[1][0]!) - Math.abs(a[1][a[1].length - 1]! - a[1][0]!))
    console.log("smaps RSS by mapping kind")
    for (const [k, vals] of rows.slice(0, 16)) line(k, (r) => vals[readings.indexOf(r)]!)
  } finally {
    await service.stop()
    await bench.stop()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
