import * as fs from "node:fs/promises"
import * as path from "node:path"
import type { Agent } from "undici"
import {
  advance,
  createItems,
  type Fetched,
  fmtMs,
  fmtRatio,
  get200,
  header,
  makeAgent,
  occurrences,
  percentile,
  type ShapePosition,
  shapeUrl,
  sized,
  sizedList,
  sleep,
  startBare,
  stopChild,
  syncShape,
  UPDATE
} from "../harness.js"
import type { Part } from "./part.js"

/*
 * Write → client latency with N long-polls held on one shape. Each round every client holds a
 * live request at the shape's current offset; once the service's metrics say all N are held, the
 * bench commits one UPDATE of a row of the shape and times, from the commit returning, each client
 * having the whole response. The limit: a bare node:http server holding N requests, answering all
 * of them with the same body and headers (recorded from the service) when the bench sends it a
 * trigger request; timed from the trigger being sent. One warm-up round on each side is not
 * counted; then the sides take turns, round by round.
 */

const STREAM = "bench_fanout"
const TABLE = "bench_fanout"
const PARAMS = `table=${TABLE}`

export const fanout: Part = {
  name: "fanout",
  describe: "write → client latency, N long-polls on one shape",
  run: async ({ db, dir, report, startService }) => {
    const rounds = sized("ROUNDS", 10, 3)
    const clientCounts = sizedList("FANOUT", [200, 1_000], [50, 200])
    await createItems(db.pool, TABLE, 100)
    const service = await startService({ stream: STREAM, storageDir: path.join(dir, "fanout"), env: { ELECTRIC_LONG_POLL_TIMEOUT: "120000" } })
    const bareSpec = path.join(dir, "fanout-bare.json")
    let bare: Awaited<ReturnType<typeof startBare>> | undefined
    const control = makeAgent(4)
    try {
      const at: ShapePosition = (await syncShape(control, service.baseUrl, PARAMS)).at
      let value = 0
      let captured: Fetched | undefined
      /** The body the bare server answers with: a response of the service. */
      let bareBody: Buffer | undefined

      /** Holds `n` live requests, commits one update, and returns each client's latency from the commit. */
      const synclineRound = async (agent: Agent, n: number): Promise<Array<number>> => {
        const url = shapeUrl(service.baseUrl, PARAMS, at, true)
        const pending = Array.from({ length: n }, () => get200(agent, url))
        // Awaited below; until then a failure must not count as unhandled.
        for (const p of pending) p.catch(() => {})
        await waitHeld(n, () => service.heldLongPolls(control, STREAM))
        // Timed from the moment the UPDATE is sent, as the bare side is from its trigger being sent: the WAL can
        // reach the service before the commit's answer reaches the bench.
        const committed = performance.now()
        await db.pool.query(`UPDATE ${TABLE} SET n = $1 WHERE id = 1`, [++value])
        const responses = await Promise.all(pending)
        const offsets = new Set(responses.map((r) => header(r, "electric-offset")))
        for (const r of responses) {
          const updates = occurrences(r.body, UPDATE)
          if (updates !== 1) throw new Error(`a client got ${updates} updates for one commit: ${r.body.toString().slice(0, 300)}`)
        }
        if (offsets.size !== 1) throw new Error(`the clients got different offsets for the same change: ${[...offsets].join(", ")}`)
        advance(at, responses[0]!)
        captured = responses[0]!
        return responses.map((r) => r.at - committed)
      }

      const bareRound = async (agent: Agent, n: number): Promise<Array<number>> => {
        const pending = Array.from({ length: n }, () => get200(agent, `${bare!.baseUrl}/hold`))
        for (const p of pending) p.catch(() => {})
        await waitHeld(n, async () => Number((await get200(control, `${bare!.baseUrl}/count`)).body.toString()))
        const triggered = performance.now()
        const trigger = await get200(control, `${bare!.baseUrl}/trigger`)
        if (Number(trigger.body.toString()) !== n) throw new Error(`the bare server answered ${trigger.body.toString()} held requests, expected ${n}`)
        const responses = await Promise.all(pending)
        for (const r of responses) {
          if (r.body.length !== bareBody!.length) throw new Error(`a bare response had ${r.body.length} bytes, expected ${bareBody!.length}`)
        }
        return responses.map((r) => r.at - triggered)
      }

      for (const n of clientCounts) {
        const synclineAgent = makeAgent(n + 8)
        const bareAgent = makeAgent(n + 8)
        try {
          await synclineRound(synclineAgent, n)
          if (bare === undefined) {
            const headers: Record<string, string> = {}
            for (const [name, v] of Object.entries(captured!.headers)) {
              if (v === undefined || ["content-length", "transfer-encoding", "connection", "keep-alive", "date"].includes(name)) continue
              headers[name] = Array.isArray(v) ? v.join(", ") : v
            }
            bareBody = captured!.body
            await fs.writeFile(bareSpec, JSON.stringify({ headers, body: bareBody.toString("base64") }))
            bare = await startBare("hold", [bareSpec])
          }
          await bareRound(bareAgent, n)
          // The sides in turn, round by round, so a change in the machine's load falls on both.
          const synclineLatencies: Array<number> = []
          const bareLatencies: Array<number> = []
          for (let r = 0; r < rounds; r++) {
            synclineLatencies.push(...(await synclineRound(synclineAgent, n)))
            bareLatencies.push(...(await bareRound(bareAgent, n)))
          }
          const s = [...synclineLatencies].sort((a, b) => a - b)
          const b = [...bareLatencies].sort((a, b) => a - b)
          const [s50, s99, b50, b99] = [percentile(s, 50), percentile(s, 99), percentile(b, 50), percentile(b, 99)]
          report.rows.push({
            figure: `write → client, ${n.toLocaleString("en-US")} long-polls on one shape, p50 / p99`,
            syncline: `${fmtMs(s50)} / ${fmtMs(s99)} ms`,
            limit: `bare \`node:http\` answering ${n.toLocaleString("en-US")} held requests: ${fmtMs(b50)} / ${fmtMs(b99)} ms`,
            ratio: `${fmtRatio(s50 / b50)}× / ${fmtRatio(s99 / b99)}×`,
            target: "p99 ≤ 2× bare",
            met: s99 / b99 <= 2
          })
        } finally {
          // Destroyed, not closed: after a failure some requests may still be held.
          await synclineAgent.destroy()
          await bareAgent.destroy()
        }
      }
      report.notes.push(
        `write → client: ${rounds} rounds per client count on each side, taken in turn, after one warm-up round; body ${captured?.body.length ?? 0} bytes (one update and up-to-date), ` +
          `the bare server sends the same bytes and headers; Syncline timed from the UPDATE being sent, bare from the trigger request being sent.`
      )
    } finally {
      await control.close()
      if (bare !== undefined) await stopChild(bare.child)
      await service.stop()
    }
  }
}

/** Waits until `held()` says `n` requests are held (60 s at most). */
const waitHeld = async (n: number, held: () => Promise<number | undefined>): Promise<void> => {
  const deadline = Date.now() + 60_000
  for (;;) {
    const count = await held()
    if (count === undefined) {
      // A service without the figure: give every request time to arrive.
      await sleep(500 + n)
      return
    }
    if (count >= n) return
    if (Date.now() > deadline) throw new Error(`only ${count} of ${n} long-polls were held after 60 s`)
    await sleep(20)
  }
}
