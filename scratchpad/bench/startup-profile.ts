import * as fs from "node:fs"

/*
 * Summarizes a `.cpuprofile` (from `node --cpu-prof`): self time per function and total (inclusive)
 * time per function, top N, and self time per file.
 *   node --import tsx scratchpad/bench/startup-profile.ts file.cpuprofile [rows] [untilMs]
 * `untilMs` keeps only samples in the first that many ms of the profile (e.g. up to the moment of active).
 */

interface Node {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  children?: Array<number>
}
const [file, rowsArg = "30", untilArg] = process.argv.slice(2)
const profile = JSON.parse(fs.readFileSync(file!, "utf8")) as {
  nodes: Array<Node>
  samples: Array<number>
  timeDeltas: Array<number>
  startTime: number
}
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const parent = new Map<number, number>()
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
const self = new Map<string, number>()
const total = new Map<string, number>()
const perFile = new Map<string, number>()
const name = (n: Node) =>
  `${n.callFrame.functionName || "(anon)"} ${n.callFrame.url.replace(/^.*node_modules\//, "").replace(/^file:\/\/\/work\/[^/]+\//, "")}:${n.callFrame.lineNumber + 1}`
let t = 0
let sum = 0
const until = untilArg === undefined ? Infinity : Number(untilArg) * 1000
for (let i = 0; i < profile.samples.length; i++) {
  const dt = profile.timeDeltas[i] ?? 0
  t += dt
  if (t > until) break
  sum += dt
  const leaf = byId.get(profile.samples[i]!)!
  self.set(name(leaf), (self.get(name(leaf)) ?? 0) + dt)
  const f = leaf.callFrame.url.replace(/^.*node_modules\//, "").replace(/^file:\/\/\/work\/[^/]+\//, "") || leaf.callFrame.functionName
  perFile.set(f, (perFile.get(f) ?? 0) + dt)
  const seen = new Set<string>()
  for (let id: number | undefined = leaf.id; id !== undefined; id = parent.get(id)) {
    const k = name(byId.get(id)!)
    if (seen.has(k)) continue
    seen.add(k)
    total.set(k, (total.get(k) ?? 0) + dt)
  }
}
const ms = (us: number) => (us / 1000).toFixed(0).padStart(7)
const top = (m: Map<string, number>, n: number) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n)
console.log(`sampled ${ms(sum)} ms`)
console.log("--- self")
for (const [k, v] of top(self, Number(rowsArg))) console.log(`${ms(v)} ms  ${k}`)
console.log("--- total")
for (const [k, v] of top(total, Number(rowsArg))) console.log(`${ms(v)} ms  ${k}`)
console.log("--- self per file")
for (const [k, v] of top(perFile, Number(rowsArg))) console.log(`${ms(v)} ms  ${k}`)
