import * as fs from "node:fs"

/*
 * Compares two V8 heap snapshots (e.g. from BENCH_HEAP_SNAPSHOT_DIR): self size and count per
 * constructor (objects) or node type (strings, code, arrays...), largest growth first.
 *   node --import tsx scratchpad/bench/memory-heapdiff.ts before.heapsnapshot after.heapsnapshot [rows]
 */

interface Totals { count: number; size: number }

const summarize = (file: string): Map<string, Totals> => {
  const snap = JSON.parse(fs.readFileSync(file, "utf8")) as {
    snapshot: { meta: { node_fields: Array<string>; node_types: [Array<string>] } }
    nodes: Array<number>
    strings: Array<string>
  }
  const fields = snap.snapshot.meta.node_fields
  const types = snap.snapshot.meta.node_types[0]
  const width = fields.length
  const typeAt = fields.indexOf("type")
  const nameAt = fields.indexOf("name")
  const sizeAt = fields.indexOf("self_size")
  const out = new Map<string, Totals>()
  const nodes = snap.nodes
  for (let i = 0; i < nodes.length; i += width) {
    const type = types[nodes[i + typeAt]!]!
    const name = snap.strings[nodes[i + nameAt]!]!
    const key = type === "object" || type === "closure" ? `${type}:${name}` : type === "native" ? `native:${name.slice(0, 40)}` : type
    const t = out.get(key) ?? { count: 0, size: 0 }
    t.count++
    t.size += nodes[i + sizeAt]!
    out.set(key, t)
  }
  return out
}

const [before, after, rows = "40"] = process.argv.slice(2)
const a = summarize(before!)
const b = summarize(after!)
const keys = new Set([...a.keys(), ...b.keys()])
const diff = [...keys].map((k) => {
  const x = a.get(k) ?? { count: 0, size: 0 }
  const y = b.get(k) ?? { count: 0, size: 0 }
  return { k, count: y.count - x.count, size: y.size - x.size, total: y.size }
}).sort((p, q) => q.size - p.size)
let sum = 0
for (const d of diff) sum += d.size
console.log(`total growth ${(sum / 1024).toFixed(0)} kB`)
for (const d of diff.slice(0, Number(rows))) {
  console.log(`${(d.size / 1024).toFixed(1).padStart(10)} kB ${String(d.count).padStart(8)}  ${d.k.slice(0, 100)}`)
}
