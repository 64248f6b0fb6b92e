import * as net from "node:net"
import { Effect } from "effect"

/**
 * A TCP proxy to the database that passes the server's bytes on in pieces of 1 to 12 bytes (sizes drawn from
 * `seed`), each written on a turn of its own, so that messages (and their headers) arrive split at every kind of
 * place.
 */
export const splittingProxy = (target: string, seed: number) =>
  Effect.acquireRelease(
    Effect.promise(() =>
      new Promise<{ readonly server: net.Server; readonly url: string; readonly pieces: () => number }>((resolve) => {
        let pieces = 0
        let state = seed
        const size = () => {
          state = (state * 1103515245 + 12345) % 2147483648
          return 1 + ((state >> 8) % 12)
        }
        const { hostname, port } = new URL(target)
        const server = net.createServer((client) => {
          client.setNoDelay(true)
          const upstream = net.connect(Number(port), hostname)
          const close = () => {
            client.destroy()
            upstream.destroy()
          }
          client.on("error", close).on("close", close)
          upstream.on("error", close).on("close", close)
          client.pipe(upstream)
          upstream.on("data", async (chunk: Buffer) => {
            upstream.pause()
            for (let at = 0; at < chunk.length;) {
              const n = size()
              client.write(chunk.subarray(at, at + n))
              pieces++
              at += n
              await new Promise((done) => setImmediate(done))
            }
            upstream.resume()
          })
        })
        server.listen(0, "127.0.0.1", () => {
          const address = server.address() as net.AddressInfo
          const url = new URL(target)
          url.hostname = "127.0.0.1"
          url.port = String(address.port)
          resolve({ server, url: url.toString(), pieces: () => pieces })
        })
      })
    ),
    ({ server }) => Effect.promise(() => new Promise<void>((done) => server.close(() => done())))
  )
