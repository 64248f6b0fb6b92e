import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Effect, Exit, Layer, Logger, LogLevel, Scope } from "effect"
import { inject } from "vitest"
import { Syncline } from "../../layers/Syncline.js"
import { StackConfig, type StackSettings } from "../../src/config/StackConfig.js"
import { createServer } from "../../src/http/NodeServer.js"
import { ShapeApi } from "../../src/http/ShapeApi.js"
import { tempDir } from "./syncline.js"

/** A server under test: where its API answers, and how to stop it. */
export interface Running {
  readonly baseUrl: string
  readonly stop: () => Promise<void>
}

/**
 * The shape API mounted at `/sync` in a host app's router, served by a Node server made with `createServer()`
 * as a host makes it (without the service's own settled lane), over the test database.
 */
export const startHosted = async (streamId: string, settings: Partial<StackSettings> = {}): Promise<Running> => {
  const full = StackConfig.make({
    port: 0,
    storageDir: await tempDir(streamId),
    replicationStreamId: streamId,
    enableIntegrationTesting: true,
    ...settings
  })
  const app = Layer.merge(HttpServer.serve(HttpRouter.mount(HttpRouter.empty, "/sync", ShapeApi)), Syncline.drain).pipe(
    Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" })),
    Layer.provide(Syncline.make(full, inject("databaseUrl"))),
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning))
  )
  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(Layer.buildWithScope(app, scope))
  const address = Effect.runSync(Effect.provide(HttpServer.HttpServer, context)).address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  const baseUrl = `http://127.0.0.1:${address.port}/sync`
  for (const deadline = Date.now() + 60_000;;) {
    const res = await fetch(`${baseUrl}/v1/health`).catch(() => undefined)
    if (res?.status === 200) break
    if (Date.now() > deadline) throw new Error("the hosted API did not become active")
    await new Promise((r) => setTimeout(r, 50))
  }
  return { baseUrl, stop: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}
