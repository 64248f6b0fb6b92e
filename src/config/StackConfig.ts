import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"

/**
 * The settings of one stack, read from Electric's environment variable names,
 * formats and defaults (durations in milliseconds). Settings Electric does not
 * have use the `SYNCLINE_` prefix.
 */
export interface StackSettings {
  /** `DATABASE_URL`; absent means "start an embedded Postgres". */
  readonly databaseUrl: Option.Option<Redacted.Redacted<string>>
  readonly port: number
  readonly storageDir: string
  /** `ELECTRIC_SECRET`; `None` when `ELECTRIC_INSECURE=true` (or in embedded mode without a secret). */
  readonly secret: Option.Option<Redacted.Redacted<string>>
  readonly longPollTimeoutMs: number
  readonly chunkBytesThreshold: number
  readonly cacheMaxAge: number
  readonly cacheStaleAge: number
  readonly replicationStreamId: string
  readonly enableIntegrationTesting: boolean
  readonly shutdownTimeoutMs: number
  /** How often the active stack checks that every table with shapes is still in the publication. */
  readonly publicationCheckIntervalMs: number
  /** `SYNCLINE_SEND_TIMEOUT`: how long a connection may accept no bytes of a response before it is dropped. */
  readonly sendTimeoutMs: number
  /** `SYNCLINE_SSE_TIMEOUT`: how long the server holds a live SSE stream before it ends it (the client reconnects). */
  readonly sseTimeoutMs: number
  /** `SYNCLINE_SSE_KEEPALIVE`: the quiet time after which an SSE stream gets a `: keep-alive` comment. */
  readonly sseKeepAliveMs: number
  /** `ELECTRIC_PROMETHEUS_PORT`: a port of its own for `/metrics` (also served on the main port). */
  readonly prometheusPort: Option.Option<number>
  /** `ELECTRIC_LOG_LEVEL`: the least severe level logged. */
  readonly logLevel: LogLevel.LogLevel
  /** `SYNCLINE_LOG_FORMAT`: `pretty` lines for a terminal, or one JSON object per line for a log collector. */
  readonly logFormat: "pretty" | "json"
  /**
   * Where traces go over OTLP/HTTP, if anywhere: `ELECTRIC_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` (a base
   * URL, traces at `/v1/traces` under it) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the whole URL), as
   * `OTEL_SERVICE_NAME` (`syncline` by default).
   */
  readonly otlp: Option.Option<{ readonly tracesUrl: string; readonly serviceName: string }>
}

/** Names derived from the replication stream id, as Electric names them. */
export const publicationName = (s: StackSettings): string => `electric_publication_${s.replicationStreamId}`
export const slotName = (s: StackSettings): string => `electric_slot_${s.replicationStreamId}`

const invalid = (name: string, expected: string, got: string) =>
  ConfigError.InvalidData([name], `${name} must be ${expected}, got ${JSON.stringify(got)}`)

const optionalRaw = (name: string) => Config.option(Config.string(name))

const integer = (name: string, fallback: number, min: number, max: number, expected: string) =>
  optionalRaw(name).pipe(
    Config.mapOrFail((raw) => {
      if (Option.isNone(raw) || raw.value.trim() === "") return Either.right(fallback)
      const text = raw.value.trim()
      const n = /^-?\d+$/.test(text) ? Number(text) : NaN
      return Number.isSafeInteger(n) && n >= min && n <= max
        ? Either.right(n)
        : Either.left(invalid(name, expected, raw.value))
    })
  )

/** One of `choices` by name (any case); `fallback` when unset. */
const oneOf = <A>(name: string, choices: Readonly<Record<string, A>>, fallback: string) =>
  optionalRaw(name).pipe(
    Config.mapOrFail((raw) => {
      const text = Option.isNone(raw) || raw.value.trim() === "" ? fallback : raw.value.trim().toLowerCase()
      return Object.hasOwn(choices, text)
        ? Either.right(choices[text]!)
        : Either.left(invalid(name, `one of ${Object.keys(choices).join(", ")}`, Option.getOrElse(raw, () => "")))
    })
  )

/** An `http(s)://` URL, or undefined for an unset variable. */
const httpUrl = (name: string) =>
  optionalRaw(name).pipe(
    Config.mapOrFail((raw) => {
      if (Option.isNone(raw) || raw.value.trim() === "") return Either.right(undefined)
      const text = raw.value.trim()
      try {
        if (/^https?:$/.test(new URL(text).protocol)) return Either.right(text)
      } catch {
        // Reported below.
      }
      return Either.left(invalid(name, "an http:// or https:// URL", raw.value))
    })
  )

const otlpConfig = Config.all({
  electric: httpUrl("ELECTRIC_OTLP_ENDPOINT"),
  base: httpUrl("OTEL_EXPORTER_OTLP_ENDPOINT"),
  traces: httpUrl("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
  serviceName: optionalRaw("OTEL_SERVICE_NAME")
}).pipe(
  Config.map(({ base, electric, serviceName, traces }) => {
    const baseUrl = electric ?? base
    const tracesUrl = traces ?? (baseUrl === undefined ? undefined : `${baseUrl.replace(/\/+$/, "")}/v1/traces`)
    if (tracesUrl === undefined) return Option.none()
    const name = Option.getOrElse(serviceName, () => "").trim()
    return Option.some({ tracesUrl, serviceName: name === "" ? "syncline" : name })
  })
)

/** `ELECTRIC_LOG_LEVEL`'s values: Electric's (Elixir's) names, and Effect's. */
const LOG_LEVELS: Readonly<Record<string, LogLevel.LogLevel>> = {
  debug: LogLevel.Debug,
  info: LogLevel.Info,
  notice: LogLevel.Info,
  warning: LogLevel.Warning,
  warn: LogLevel.Warning,
  error: LogLevel.Error,
  none: LogLevel.None
}

const boolean = (name: string, fallback: boolean) =>
  optionalRaw(name).pipe(
    Config.mapOrFail((raw) => {
      if (Option.isNone(raw) || raw.value.trim() === "") return Either.right(fallback)
      const text = raw.value.trim().toLowerCase()
      if (text === "true" || text === "1") return Either.right(true)
      if (text === "false" || text === "0") return Either.right(false)
      return Either.left(invalid(name, "true or false", raw.value))
    })
  )

const nonEmptyString = (name: string, fallback: string, pattern: RegExp, expected: string) =>
  optionalRaw(name).pipe(
    Config.mapOrFail((raw) => {
      if (Option.isNone(raw) || raw.value === "") return Either.right(fallback)
      return pattern.test(raw.value) ? Either.right(raw.value) : Either.left(invalid(name, expected, raw.value))
    })
  )

const databaseUrl = optionalRaw("DATABASE_URL").pipe(
  Config.mapOrFail((raw) => {
    if (Option.isNone(raw) || raw.value.trim() === "") return Either.right(Option.none<Redacted.Redacted<string>>())
    const text = raw.value.trim()
    if (!/^postgres(ql)?:\/\//.test(text)) {
      return Either.left(
        ConfigError.InvalidData(["DATABASE_URL"], "DATABASE_URL must be a postgresql:// URL")
      )
    }
    try {
      new URL(text)
    } catch {
      return Either.left(ConfigError.InvalidData(["DATABASE_URL"], "DATABASE_URL must be a valid postgresql:// URL"))
    }
    return Either.right(Option.some(Redacted.make(text)))
  })
)

/** The `Config` that reads every setting; exposed so host apps can read it from their own provider. */
export const stackSettingsConfig: Config.Config<StackSettings> = Config.all({
  databaseUrl,
  port: integer("ELECTRIC_PORT", 3000, 0, 65535, "a port number (0-65535)"),
  storageDir: nonEmptyString("ELECTRIC_STORAGE_DIR", "./persistent", /./, "a directory path"),
  insecure: boolean("ELECTRIC_INSECURE", false),
  secret: optionalRaw("ELECTRIC_SECRET"),
  longPollTimeoutMs: integer("ELECTRIC_LONG_POLL_TIMEOUT", 20_000, 0, 3_600_000, "a duration in milliseconds"),
  chunkBytesThreshold: integer(
    "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD",
    10_485_760,
    1,
    Number.MAX_SAFE_INTEGER,
    "a positive number of bytes"
  ),
  cacheMaxAge: integer("ELECTRIC_CACHE_MAX_AGE", 60, 0, 31_536_000, "a number of seconds"),
  cacheStaleAge: integer("ELECTRIC_CACHE_STALE_AGE", 300, 0, 31_536_000, "a number of seconds"),
  replicationStreamId: nonEmptyString(
    "ELECTRIC_REPLICATION_STREAM_ID",
    "default",
    /^[a-z0-9_]{1,40}$/,
    "1-40 characters of a-z, 0-9 and _"
  ),
  enableIntegrationTesting: boolean("ELECTRIC_ENABLE_INTEGRATION_TESTING", false),
  shutdownTimeoutMs: integer("SYNCLINE_SHUTDOWN_TIMEOUT", 10_000, 0, 3_600_000, "a duration in milliseconds"),
  publicationCheckIntervalMs: integer(
    "SYNCLINE_PUBLICATION_CHECK_INTERVAL",
    60_000,
    100,
    86_400_000,
    "a duration in milliseconds (at least 100)"
  ),
  sendTimeoutMs: integer("SYNCLINE_SEND_TIMEOUT", 30_000, 1, 3_600_000, "a positive duration in milliseconds"),
  sseTimeoutMs: integer("SYNCLINE_SSE_TIMEOUT", 60_000, 1000, 3_600_000, "a duration in milliseconds (at least 1000)"),
  sseKeepAliveMs: integer("SYNCLINE_SSE_KEEPALIVE", 21_000, 100, 3_600_000, "a duration in milliseconds (at least 100)"),
  prometheusPort: integer("ELECTRIC_PROMETHEUS_PORT", -1, 1, 65535, "a port number (1-65535)").pipe(
    Config.map((port) => (port < 0 ? Option.none<number>() : Option.some(port)))
  ),
  logLevel: oneOf("ELECTRIC_LOG_LEVEL", LOG_LEVELS, "info"),
  logFormat: oneOf("SYNCLINE_LOG_FORMAT", { pretty: "pretty", json: "json" } as const, "pretty"),
  otlp: otlpConfig
}).pipe(
  Config.mapOrFail(({ insecure, secret, ...rest }) => {
    const hasSecret = Option.isSome(secret) && secret.value !== ""
    if (Option.isSome(rest.databaseUrl)) {
      if (insecure && hasSecret) {
        return Either.left(
          ConfigError.InvalidData(["ELECTRIC_SECRET"], "set either ELECTRIC_SECRET or ELECTRIC_INSECURE=true, not both")
        )
      }
      if (!insecure && !hasSecret) {
        return Either.left(
          ConfigError.MissingData(
            ["ELECTRIC_SECRET"],
            "ELECTRIC_SECRET is required with DATABASE_URL (or set ELECTRIC_INSECURE=true to serve without a secret)"
          )
        )
      }
    }
    return Either.right<StackSettings>({
      ...rest,
      secret: hasSecret && !insecure ? Option.some(Redacted.make(secret.value)) : Option.none()
    })
  })
)

/** One line per configuration problem: what `main` prints before exiting. */
export const formatConfigError = (error: ConfigError.ConfigError): string => {
  const lines: Array<string> = []
  const visit = (e: ConfigError.ConfigError): void => {
    switch (e._op) {
      case "And":
      case "Or":
        visit(e.left)
        visit(e.right)
        return
      case "InvalidData":
      case "MissingData":
      case "SourceUnavailable":
      case "Unsupported":
        lines.push(e.message)
        return
    }
  }
  visit(error)
  return [...new Set(lines)].join("; ")
}

/** The stack's settings as a service. */
export class StackConfig extends Context.Tag("syncline/StackConfig")<StackConfig, StackSettings>() {
  /** Reads the settings from the current `ConfigProvider` (the environment, by default). */
  static readonly layer: Layer.Layer<StackConfig, ConfigError.ConfigError> = Layer.effect(StackConfig, stackSettingsConfig)
  static readonly make = (settings: Partial<StackSettings> = {}): StackSettings => ({
    databaseUrl: Option.none(),
    port: 3000,
    storageDir: "./persistent",
    secret: Option.none(),
    longPollTimeoutMs: 20_000,
    chunkBytesThreshold: 10_485_760,
    cacheMaxAge: 60,
    cacheStaleAge: 300,
    replicationStreamId: "default",
    enableIntegrationTesting: false,
    shutdownTimeoutMs: 10_000,
    publicationCheckIntervalMs: 60_000,
    sendTimeoutMs: 30_000,
    sseTimeoutMs: 60_000,
    sseKeepAliveMs: 21_000,
    prometheusPort: Option.none(),
    logLevel: LogLevel.Info,
    logFormat: "pretty",
    otlp: Option.none(),
    ...settings
  })
  static readonly layerWith = (settings: Partial<StackSettings>): Layer.Layer<StackConfig> =>
    Layer.succeed(StackConfig, StackConfig.make(settings))
}

export const readStackSettings: Effect.Effect<StackSettings, ConfigError.ConfigError> = stackSettingsConfig
