import * as Brand from "effect/Brand"

/**
 * Opaque id of one incarnation of a shape: `<hash of identity>-<µs timestamp>`.
 * Never reused, stable across restarts.
 */
export type ShapeHandle = string & Brand.Brand<"ShapeHandle">
export const ShapeHandle = Brand.nominal<ShapeHandle>()
