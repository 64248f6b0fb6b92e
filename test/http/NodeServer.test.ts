import type * as http from "node:http"
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
})
