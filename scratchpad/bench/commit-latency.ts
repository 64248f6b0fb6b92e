import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { LogOffset } from "../../src/domain/LogOffset.js"
import { ShapeLogFiles } from "../../src/storage/internal/ShapeLogFiles.js"
import { LogLines } from "../../src/storage/LogLines.js"

/*
 * The time one shape log takes to make a small batch durable (append + commit), the commit → client latency's
 * share that storage owns; beside a bare write + fdatasync of the same bytes on the same file system, the
 * floor of any durable commit. Run with `node --import tsx scratchpad/bench/commit-latency.ts`.
 */
const COMMITS = Number(process.env["BENCH_COMMITS"] ?? 300)
const LINE = JSON.stringify({ key: "\"public\".\"items\"/\"1\"", value: { id: "1", title: "live", n: "1" }, headers: { operation: "insert" } })

const quantile = (xs: Array<number>, q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!

const main = async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "syncline-commit-bench-"))
  try {
    const log = await ShapeLogFiles.create(path.join(dir, "shape"), "shape", 10 * 1024 * 1024)
    await log.completeSnapshot()
    const commit: Array<number> = []
    for (let i = 1; i <= COMMITS; i++) {
      const started = performance.now()
      log.appendLines(LogLines.of([{ offset: LogOffset.make(BigInt(i), 0), json: LINE }]))
      await log.commit()
      commit.push(performance.now() - started)
    }
    await log.shutdown("closed")
    const fh = await fs.open(path.join(dir, "bare"), "w")
    const bare: Array<number> = []
    const bytes = Buffer.from(LINE + "\n")
    for (let i = 0; i < COMMITS; i++) {
      const started = performance.now()
      await fh.write(bytes, 0, bytes.length, i * bytes.length)
      await fh.datasync()
      bare.push(performance.now() - started)
    }
    await fh.close()
    const row = (label: string, xs: Array<number>) =>
      console.log(`${label.padEnd(36)} p50 ${quantile(xs, 0.5).toFixed(2)} ms  p99 ${quantile(xs, 0.99).toFixed(2)} ms`)
    row("shape log append + commit, one line", commit)
    row("bare write + fdatasync, one line", bare)
    console.log(`ratio p50 ${(quantile(commit, 0.5) / quantile(bare, 0.5)).toFixed(2)}`)
  } finally {
    await fs.rm(dir, { recursive: true, force: true })
  }
}

void main()
