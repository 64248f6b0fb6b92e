import { HttpServer } from "@effect/platform"
import { Effect, Exit, Layer, Scope } from "effect"
import { StackConfig, type StackSettings } from "../../src/config/StackConfig.js"
import { Server } from "../../layers/Server.js"

/** A Syncline HTTP server and stack running in this process (tests and benchmarks). */
export interface InProcessSyncline {
  readonly baseUrl: string
  readonly settings: StackSettings
  readonly stop: () => Promise<void>
}

/**
 * Starts `layers/Server.ts` (127.0.0.1, a free port) against `databaseUrl` and resolves once
 * `/v1/health` answers 200.
 */
export const startInProcess = async (
  databaseUrl: string,
  settings: Partial<StackSettings> & { readonly storageDir: string }
): Promise<InProcessSyncline> => {
  const full = StackConfig.make({ port: 0, ...settings })
  const app = Server(full, databaseUrl, { host: "127.0.0.1" })
  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(Layer.buildWithScope(app, scope))
  const address = Effect.runSync(Effect.provide(HttpServer.HttpServer, context)).address
  if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
  const baseUrl = `http://127.0.0.1:${address.port}`
  const deadline = Date.now() + 60_000
  for (;;) {
    const res = await fetch(`${baseUrl}/v1/health`).catch(() => undefined)
    if (res !== undefined && res.status === 200) break
    if (Date.now() > deadline) throw new Error("Syncline did not become active")
    await new Promise((r) => setTimeout(r, 50))
  }
  return { baseUrl, settings: full, stop: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}
