import * as http from "node:http"
import { cacheControl, corsHeaders } from "./ResponseHeaders.js"

/**
 * The Node server under the shape API. On shutdown the Effect server removes its request
 * handler before it closes the listener, and Node keeps reading requests from open keep-alive
 * connections until they close: a request that arrives then would get no answer at all, and
 * `server.close()` would wait for it until the client gives up. Such a request is answered 503
 * with `retry-after` (the client retries, against whichever server is up) and the connection is
 * closed.
 */
export const createServer = (): http.Server => {
  const server = http.createServer()
  server.on("request", (request: http.IncomingMessage, response: http.ServerResponse) => {
    // Registered first, so any other listener is the API's handler, which answers the request.
    if (server.listenerCount("request") > 1) return
    const origin = request.headers.origin
    response.writeHead(503, {
      ...corsHeaders(origin, "shape"),
      ...cacheControl({ _tag: "error" }),
      "retry-after": "1",
      "content-type": "application/json; charset=utf-8",
      connection: "close"
    })
    response.end(JSON.stringify({ message: "The server is stopping" }))
  })
  return server
}
