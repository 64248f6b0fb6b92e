import type * as http from "node:http"
import * as net from "node:net"
import type { AddressInfo } from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import { createServer } from "../../src/http/NodeServer.js"

let server: http.Server | undefined

afterEach(async () => {
  await new Promise<void>((resolve) => (server?.listening ? server.close(() => resolve()) : resolve()))
  server = undefined
})

const listen = async (s: http.Server): Promise<string> => {
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", () => resolve()))
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`
}

describe("NodeServer", () => {
  it("leaves requests to the API's handler while one is installed", async () => {
    server = createServer()
    server.on("request", (_req: http.IncomingMessage, res: http.ServerResponse) => res.end("from the api"))
    const res = await fetch(`${await listen(server)}/v1/shape`)
    expect(res.status).toBe(200)
    expect(await res.text()).toBe("from the api")
  })

  it("answers what `answerFirst` takes before the API's handler sees it, and leaves the rest to the handler", async () => {
    let handled = 0
    server = createServer({
      sendTimeoutMs: 30_000,
      answerFirst: (req, res) => {
        if (req.url !== "/first") return false
        res.end("answered first")
        return true
      }
    })
    server.on("request", (_req: http.IncomingMessage, res: http.ServerResponse) => {
      handled++
      res.end("from the api")
    })
    const base = await listen(server)
    expect(await (await fetch(`${base}/first`)).text()).toBe("answered first")
    expect(handled).toBe(0)
    expect(await (await fetch(`${base}/other`)).text()).toBe("from the api")
    expect(handled).toBe(1)
  })

  it("answers 503 with retry-after and closes the connection once the API's handler is gone (shutdown)", async () => {
    server = createServer()
    const handler = (_req: http.IncomingMessage, res: http.ServerResponse) => res.end("from the api")
    server.on("request", handler)
    const base = await listen(server)
    await (await fetch(`${base}/v1/shape`)).text()
    // What the Effect server does first on shutdown; requests can still arrive on kept-alive connections.
    server.off("request", handler)
    const res = await fetch(`${base}/v1/shape`)
    expect(res.status).toBe(503)
    expect(res.headers.get("retry-after")).toBe("1")
    expect(res.headers.get("connection")).toBe("close")
    expect(res.headers.get("access-control-allow-origin")).toBe("*")
    expect(await res.json()).toEqual({ message: "The server is stopping" })
  })

  it("drops a connection that takes no bytes of a response for the send timeout, and leaves a held one alone", async () => {
    const sendTimeoutMs = 300
    server = createServer({ sendTimeoutMs })
    // past what the kernel takes off a loopback socket, so that bytes stay waiting in the process
    const body = Buffer.alloc(16 * 1024 * 1024, 0x78)
    const sockets = new Map<string, net.Socket>()
    server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
      sockets.set(req.url!, req.socket)
      if (req.url === "/big") res.end(body)
      // held for several send timeouts with nothing written, as a long-poll is
      else setTimeout(() => res.end("held"), 4 * sendTimeoutMs)
    })
    const base = await listen(server)
    const held = fetch(`${base}/held`)
    const { port } = new URL(base)
    const stalled = net.connect(Number(port), "127.0.0.1")
    stalled.pause()
    stalled.on("error", () => undefined)
    stalled.write("GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try {
      const deadline = Date.now() + 10_000
      while (sockets.get("/big")?.destroyed !== true) {
        if (Date.now() > deadline) throw new Error("the stalled connection was not dropped")
        await new Promise((r) => setTimeout(r, 20))
      }
      const res = await held
      expect(res.status).toBe(200)
      expect(await res.text()).toBe("held")
      expect(sockets.get("/held")!.destroyed).toBe(false)
    } finally {
      stalled.destroy()
    }
  })
})
