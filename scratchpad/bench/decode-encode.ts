import { ownTupleBytes, TransactionAssembler } from "../../src/postgres/PgOutput.js"
import { closeTransaction, makeShapeEncoder, transactionHeaders } from "../../src/shapes/LogItems.js"
import { LogLines } from "../../src/storage/LogLines.js"
import { begin, Bytes, commit } from "../../test/support/pgoutput.js"
import { tableInfo, wholeTableShape } from "../../test/where/table.js"

/*
 * The part of a catch-up that is pure computation, in one process and without I/O: pgoutput messages of
 * single-row transactions (half inserts, half updates with the old row, as the one-shape part of `npm run bench`
 * writes them) decoded, their tuples owned and their log lines written for one shape, as the replication
 * connection and a consumer do it. Routing, flush tracking and the hand-overs between them are not in it.
 *
 * It prints the first pass over the transactions in steps of a thousand, then the warm cost per transaction. A
 * restarted service runs the whole of a short catch-up in its first pass: how soon V8 optimizes these functions
 * counts as much there as what they cost once it has.
 *
 * Run with `node --v8-pool-size=0 --no-allocation-site-pretenuring --import tsx scratchpad/bench/decode-encode.ts`,
 * `npm start`'s flags, which change when V8 optimizes (`BENCH_TXNS`, a multiple of 1,000; `BENCH_PASSES`, at least 2).
 * tsx compiles `src/` with esbuild where the service runs tsc's `dist/`: the same code, set out a little differently.
 */
const TXNS = Number(process.env["BENCH_TXNS"] ?? 20_000)
const PASSES = Number(process.env["BENCH_PASSES"] ?? 30)
const STEP = 1_000
if (!Number.isInteger(TXNS / STEP) || TXNS < STEP) throw new Error(`BENCH_TXNS must be a multiple of ${STEP}, not ${TXNS}`)
if (!Number.isInteger(PASSES) || PASSES < 2) throw new Error(`BENCH_PASSES must be 2 or more, not ${PASSES}`)
/** The most a waiting consumer takes for its first batch (its `FIRST_BATCH`); later batches of a catch-up may be larger. */
const BATCH = 1_024
const OID = 16_500

/** The bench's table (`createItems`): its columns, their types and type oids. */
const COLUMNS = [["id", "int4", 23], ["title", "text", 25], ["n", "int4", 23], ["created_at", "timestamptz", 1184], ["done", "bool", 16]] as const
const table = { ...tableInfo("bench_one", COLUMNS.map(([name, type]) => [name, type, true] as const)), oid: OID }
const shape = wholeTableShape("1-1", table)

const relation = new Bytes().char("R").u32(OID).cstr(table.schema).cstr(table.name).char("f").i16(COLUMNS.length)
for (const [i, [name, , typeOid]] of COLUMNS.entries()) relation.u8(i === 0 ? 1 : 0).cstr(name).u32(typeOid).i32(-1)
const row = (id: number, n: number, done: boolean) => [String(id), `item number ${id}`, String(n), "2026-12-07 20:17:00.123456+00", done ? "t" : "f"]
const messages: Array<Buffer> = [relation.build()]
for (let k = 0; k < TXNS; k++) {
  const lsn = 1_000_000n + 200n * BigInt(k)
  messages.push(begin(lsn + 100n, 5_000 + k))
  if (k % 2 === 0) messages.push(new Bytes().char("I").u32(OID).char("N").tuple(row(1_001 + k, k, false)).build())
  else {
    const id = 1 + (k % 1_000)
    messages.push(new Bytes().char("U").u32(OID).char("O").tuple(row(id, k, true)).char("N").tuple(row(id, k + 1, false)).build())
  }
  messages.push(commit(lsn + 100n, lsn + 150n))
}
// One buffer, read where each message lies, as the replication connection reads its socket's chunks.
const wal = Buffer.concat(messages)
const bounds = new Int32Array(messages.length + 1)
for (let i = 0; i < messages.length; i++) bounds[i + 1] = bounds[i]! + messages[i]!.length

/** One pass over every transaction: its time, and the time at the end of each `STEP` of them, from its start. */
const pass = (): { readonly ms: number; readonly steps: ReadonlyArray<number> } => {
  const assembler = new TransactionAssembler()
  const encoder = makeShapeEncoder(shape)
  const steps: Array<number> = []
  let lines = new LogLines()
  let batched = 0
  let done = 0
  const started = performance.now()
  for (let m = 0; m < messages.length; m++) {
    const txn = assembler.pushBuffer(wal, bounds[m]!, bounds[m + 1]!)
    if (txn === undefined) continue
    ownTupleBytes(txn)
    const from = lines.count
    const headers = transactionHeaders(txn.xid, txn.commitLsn)
    for (let i = 0; i < txn.changes.length; i++) encoder.append(txn.changes[i]!, txn.commitLsn, i * 2, headers, lines)
    closeTransaction(lines, from)
    // The batch's lines go to the log, and the next batch starts afresh.
    if (++batched === BATCH) {
      lines = new LogLines()
      batched = 0
    }
    if (++done % STEP === 0) steps.push(performance.now() - started)
  }
  const ms = performance.now() - started
  if (done !== TXNS) throw new Error(`decoded ${done} transactions, expected ${TXNS}`)
  return { ms, steps }
}

const first = pass()
const perStep = first.steps.map((t, i) => t - (i === 0 ? 0 : first.steps[i - 1]!))
const warm: Array<number> = []
for (let p = 1; p < PASSES; p++) {
  const { ms } = pass()
  if (p >= PASSES / 2) warm.push(ms)
}
warm.sort((a, b) => a - b)
const warmMs = warm[Math.floor(warm.length / 2)]!
console.log(`first pass over ${TXNS} transactions: ${first.ms.toFixed(1)} ms`)
console.log(`  by ${STEP}: ${perStep.map((t) => t.toFixed(1)).join(" ")} ms`)
console.log(`warm pass (median of the last ${warm.length}): ${warmMs.toFixed(1)} ms, ${(1000 * warmMs / TXNS).toFixed(2)} µs per transaction`)
console.log(
  `the first pass took ${(first.ms / warmMs).toFixed(1)}× a warm one; its first ${STEP}, ${(perStep[0]! / (warmMs * STEP / TXNS)).toFixed(1)}× a warm ${STEP}`
)
