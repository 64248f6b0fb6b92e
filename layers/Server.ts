import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Layer } from "effect"
import type { StackSettings } from "../src/config/StackConfig.js"
import { createServer } from "../src/http/NodeServer.js"
import { ShapeApi } from "../src/http/ShapeApi.js"
import { Syncline } from "./Syncline.js"

/**
 * The HTTP server in front of a stack supervisor: `Syncline` served on its
 * own. The server is outside the stack: restarting the stack never touches it.
 * On shutdown the drain releases held long-polls, the server closes, and only
 * then does the stack stop (the server depends on the supervisor, so it is
 * released first).
 */
export const Server = (settings: StackSettings, databaseUrl: string, options: { readonly host?: string } = {}) =>
  Layer.merge(HttpServer.serve(ShapeApi).pipe(HttpServer.withLogAddress), Syncline.drain).pipe(
    Layer.provideMerge(
      NodeHttpServer.layer(() => createServer({ sendTimeoutMs: settings.sendTimeoutMs }), {
        port: settings.port,
        host: options.host ?? "0.0.0.0"
      })
    ),
    Layer.provideMerge(Syncline.make(settings, databaseUrl))
  )
