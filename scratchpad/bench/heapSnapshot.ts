import * as fs from "node:fs"

/** A V8 heap snapshot as the memory tools read it: flat node and edge arrays described by `meta`. */
export interface HeapSnapshot {
  readonly snapshot: {
    readonly meta: {
      readonly node_fields: Array<string>
      readonly node_types: [Array<string>]
      readonly edge_fields: Array<string>
      readonly edge_types: [Array<string>]
    }
  }
  readonly nodes: Array<number>
  readonly edges: Array<number>
  readonly strings: Array<string>
}

/** Reads `file` and the widths and type names its arrays are read with. */
export const readHeapSnapshot = (file: string) => {
  const snap = JSON.parse(fs.readFileSync(file, "utf8")) as HeapSnapshot
  const meta = snap.snapshot.meta
  const nw = meta.node_fields.length
  return {
    snap,
    meta,
    nw,
    ew: meta.edge_fields.length,
    nTypes: meta.node_types[0],
    eTypes: meta.edge_types[0],
    N: snap.nodes.length / nw
  }
}
