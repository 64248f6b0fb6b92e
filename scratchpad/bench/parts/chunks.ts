import * as fs from "node:fs/promises"
import * as path from "node:path"
import type { Agent } from "undici"
import {
  advance,
  changesIn,
  createItems,
  type Fetched,
  fmtInt,
  fmtMb,
  fmtRatio,
  get200,
  header,
  makeAgent,
  type ShapePosition,
  shapeUrl,
  sized,
  sizedList,
  startBare,
  stopChild,
  syncShape
} from "../harness.js"
import type { Part, PartContext } from "./part.js"

const fmtKb = (bytes: number) => `${(bytes / 1024).toFixed(1)} kB`

/*
 * Catch-up requests per second, 20 concurrent clients. The shape's log holds many chunks (a small
 * ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD and 20k updates written after the snapshot), at two chunk
 * sizes: 4 kB weighs the cost of a request, 64 kB the cost of its bytes. Every client
 * loops on non-live requests (handle and an offset inside the log, cycling through the chunks) and
 * checks each body's length. The limit: a bare node:http server answering the same URLs with the
 * same headers and bodies, recorded from the service, to the same client loop. Each side gets a
 * one-second warm-up first.
 */

const CLIENTS = 20

export const chunks: Part = {
  name: "chunks",
  describe: "catch-up chunk requests/s, 20 clients, beside a bare server of the same bytes",
  run: async (context) => {
    for (const chunkBytes of sizedList("CHUNK_BYTES", [4_096, 65_536], [4_096, 65_536])) await measure(context, chunkBytes)
  }
}

/** The figure for one chunk size: its own table and service. */
const measure = async ({ db, dir, report, startService }: PartContext, chunkBytes: number): Promise<void> => {
  const changes = sized("CHUNK_CHANGES", 20_000, 5_000)
  const seconds = sized("LOAD_SECONDS", 5, 2)
  const rows = 1_000
  const table = `bench_chunks_${chunkBytes}`
  const params = `table=${table}`
  await createItems(db.pool, table, rows)
  const service = await startService({
    stream: table,
    storageDir: path.join(dir, `chunks-${chunkBytes}`),
    env: { ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD: String(chunkBytes) }
  })
  const control = makeAgent(2)
  let bare: Awaited<ReturnType<typeof startBare>> | undefined
  try {
    const snapshotEnd = (await syncShape(control, service.baseUrl, params)).at
    const from: ShapePosition = { ...snapshotEnd }
    // Updates in transactions of 500 rows, every row many times over.
    const perTxn = 500
    for (let done = 0; done < changes; done += perTxn) {
      const first = 1 + (done % rows)
      await db.pool.query(`UPDATE ${table} SET n = n + 1, title = title || '.' WHERE id BETWEEN $1 AND $2`, [first, first + perTxn - 1])
    }
    // Until the shape has them all.
    let seen = 0
    const follow: ShapePosition = { ...snapshotEnd }
    const deadline = Date.now() + 120_000
    while (seen < changes) {
      if (Date.now() > deadline) throw new Error(`the shape had ${seen} of ${changes} changes after 120 s`)
      const res = await get200(control, shapeUrl(service.baseUrl, params, follow, true))
      seen += changesIn(res.body)
      advance(follow, res)
    }
    if (seen !== changes) throw new Error(`the shape has ${seen} changes, expected ${changes}`)
    // The log's chunks, as a catching-up client meets them. The last response (it reaches the end
    // of the log and says up-to-date) is left out.
    const recorded: Array<{ offset: string; res: Fetched }> = []
    let listed = 0
    for (;;) {
      const res = await get200(control, shapeUrl(service.baseUrl, params, from, false))
      listed += changesIn(res.body)
      if (res.headers["electric-up-to-date"] !== undefined) break
      recorded.push({ offset: from.offset, res })
      advance(from, res)
    }
    if (listed !== changes) throw new Error(`catching up from the snapshot's end gave ${listed} changes, expected ${changes}`)
    if (recorded.length < 10) throw new Error(`the log has only ${recorded.length + 1} chunks`)
    const urls = recorded.map(({ offset }) => `?${params}&offset=${offset}&handle=${snapshotEnd.handle}`)
    const lengths = recorded.map(({ res }) => res.body.length)
    const meanBytes = lengths.reduce((a, b) => a + b, 0) / lengths.length

    const responses: Record<string, { headers: Record<string, string>; body: string }> = {}
    for (const { offset, res } of recorded) {
      const headers: Record<string, string> = {}
      for (const [name, v] of Object.entries(res.headers)) {
        if (v === undefined || ["content-length", "transfer-encoding", "connection", "keep-alive", "date"].includes(name)) continue
        headers[name] = Array.isArray(v) ? v.join(", ") : v
      }
      responses[offset] = { headers, body: res.body.toString("base64") }
    }
    const spec = path.join(dir, `chunks-bare-${chunkBytes}.json`)
    await fs.writeFile(spec, JSON.stringify({ responses }))
    bare = await startBare("replay", [spec])

    // Both sides in turn, one-second slices, so a change in the machine's load falls on both.
    const synclineAgent = makeAgent(CLIENTS)
    const bareAgent = makeAgent(CLIENTS)
    const totals = { syncline: { requests: 0, ms: 0 }, bare: { requests: 0, ms: 0 } }
    try {
      await clientLoop(synclineAgent, `${service.baseUrl}/v1/shape`, urls, lengths, 1_000)
      await clientLoop(bareAgent, `${bare.baseUrl}/v1/shape`, urls, lengths, 1_000)
      for (let slice = 0; slice < seconds; slice++) {
        for (const [side, agent, baseUrl] of [["syncline", synclineAgent, service.baseUrl], ["bare", bareAgent, bare.baseUrl]] as const) {
          const r = await clientLoop(agent, `${baseUrl}/v1/shape`, urls, lengths, 1_000)
          totals[side].requests += r.requests
          totals[side].ms += r.ms
        }
      }
    } finally {
      await synclineAgent.close()
      await bareAgent.close()
    }
    const synclineRate = totals.syncline.requests / (totals.syncline.ms / 1000)
    const bareRate = totals.bare.requests / (totals.bare.ms / 1000)
    report.rows.push({
      figure: `catch-up chunk requests/s, ${CLIENTS} clients, chunks of ${fmtKb(meanBytes)}`,
      syncline: `${fmtInt(synclineRate)}/s (${fmtMb(synclineRate * meanBytes)} MB/s)`,
      limit: `bare \`node:http\` serving the same bytes: ${fmtInt(bareRate)}/s (${fmtMb(bareRate * meanBytes)} MB/s)`,
      ratio: fmtRatio(synclineRate / bareRate),
      target: "≥ 0.5",
      met: synclineRate / bareRate >= 0.5
    })
    report.notes.push(
      `catch-up chunks: ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD=${chunkBytes}, ${fmtInt(changes)} updates after a ${rows}-row snapshot make ` +
        `${recorded.length} chunks of ${fmtInt(meanBytes)} bytes on average (etag ${header(recorded[0]!.res, "etag") === undefined ? "absent" : "present"}); ` +
        `${CLIENTS} clients cycle through them for ${seconds} s per side, in one-second slices taken in turn.`
    )
  } finally {
    await control.close()
    if (bare !== undefined) await stopChild(bare.child)
    await service.stop()
  }
}

/** `CLIENTS` loops of requests through `urls` (client i starts at i) for about `ms`: the requests made and the time they took. */
const clientLoop = async (
  agent: Agent,
  base: string,
  urls: ReadonlyArray<string>,
  lengths: ReadonlyArray<number>,
  ms: number
): Promise<{ requests: number; ms: number }> => {
  let requests = 0
  const started = performance.now()
  const end = started + ms
  let last = started
  await Promise.all(Array.from({ length: CLIENTS }, async (_, client) => {
    for (let j = client; performance.now() < end; j += CLIENTS) {
      const i = j % urls.length
      const res = await get200(agent, base + urls[i]!)
      if (res.body.length !== lengths[i]) throw new Error(`${urls[i]}: ${res.body.length} bytes, expected ${lengths[i]}`)
      requests++
      last = res.at
    }
  }))
  return { requests, ms: last - started }
}
