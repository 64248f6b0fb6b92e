import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { visibleInSnapshot } from "../../src/shapes/Consumer.js"
import type { SnapshotMark } from "../../src/shapes/ShapeStatus.js"

const mark = (xmin: bigint, xmax: bigint, xip: ReadonlyArray<bigint> = []): SnapshotMark => ({ xmin, xmax, xip, lsn: 0n, columns: "" })

const EPOCH5 = 5n << 32n

describe("visibleInSnapshot", () => {
  it("sees transactions below xmin", () => {
    expect(visibleInSnapshot(99, mark(100n, 110n))).toBe(true)
    expect(visibleInSnapshot(1, mark(100n, 110n))).toBe(true)
  })

  it("sees transactions between xmin and xmax that were not in progress", () => {
    const m = mark(100n, 110n, [102n, 105n])
    expect(visibleInSnapshot(100, m)).toBe(true)
    expect(visibleInSnapshot(101, m)).toBe(true)
    expect(visibleInSnapshot(109, m)).toBe(true)
  })

  it("does not see transactions in progress (xip)", () => {
    const m = mark(100n, 110n, [100n, 102n, 105n])
    expect(visibleInSnapshot(100, m)).toBe(false)
    expect(visibleInSnapshot(102, m)).toBe(false)
    expect(visibleInSnapshot(105, m)).toBe(false)
  })

  it("does not see transactions at or above xmax", () => {
    const m = mark(100n, 110n)
    expect(visibleInSnapshot(110, m)).toBe(false)
    expect(visibleInSnapshot(111, m)).toBe(false)
    expect(visibleInSnapshot(1_000_000, m)).toBe(false)
  })

  it("widens a 32-bit xid with the epoch of xmax", () => {
    // Same epoch: xid 5 is 5·2^32 + 5, below xmin = 5·2^32 + 8.
    expect(visibleInSnapshot(5, mark(EPOCH5 + 8n, EPOCH5 + 10n))).toBe(true)
    // Same epoch, between xmin and xmax, in progress.
    expect(visibleInSnapshot(5, mark(EPOCH5 + 3n, EPOCH5 + 10n, [EPOCH5 + 5n]))).toBe(false)
    // Same epoch, at or above xmax.
    expect(visibleInSnapshot(12, mark(EPOCH5 + 3n, EPOCH5 + 10n))).toBe(false)
    // Previous epoch: 0xFFFFFFF0 is 4·2^32 + 0xFFFFFFF0, far below xmin.
    expect(visibleInSnapshot(0xFFFFFFF0, mark(EPOCH5 + 3n, EPOCH5 + 10n))).toBe(true)
    // Next epoch: with xmax near the top of epoch 5, xid 3 is 6·2^32 + 3, above xmax.
    expect(visibleInSnapshot(3, mark(EPOCH5 + 0xFFFFFF00n, EPOCH5 + 0xFFFFFFF0n))).toBe(false)
    // Previous epoch in progress: xip holds its 64-bit value.
    const prev = EPOCH5 - 16n
    expect(visibleInSnapshot(0xFFFFFFF0, mark(prev - 1n, EPOCH5 + 10n, [prev]))).toBe(false)
  })

  it("agrees with a 64-bit comparison for xids near xmax", () => {
    const TWO_31 = 1n << 31n
    const scenario = fc
      .record({
        xmax: fc.bigInt({ min: 1n << 31n, max: (1n << 62n) }),
        below: fc.bigInt({ min: 0n, max: TWO_31 - 1n }),
        offset: fc.bigInt({ min: -(TWO_31 - 1n), max: TWO_31 - 1n }),
        inProgress: fc.array(fc.bigInt({ min: 0n, max: 1000n }), { maxLength: 5 }),
        xidInProgress: fc.boolean()
      })
      .map(({ below, inProgress, offset, xidInProgress, xmax }) => {
        const xmin = xmax - below
        const full = xmax + offset
        const xip = inProgress.map((d) => xmin + d).filter((x) => x < xmax)
        if (xidInProgress && full >= xmin && full < xmax) xip.push(full)
        return { full, m: mark(xmin, xmax, xip) }
      })
    fc.assert(
      fc.property(scenario, ({ full, m }) => {
        const expected = full < m.xmin ? true : full >= m.xmax ? false : !m.xip.includes(full)
        expect(visibleInSnapshot(Number(full & 0xFFFFFFFFn), m)).toBe(expected)
      }),
      { numRuns: 2000 }
    )
  })
})
