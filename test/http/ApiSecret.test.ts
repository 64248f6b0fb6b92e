import { describe, expect, it } from "@effect/vitest"
import { Option, Redacted } from "effect"
import { isAuthorized } from "../../src/http/ApiSecret.js"

describe("isAuthorized", () => {
  const secret = Option.some(Redacted.make("s3cret"))

  it("lets everything through when the server has no secret", () => {
    expect(isAuthorized(Option.none(), undefined)).toBe(true)
    expect(isAuthorized(Option.none(), "anything")).toBe(true)
  })

  it("accepts exactly the secret", () => {
    expect(isAuthorized(secret, "s3cret")).toBe(true)
  })

  it.each([
    ["no secret", undefined],
    ["an empty one", ""],
    ["a prefix", "s3cre"],
    ["a longer one", "s3cret!"],
    ["another case", "S3CRET"],
    ["one with a NUL after it", "s3cret\u0000"],
    ["a much longer one", "s3cret".repeat(1000)]
  ])("refuses %s", (_, presented) => {
    expect(isAuthorized(secret, presented)).toBe(false)
  })

  it("compares text beyond ASCII by its UTF-8 bytes", () => {
    const unicode = Option.some(Redacted.make("clé-🔑"))
    expect(isAuthorized(unicode, "clé-🔑")).toBe(true)
    expect(isAuthorized(unicode, "cle\u0301-🔑")).toBe(false)
  })
})
