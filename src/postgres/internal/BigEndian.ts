/**
 * Big-endian integers read straight from bytes, for the fields of the replication stream's messages. Node's
 * `readInt32BE` and kin check their offset through a wrapper that takes its arguments as an array, which on Node 20
 * costs an allocation and an indirect call for every field of every message until the optimizer removes them; and
 * `readBigUInt64BE` makes four bigints where one will do.
 *
 * None of them throws: a read past the end of `bytes` gives a wrong value, so a caller checks what it read against
 * the end of its message (the decoder checks each count and length before it uses it, and where the message ended).
 */

/** 2^32, the weight of a 64-bit integer's high word. */
const HIGH_WORD = 0x1_0000_0000
/** A high word in [-this, this) leaves a 64-bit integer within a double's 53 exact bits. */
const EXACT_HIGH_WORD = 0x20_0000

export const int16 = (bytes: Uint8Array, at: number): number => ((bytes[at]! << 24) | (bytes[at + 1]! << 16)) >> 16

export const int32 = (bytes: Uint8Array, at: number): number =>
  (bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!

export const uint32 = (bytes: Uint8Array, at: number): number => int32(bytes, at) >>> 0

/** An LSN, an XLogData's positions: made as one bigint from a double when it fits one exactly, as every real LSN does. */
export const uint64 = (bytes: Uint8Array, at: number): bigint => {
  const high = uint32(bytes, at)
  const low = uint32(bytes, at + 4)
  return high < EXACT_HIGH_WORD ? BigInt(high * HIGH_WORD + low) : (BigInt(high) << 32n) | BigInt(low)
}

/** A timestamp (microseconds since 2000-01-01, as Postgres sends them). */
export const int64 = (bytes: Uint8Array, at: number): bigint => {
  const high = int32(bytes, at)
  const low = uint32(bytes, at + 4)
  return high >= -EXACT_HIGH_WORD && high < EXACT_HIGH_WORD
    ? BigInt(high * HIGH_WORD + low)
    : (BigInt(high) << 32n) + BigInt(low)
}
