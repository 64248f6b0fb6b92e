// The limits of the benchmark: bare node:http servers doing the least the same work needs, each
// in a process of its own, so the bench's client never shares an event loop with a server.
// Plain JavaScript run by node itself (no loader), so nothing but node is in its memory.
//
//   node bare.mjs http <port>                 answers /v1/health and nothing else
//   node bare.mjs hold <port> <spec.json>     holds every GET /hold; POST /trigger answers them
//                                             all with the spec's headers and body
//   node bare.mjs replay <port> <spec.json>   answers GET /v1/shape?…&offset=X with the response
//                                             the spec recorded for offset X
//   node bare.mjs records <port> <columns>    POST /create?n=N builds N records of what a shape
//                                             is (its definition, handle and offsets); POST
//                                             /churn makes short-lived garbage
//
// Every mode answers GET /v1/health with {"status":"active"}.
import * as fs from "node:fs"
import * as http from "node:http"

const [mode, portText, arg] = process.argv.slice(2)
const port = Number(portText)

const health = (res) => {
  res.writeHead(200, { "content-type": "application/json" })
  res.end(`{"status":"active"}`)
}

/** { headers: Record<string, string>, body: base64 } → what res.writeHead and res.end take. */
const decode = (recorded) => ({ headers: recorded.headers, body: Buffer.from(recorded.body, "base64") })

let handler
if (mode === "http") {
  handler = (req, res) => {
    if (req.url === "/v1/health") return health(res)
    res.writeHead(404)
    res.end()
  }
} else if (mode === "hold") {
  const { headers, body } = decode(JSON.parse(fs.readFileSync(arg, "utf8")))
  let held = []
  handler = (req, res) => {
    if (req.url === "/hold") {
      held.push(res)
    } else if (req.url === "/trigger") {
      const answering = held
      held = []
      for (const r of answering) {
        r.writeHead(200, headers)
        r.end(body)
      }
      res.writeHead(200)
      res.end(String(answering.length))
    } else if (req.url === "/count") {
      res.writeHead(200)
      res.end(String(held.length))
    } else if (req.url === "/v1/health") {
      health(res)
    } else {
      res.writeHead(404)
      res.end()
    }
  }
} else if (mode === "replay") {
  const spec = JSON.parse(fs.readFileSync(arg, "utf8"))
  const byOffset = new Map(Object.entries(spec.responses).map(([offset, recorded]) => [offset, decode(recorded)]))
  handler = (req, res) => {
    if (req.url === "/v1/health") return health(res)
    // The query is parsed, as any server must to know what is asked.
    const query = new URLSearchParams(req.url.slice(req.url.indexOf("?") + 1))
    const found = byOffset.get(query.get("offset"))
    if (found === undefined) {
      res.writeHead(404)
      res.end()
      return
    }
    res.writeHead(200, found.headers)
    res.end(found.body)
  }
} else if (mode === "records") {
  const columns = arg.split(",")
  const byHandle = new Map()
  const byDefinition = new Map()
  let next = 0
  // A new string with the same text, as parsing a request yields: no record shares one with another.
  const fresh = (s) => Buffer.from(s, "latin1").toString("latin1")
  const create = (n) => {
    for (let i = 0; i < n; i++) {
      const k = next++
      const where = `id = ${k + 1}`
      // Built per record, as a parser would: no string or array is shared between records.
      const definition = {
        table: { schema: fresh("public"), name: fresh("bench_mem") },
        relationId: 16384 + (k % 7),
        where,
        columns: columns.map(fresh),
        replica: fresh("default"),
        log: fresh("full")
      }
      const key = `"public"."bench_mem"|${where}|${definition.columns.join(",")}|default|full`
      const handle = `${(k * 2654435761 >>> 0).toString().padStart(10, "0")}-${1_700_000_000_000_000 + k}`
      const record = {
        handle,
        definition,
        offsets: { snapshotEnd: `0_${k}`, latest: `${1000 + k}_0`, chunkStarts: [`0_0`] },
        lastLsn: BigInt(1000 + k),
        status: fresh("active")
      }
      byHandle.set(handle, record)
      byDefinition.set(key, handle)
    }
  }
  handler = (req, res) => {
    if (req.url === "/v1/health") return health(res)
    if (req.method === "POST" && req.url.startsWith("/churn")) {
      // Short-lived garbage, as a server makes answering requests: the young generation grows to
      // its working size before the baseline is taken, as it has in a service that has been serving.
      let kept = 0
      for (let round = 0; round < 200; round++) {
        const garbage = Array.from({ length: 10_000 }, (_, i) => ({ i, text: `garbage ${round} ${i}` }))
        kept += garbage.length
      }
      res.writeHead(200)
      res.end(String(kept))
      return
    }
    if (req.method === "POST" && req.url.startsWith("/create")) {
      const n = Number(new URLSearchParams(req.url.slice(req.url.indexOf("?") + 1)).get("n"))
      create(n)
      res.writeHead(200)
      res.end(String(byHandle.size))
      return
    }
    res.writeHead(404)
    res.end()
  }
} else {
  console.error(`unknown mode ${mode}`)
  process.exit(2)
}

const server = http.createServer(handler)
server.keepAliveTimeout = 120_000
server.headersTimeout = 0
server.requestTimeout = 0
server.listen(port, "127.0.0.1")
process.on("SIGTERM", () => process.exit(0))
