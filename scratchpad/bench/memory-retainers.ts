import { readHeapSnapshot } from "./heapSnapshot.js"

/*
 * Retainer chains of sampled heap objects in one V8 heap snapshot:
 *   node --import tsx scratchpad/bench/memory-retainers.ts file.heapsnapshot "<type>[:<name>]" [samples] [depth]
 * e.g. "object shape", "object:Object", "closure:matches". Shows, for a sample, who holds it (edge name
 * and holder), up to `depth` levels, and the most common holders over all matching objects.
 */

const [file, key, samplesArg = "5", depthArg = "8"] = process.argv.slice(2)
const { snap, meta, nw, ew, nTypes, eTypes, N } = readHeapSnapshot(file!)
const typeOf = (n: number) => nTypes[snap.nodes[n * nw + meta.node_fields.indexOf("type")]!]!
const nameOf = (n: number) => snap.strings[snap.nodes[n * nw + meta.node_fields.indexOf("name")]!]!
const sizeOf = (n: number) => snap.nodes[n * nw + meta.node_fields.indexOf("self_size")]!
const edgeCountAt = meta.node_fields.indexOf("edge_count")
const label = (n: number) => `${typeOf(n)}:${nameOf(n).slice(0, 60)}`
// Reverse edges.
const retainers: Array<Array<[number, string]>> = Array.from({ length: N }, () => [])
let e = 0
for (let n = 0; n < N; n++) {
  const count = snap.nodes[n * nw + edgeCountAt]!
  for (let i = 0; i < count; i++, e++) {
    const type = eTypes[snap.edges[e * ew]!]!
    const nameOrIndex = snap.edges[e * ew + 1]!
    const to = snap.edges[e * ew + 2]! / nw
    if (type === "weak") continue
    const edgeName = type === "element" || type === "hidden" ? `[${nameOrIndex}]` : snap.strings[nameOrIndex]!
    retainers[to]!.push([n, `${type}:${edgeName}`])
  }
}
const [wantType, wantName] = key!.includes(":") ? [key!.slice(0, key!.indexOf(":")), key!.slice(key!.indexOf(":") + 1)] : [key!, undefined]
const matching: Array<number> = []
for (let n = 0; n < N; n++) if (typeOf(n) === wantType && (wantName === undefined || nameOf(n) === wantName)) matching.push(n)
console.log(`${matching.length} matching, ${(matching.reduce((s, n) => s + sizeOf(n), 0) / 1024).toFixed(0)} kB`)
const holders = new Map<string, number>()
for (const n of matching) {
  for (const [from, edge] of retainers[n]!) {
    const k = `${edge} <- ${label(from)}`
    holders.set(k, (holders.get(k) ?? 0) + 1)
  }
}
console.log("most common holders:")
for (const [k, c] of [...holders].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`  ${String(c).padStart(7)}  ${k}`)
const step = Math.max(1, Math.floor(matching.length / Number(samplesArg)))
for (let s = 0; s < matching.length && s / step < Number(samplesArg); s += step) {
  let n = matching[s]!
  console.log(`sample ${label(n)} (${sizeOf(n)} B)`)
  const seen = new Set<number>([n])
  for (let d = 0; d < Number(depthArg); d++) {
    const r = retainers[n]!.find(([from]) => !seen.has(from))
    if (r === undefined) break
    n = r[0]
    seen.add(n)
    console.log(`${"  ".repeat(d + 1)}<- ${r[1]} of ${label(n)}`)
  }
}
