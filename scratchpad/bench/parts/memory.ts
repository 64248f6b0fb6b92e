import * as fs from "node:fs/promises"
import * as path from "node:path"
import type { ChildService } from "../../../test/support/process.js"
import {
  createItems,
  createShapes,
  fmtMb,
  fmtRatio,
  fmtS,
  get,
  get200,
  GC_PROBE,
  makeAgent,
  openFiles,
  sampleRss,
  sized,
  sleep,
  startBare,
  stopChild
} from "../harness.js"
import type { Part } from "./part.js"

/*
 * Memory of the service process: VmRSS of the node process running `dist/main.js` itself, read from /proc.
 *
 * Idle RSS: after start-up, a handful of shapes and some seconds idle, the median of five samples
 * a second apart; beside a bare node:http server that answered a few requests, sampled the same way.
 *
 * Memory per shape: what one more shape costs a process that already holds some, measured as the RSS
 * difference across 2,000 shapes `where id = k` (one row each) divided by 2,000. The first shapes a
 * process creates also pay for things it does once: V8 optimizing the code that creates them (its code
 * space grows by ~1.4 MB, and the compiler's scratch memory stays in malloc's thread arenas), malloc's
 * main heap touching pages it reserved at start-up and that the creations' buffers come to reuse (its
 * resident size grows by megabytes while what it holds grows by 0.4 kB a shape). Those do not grow
 * with the shape count: in scratchpad/bench/memory-batches.ts, which reads each kind of mapping, the
 * first 2,000 kept 6.7 to 12.4 kB a shape over three runs, the second 1.7 to 4.2 kB, and a third 3.4
 * kB where the second of that run kept 2.8 kB. So the figure is read over a second 2,000, after a
 * first 2,000 (which itself follows a warm-up of 5% more); what the first 2,000 kept is shown beside
 * it, in the row and in the note. Every reading is taken after the process has run full garbage
 * collections (SIGUSR2 to scratchpad/bench/gc-probe.mjs, loaded with --expose-gc) and some settling,
 * as the median of three samples. The baseline is read with the service idle (IDLE_MS after the first
 * 2,000), and the figure is read when it is idle again, IDLE_MS after the creations: what 2,000 shapes
 * keep, in the same state of the process as the baseline. The reading right after the creations is
 * shown beside it: it also holds what the burst of creations left for a while (a young generation
 * grown to the allocation rate, heap pages V8 gives back only once the process is idle, descriptors an
 * idle log gives back within 10-20 s), which is the process's peak, not what a shape costs; the two
 * differ by more than the figure itself. The limit: a bare node process building 2,000 records of what
 * a shape is (its definition: schema, table, where text, columns; its handle and offsets), kept in two
 * maps (by handle and by definition), measured the same way, over a second 2,000 too. Both get a
 * warm-up first: the service creates 5% more shapes, the bare process makes short-lived garbage (so
 * its young generation has grown to a working size, as the service's has) and 5% more records.
 */

const STREAM = "bench_memory"
const TABLE = "bench_mem"
const HANDFUL = 5
const FAR = 1_000_000
const KB = 1024
/** Long enough for the storage's idle checks (every 10 s) to close idle descriptors, and for V8 to shrink its heap. */
const IDLE_MS = 25_000

export const memory: Part = {
  name: "memory",
  describe: "idle RSS and memory per shape",
  run: async ({ db, dir, report, startService }) => {
    const shapes = sized("MEMORY_SHAPES", 2_000, 500)
    await createItems(db.pool, TABLE, 2 * shapes + Math.ceil(shapes / 20))
    const serviceMemory = path.join(dir, "memory-service.jsonl")
    const bareMemory = path.join(dir, "memory-bare.jsonl")
    const probeArgs = ["--expose-gc", "--import", GC_PROBE]
    const [service, bare] = await Promise.all([
      startService({ stream: STREAM, storageDir: path.join(dir, "memory"), env: { BENCH_MEMORY_FILE: serviceMemory }, nodeArgs: probeArgs }),
      startBare("http", [], { nodeArgs: probeArgs, env: { BENCH_MEMORY_FILE: bareMemory } })
    ])
    let records: Awaited<ReturnType<typeof startBare>> | undefined
    try {
      const where = (k: number) => `table=${TABLE}&where=${encodeURIComponent(`id = ${k}`)}`
      await createShapes(service.baseUrl, HANDFUL, 1, (k) => where(FAR + k), () => 0)
      const agent = makeAgent(1)
      try {
        for (let i = 0; i < HANDFUL; i++) await get200(agent, `${bare.baseUrl}/v1/health`)
      } finally {
        await agent.close()
      }
      await sleep(5_000)
      const [idleService, idleBare] = await Promise.all([sampleRss(service.pid, 5, 1_000), sampleRss(bare.child.pid, 5, 1_000)])
      report.rows.push({
        figure: "idle RSS of the service process (npm excluded)",
        syncline: `${fmtMb(idleService)} MB`,
        limit: `a bare \`node:http\` server: ${fmtMb(idleBare)} MB`,
        ratio: `${fmtRatio(idleService / idleBare)}×`,
        target: "≤ 150 MB",
        met: idleService <= 150 * 1024 * 1024
      })
      await stopChild(bare.child)

      // Memory per shape, after a warm-up of the same kind of shapes (the code that creates them
      // compiled and its caches filled), then over the second of two batches (see above).
      const warmUp = Math.ceil(shapes / 20)
      await createShapes(service.baseUrl, warmUp, 8, (k) => where(2 * shapes + k + 1), () => 1)
      await sleep(IDLE_MS)
      const warm = await settled(service.child, serviceMemory)
      const firstMs = await createShapes(service.baseUrl, shapes, 8, (k) => where(shapes + k + 1), () => 1)
      await sleep(IDLE_MS)
      const before = await settled(service.child, serviceMemory)
      const filesBefore = openFiles(service.pid)
      const createMs = await createShapes(service.baseUrl, shapes, 8, (k) => where(k + 1), () => 1)
      await sleep(3_000)
      const created = await settled(service.child, serviceMemory)
      const filesCreated = openFiles(service.pid)
      await sleep(IDLE_MS)
      const after = await settled(service.child, serviceMemory)
      const filesAfter = openFiles(service.pid)

      const recordsFile = path.join(dir, "memory-records.jsonl")
      records = await startBare("records", ["id,title,n,created_at,done"], { nodeArgs: probeArgs, env: { BENCH_MEMORY_FILE: recordsFile } })
      const control = makeAgent(1)
      const createRecords = async (n: number, total: number) => {
        const res = await get(control, `${records!.baseUrl}/create?n=${n}`, { method: "POST" })
        if (res.status !== 200 || Number(res.body.toString()) !== total) {
          throw new Error(`the bare process answered ${res.status} ${res.body.toString()}, expected ${total} records`)
        }
      }
      let bareBefore: Usage
      try {
        const churn = await get(control, `${records.baseUrl}/churn`, { method: "POST" })
        if (churn.status !== 200) throw new Error(`the bare process answered ${churn.status} to /churn`)
        await createRecords(warmUp, warmUp)
        await createRecords(shapes, warmUp + shapes)
        bareBefore = await settled(records.child, recordsFile)
        await createRecords(shapes, warmUp + 2 * shapes)
      } finally {
        await control.close()
      }
      await sleep(3_000)
      const bareAfter = await settled(records.child, recordsFile)

      const perShape = (after.rss - before.rss) / shapes
      const perShapeFirst = (before.rss - warm.rss) / shapes
      const perShapeCreated = (created.rss - before.rss) / shapes
      const kB = (bytes: number) => `${(bytes / shapes / KB).toFixed(2)} kB`
      const perRecord = (bareAfter.rss - bareBefore.rss) / shapes
      report.rows.push({
        figure: `memory per shape (${shapes.toLocaleString("en-US")} shapes \`where id = k\`, after ${shapes.toLocaleString("en-US")} others)`,
        syncline: `${(perShape / KB).toFixed(2)} kB once idle (${(perShapeCreated / KB).toFixed(2)} kB right after creation; ` +
          `the first ${shapes.toLocaleString("en-US")}, with the process's one-time costs: ${(perShapeFirst / KB).toFixed(2)} kB)`,
        limit: `the same records in a bare process: ${(perRecord / KB).toFixed(2)} kB`,
        ratio: `${fmtRatio(perShape / perRecord)}×`,
        target: "≤ 3 kB",
        met: perShape <= 3 * KB
      })
      report.notes.push(
        `memory: kB = 1,024 bytes, MB = 1,048,576 bytes; RSS after full GCs, median of 3 samples. Service, idle ${IDLE_MS / 1000} s after a warm-up of ${warmUp} shapes: ` +
          `RSS ${fmtMb(warm.rss)} MB, heap ${fmtMb(warm.heapUsed)} MB → idle ${IDLE_MS / 1000} s after a first ${shapes.toLocaleString("en-US")} shapes created in ${fmtS(firstMs)} s: ` +
          `RSS ${fmtMb(before.rss)} MB (${kB(before.rss - warm.rss)} per shape, one-time costs included), heap ${fmtMb(before.heapUsed)} MB (${kB(before.heapUsed - warm.heapUsed)} per shape) → ` +
          `3 s after a second ${shapes.toLocaleString("en-US")} shapes created in ${fmtS(createMs)} s (8 at a time) → idle ${IDLE_MS / 1000} s again: ` +
          `RSS ${fmtMb(before.rss)} → ${fmtMb(created.rss)} → ${fmtMb(after.rss)} MB (${kB(created.rss - before.rss)} per shape right after creation, ${kB(after.rss - before.rss)} once idle), ` +
          `heap ${fmtMb(before.heapUsed)} → ${fmtMb(created.heapUsed)} → ${fmtMb(after.heapUsed)} MB (${kB(created.heapUsed - before.heapUsed)}, ${kB(after.heapUsed - before.heapUsed)} per shape), ` +
          `external ${kB(created.external - before.external)}, ${kB(after.external - before.external)} per shape; ` +
          `open files ${filesBefore.toLocaleString("en-US")} → ${filesCreated.toLocaleString("en-US")} → ${filesAfter.toLocaleString("en-US")} ` +
          `(${((filesCreated - filesBefore) / shapes).toFixed(2)}, ${((filesAfter - filesBefore) / shapes).toFixed(2)} per shape). Bare records, the second ${shapes.toLocaleString("en-US")}: ${fmtMb(bareBefore.rss)} → ${fmtMb(bareAfter.rss)} MB RSS, ` +
          `${((bareAfter.heapUsed - bareBefore.heapUsed) / shapes / KB).toFixed(2)} kB of heap per record. Idle RSS: the service after ${HANDFUL} shapes and 5 s idle.`
      )
    } finally {
      if (records !== undefined) await stopChild(records.child)
      await stopChild(bare.child)
      await service.stop()
    }
  }
}

interface Usage {
  readonly rss: number
  readonly heapUsed: number
  readonly external: number
}

/** After full GCs in `child` (gc-probe.mjs writes to `file`) and a moment to settle: the median RSS of three samples, and the heap. */
const settled = async (child: ChildService, file: string): Promise<Usage> => {
  const lines = async () => (await fs.readFile(file, "utf8").catch(() => "")).split("\n").filter((l) => l !== "")
  const count = (await lines()).length
  process.kill(child.pid, "SIGUSR2")
  const deadline = Date.now() + 30_000
  let usage: { heapUsed: number; external: number } | undefined
  while (usage === undefined) {
    const all = await lines()
    if (all.length > count) usage = JSON.parse(all[all.length - 1]!) as { heapUsed: number; external: number }
    else if (Date.now() > deadline) throw new Error(`no memory report from process ${child.pid}`)
    else await sleep(20)
  }
  await sleep(500)
  return { rss: await sampleRss(child.pid, 3, 300), heapUsed: usage.heapUsed, external: usage.external }
}
