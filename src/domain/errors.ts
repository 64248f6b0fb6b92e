import * as Schema from "effect/Schema"

/**
 * The typed errors the restart design names (DESIGN.md, "Typed errors"), plus
 * one error per subsystem with a `reason`.
 */

/** A consumer called a materializer that was interrupted or never started. */
export class MaterializerGone extends Schema.TaggedError<MaterializerGone>()("MaterializerGone", {
  handle: Schema.String
}) {}

/**
 * A dependency shape's log said something its materializer cannot hold: an insert of a row it holds, an update
 * or delete of one it does not. Never skipped: the shape and the shapes that read it are invalidated.
 */
export class MaterializerInvariant extends Schema.TaggedError<MaterializerInvariant>()("MaterializerInvariant", {
  handle: Schema.String,
  message: Schema.String
}) {}

/** A subset snapshot whose rows pass the size one response may hold; the client asks for it in pages. */
export class SubsetTooLarge extends Schema.TaggedError<SubsetTooLarge>()("SubsetTooLarge", {
  maxBytes: Schema.Number
}) {}

/** A call reached a registry whose scope has closed, or whose table is not loaded yet. */
export class TableAbsent extends Schema.TaggedError<TableAbsent>()("TableAbsent", {
  operation: Schema.String
}) {}

/** A handle that no longer exists durably; `current` is the definition's current handle, if any. */
export class ShapeGone extends Schema.TaggedError<ShapeGone>()("ShapeGone", {
  handle: Schema.String,
  current: Schema.optional(Schema.String)
}) {}

/** A request arrived while no stack is active. */
export class StackNotReady extends Schema.TaggedError<StackNotReady>()("StackNotReady", {
  status: Schema.String
}) {}

/** Bad request parameters: `errors` maps a parameter name to its messages. */
export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", {
  errors: Schema.Record({ key: Schema.String, value: Schema.Array(Schema.String) })
}) {
  static single(param: string, message: string): InvalidRequest {
    return new InvalidRequest({ errors: { [param]: [message] } })
  }
}

/** A `where` clause that does not parse, or uses a construct the evaluator does not support. */
export class InvalidWhere extends Schema.TaggedError<InvalidWhere>()("InvalidWhere", {
  message: Schema.String
}) {}

/**
 * Postgres-side failures: connection, permissions, configuration; a slot of
 * the same name that another database of the cluster owns (`SlotTaken`: slot
 * names are cluster-wide, so two sources need two replication stream ids); a
 * table that does not exist (`TableNotFound`) or whose changes never reach
 * logical replication (`UnsupportedTable`).
 */
export class PostgresError extends Schema.TaggedError<PostgresError>()("PostgresError", {
  reason: Schema.Literal(
    "Connection",
    "Query",
    "WalLevel",
    "Permission",
    "SlotTaken",
    "Snapshot",
    "TableNotFound",
    "UnsupportedTable"
  ),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/** The replication stream failed or the slot could not be used. */
export class ReplicationError extends Schema.TaggedError<ReplicationError>()("ReplicationError", {
  reason: Schema.Literal("Connection", "Protocol", "Slot"),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * Shape log storage failed: I/O, corrupt files, a log whose shape was removed
 * (`Removed`), or storage whose stack is closing (`Closed`).
 */
export class StorageError extends Schema.TaggedError<StorageError>()("StorageError", {
  reason: Schema.Literal("Io", "Corrupt", "Closed", "Removed"),
  handle: Schema.optional(Schema.String),
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/** The shape registry (SQLite) failed. */
export class RegistryError extends Schema.TaggedError<RegistryError>()("RegistryError", {
  operation: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}
