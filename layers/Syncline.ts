import * as HttpRouter from "@effect/platform/HttpRouter"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import { StackConfig, type StackSettings } from "../src/config/StackConfig.js"
import { ShapeApi } from "../src/http/ShapeApi.js"
import { ShutdownSignal } from "../src/http/ShutdownSignal.js"
import { StatusHistory } from "../src/observability/StatusHistory.js"
import { StackSupervisor, type StackSupervisorService } from "../src/stack/StackSupervisor.js"
import { Stack } from "./Stack.js"

/**
 * What `ShapeApi` needs: the settings, the supervisor of the stack, the signal that releases held requests, and the
 * recent history its status page draws.
 */
export type SynclineServices = StackConfig | StackSupervisor | ShutdownSignal | StatusHistory

/** The source database's URL from the settings (`DATABASE_URL`); a host must give one. */
const databaseUrlOf = (settings: StackSettings): Effect.Effect<string, ConfigError.ConfigError> =>
  Option.match(settings.databaseUrl, {
    onNone: () =>
      Effect.fail(ConfigError.MissingData(
        ["DATABASE_URL"],
        `Syncline needs the source database's URL (for replication stream id "${settings.replicationStreamId}")`
      )),
    onSome: (url) => Effect.succeed(Redacted.value(url))
  })

/** One source database of a host that serves several, each at a path of its own. */
export interface SynclineSource {
  readonly settings: StackSettings
  readonly supervisor: StackSupervisorService
  /** `ShapeApi` over this source alone, to mount at its path: `HttpRouter.mount("/orders", source.api)`. */
  readonly api: HttpRouter.HttpRouter<unknown, never>
}

/** A source's stack under its supervisor, with its status history; it reads the source's `StackConfig`. */
const supervised = (settings: StackSettings, databaseUrl: string) =>
  StatusHistory.layer.pipe(Layer.provideMerge(StackSupervisor.layer(Stack(settings, databaseUrl))))

const makeSyncline = (settings: StackSettings, databaseUrl: string): Layer.Layer<SynclineServices> =>
  supervised(settings, databaseUrl).pipe(
    Layer.provideMerge(ShutdownSignal.layer),
    Layer.provideMerge(StackConfig.layerWith(settings))
  )

/**
 * Syncline inside a host app: one source database's stack under its
 * supervisor, with its settings and the shutdown signal, and no HTTP server.
 * The host mounts `ShapeApi` in its own router at a path of its choice
 * (`HttpRouter.mount("/sync", ShapeApi)`), serves that router with its own
 * server, and merges `Syncline.drain` beside the serving layer:
 *
 *   Layer.merge(HttpServer.serve(router), Syncline.drain).pipe(
 *     Layer.provide(NodeHttpServer.layer(createServer, { port })),
 *     Layer.provide(Syncline.layer),
 *     Layer.provide(StackConfig.layer) // or StackConfig.layerWith({ ... })
 *   )
 *
 * Released in that order when the host stops: the drain answers held
 * long-polls and ends SSE streams, the server closes once its open requests
 * are answered, and only then does the stack stop — its last batches made
 * durable and acknowledged.
 */
export const Syncline = {
  /**
   * The stack over `settings.databaseUrl` (`DATABASE_URL`), with the settings the host provides once as
   * `StackConfig`: from its `ConfigProvider` (`StackConfig.layer`) or as a value (`StackConfig.layerWith`).
   */
  layer: Layer.unwrapEffect(
    Effect.gen(function*() {
      const settings = yield* StackConfig
      return makeSyncline(settings, yield* databaseUrlOf(settings))
    })
  ),

  /** The stack over `databaseUrl` with these settings, taken as given. */
  make: makeSyncline,

  /** Merged beside the host's serving layer: releases held requests when the host stops. */
  drain: ShutdownSignal.drain,

  /**
   * One of several sources in one host: a stack of its own over `settings.databaseUrl` — its own slot and
   * publication (`replicationStreamId`), storage directory and supervisor — built in the caller's scope, with
   * the shape API over it. One source failing or restarting never touches another. Build the sources, then the
   * serving layer with its HTTP server, in one `Layer.unwrapScoped`: the server is then released first, and the
   * host's `ShutdownSignal` (with `Syncline.drain`) releases the held requests of every source.
   */
  source: (settings: StackSettings): Effect.Effect<SynclineSource, ConfigError.ConfigError, Scope.Scope | ShutdownSignal> =>
    Effect.gen(function*() {
      const signal = yield* ShutdownSignal
      const context = yield* Layer.build(
        supervised(settings, yield* databaseUrlOf(settings)).pipe(Layer.provide(StackConfig.layerWith(settings)))
      )
      const supervisor = Context.get(context, StackSupervisor)
      const api = ShapeApi.pipe(
        HttpRouter.provideService(StackSupervisor, supervisor),
        HttpRouter.provideService(StatusHistory, Context.get(context, StatusHistory)),
        HttpRouter.provideService(StackConfig, settings),
        HttpRouter.provideService(ShutdownSignal, signal)
      )
      return { settings, supervisor, api }
    })
}
