/** What a Postgres snapshot (`pg_current_snapshot()`) says is visible: 64-bit xids. */
export interface SnapshotRange {
  readonly xmin: bigint
  readonly xmax: bigint
  readonly xip: ReadonlyArray<bigint>
}

const TWO_32 = 1n << 32n
const TWO_31 = 1n << 31n

/**
 * The 64-bit xid of a Begin's 32-bit one: widened with the epoch of the
 * snapshot's xmax, choosing the value nearest to xmax (xids in flight are
 * never 2^31 apart).
 */
export const widenXid = (xid: number, snapshot: SnapshotRange): bigint => {
  let full = (snapshot.xmax & ~(TWO_32 - 1n)) | BigInt(xid >>> 0)
  if (full - snapshot.xmax > TWO_31) full -= TWO_32
  else if (snapshot.xmax - full > TWO_31) full += TWO_32
  return full
}

/** Whether the snapshot already contains transaction `xid` (32-bit, as Begin carries it). */
export const visibleInSnapshot = (xid: number, snapshot: SnapshotRange): boolean => {
  const full = widenXid(xid, snapshot)
  if (full < snapshot.xmin) return true
  if (full >= snapshot.xmax) return false
  return !snapshot.xip.includes(full)
}
