/**
 * A Postgres log sequence number as an unsigned 64-bit integer.
 *
 * LSNs are compared and stored as `bigint`: the text form `X/Y` is two hex
 * halves of the same 64-bit value, and the protocol's offsets and
 * `global_last_seen_lsn` use the decimal form of that integer.
 */
export type Lsn = bigint

export const Lsn = {
  zero: 0n as Lsn,
  /** Parses the `X/Y` form Postgres prints (`pg_current_wal_lsn()`, `confirmed_flush_lsn`). */
  fromPg(text: string): Lsn {
    const slash = text.indexOf("/")
    if (slash <= 0) throw new Error(`Invalid LSN: ${text}`)
    const hi = BigInt(`0x${text.slice(0, slash)}`)
    const lo = BigInt(`0x${text.slice(slash + 1)}`)
    return (hi << 32n) | lo
  },
  /** Formats as `X/Y`, the form replication commands take. */
  toPg(lsn: Lsn): string {
    return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`
  },
  max(a: Lsn, b: Lsn): Lsn {
    return a > b ? a : b
  }
} as const
