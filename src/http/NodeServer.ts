import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import * as Effect from "effect/Effect"
import * as http from "node:http"
import { StorageError } from "../domain/errors.js"
import { cacheControl, corsHeaders } from "./ResponseHeaders.js"

/** How the Node server treats its connections. */
export interface NodeServerOptions {
  /**
   * `SYNCLINE_SEND_TIMEOUT`: a connection that has not accepted a byte for this many milliseconds while a
   * response is being written to it is destroyed, releasing what the response held.
   */
  readonly sendTimeoutMs: number
  /**
   * Answers what it can before the Effect handler sees the request (true when it did): see
   * `settledLane`. Only while the handler is attached, so never during shutdown.
   */
  readonly answerFirst?: (request: http.IncomingMessage, response: http.ServerResponse) => boolean
}

/**
 * The Node server under the shape API.
 *
 * On shutdown the Effect server removes its request handler before it closes the listener, and
 * Node keeps reading requests from open keep-alive connections until they close: a request that
 * arrives then would get no answer at all, and `server.close()` would wait for it until the client
 * gives up. Such a request is answered 503 with `retry-after` (the client retries, against
 * whichever server is up) and the connection is closed.
 *
 * A client that stops reading would otherwise keep its connection, and whatever its response holds,
 * for as long as it likes: see `NodeServerOptions.sendTimeoutMs`.
 */
export const createServer = (options: NodeServerOptions = { sendTimeoutMs: 30_000 }): http.Server => {
  const server = http.createServer()
  server.on("request", (request: http.IncomingMessage, response: http.ServerResponse) => {
    response.setTimeout(options.sendTimeoutMs, dropIfStalled)
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
  const answerFirst = options.answerFirst
  if (answerFirst !== undefined) {
    // Node calls every request listener; a request answered first must not reach the handler at all.
    const emit = server.emit
    server.emit = function(this: http.Server, event: string | symbol, ...args: Array<unknown>): boolean {
      if (event === "request" && this.listenerCount("request") > 1) {
        const [request, response] = args as [http.IncomingMessage, http.ServerResponse]
        if (answerFirst(request, response)) {
          response.setTimeout(options.sendTimeoutMs, dropIfStalled)
          return true
        }
      }
      return Reflect.apply(emit, this, [event, ...args]) as boolean
    } as typeof server.emit
  }
  return server
}

/**
 * Runs when the socket under a response has seen no traffic for the send timeout. Node holds the
 * timeout back while a write is still making progress, so bytes waiting here mean the client took
 * none. A socket that is idle because nothing is being written — a held long-poll — is left alone:
 * Node destroys a timed-out socket only when nothing listens for the timeout. Once the response has
 * finished, Node's own keep-alive timeout replaces this one.
 */
function dropIfStalled(this: http.ServerResponse): void {
  const socket = this.socket
  if (socket !== null && this.headersSent && socket.writableLength > 0) socket.destroy()
}

/**
 * Destroys the connection under a request whose response cannot be completed: once the headers (with
 * `content-length`) are out, ending the response early would leave the client waiting, on a
 * connection it would reuse, for bytes that never come.
 */
export const abortConnection = (request: HttpServerRequest.HttpServerRequest): void => {
  // Only a Node request has a Node response; under another server the failed body ends the response as it can.
  const response: http.ServerResponse | undefined = NodeHttpServerRequest.toServerResponse(request)
  response?.destroy()
}

/**
 * Closes the connection under a request once its response has been sent whole, instead of keeping it for the
 * next request: for a stream that a stopping server ends, whose headers promised keep-alive long before.
 */
export const closeConnectionOnFinish = (request: HttpServerRequest.HttpServerRequest): void => {
  const response: http.ServerResponse | undefined = NodeHttpServerRequest.toServerResponse(request)
  const socket = response?.socket
  if (response === undefined || socket == null) return
  response.once("finish", () => socket.end())
}

/**
 * Writes a body of `length` bytes, read piece by piece with `readPiece` (see `LogStream.readPiece`), straight
 * into the Node response under a request, after whatever the response has written so far; undefined under
 * another server. The next piece is read while the socket takes the one before, into the other of two buffers
 * of `pieceBytes` that the response owns: a buffer is read into again only once the socket has taken its piece,
 * so a reader that stops taking bytes holds one piece in its socket and one read ahead. Fails with what a read
 * fails with. On interruption (the client left) no further piece is read, and the interruption completes once
 * the read under way, if any, has settled.
 */
export const writePieces = (
  request: HttpServerRequest.HttpServerRequest,
  length: number,
  pieceBytes: number,
  readPiece: (at: number, into: Buffer) => Promise<Buffer>
): Effect.Effect<void, StorageError> | undefined => {
  const response: http.ServerResponse | undefined = NodeHttpServerRequest.toServerResponse(request)
  if (response === undefined) return undefined
  return Effect.async<void, StorageError>((resume) => {
    // Each as long as the pieces it takes: a body of one piece and a bit holds a piece and the bit.
    const buffers: [Buffer | undefined, Buffer | undefined] = [undefined, undefined]
    let stopped = false
    let at = 0
    let next = 0
    let reading: Promise<Buffer> | undefined
    const readAhead = () => {
      reading = at < length
        ? readPiece(at, buffers[next] ??= Buffer.allocUnsafe(Math.min(pieceBytes, length - at)))
        : undefined
      // It fails unobserved when the response stops first.
      reading?.catch(() => undefined)
      next ^= 1
    }
    const failed = (cause: unknown) => {
      if (stopped) return
      stopped = true
      resume(Effect.fail(
        cause instanceof StorageError
          ? cause
          : new StorageError({ reason: "Io", message: cause instanceof Error ? cause.message : String(cause), cause })
      ))
    }
    const send = (piece: Buffer) => {
      if (stopped) return
      at += piece.length
      readAhead()
      response.write(piece, (error) => {
        if (stopped) return
        // The connection is gone: the fiber that wrote the response is being interrupted.
        if (error != null || reading === undefined) {
          stopped = true
          resume(Effect.void)
          return
        }
        reading.then(send, failed)
      })
    }
    readAhead()
    if (reading === undefined) resume(Effect.void)
    else reading.then(send, failed)
    return Effect.promise(() => {
      stopped = true
      return reading === undefined ? Promise.resolve() : reading.then(() => undefined, () => undefined)
    })
  })
}
