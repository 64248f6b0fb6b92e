import { describe, expect, it } from "@effect/vitest"
import { int16, int32, int64, uint32, uint64 } from "../../../src/postgres/internal/BigEndian.js"

/** Bytes that hold each value at every offset of interest: edges of each width, and words on both sides of 2^21. */
const edges = (): Buffer => {
  const out = Buffer.alloc(8 * 24)
  const values = [
    0n,
    1n,
    0xffff_ffffn,
    0x1_0000_0000n,
    (0x1f_ffffn << 32n) | 0xffff_ffffn, // the largest with a high word below 2^21
    0x20_0000n << 32n, // the smallest at 2^21
    0x1_7e0a_5c30n, // an LSN such as 1/7E0A5C30
    0x8000_0000_0000_0000n,
    0xffff_ffff_ffff_ffffn,
    0x7fff_ffff_ffff_ffffn,
    0xffe0_0000_0000_0000n, // -(2^53): a high word of -2^21
    0xffdf_ffff_ffff_ffffn // just below it
  ]
  values.forEach((v, i) => out.writeBigUInt64BE(v, i * 8))
  for (let i = values.length * 8; i < out.length; i++) out[i] = (i * 151 + 7) & 0xff
  return out
}

describe("BigEndian", () => {
  it("reads what Node's readers read, at every offset", () => {
    const bytes = edges()
    for (let at = 0; at + 8 <= bytes.length; at++) {
      expect(int16(bytes, at)).toBe(bytes.readInt16BE(at))
      expect(int32(bytes, at)).toBe(bytes.readInt32BE(at))
      expect(uint32(bytes, at)).toBe(bytes.readUInt32BE(at))
      expect(uint64(bytes, at)).toBe(bytes.readBigUInt64BE(at))
      expect(int64(bytes, at)).toBe(bytes.readBigInt64BE(at))
    }
  })

  it("reads from a view into a larger buffer where the view starts", () => {
    const whole = edges()
    const view = whole.subarray(13, 61)
    expect(uint64(view, 3)).toBe(whole.readBigUInt64BE(16))
    expect(int64(view, 3)).toBe(whole.readBigInt64BE(16))
    expect(int32(view, 0)).toBe(whole.readInt32BE(13))
  })
})
