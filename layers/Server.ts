import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { StackSettings } from "../src/config/StackConfig.js"
import { createServer } from "../src/http/NodeServer.js"
import { settledLane } from "../src/http/SettledResponses.js"
import { ShapeApi } from "../src/http/ShapeApi.js"
import { metricsRoute } from "../src/observability/MetricsRoute.js"
import { StackSupervisor } from "../src/stack/StackSupervisor.js"
import { Syncline } from "./Syncline.js"

/**
 * The HTTP server in front of a stack supervisor: `Syncline` served on its
 * own. The server is outside the stack: restarting the stack never touches it.
 * On shutdown the drain releases held long-polls, the server closes, and only
 * then does the stack stop (the server depends on the supervisor, so it is
 * released first).
 */
export const Server = (settings: StackSettings, databaseUrl: string, options: { readonly host?: string } = {}) => {
  const host = options.host ?? "0.0.0.0"
  // `/metrics` on a port of its own too, with a server of its own (released before the main one).
  const metrics = Option.match(settings.prometheusPort, {
    onNone: () => Layer.empty,
    onSome: (port) =>
      HttpServer.serve(HttpRouter.empty.pipe(HttpRouter.get("/metrics", metricsRoute))).pipe(
        Layer.provide(NodeHttpServer.layer(() => createServer({ sendTimeoutMs: settings.sendTimeoutMs }), { port, host }))
      )
  })
  // Settled catch-up responses are answered by the Node server itself, unless every request is traced.
  const server = Layer.unwrapEffect(Effect.map(StackSupervisor, (supervisor) =>
    NodeHttpServer.layer(() =>
      createServer({
        sendTimeoutMs: settings.sendTimeoutMs,
        ...(Option.isNone(settings.otlp) ? { answerFirst: settledLane(supervisor, settings.replicationStreamId) } : {})
      }), { port: settings.port, host })))
  return Layer.mergeAll(HttpServer.serve(ShapeApi).pipe(HttpServer.withLogAddress), Syncline.drain, metrics).pipe(
    Layer.provideMerge(server),
    Layer.provideMerge(Syncline.make(settings, databaseUrl))
  )
}
