import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import {
  parseColumnsParam,
  parseIdentifier,
  parseTableIdentifier,
  quoteIdentifier,
  quoteTable
} from "../../src/domain/Identifiers.js"

describe("parseIdentifier", () => {
  it.each([
    ["foobar", "foobar"],
    ["FooBar", "foobar"],
    ["_x1$", "_x1$"],
    ["Ünïcode", "Ünïcode"],
    [`"FooBar"`, "FooBar"],
    [`" "`, " "],
    [`"Foo""Bar"`, `Foo"Bar`],
    [`""""`, `"`],
    [`"a.b,c"`, "a.b,c"],
    ["a".repeat(63), "a".repeat(63)]
  ])("accepts %s", (input, expected) => {
    expect(parseIdentifier(input)).toEqual(Either.right(expected))
  })

  it.each([
    ["", "Invalid zero-length delimited identifier"],
    [`""`, "Invalid zero-length delimited identifier"],
    ["foob@r", "Invalid unquoted identifier contains special characters: foob@r"],
    [" ", "Invalid unquoted identifier contains special characters:  "],
    ["1abc", "Invalid unquoted identifier contains special characters: 1abc"],
    [`Foo"Bar"`, `Invalid unquoted identifier contains special characters: Foo"Bar"`],
    [`"`, `Invalid unquoted identifier contains special characters: "`],
    [`"Foo"Bar"`, `Invalid identifier with unescaped quote: Foo"Bar`],
    ["a".repeat(64), "Identifier is too long (max length is 63)"],
    [`"${"A".repeat(64)}"`, "Identifier is too long (max length is 63)"]
  ])("rejects %j", (input, message) => {
    expect(parseIdentifier(input)).toEqual(Either.left(message))
  })

  it("counts the limit in UTF-8 bytes, as Postgres does", () => {
    expect(Either.isRight(parseIdentifier(`"${"é".repeat(31)}a"`))).toBe(true)
    expect(parseIdentifier(`"${"é".repeat(32)}"`)).toEqual(Either.left("Identifier is too long (max length is 63)"))
    expect(parseIdentifier(`"${"😀".repeat(16)}"`)).toEqual(Either.left("Identifier is too long (max length is 63)"))
    expect(Either.isRight(parseIdentifier(`"${"😀".repeat(15)}abc"`))).toBe(true)
  })

  it("folds only ASCII letters, leaving other letters as written", () => {
    expect(parseIdentifier("ÄBC")).toEqual(Either.right("Äbc"))
  })
})

describe("parseTableIdentifier", () => {
  it.each([
    ["foo", { schema: "public", name: "foo" }],
    ["Foo", { schema: "public", name: "foo" }],
    ["foo.bar", { schema: "foo", name: "bar" }],
    ["Foo.Bar", { schema: "foo", name: "bar" }],
    [`"foo"."bar"`, { schema: "foo", name: "bar" }],
    [`"Foo".bar`, { schema: "Foo", name: "bar" }],
    [`foo."Bar"`, { schema: "foo", name: "Bar" }],
    [`"foo.woah"."bar"`, { schema: "foo.woah", name: "bar" }],
    [`"a.b.c"`, { schema: "public", name: "a.b.c" }],
    [`electric_test."issues for 12_0_abc"`, { schema: "electric_test", name: "issues for 12_0_abc" }],
    [`"say ""hi"""."t"`, { schema: `say "hi"`, name: "t" }]
  ])("parses %s", (input, expected) => {
    expect(parseTableIdentifier(input)).toEqual(Either.right(expected))
  })

  it.each([
    ["", "Invalid zero-length delimited identifier"],
    [".invalid_shape", "Invalid zero-length delimited identifier"],
    ["foo.", "Invalid zero-length delimited identifier"],
    ["foo.bar.baz", "Invalid relation identifier, too many delimiters: foo.bar.baz"],
    [`"a".b.c`, `Invalid relation identifier, too many delimiters: "a".b.c`],
    [`"foo"."bar`, `Invalid unquoted identifier contains special characters: "bar`],
    ["my table", "Invalid unquoted identifier contains special characters: my table"],
    [`s.${"x".repeat(64)}`, "Identifier is too long (max length is 63)"],
    [`${"x".repeat(64)}.t`, "Identifier is too long (max length is 63)"]
  ])("rejects %j", (input, message) => {
    expect(parseTableIdentifier(input)).toEqual(Either.left(message))
  })
})

describe("parseColumnsParam", () => {
  it.each([
    ["id", ["id"]],
    ["id,name", ["id", "name"]],
    ["beta,alpha", ["beta", "alpha"]],
    [`"PoT@To",PoTaTo`, ["PoT@To", "potato"]],
    [`"PoTaTo,sunday",foo`, ["PoTaTo,sunday", "foo"]],
    [`"fo""o",bar`, [`fo"o`, "bar"]],
    [`"id","has,comma","has""quote"`, ["id", "has,comma", `has"quote`]],
    [`"a"",b"`, [`a",b`]]
  ])("parses %s", (input, expected) => {
    expect(parseColumnsParam(input)).toEqual(Either.right(expected))
  })

  it.each([
    ["", "Invalid zero-length delimited identifier"],
    ["foo,", "Invalid zero-length delimited identifier"],
    [",foo", "Invalid zero-length delimited identifier"],
    ["foo,,bar", "Invalid zero-length delimited identifier"],
    [`"id,"name"`, `Invalid identifier with unescaped quote: id,"name`],
    ["id, name", "Invalid unquoted identifier contains special characters:  name"],
    [`id,"x"y"`, `Invalid identifier with unescaped quote: x"y`]
  ])("rejects %j", (input, message) => {
    expect(parseColumnsParam(input)).toEqual(Either.left(message))
  })
})

describe("quoteIdentifier", () => {
  it.each([
    ["foo", `"foo"`],
    ["Foo Bar", `"Foo Bar"`],
    [`a"b`, `"a""b"`],
    [`""`, `""""""`],
    ["", `""`]
  ])("quotes %j", (name, quoted) => {
    expect(quoteIdentifier(name)).toBe(quoted)
  })

  it("round-trips through parseIdentifier", () => {
    for (const name of ["x", "Mixed Case", `q"uo""te`, "a,b.c", "ü"]) {
      expect(parseIdentifier(quoteIdentifier(name))).toEqual(Either.right(name))
    }
  })

  it("renders a table schema-qualified", () => {
    expect(quoteTable({ schema: "public", name: `we"ird` })).toBe(`"public"."we""ird"`)
  })
})
