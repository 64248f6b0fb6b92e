import type { TableRef } from "./Table.js"

/**
 * What identifies a shape: equal definitions are the same shape, with one
 * handle. `where` is the canonical SQL of the parsed clause with `params`
 * substituted, so spelling differences do not make a new shape.
 */
export interface ShapeDefinition {
  readonly table: TableRef
  readonly where: string | undefined
  /** Selected columns, sorted, primary key included; `undefined` selects every column. */
  readonly columns: ReadonlyArray<string> | undefined
  readonly replica: "default" | "full"
  readonly log: "full" | "changes_only"
}

export const ShapeDefinition = {
  /** The stable text that equal definitions share. */
  identity(def: ShapeDefinition): string {
    return JSON.stringify([def.table.schema, def.table.name, def.where ?? null, def.columns ?? null, def.replica, def.log])
  },
  fromIdentity(identity: string): ShapeDefinition {
    const [schema, name, where, columns, replica, log] = JSON.parse(identity) as [
      string,
      string,
      string | null,
      Array<string> | null,
      "default" | "full",
      "full" | "changes_only"
    ]
    return { table: { schema, name }, where: where ?? undefined, columns: columns ?? undefined, replica, log }
  },
  /** A 32-bit FNV-1a hash of the identity, printed in decimal: the first half of a handle. */
  hash(def: ShapeDefinition): string {
    const text = ShapeDefinition.identity(def)
    let h = 0x811c9dc5
    for (let i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i)
      h = Math.imul(h, 0x01000193)
    }
    return String(h >>> 0)
  }
} as const
