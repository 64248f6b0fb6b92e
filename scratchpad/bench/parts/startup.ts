import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { createShapes, fmtRatio, fmtS, makeAgent, median, openFiles, type Service, sized, sizedList, startBare, stopChild } from "../harness.js"
import type { Part } from "./part.js"

/*
 * Start-up to active with 0, 3,000 and 10,000 shapes on disk: from spawning `node dist/main.js`
 * (on the same storage and slot, after a graceful stop) until /v1/health answers active, polled
 * every 5 ms; the median of three starts. The limit: a bare node:http server (bare.mjs) from
 * spawning it until it answers the same health request, polled the same way; also shown, node on
 * an empty script from spawn to exit. The shapes are `where id = k` on a 10,000-row table (one
 * row each), created over HTTP 16 at a time.
 */

const STREAM = "bench_startup"
const TABLE = "bench_startup"
const CONCURRENCY = 16

export const startup: Part = {
  name: "startup",
  describe: "start-up to active with 0, 3,000 and 10,000 shapes on disk",
  run: async ({ db, dir, report, startService }) => {
    const counts = sizedList("STARTUP_SHAPES", [3_000, 10_000], [300, 1_000])
    const runs = sized("STARTUP_RUNS", 3, 1)
    const rows = Math.max(...counts)
    await db.pool.query(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, v text NOT NULL)`)
    await db.pool.query(`INSERT INTO ${TABLE} SELECT i, 'value ' || i FROM generate_series(1, $1) i`, [rows])
    const options = { stream: STREAM, storageDir: path.join(dir, "startup") }
    // The first start makes the slot and the publication; it is not one of the measured starts.
    let service: Service | undefined = await startService(options)
    await service.stop()
    service = undefined

    let created = 0
    /** Why fewer shapes than asked for are on disk, once creating more failed. */
    let shortfall: string | undefined
    const starts = async (): Promise<Array<number>> => {
      const times: Array<number> = []
      for (let i = 0; i < runs; i++) {
        const s = await startService(options)
        times.push(s.startupMs)
        const agent = makeAgent(1)
        try {
          const shapes = await s.shapeCount(agent)
          if (shapes !== undefined && shapes !== created) {
            // After a failed creation the count is whatever survived it; otherwise it is exact.
            if (shortfall === undefined || i > 0) throw new Error(`the service started with ${shapes} shapes, expected ${created}`)
            created = shapes
          }
        } finally {
          await agent.close()
          await s.stop()
        }
      }
      return times
    }
    const measured: Array<{ shapes: number; asked: number; times: Array<number>; createMs: number; files: number }> = []
    measured.push({ shapes: 0, asked: 0, times: await starts(), createMs: 0, files: 0 })
    try {
      for (const count of counts) {
        if (shortfall !== undefined) break
        service = await startService(options)
        const where = (k: number) => `table=${TABLE}&where=${encodeURIComponent(`id = ${k}`)}`
        const creating = performance.now()
        try {
          await createShapes(service.baseUrl, count - created, CONCURRENCY, (k) => where(created + k + 1), () => 1)
          created = count
        } catch (error) {
          // The service holds no more shapes (file descriptors, say): start-up is measured with the
          // shapes it has, and the table says how many that is and why.
          const agent = makeAgent(1)
          const have = await service.shapeCount(agent).finally(() => agent.close())
          if (have === undefined || have <= created) throw error
          shortfall = `with ${have.toLocaleString("en-US")} shapes made, creating more (towards ${count.toLocaleString("en-US")}) failed: ${(error as Error).message.split("\n")[0]!.slice(0, 200)}`
          created = have
        }
        const createMs = performance.now() - creating
        const files = openFiles(service.pid)
        await service.stop()
        service = undefined
        const times = await starts()
        measured.push({ shapes: created, asked: count, times, createMs, files })
      }
    } finally {
      await service?.stop()
    }

    const bareTimes: Array<number> = []
    const emptyTimes: Array<number> = []
    for (let i = 0; i < runs; i++) {
      const bare = await startBare("http")
      bareTimes.push(bare.readyAt - bare.spawnedAt)
      await stopChild(bare.child)
      emptyTimes.push(await emptyNode())
    }
    const bareMs = median(bareTimes)
    const largest = counts[counts.length - 1]!
    for (const m of measured) {
      const ms = median(m.times)
      const isTarget = m.asked === largest
      const short = m.shapes < m.asked
      report.rows.push({
        figure: short
          ? `start-up to active, ${m.shapes.toLocaleString("en-US")} shapes on disk (${m.asked.toLocaleString("en-US")} asked for; no more could be created)`
          : `start-up to active, ${m.shapes.toLocaleString("en-US")} shapes on disk`,
        syncline: `${fmtS(ms)} s`,
        limit: `a bare \`node:http\` server until it answers: ${fmtS(bareMs)} s`,
        ratio: `${fmtRatio(ms / bareMs)}×`,
        target: isTarget ? "≤ 1 s with 10,000 shapes, flat in shape count" : "flat in shape count",
        met: isTarget ? !short && ms <= 1_000 : undefined
      })
    }
    if (shortfall !== undefined) report.notes.push(`start-up: ${shortfall}`)
    report.notes.push(
      `start-up: median of ${runs} starts after a graceful stop (each: ${measured.map((m) => `${m.shapes}: ${m.times.map(fmtS).join(", ")} s`).join("; ")}); ` +
        `shapes created over HTTP (one request each, offset -1), ${CONCURRENCY} at a time, in ` +
        `${measured.filter((m) => m.shapes > 0).map((m) => `${fmtS(m.createMs)} s`).join(" and ")}; the service had ` +
        `${measured.filter((m) => m.shapes > 0).map((m) => `${m.files.toLocaleString("en-US")} files open with ${m.shapes.toLocaleString("en-US")} shapes`).join(" and ")} ` +
        `(the process may open ${openFilesLimit()}); node on an empty script, spawn to exit: ${fmtS(median(emptyTimes))} s.`
    )
  }
}

/** The soft limit of open files a process started now gets. */
const openFilesLimit = (): string => {
  const match = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync("/proc/self/limits", "utf8"))
  return match?.[1] ?? "unknown"
}

/** Spawning node on an empty script until it exits, in ms. */
const emptyNode = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const started = performance.now()
    const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" })
    child.once("error", reject)
    child.once("exit", (code) => (code === 0 ? resolve(performance.now() - started) : reject(new Error(`node -e "" exited with ${code}`))))
  })
