import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { Inspector } from "../postgres/Inspector.js"
import type { FakePostgres } from "./FakePostgres.js"

/**
 * The catalog of the fake database (`Inspector.layerTest` over its tables),
 * with each `load` passing through `db.intercept.load`, so a test can hold a
 * request between its stack lookup and its registry lookup.
 */
export const FakeInspector = {
  layer: (db: FakePostgres): Layer.Layer<Inspector> =>
    Layer.effect(
      Inspector,
      Effect.map(Effect.provide(Inspector, Inspector.layerTest(db.catalog)), (inner) =>
        Inspector.of({
          load: (ref) => db.intercept.load.around(ref, inner.load(ref)),
          invalidate: inner.invalidate
        })
      )
    )
} as const
