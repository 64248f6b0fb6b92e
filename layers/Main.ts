import * as FetchHttpClient from "@effect/platform/FetchHttpClient"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { constTrue } from "effect/Function"
import * as path from "node:path"
import type { StackSettings } from "../src/config/StackConfig.js"
import { DEMO_TABLE, ensureDemoData } from "../src/postgres/DemoData.js"
import { EmbeddedPostgres } from "../src/postgres/EmbeddedPostgres.js"
import { Server } from "./Server.js"

const banner = (settings: StackSettings, databaseUrl: string): string => {
  const base = `http://localhost:${settings.port}`
  return [
    "",
    "Syncline is running with an embedded Postgres (no DATABASE_URL was set).",
    `  shape API:  ${base}/v1/shape`,
    `  Postgres:   ${databaseUrl.replace(/:[^:@/]+@/, ":****@")}  (data in ${path.join(settings.storageDir, "postgres")})`,
    "",
    "Try it:",
    `  curl -i '${base}/v1/shape?table=${DEMO_TABLE}&offset=-1'`,
    "",
    "Or from TypeScript (npm install @electric-sql/client):",
    `  import { ShapeStream, Shape } from "@electric-sql/client"`,
    "",
    `  const stream = new ShapeStream({`,
    `    url: "${base}/v1/shape",`,
    `    params: { table: "${DEMO_TABLE}" }`,
    `  })`,
    `  const shape = new Shape(stream)`,
    "",
    `  shape.subscribe(({ rows }) => console.log(rows))`,
    `  console.log(await shape.rows)`,
    ""
  ].join("\n")
}

/**
 * The service as `npm start` runs it: against `DATABASE_URL`, or — with none —
 * an embedded Postgres under the storage dir with a demo table. The embedded
 * mode alone serves without a secret unless one is set.
 */
export const Main = (settings: StackSettings) => {
  if (Option.isSome(settings.databaseUrl)) return Server(settings, Redacted.value(settings.databaseUrl.value))
  return Layer.unwrapScoped(
    Effect.gen(function*() {
      const embedded = yield* EmbeddedPostgres
      yield* ensureDemoData(embedded.url)
      if (Option.isNone(settings.secret)) {
        yield* Effect.logWarning("embedded mode: serving without a secret (set ELECTRIC_SECRET to require one)")
      }
      yield* Effect.sync(() => console.log(banner(settings, embedded.url)))
      return Server(settings, embedded.url)
    })
  ).pipe(Layer.provide(EmbeddedPostgres.layer({ dataDir: path.join(path.resolve(settings.storageDir), "postgres") })))
}

/**
 * The service's logging as its settings ask (`ELECTRIC_LOG_LEVEL`, `SYNCLINE_LOG_FORMAT`): the least severe
 * level logged, and one JSON object per line in place of the pretty lines when asked. A host app keeps its own.
 */
export const Logging = (settings: StackSettings): Layer.Layer<never> =>
  Layer.merge(Logger.minimumLogLevel(settings.logLevel), settings.logFormat === "json" ? Logger.json : Logger.pretty)

/**
 * Traces over OTLP/HTTP (JSON) when the settings name an endpoint (`ELECTRIC_OTLP_ENDPOINT`, or the standard
 * `OTEL_*` variables): the spans of requests, queries and the stack's steps, sent in batches every second and
 * flushed when the service stops. The exporter is loaded only then; without an endpoint no span is made at all.
 */
export const Tracing = (settings: StackSettings): Layer.Layer<never> =>
  Option.match(settings.otlp, {
    // Spans nobody reads are not made: requests, reads and transactions skip their bookkeeping.
    onNone: () =>
      Layer.merge(Layer.setTracerEnabled(false), Layer.locallyScoped(HttpMiddleware.currentTracerDisabledWhen, constTrue)),
    onSome: ({ serviceName, tracesUrl }) =>
      Layer.unwrapEffect(
        Effect.tryPromise(() =>
          Promise.all([import("@effect/opentelemetry/OtlpTracer"), import("@effect/opentelemetry/OtlpSerialization")])
        ).pipe(
          Effect.map(([tracer, serialization]) =>
            tracer.layer({ url: tracesUrl, resource: { serviceName }, exportInterval: "1 second" }).pipe(
              Layer.provide(serialization.layerJson),
              Layer.provide(FetchHttpClient.layer)
            )
          ),
          // An endpoint set for the whole environment must not stop a service installed without the exporter.
          Effect.catchAll((error) =>
            Effect.as(
              Effect.logWarning(`traces are not sent to ${tracesUrl}: @effect/opentelemetry cannot be loaded`, error),
              Layer.empty
            )
          )
        )
      )
  })
