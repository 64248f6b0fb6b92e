import { HttpServer } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Layer } from "effect"
import { createServer } from "node:http"
import { StackConfig, type StackSettings } from "../src/config/StackConfig.js"
import { ShapeApi } from "../src/http/ShapeApi.js"
import { StackSupervisor } from "../src/stack/StackSupervisor.js"
import { Stack } from "./Stack.js"

/**
 * The HTTP server in front of a stack supervisor. The server is outside the
 * stack: restarting the stack never touches it, and it stops first.
 */
export const Server = (settings: StackSettings, databaseUrl: string) =>
  HttpServer.serve(ShapeApi).pipe(
    HttpServer.withLogAddress,
    Layer.provideMerge(StackSupervisor.layer(Stack(settings, databaseUrl))),
    Layer.provide(NodeHttpServer.layer(createServer, { port: settings.port, host: "0.0.0.0" })),
    Layer.provide(StackConfig.layerWith(settings))
  )
