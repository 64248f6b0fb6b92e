import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Layer } from "effect"
import { StackConfig, type StackSettings } from "../src/config/StackConfig.js"
import { createServer } from "../src/http/NodeServer.js"
import { ShapeApi } from "../src/http/ShapeApi.js"
import { ShutdownSignal } from "../src/http/ShutdownSignal.js"
import { StackSupervisor } from "../src/stack/StackSupervisor.js"
import { Stack } from "./Stack.js"

/**
 * The HTTP server in front of a stack supervisor. The server is outside the
 * stack: restarting the stack never touches it. On shutdown the drain
 * releases held long-polls, the server closes, and only then does the stack
 * stop (the server depends on the supervisor, so it is released first).
 */
export const Server = (settings: StackSettings, databaseUrl: string, options: { readonly host?: string } = {}) => {
  const infrastructure = NodeHttpServer.layer(
    () => createServer({ sendTimeoutMs: settings.sendTimeoutMs }),
    { port: settings.port, host: options.host ?? "0.0.0.0" }
  ).pipe(
    Layer.provideMerge(StackSupervisor.layer(Stack(settings, databaseUrl))),
    Layer.provideMerge(ShutdownSignal.layer),
    Layer.provideMerge(StackConfig.layerWith(settings))
  )
  return Layer.merge(HttpServer.serve(ShapeApi).pipe(HttpServer.withLogAddress), ShutdownSignal.drain).pipe(
    Layer.provideMerge(infrastructure)
  )
}
