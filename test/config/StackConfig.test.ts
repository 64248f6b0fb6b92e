import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, LogLevel, Option, Redacted } from "effect"
import {
  formatConfigError,
  publicationName,
  slotName,
  StackConfig,
  stackSettingsConfig
} from "../../src/config/StackConfig.js"

/** Reads the settings from exactly these variables. */
const read = (vars: Record<string, string>) =>
  stackSettingsConfig.pipe(
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(vars)), { pathDelim: "_" })),
    Effect.either
  )

/** The one-line message of a configuration that must fail. */
const problem = (vars: Record<string, string>) =>
  Effect.map(read(vars), (result) => {
    if (Either.isRight(result)) throw new Error(`expected a configuration error for ${JSON.stringify(vars)}`)
    return formatConfigError(result.left)
  })

const settings = (vars: Record<string, string>) =>
  Effect.map(read(vars), (result) => {
    if (Either.isLeft(result)) throw new Error(formatConfigError(result.left))
    return result.right
  })

const redactedValue = <A>(o: Option.Option<Redacted.Redacted<A>>) => Option.map(o, Redacted.value)

describe("stackSettingsConfig", () => {
  it.effect("uses Electric's defaults when nothing is set", () =>
    Effect.gen(function*() {
      const s = yield* settings({})
      expect(s).toEqual(StackConfig.make())
      expect(s.port).toBe(3000)
      expect(s.storageDir).toBe("./persistent")
      expect(s.longPollTimeoutMs).toBe(20_000)
      expect(s.chunkBytesThreshold).toBe(10_485_760)
      expect(s.cacheMaxAge).toBe(60)
      expect(s.cacheStaleAge).toBe(300)
      expect(s.replicationStreamId).toBe("default")
      expect(s.enableIntegrationTesting).toBe(false)
      expect(s.shutdownTimeoutMs).toBe(10_000)
      expect(s.sendTimeoutMs).toBe(30_000)
      expect(s.publicationCheckIntervalMs).toBe(60_000)
      expect(Option.isNone(s.databaseUrl)).toBe(true)
      expect(Option.isNone(s.secret)).toBe(true)
      expect(publicationName(s)).toBe("electric_publication_default")
      expect(slotName(s)).toBe("electric_slot_default")
    }))

  it.effect("treats empty values as unset", () =>
    Effect.gen(function*() {
      const s = yield* settings({ ELECTRIC_PORT: "", ELECTRIC_INSECURE: " ", DATABASE_URL: "", ELECTRIC_STORAGE_DIR: "" })
      expect(s).toEqual(StackConfig.make())
    }))

  it.effect("parses every variable", () =>
    Effect.gen(function*() {
      const s = yield* settings({
        DATABASE_URL: "postgresql://user:pw@db.example:5433/app?sslmode=disable",
        ELECTRIC_SECRET: "s3cret",
        ELECTRIC_PORT: "8080",
        ELECTRIC_STORAGE_DIR: "/var/lib/syncline",
        ELECTRIC_LONG_POLL_TIMEOUT: "1500",
        ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD: "4096",
        ELECTRIC_CACHE_MAX_AGE: "5",
        ELECTRIC_CACHE_STALE_AGE: "10",
        ELECTRIC_REPLICATION_STREAM_ID: "stack_2",
        ELECTRIC_ENABLE_INTEGRATION_TESTING: "true",
        SYNCLINE_SHUTDOWN_TIMEOUT: "2500",
        SYNCLINE_SEND_TIMEOUT: "750",
        SYNCLINE_PUBLICATION_CHECK_INTERVAL: "5000"
      })
      expect(redactedValue(s.databaseUrl)).toEqual(Option.some("postgresql://user:pw@db.example:5433/app?sslmode=disable"))
      expect(redactedValue(s.secret)).toEqual(Option.some("s3cret"))
      expect(s.port).toBe(8080)
      expect(s.storageDir).toBe("/var/lib/syncline")
      expect(s.longPollTimeoutMs).toBe(1500)
      expect(s.chunkBytesThreshold).toBe(4096)
      expect(s.cacheMaxAge).toBe(5)
      expect(s.cacheStaleAge).toBe(10)
      expect(s.replicationStreamId).toBe("stack_2")
      expect(s.enableIntegrationTesting).toBe(true)
      expect(s.shutdownTimeoutMs).toBe(2500)
      expect(s.sendTimeoutMs).toBe(750)
      expect(s.publicationCheckIntervalMs).toBe(5000)
      expect(publicationName(s)).toBe("electric_publication_stack_2")
      expect(slotName(s)).toBe("electric_slot_stack_2")
    }))

  it.effect("accepts the boolean spellings true/false/1/0 in any case, and postgres:// URLs", () =>
    Effect.gen(function*() {
      expect((yield* settings({ ELECTRIC_ENABLE_INTEGRATION_TESTING: "1" })).enableIntegrationTesting).toBe(true)
      expect((yield* settings({ ELECTRIC_ENABLE_INTEGRATION_TESTING: "TRUE" })).enableIntegrationTesting).toBe(true)
      expect((yield* settings({ ELECTRIC_ENABLE_INTEGRATION_TESTING: "0" })).enableIntegrationTesting).toBe(false)
      expect((yield* settings({ ELECTRIC_ENABLE_INTEGRATION_TESTING: "False" })).enableIntegrationTesting).toBe(false)
      const s = yield* settings({ DATABASE_URL: "postgres://localhost/db", ELECTRIC_INSECURE: "true" })
      expect(redactedValue(s.databaseUrl)).toEqual(Option.some("postgres://localhost/db"))
      expect(Option.isNone(s.secret)).toBe(true)
    }))

  it.effect("names the variable and the bad value in one message", () =>
    Effect.gen(function*() {
      expect(yield* problem({ ELECTRIC_PORT: "abc" })).toBe(`ELECTRIC_PORT must be a port number (0-65535), got "abc"`)
      expect(yield* problem({ ELECTRIC_PORT: "65536" })).toBe(`ELECTRIC_PORT must be a port number (0-65535), got "65536"`)
      expect(yield* problem({ ELECTRIC_PORT: "-1" })).toBe(`ELECTRIC_PORT must be a port number (0-65535), got "-1"`)
      expect(yield* problem({ ELECTRIC_PORT: "80.5" })).toBe(`ELECTRIC_PORT must be a port number (0-65535), got "80.5"`)
      expect(yield* problem({ ELECTRIC_LONG_POLL_TIMEOUT: "20s" })).toBe(
        `ELECTRIC_LONG_POLL_TIMEOUT must be a duration in milliseconds, got "20s"`
      )
      expect(yield* problem({ ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD: "0" })).toBe(
        `ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD must be a positive number of bytes, got "0"`
      )
      expect(yield* problem({ ELECTRIC_CACHE_MAX_AGE: "x" })).toBe(`ELECTRIC_CACHE_MAX_AGE must be a number of seconds, got "x"`)
      expect(yield* problem({ ELECTRIC_CACHE_STALE_AGE: "-5" })).toBe(
        `ELECTRIC_CACHE_STALE_AGE must be a number of seconds, got "-5"`
      )
      expect(yield* problem({ ELECTRIC_REPLICATION_STREAM_ID: "Bad-Id" })).toBe(
        `ELECTRIC_REPLICATION_STREAM_ID must be 1-40 characters of a-z, 0-9 and _, got "Bad-Id"`
      )
      expect(yield* problem({ ELECTRIC_INSECURE: "yes" })).toBe(`ELECTRIC_INSECURE must be true or false, got "yes"`)
      expect(yield* problem({ ELECTRIC_ENABLE_INTEGRATION_TESTING: "on" })).toBe(
        `ELECTRIC_ENABLE_INTEGRATION_TESTING must be true or false, got "on"`
      )
      expect(yield* problem({ SYNCLINE_SHUTDOWN_TIMEOUT: "soon" })).toBe(
        `SYNCLINE_SHUTDOWN_TIMEOUT must be a duration in milliseconds, got "soon"`
      )
      expect(yield* problem({ SYNCLINE_SEND_TIMEOUT: "0" })).toBe(
        `SYNCLINE_SEND_TIMEOUT must be a positive duration in milliseconds, got "0"`
      )
      expect(yield* problem({ SYNCLINE_PUBLICATION_CHECK_INTERVAL: "10" })).toBe(
        `SYNCLINE_PUBLICATION_CHECK_INTERVAL must be a duration in milliseconds (at least 100), got "10"`
      )
      expect(yield* problem({ DATABASE_URL: "mysql://localhost/db", ELECTRIC_INSECURE: "true" })).toBe(
        "DATABASE_URL must be a postgresql:// URL"
      )
    }))

  it.effect("reads the metrics port and the logging settings", () =>
    Effect.gen(function*() {
      const s = yield* settings({ ELECTRIC_PROMETHEUS_PORT: "9464", ELECTRIC_LOG_LEVEL: "Warning", SYNCLINE_LOG_FORMAT: "json" })
      expect(s.prometheusPort).toEqual(Option.some(9464))
      expect(s.logLevel).toBe(LogLevel.Warning)
      expect(s.logFormat).toBe("json")
      expect((yield* settings({ ELECTRIC_LOG_LEVEL: "notice" })).logLevel).toBe(LogLevel.Info)
      expect((yield* settings({ ELECTRIC_LOG_LEVEL: "none" })).logLevel).toBe(LogLevel.None)
      expect(yield* problem({ ELECTRIC_LOG_LEVEL: "loud" })).toBe(
        `ELECTRIC_LOG_LEVEL must be one of debug, info, notice, warning, warn, error, none, got "loud"`
      )
      expect(yield* problem({ SYNCLINE_LOG_FORMAT: "xml" })).toBe(`SYNCLINE_LOG_FORMAT must be one of pretty, json, got "xml"`)
      expect(yield* problem({ ELECTRIC_PROMETHEUS_PORT: "70000" })).toBe(
        `ELECTRIC_PROMETHEUS_PORT must be a port number (1-65535), got "70000"`
      )
    }))

  it.effect("reads where traces go: Electric's endpoint, or the standard OpenTelemetry variables", () =>
    Effect.gen(function*() {
      expect((yield* settings({})).otlp).toEqual(Option.none())
      expect((yield* settings({ ELECTRIC_OTLP_ENDPOINT: "http://collector:4318/" })).otlp).toEqual(
        Option.some({ tracesUrl: "http://collector:4318/v1/traces", serviceName: "syncline" })
      )
      expect((yield* settings({ OTEL_EXPORTER_OTLP_ENDPOINT: "https://otel.example", OTEL_SERVICE_NAME: "sync" })).otlp).toEqual(
        Option.some({ tracesUrl: "https://otel.example/v1/traces", serviceName: "sync" })
      )
      expect((yield* settings({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://c:4318/custom", OTEL_EXPORTER_OTLP_ENDPOINT: "http://b" })).otlp)
        .toEqual(Option.some({ tracesUrl: "http://c:4318/custom", serviceName: "syncline" }))
      expect(yield* problem({ ELECTRIC_OTLP_ENDPOINT: "collector:4318" })).toBe(
        `ELECTRIC_OTLP_ENDPOINT must be an http:// or https:// URL, got "collector:4318"`
      )
    }))

  it.effect("reports every bad variable, one message each", () =>
    Effect.gen(function*() {
      const message = yield* problem({ ELECTRIC_PORT: "abc", ELECTRIC_CACHE_MAX_AGE: "x" })
      expect(message.split("; ").sort()).toEqual([
        `ELECTRIC_CACHE_MAX_AGE must be a number of seconds, got "x"`,
        `ELECTRIC_PORT must be a port number (0-65535), got "abc"`
      ])
    }))

  it.effect("requires ELECTRIC_SECRET or ELECTRIC_INSECURE with DATABASE_URL", () =>
    Effect.gen(function*() {
      const message = yield* problem({ DATABASE_URL: "postgresql://localhost/db" })
      expect(message).toContain("ELECTRIC_SECRET")
      expect(message).toContain("ELECTRIC_INSECURE")
      // An empty secret counts as none.
      expect(yield* problem({ DATABASE_URL: "postgresql://localhost/db", ELECTRIC_SECRET: "" })).toBe(message)
      const insecure = yield* settings({ DATABASE_URL: "postgresql://localhost/db", ELECTRIC_INSECURE: "true" })
      expect(Option.isNone(insecure.secret)).toBe(true)
    }))

  it.effect("rejects both ELECTRIC_SECRET and ELECTRIC_INSECURE with DATABASE_URL", () =>
    Effect.gen(function*() {
      const message = yield* problem({
        DATABASE_URL: "postgresql://localhost/db",
        ELECTRIC_SECRET: "s",
        ELECTRIC_INSECURE: "true"
      })
      expect(message).toContain("ELECTRIC_SECRET")
      expect(message).toContain("ELECTRIC_INSECURE")
    }))

  it.effect("requires neither without DATABASE_URL (embedded mode)", () =>
    Effect.gen(function*() {
      expect(Option.isNone((yield* settings({})).secret)).toBe(true)
      expect(Option.isNone((yield* settings({ ELECTRIC_INSECURE: "true" })).secret)).toBe(true)
      expect(redactedValue((yield* settings({ ELECTRIC_SECRET: "s" })).secret)).toEqual(Option.some("s"))
      // Insecure wins over a secret when there is no database URL to protect.
      expect(Option.isNone((yield* settings({ ELECTRIC_SECRET: "s", ELECTRIC_INSECURE: "true" })).secret)).toBe(true)
    }))
})
