/**
 * A position in a shape log.
 *
 * `tx` is `-1` before everything, `0` for the virtual offsets of snapshot
 * chunks (`0_n`, `0_inf`), and the commit LSN of a transaction for real log
 * entries; `op` is the change's position inside the transaction (stepping by
 * 2), or `Infinity` for "the end of tx".
 */
export interface LogOffset {
  readonly tx: bigint
  readonly op: number
}

const make = (tx: bigint, op: number): LogOffset => ({ tx, op })

const OFFSET_RE = /^(\d+)_(\d+|inf)$/

export const LogOffset = {
  make,
  beforeAll: make(-1n, 0),
  /** The first snapshot chunk. */
  first: make(0n, 0),
  /** The end of the snapshot: the offset of a shape whose log is still empty. */
  lastBeforeReal: make(0n, Infinity),

  /** Parses the wire form (`-1`, `<tx>_<op>`, `<tx>_inf`); leading zeros are accepted. */
  parse(text: string): LogOffset | undefined {
    if (text === "-1") return LogOffset.beforeAll
    const m = OFFSET_RE.exec(text)
    if (m === null) return undefined
    const op = m[2] === "inf" ? Infinity : Number(m[2])
    if (!Number.isSafeInteger(op) && op !== Infinity) return undefined
    return make(BigInt(m[1]!), op)
  },

  format(o: LogOffset): string {
    if (o.tx < 0n) return "-1"
    return `${o.tx}_${o.op === Infinity ? "inf" : o.op}`
  },

  compare(a: LogOffset, b: LogOffset): -1 | 0 | 1 {
    if (a.tx !== b.tx) return a.tx < b.tx ? -1 : 1
    if (a.op === b.op) return 0
    return a.op < b.op ? -1 : 1
  },

  lt: (a: LogOffset, b: LogOffset): boolean => LogOffset.compare(a, b) < 0,
  lte: (a: LogOffset, b: LogOffset): boolean => LogOffset.compare(a, b) <= 0,
  gt: (a: LogOffset, b: LogOffset): boolean => LogOffset.compare(a, b) > 0,
  gte: (a: LogOffset, b: LogOffset): boolean => LogOffset.compare(a, b) >= 0,
  equals: (a: LogOffset, b: LogOffset): boolean => a.tx === b.tx && a.op === b.op,
  max: (a: LogOffset, b: LogOffset): LogOffset => (LogOffset.compare(a, b) >= 0 ? a : b),

  /** Virtual offsets (`tx = 0`) index snapshot chunks. */
  isVirtual: (o: LogOffset): boolean => o.tx === 0n,
  /** Real offsets point into the log proper (`tx > 0`). */
  isReal: (o: LogOffset): boolean => o.tx > 0n,
  isBeforeAll: (o: LogOffset): boolean => o.tx < 0n
} as const
