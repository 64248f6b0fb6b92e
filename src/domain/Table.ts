/**
 * A table as the Inspector reads it from the catalog: what the where
 * evaluator, the snapshot query, the row key and the `electric-schema` header need.
 */
export interface ColumnInfo {
  readonly name: string
  /** 1-based attribute number (table order). */
  readonly attnum: number
  /** `pg_type.typname`; for arrays, the element type's name (`int4`, not `_int4`). */
  readonly typeName: string
  readonly typeOid: number
  /** For arrays, the element type's oid; else the same as `typeOid`. */
  readonly elementTypeOid: number
  /** `pg_type.typtype` of the (element) type: `b` base, `e` enum, `d` domain, `c` composite, `r` range. */
  readonly typeKind: string
  /** For domains, the base type's name (where clauses treat a domain as its base type). */
  readonly baseTypeName: string
  /** Number of array dimensions; 0 for non-arrays. */
  readonly dims: number
  readonly typeMod: number
  readonly notNull: boolean
  /** Position in the primary key, when the column is part of it. */
  readonly pkIndex: number | undefined
}

export interface TableInfo {
  readonly oid: number
  readonly schema: string
  readonly name: string
  /** In attnum order. */
  readonly columns: ReadonlyArray<ColumnInfo>
  /** Primary key columns in key order; all columns ordered by name when the table has no primary key. */
  readonly pk: ReadonlyArray<string>
}

/** A possibly schema-qualified relation name, already unquoted. */
export interface TableRef {
  readonly schema: string
  readonly name: string
}
