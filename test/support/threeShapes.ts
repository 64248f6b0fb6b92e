import { Context, Effect, Option } from "effect"
import { ShapeCache } from "../../src/shapes/ShapeCache.js"
import { type Harness, insertedKeys, readToEnd } from "../../src/testing/index.js"

/**
 * Three shapes of one `items (id, title)` table, one per way a transaction reaches a shape, for the tests of
 * shapes whose where is parsed on first use (created and restored alike).
 */

export const insert = (id: string) => ({ kind: "insert", table: "items", row: { id, title: `row ${id}` } }) as const

/** By equality (the routing index), by evaluation per row, and every row. */
export const QUERIES = {
  equality: `table=items&where=${encodeURIComponent("id = '1'")}`,
  scanned: `table=items&where=${encodeURIComponent("id <> '2'")}`,
  all: "table=items"
} as const
export type Kind = keyof typeof QUERIES
export const KINDS = Object.keys(QUERIES) as ReadonlyArray<Kind>

export type Position = { readonly handle: string; readonly offset: string }

/** Reads each of `kinds` to its end (from `from` when given): where each stands, and the ids it inserted. */
export const readAll = (h: Harness, from: Record<Kind, Position> | undefined, kinds = KINDS) =>
  Effect.gen(function*() {
    const positions = { ...from } as Record<Kind, Position>
    const inserted = {} as Record<Kind, ReadonlyArray<string>>
    for (const kind of kinds) {
      const read = yield* readToEnd(h, QUERIES[kind], from?.[kind])
      positions[kind] = { handle: read.handle, offset: read.offset }
      inserted[kind] = insertedKeys(read.messages).map((key) => key.slice(key.lastIndexOf("/") + 1).replaceAll(`"`, ""))
    }
    return { positions, inserted }
  })

/** The shape the active stack serves under `handle`. */
export const shapeOf = (h: Harness, handle: string) =>
  Effect.gen(function*() {
    const shape = yield* Context.get(yield* h.active, ShapeCache).get(handle)
    return Option.getOrThrow(shape)
  })
