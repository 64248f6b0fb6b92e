import { describe, expect, it } from "@effect/vitest"
import { LogOffset } from "../../src/domain/LogOffset.js"
import {
  cacheControl,
  corsHeaders,
  etag,
  ifNoneMatchMatches,
  mustRefetchBody,
  nextCursor,
  optionsHeaders,
  serverHeader,
  upToDateMessage,
  type CacheKind
} from "../../src/http/ResponseHeaders.js"

describe("cacheControl", () => {
  it.each<[CacheKind, Record<string, string>]>([
    [{ _tag: "initial" }, { "cache-control": "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746" }],
    [{ _tag: "live" }, { "cache-control": "public, max-age=5, stale-while-revalidate=5" }],
    [{ _tag: "liveSse", sseTimeoutMs: 60_000 }, { "cache-control": "public, max-age=59" }],
    [{ _tag: "liveSse", sseTimeoutMs: 30_500 }, { "cache-control": "public, max-age=29" }],
    [{ _tag: "liveSse", sseTimeoutMs: 1_000 }, { "cache-control": "public, max-age=1" }],
    [{ _tag: "catchUp", maxAge: 60, staleAge: 300 }, { "cache-control": "public, max-age=60, stale-while-revalidate=300" }],
    [{ _tag: "catchUp", maxAge: 1, staleAge: 3 }, { "cache-control": "public, max-age=1, stale-while-revalidate=3" }],
    [{ _tag: "mustRefetch", hasNewHandle: true }, { "cache-control": "public, max-age=60, must-revalidate" }],
    [{ _tag: "mustRefetch", hasNewHandle: false }, { "cache-control": "public, max-age=1, must-revalidate" }],
    [{ _tag: "error" }, { "cache-control": "no-store", "surrogate-control": "no-store" }],
    [{ _tag: "nonGet" }, { "cache-control": "no-cache" }],
    [{ _tag: "subset" }, { "cache-control": "no-cache" }]
  ])("%j", (kind, headers) => {
    expect(cacheControl(kind)).toEqual(headers)
  })
})

describe("nextCursor", () => {
  const epoch = Date.UTC(2024, 9, 9, 0, 0, 0)
  const never = () => {
    throw new Error("random must not be called")
  }

  it("rounds the seconds since 2024-10-09 up to a multiple of the timeout", () => {
    expect(nextCursor(epoch + 1_000, 20_000, undefined, never)).toBe("20")
    expect(nextCursor(epoch + 19_999, 20_000, undefined, never)).toBe("20")
    expect(nextCursor(epoch + 20_000, 20_000, undefined, never)).toBe("20")
    expect(nextCursor(epoch + 20_001, 20_000, undefined, never)).toBe("20")
    expect(nextCursor(epoch + 21_000, 20_000, undefined, never)).toBe("40")
    expect(nextCursor(epoch, 20_000, undefined, never)).toBe("0")
  })

  it("uses the timeout in whole seconds", () => {
    expect(nextCursor(epoch + 21_000, 20_999, undefined, never)).toBe("40")
    expect(nextCursor(epoch + 7_000, 5_000, undefined, never)).toBe("10")
  })

  it("is 0 when the timeout is under a second", () => {
    expect(nextCursor(epoch + 123_456_000, 999, "5", never)).toBe("0")
    expect(nextCursor(epoch + 123_456_000, 0, undefined, never)).toBe("0")
  })

  it("matches a real date", () => {
    const now = Date.UTC(2025, 0, 1, 12, 0, 7)
    const seconds = (now - epoch) / 1000
    expect(nextCursor(now, 20_000, undefined, never)).toBe(String(Math.ceil(seconds / 20) * 20))
  })

  it("keeps the interval when it is past the client's cursor", () => {
    expect(nextCursor(epoch + 41_000, 20_000, "40", never)).toBe("60")
    expect(nextCursor(epoch + 41_000, 20_000, "", never)).toBe("60")
    expect(nextCursor(epoch + 41_000, 20_000, "abc", never)).toBe("60")
  })

  it("jumps 1..3600 past the client's cursor when the interval has not moved past it", () => {
    expect(nextCursor(epoch + 41_000, 20_000, "60", () => 0)).toBe("61")
    expect(nextCursor(epoch + 41_000, 20_000, "60", () => 0.999999)).toBe("3660")
    expect(nextCursor(epoch + 41_000, 20_000, "100", () => 0.5)).toBe("1901")
  })

  it("handles a client cursor beyond the safe integer range", () => {
    expect(nextCursor(epoch + 41_000, 20_000, "99999999999999999999", () => 0)).toBe("100000000000000000000")
  })
})

describe("etag", () => {
  it("quotes handle, requested offset and response offset", () => {
    expect(etag("123-456", LogOffset.beforeAll, LogOffset.first)).toBe(`"123-456:-1:0_0"`)
    expect(etag("h", LogOffset.make(0n, 0), LogOffset.make(26402328n, 4))).toBe(`"h:0_0:26402328_4"`)
    expect(etag("h", "now", LogOffset.lastBeforeReal)).toBe(`"h:now:0_inf"`)
  })

  it("adds the no-change suffix", () => {
    expect(etag("h", LogOffset.make(5n, 2), LogOffset.make(5n, 2), "987654")).toBe(`"h:5_2:5_2:987654"`)
  })
})

describe("ifNoneMatchMatches", () => {
  const tag = `"h:0_0:5_2"`

  it.each([
    [`"h:0_0:5_2"`, true],
    [`h:0_0:5_2`, true],
    [` "h:0_0:5_2" `, true],
    [`"other", "h:0_0:5_2"`, true],
    [`"other",h:0_0:5_2`, true],
    [`W/"h:0_0:5_2"`, true],
    [`"other", W/"h:0_0:5_2"`, true],
    [`"other"`, false],
    [`"h:0_0:5_20"`, false],
    [``, false]
  ])("%j -> %s", (header, matches) => {
    expect(ifNoneMatchMatches(header, tag)).toBe(matches)
  })

  it("never matches without the header", () => {
    expect(ifNoneMatchMatches(undefined, tag)).toBe(false)
  })
})

describe("corsHeaders", () => {
  const expose =
    "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after,electric-snapshot"

  it("echoes a single origin on the shape route", () => {
    expect(corsHeaders("https://app.example", "shape")).toEqual({
      "access-control-allow-origin": "https://app.example",
      "access-control-expose-headers": expose,
      "access-control-allow-methods": "GET, POST, HEAD, DELETE, OPTIONS",
      vary: "origin"
    })
  })

  it("allows any origin when none or several were sent", () => {
    expect(corsHeaders(undefined, "shape")["access-control-allow-origin"]).toBe("*")
    expect(corsHeaders("", "shape")["access-control-allow-origin"]).toBe("*")
    expect(corsHeaders("https://a.example, https://b.example", "shape")["access-control-allow-origin"]).toBe("*")
    expect(corsHeaders(undefined, "shape")["vary"]).toBeUndefined()
  })

  it("allows only GET and HEAD on other routes", () => {
    expect(corsHeaders("https://app.example", "other")).toEqual({
      "access-control-allow-origin": "https://app.example",
      "access-control-expose-headers": expose,
      "access-control-allow-methods": "GET, HEAD",
      vary: "origin"
    })
  })
})

describe("optionsHeaders", () => {
  it("caches the preflight for a day and keeps the connection", () => {
    expect(optionsHeaders(undefined)).toEqual({ "access-control-max-age": "86400", connection: "keep-alive" })
  })

  it.each([
    ["if-none-match", "if-none-match"],
    ["If-None-Match", "if-none-match"],
    ["traceparent", "traceparent"],
    ["if-none-match,traceparent", "if-none-match,traceparent"],
    ["authorization, Traceparent , if-none-match", "traceparent,if-none-match"],
    ["if-none-match, if-none-match", "if-none-match"],
    ["Content-Type", "content-type"]
  ])("echoes only the supported headers of %j", (requested, allowed) => {
    expect(optionsHeaders(requested)).toEqual({
      "access-control-max-age": "86400",
      connection: "keep-alive",
      "access-control-allow-headers": allowed
    })
  })

  it("omits allow-headers when nothing requested is supported", () => {
    expect(optionsHeaders("authorization, x-custom")).toEqual({
      "access-control-max-age": "86400",
      connection: "keep-alive"
    })
    expect("access-control-allow-headers" in optionsHeaders("")).toBe(false)
  })

  it("never sets cache-control", () => {
    expect("cache-control" in optionsHeaders("if-none-match")).toBe(false)
  })
})

describe("constants and bodies", () => {
  it("names the server", () => {
    expect(serverHeader).toEqual(["electric-server", "Syncline/0.1.0"])
  })

  it("has the must-refetch body", () => {
    expect(mustRefetchBody).toBe(`[{"headers":{"control":"must-refetch"}}]`)
    expect(JSON.parse(mustRefetchBody)).toEqual([{ headers: { control: "must-refetch" } }])
  })

  it("writes up-to-date with a decimal LSN string", () => {
    expect(upToDateMessage(26402328n)).toBe(
      `{"headers":{"control":"up-to-date","global_last_seen_lsn":"26402328"}}`
    )
    expect(upToDateMessage(0n)).toBe(`{"headers":{"control":"up-to-date","global_last_seen_lsn":"0"}}`)
    expect(JSON.parse(upToDateMessage(18446744073709551615n)).headers.global_last_seen_lsn).toBe(
      "18446744073709551615"
    )
  })
})
