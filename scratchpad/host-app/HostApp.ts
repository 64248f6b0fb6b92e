import { HttpRouter, HttpServer, HttpServerResponse } from "@effect/platform"
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Config, Effect, Layer } from "effect"
import { createServer, ShapeApi, StackConfig, Syncline } from "syncline"

/**
 * A host Effect app with Syncline inside: a route of its own beside the shape
 * API, which it mounts at `/sync` (clients use `/sync/v1/shape`), on its own
 * HTTP server. The settings come once, as `StackConfig`, from the host's
 * `ConfigProvider` (`StackConfig.layer`: Electric's variables) or as a value.
 * Stopping the host releases held long-polls and SSE streams, closes the
 * server, and then stops the stack.
 *
 *   DATABASE_URL=postgresql://… ELECTRIC_INSECURE=true npx tsx scratchpad/host-app/HostApp.ts
 */
export const HostRouter = HttpRouter.empty.pipe(
  HttpRouter.get("/hello", HttpServerResponse.json({ message: "hello from the host app" })),
  HttpRouter.mount("/sync", ShapeApi)
)

/** What the host serves, and the drain beside it; its tests run it on a test server over `TestSyncline`. */
export const HostRoutes = Layer.merge(HttpServer.serve(HostRouter).pipe(HttpServer.withLogAddress), Syncline.drain)

/** The whole host app on a Node server at `port`, over the source database its `StackConfig` names. */
export const HostApp = (options: { readonly port: number; readonly host?: string }) =>
  HostRoutes.pipe(
    Layer.provide(NodeHttpServer.layer(() => createServer(), { port: options.port, host: options.host ?? "0.0.0.0" })),
    Layer.provide(Syncline.layer)
  )

if (import.meta.url === `file://${process.argv[1]}`) {
  const port = Config.integer("HOST_APP_PORT").pipe(Config.withDefault(3001))
  Layer.unwrapEffect(Effect.map(port, (port) => HostApp({ port }))).pipe(
    Layer.provide(StackConfig.layer),
    Layer.launch,
    NodeRuntime.runMain
  )
}
