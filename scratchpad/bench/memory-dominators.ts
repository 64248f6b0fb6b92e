import { readHeapSnapshot } from "./heapSnapshot.js"

/*
 * Retained sizes in one V8 heap snapshot (dominator tree): the largest collections (Map, Set, Array,
 * plain objects used as tables) with their retained size, element count and who holds them, so that
 * per-shape state shows up as "<holder>.<field>: N entries, X kB".
 *   node --max-old-space-size=6000 --import tsx scratchpad/bench/memory-dominators.ts file.heapsnapshot [minEdges] [rows]
 */

const [file, minEdgesArg = "500", rowsArg = "40"] = process.argv.slice(2)
const { snap, meta, nw, ew, nTypes, eTypes, N } = readHeapSnapshot(file!)
const F = (f: string) => meta.node_fields.indexOf(f)
const typeF = F("type"), nameF = F("name"), sizeF = F("self_size"), ecF = F("edge_count")
const typeOf = (n: number) => nTypes[snap.nodes[n * nw + typeF]!]!
const nameOf = (n: number) => snap.strings[snap.nodes[n * nw + nameF]!]!
const label = (n: number) => `${typeOf(n)}:${nameOf(n).slice(0, 50)}`
const firstEdge = new Uint32Array(N + 1)
for (let n = 0, e = 0; n < N; n++) {
  firstEdge[n] = e
  e += snap.nodes[n * nw + ecF]!
}
firstEdge[N] = snap.edges.length / ew
const weakType = eTypes.indexOf("weak")
const shortcutType = eTypes.indexOf("shortcut")
const succ = (n: number, f: (to: number, e: number) => void) => {
  for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e++) {
    const t = snap.edges[e * ew]!
    if (t === weakType || t === shortcutType) continue
    f(snap.edges[e * ew + 2]! / nw, e)
  }
}
const edgeName = (e: number) => {
  const t = eTypes[snap.edges[e * ew]!]!
  const v = snap.edges[e * ew + 1]!
  return t === "element" || t === "hidden" ? `[${v}]` : snap.strings[v]!
}
// Postorder from the root (node 0).
const order = new Int32Array(N).fill(-1)
const post: Array<number> = []
{
  const stack: Array<number> = [0]
  const iter: Array<number> = [firstEdge[0]!]
  order[0] = -2
  while (stack.length > 0) {
    const n = stack[stack.length - 1]!
    let e = iter[iter.length - 1]!
    let pushed = false
    while (e < firstEdge[n + 1]!) {
      const t = snap.edges[e * ew]!
      const to = snap.edges[e * ew + 2]! / nw
      e++
      if (t === weakType || t === shortcutType) continue
      if (order[to] === -1) {
        order[to] = -2
        iter[iter.length - 1] = e
        stack.push(to)
        iter.push(firstEdge[to]!)
        pushed = true
        break
      }
    }
    if (!pushed) {
      stack.pop()
      iter.pop()
      order[n] = post.length
      post.push(n)
    }
  }
}
// Predecessors (reachable only).
const preds: Array<Array<number>> = Array.from({ length: N }, () => [])
for (const n of post) succ(n, (to) => preds[to]!.push(n))
const idom = new Int32Array(N).fill(-1)
idom[0] = 0
const intersect = (a: number, b: number) => {
  while (a !== b) {
    while (order[a]! < order[b]!) a = idom[a]!
    while (order[b]! < order[a]!) b = idom[b]!
  }
  return a
}
for (let changed = true; changed;) {
  changed = false
  for (let i = post.length - 1; i >= 0; i--) {
    const n = post[i]!
    if (n === 0) continue
    let d = -1
    for (const p of preds[n]!) {
      if (idom[p] === -1) continue
      d = d === -1 ? p : intersect(p, d)
    }
    if (d !== -1 && idom[n] !== d) {
      idom[n] = d
      changed = true
    }
  }
}
const retained = new Float64Array(N)
for (const n of post) {
  retained[n] = retained[n]! + snap.nodes[n * nw + sizeF]!
  if (n !== 0 && idom[n]! >= 0) retained[idom[n]!] = retained[idom[n]!]! + retained[n]!
}
// Who holds a node: the first retainer's edge name and label.
const holder = (n: number): string => {
  for (const p of preds[n]!) {
    let name = ""
    succ(p, (to, e) => {
      if (to === n && name === "") name = edgeName(e)
    })
    return `${label(p)}.${name}`
  }
  return "(root)"
}
const rows: Array<{ n: number; edges: number }> = []
for (const n of post) {
  const edges = firstEdge[n + 1]! - firstEdge[n]!
  if (edges >= Number(minEdgesArg)) rows.push({ n, edges })
}
/** Who holds `n`, up to `depth` holders: a Map's table array is held by the Map, held by a variable or property. */
const holderChain = (n: number, depth: number): string => {
  const chain: Array<string> = []
  let m = n
  for (let d = 0; d < depth; d++) {
    const p = preds[m]![0]
    if (p === undefined) break
    chain.push(holder(m))
    m = p
  }
  return chain.join(" <- ")
}

rows.sort((a, b) => retained[b.n]! - retained[a.n]!)
for (const { n, edges } of rows.slice(0, Number(rowsArg))) {
  console.log(`${(retained[n]! / 1024).toFixed(0).padStart(8)} kB ${String(edges).padStart(7)} edges  ${label(n)}  <- ${holderChain(n, 4)}`)
}
if (process.env["BENCH_TOP"] !== undefined) {
  // Nodes retaining the most, each with the holder chain, skipping the ones whose dominator is already listed
  // with nearly the same size.
  const top = post.filter((n) => retained[n]! > Number(process.env["BENCH_TOP"]) * 1024)
  top.sort((a, b) => retained[b]! - retained[a]!)
  for (const n of top.slice(0, 80)) {
    console.log(`${(retained[n]! / 1024).toFixed(0).padStart(8)} kB  ${label(n)}  <- ${holderChain(n, 3)}`)
  }
}
if (process.env["BENCH_IDOM"] !== undefined) {
  // The dominator chain of the first few nodes of a label: who keeps them alive alone.
  let shown = 0
  for (const n of post) {
    if (label(n) !== process.env["BENCH_IDOM"] || shown++ >= 2) continue
    let m = n
    for (let d = 0; d < 8 && m !== 0; d++) {
      console.log(`${"  ".repeat(d)}${(retained[m]! / 1024).toFixed(1)} kB ${label(m)} (held as ${holder(m)})`)
      m = idom[m]!
    }
  }
}
if (process.env["BENCH_TREE"] !== undefined) {
  // The dominator subtree under the first node of the given label that has a retainer edge of the given name:
  //   BENCH_TREE="object:Object|value" ... the tree is printed to BENCH_DEPTH levels.
  const [want, via] = process.env["BENCH_TREE"].split("|")
  const children = new Map<number, Array<number>>()
  for (const n of post) {
    if (n === 0) continue
    const d = idom[n]!
    let list = children.get(d)
    if (list === undefined) children.set(d, list = [])
    list.push(n)
  }
  const samples = Number(process.env["BENCH_SAMPLES"] ?? 1)
  let shown = 0
  for (const n of post) {
    if (shown >= samples) break
    if (label(n) !== want) continue
    if (process.env["BENCH_MIN"] !== undefined && retained[n]! < Number(process.env["BENCH_MIN"]) * 1024) continue
    if (via !== undefined) {
      const chain: Array<string> = []
      let m = n
      for (let d = 0; d < 3; d++) {
        const p = preds[m]![0]
        if (p === undefined) break
        chain.push(holder(m))
        m = p
      }
      if (!chain.join(" <- ").includes(via)) continue
    }
    shown++
    const print = (m: number, depth: number, edge: string) => {
      console.log(`${"  ".repeat(depth)}${(retained[m]!).toFixed(0).padStart(6)} B  ${edge} ${label(m)}`)
      if (depth >= Number(process.env["BENCH_DEPTH"] ?? 4)) return
      const kids = (children.get(m) ?? []).sort((a, b) => retained[b]! - retained[a]!)
      for (const k of kids.slice(0, 12)) {
        let name = "?"
        succ(m, (to, e) => {
          if (to === k && name === "?") name = edgeName(e)
        })
        print(k, depth + 1, name)
      }
    }
    print(n, 0, holder(n))
  }
}
