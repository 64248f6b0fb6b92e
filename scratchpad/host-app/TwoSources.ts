import { HttpRouter, HttpServer } from "@effect/platform"
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Config, Effect, Layer } from "effect"
import { createServer, ShutdownSignal, stackSettingsConfig, type StackSettings, Syncline } from "syncline"

/**
 * A host serving two source databases, each a stack of its own (slot,
 * publication, storage directory, supervisor) mounted at its own path:
 * `/orders/v1/shape` and `/billing/v1/shape`. The sources are built first and
 * the server last, in one scope, so that stopping releases held requests,
 * closes the server, and only then stops the stacks.
 *
 *   ORDERS_DATABASE_URL=… ORDERS_ELECTRIC_REPLICATION_STREAM_ID=orders ORDERS_ELECTRIC_STORAGE_DIR=./orders \
 *   BILLING_DATABASE_URL=… BILLING_ELECTRIC_REPLICATION_STREAM_ID=billing BILLING_ELECTRIC_STORAGE_DIR=./billing \
 *   ORDERS_ELECTRIC_INSECURE=true BILLING_ELECTRIC_INSECURE=true npx tsx scratchpad/host-app/TwoSources.ts
 */
export const TwoSources = (options: {
  readonly port: number
  readonly host?: string
  readonly orders: StackSettings
  readonly billing: StackSettings
}) =>
  Layer.unwrapScoped(
    Effect.gen(function*() {
      const orders = yield* Syncline.source(options.orders)
      const billing = yield* Syncline.source(options.billing)
      const router = HttpRouter.empty.pipe(HttpRouter.mount("/orders", orders.api), HttpRouter.mount("/billing", billing.api))
      return Layer.merge(HttpServer.serve(router).pipe(HttpServer.withLogAddress), Syncline.drain).pipe(
        Layer.provide(NodeHttpServer.layer(() => createServer(), { port: options.port, host: options.host ?? "0.0.0.0" }))
      )
    })
  ).pipe(Layer.provide(ShutdownSignal.layer))

if (import.meta.url === `file://${process.argv[1]}`) {
  // Each source's settings are Electric's variables under a prefix of its own (ORDERS_DATABASE_URL, …).
  const settings = Config.all({
    port: Config.integer("HOST_APP_PORT").pipe(Config.withDefault(3001)),
    orders: Config.nested(stackSettingsConfig, "ORDERS"),
    billing: Config.nested(stackSettingsConfig, "BILLING")
  })
  Layer.unwrapEffect(Effect.map(settings, TwoSources)).pipe(Layer.launch, NodeRuntime.runMain)
}
