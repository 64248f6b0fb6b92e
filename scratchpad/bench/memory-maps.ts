import { execFileSync } from "node:child_process"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { createShapes, mb, startPostgres, startService } from "./memory-service.js"

/*
 * Where the resident memory of the service goes as shapes are created: the RSS of each kind of mapping in
 * /proc/<pid>/smaps (the V8 heap's pages, malloc's main heap and thread arenas, mapped files), read after full
 * GCs: after a warm-up and BENCH_IDLE_S (25) seconds idle, right after creating BENCH_SHAPES (2,000) shapes
 * `where id = k`, and after as long idle again, beside process.memoryUsage(). With BENCH_MALLOC_TRIM=1 it then
 * has the service call malloc_trim(0) (through gdb) and reads once more: what malloc then gives back was free
 * memory its arenas held, not memory in use. Run `npm run build` first, then
 *   node --import tsx scratchpad/bench/memory-maps.ts
 */

const SHAPES = Number(process.env["BENCH_SHAPES"] ?? 2_000)
const IDLE_S = Number(process.env["BENCH_IDLE_S"] ?? 25)
const WARM = 100
const TABLE = "mem_items"

/** RSS in bytes per mapping kind: anonymous mappings split by size (malloc arenas are 64 MB reservations). */
const maps = async (pid: number): Promise<Map<string, number>> => {
  const text = await fs.readFile(`/proc/${pid}/smaps`, "utf8")
  const out = new Map<string, number>()
  let kind = ""
  for (const line of text.split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (head !== null) {
      const size = parseInt(head[2]!, 16) - parseInt(head[1]!, 16)
      const name = head[3]!.trim()
      kind = name === "" ? `anon ${size >= 60 * 1024 * 1024 ? "≥60MB" : size >= 1024 * 1024 ? "1-60MB" : size >= 256 * 1024 ? "256k-1MB" : "<256k"}` :
        name.startsWith("/") ? `file ${path.basename(name)}` : name
      continue
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line)
    if (rss !== null) out.set(kind, (out.get(kind) ?? 0) + Number(rss[1]) * 1024)
  }
  return out
}

const main = async () => {
  const bench = await startPostgres(TABLE, SHAPES + WARM + 10)
  const service = await startService(bench, path.join(bench.dir, "syncline"))
  try {
    await createShapes(service.baseUrl, TABLE, Array.from({ length: WARM }, (_, i) => SHAPES + 1 + i), 8)
    await new Promise((r) => setTimeout(r, IDLE_S * 1_000))
    const m0 = await service.memory()
    const s0 = await maps(service.child.pid)
    await createShapes(service.baseUrl, TABLE, Array.from({ length: SHAPES }, (_, i) => i + 1), 8)
    await new Promise((r) => setTimeout(r, 3_000))
    const m1 = await service.memory()
    const s1 = await maps(service.child.pid)
    await new Promise((r) => setTimeout(r, IDLE_S * 1_000))
    const m2 = await service.memory()
    const s2 = await maps(service.child.pid)
    const per = (a: number, b: number) => `${((b - a) / SHAPES / 1024).toFixed(2)} kB`
    for (const [label, a, b] of [["after creation", m0, m1], [`after ${IDLE_S} s idle`, m0, m2]] as const) {
      console.log(`${label}: rss ${mb(a.rss)} → ${mb(b.rss)} MB (${per(a.rss, b.rss)}/shape); heapUsed ${per(a.heapUsed, b.heapUsed)}; ` +
        `heapTotal ${mb(a.heapTotal)} → ${mb(b.heapTotal)} MB (${per(a.heapTotal, b.heapTotal)}); external ${per(a.external, b.external)}; arrayBuffers ${per(a.arrayBuffers, b.arrayBuffers)}`)
    }
    if (process.env["BENCH_MALLOC_TRIM"] === "1") {
      execFileSync("gdb", ["-p", String(service.child.pid), "-batch", "-ex", "call (int)malloc_trim(0)"], { stdio: "ignore" })
      const m3 = await service.memory()
      const s3 = await maps(service.child.pid)
      console.log(`after malloc_trim(0): rss ${mb(m0.rss)} → ${mb(m3.rss)} MB (${per(m0.rss, m3.rss)}/shape); ` +
        `[heap] ${mb(s0.get("[heap]") ?? 0)} → ${mb(s3.get("[heap]") ?? 0)} MB (${per(s0.get("[heap]") ?? 0, s3.get("[heap]") ?? 0)}/shape)`)
    }
    const kinds = new Set([...s0.keys(), ...s1.keys(), ...s2.keys()])
    const rows = [...kinds].map((k) => [k, s0.get(k) ?? 0, s1.get(k) ?? 0, s2.get(k) ?? 0] as const)
      .sort((a, b) => Math.abs(b[2] - b[1]) - Math.abs(a[2] - a[1]))
    console.log("mapping kind, RSS before / after creation / after idle (MB), per shape after creation / after idle")
    for (const [k, a, b, c] of rows.slice(0, 14)) {
      console.log(`  ${k.padEnd(28)} ${mb(a).padStart(7)} ${mb(b).padStart(7)} ${mb(c).padStart(7)}   ${per(a, b).padStart(9)} ${per(a, c).padStart(9)}`)
    }
  } finally {
    await service.stop()
    await bench.stop()
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
