import { describe, expect, it } from "@effect/vitest"
import { FastCheck } from "effect"
import { Lsn } from "../../src/domain/Lsn.js"

describe("Lsn", () => {
  it.prop("fromPg(toPg(n)) is n for every 64-bit value", [FastCheck.bigInt({ min: 0n, max: 2n ** 64n - 1n })], ([n]) =>
    Lsn.fromPg(Lsn.toPg(n)) === n)

  it("reads and prints Postgres's X/Y form", () => {
    expect(Lsn.fromPg("0/0")).toBe(0n)
    expect(Lsn.fromPg("16/B374D848")).toBe(0x16_b374_d848n)
    expect(Lsn.fromPg("ffffffff/ffffffff")).toBe(2n ** 64n - 1n)
    expect(Lsn.toPg(0x1_0000_0000n)).toBe("1/0")
    expect(() => Lsn.fromPg("garbage")).toThrow()
  })
})
