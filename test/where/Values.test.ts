import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { daysFromCivil, formatDateTime, parseDateTime } from "../../src/where/DateTime.js"
import { compileLike, PatternError } from "../../src/where/Like.js"
import { domainOf, selectCommonType } from "../../src/where/Resolution.js"
import {
  compareFloat,
  compareNumeric,
  compareText,
  inputBool,
  inputFloat,
  inputUuid,
  normalizeNumeric
} from "../../src/where/Values.js"

const sign = (n: number) => (n < 0 ? -1 : n > 0 ? 1 : 0)

describe("numeric", () => {
  it("normalises exponents, leading and trailing zeros and negative zero", () => {
    expect(normalizeNumeric("00012.3400")).toBe("12.34")
    expect(normalizeNumeric("-0.000")).toBe("0")
    expect(normalizeNumeric("1.5e3")).toBe("1500")
    expect(normalizeNumeric("1e-3")).toBe("0.001")
    expect(normalizeNumeric("-.5E+1")).toBe("-5")
    expect(normalizeNumeric(".")).toBeUndefined()
    expect(normalizeNumeric("1.2.3")).toBeUndefined()
    expect(normalizeNumeric("nan")).toBe("NaN")
    expect(normalizeNumeric("-inf")).toBe("-Infinity")
  })

  it("compares exactly, as scaled integers do", () => {
    const decimal = fc
      .tuple(fc.boolean(), fc.bigInt({ min: 0n, max: 10n ** 30n }), fc.integer({ min: 0, max: 12 }))
      .map(([negative, digits, scale]) => {
        const s = digits.toString().padStart(scale + 1, "0")
        const text = scale === 0 ? s : `${s.slice(0, s.length - scale)}.${s.slice(s.length - scale)}`
        return { text: (negative ? "-" : "") + text, scaled: (negative ? -digits : digits) * 10n ** BigInt(12 - scale) }
      })
    fc.assert(
      fc.property(decimal, decimal, (a, b) => {
        const expected = a.scaled < b.scaled ? -1 : a.scaled > b.scaled ? 1 : 0
        expect(compareNumeric(normalizeNumeric(a.text)!, normalizeNumeric(b.text)!)).toBe(expected)
      }),
      { numRuns: 2000 }
    )
  })

  it("orders NaN above Infinity above every number, NaN equal to itself", () => {
    const sorted = ["-Infinity", "-1e10", "-0.5", "0", "0.25", "3", "Infinity", "NaN"].map((s) => normalizeNumeric(s)!)
    for (let i = 0; i < sorted.length; i++) {
      for (let j = 0; j < sorted.length; j++) {
        expect(compareNumeric(sorted[i]!, sorted[j]!)).toBe(sign(i - j))
      }
    }
  })
})

describe("float", () => {
  it("orders NaN above Infinity and equal to itself, with -0 = 0", () => {
    expect(compareFloat(NaN, Infinity)).toBe(1)
    expect(compareFloat(Infinity, NaN)).toBe(-1)
    expect(compareFloat(NaN, NaN)).toBe(0)
    expect(compareFloat(-0, 0)).toBe(0)
    expect(compareFloat(-Infinity, -1e308)).toBe(-1)
  })

  it("reads literals as float8in/float4in do", () => {
    expect(inputFloat("  1.5e2 ", "float8")).toBe("150")
    expect(inputFloat("-inf", "float8")).toBe("-Infinity")
    expect(inputFloat("1.1", "float4")).toBe("1.1")
    expect(() => inputFloat("1e400", "float8")).toThrow("out of range")
    expect(() => inputFloat("1e39", "float4")).toThrow("out of range")
    expect(() => inputFloat("abc", "float8")).toThrow("invalid input syntax")
  })
})

describe("text", () => {
  it("orders by code point, the order of UTF-8 bytes", () => {
    fc.assert(
      fc.property(fc.fullUnicodeString({ maxLength: 6 }), fc.fullUnicodeString({ maxLength: 6 }), (a, b) => {
        expect(compareText(a, b)).toBe(Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8")))
      }),
      { numRuns: 2000 }
    )
    expect(compareText("\uffff", "😀")).toBe(-1)
  })
})

describe("bool and uuid input", () => {
  it("accepts what boolin accepts", () => {
    for (const t of ["t", "TRUE", " yes ", "on", "1", "tr"]) expect(inputBool(t)).toBe("true")
    for (const f of ["f", "False", "no", "off", "0", "of"]) expect(inputBool(f)).toBe("false")
    for (const bad of ["o", "", "maybe", "2"]) expect(() => inputBool(bad)).toThrow("invalid input syntax for type boolean")
  })

  it("canonicalises uuids to lower case with hyphens", () => {
    expect(inputUuid("{A0EEBC999C0B4EF8BB6D6BB9BD380A11}")).toBe("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    expect(inputUuid("a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11")).toBe("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    expect(() => inputUuid("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")).toThrow()
  })
})

describe("dates and timestamps", () => {
  it("counts days like the JavaScript calendar", () => {
    fc.assert(
      fc.property(fc.date({ min: new Date("0001-01-01T00:00:00Z"), max: new Date("9999-12-31T00:00:00Z") }), (d) => {
        const days = Math.floor(d.getTime() / 86_400_000)
        expect(daysFromCivil(d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate())).toBe(days)
      }),
      { numRuns: 1000 }
    )
  })

  it("formats and parses back every instant in Postgres's range", () => {
    const min = BigInt(daysFromCivil(-4712, 11, 24)) * 86_400_000_000n
    const max = BigInt(daysFromCivil(294277, 1, 1)) * 86_400_000_000n - 1n
    fc.assert(
      fc.property(fc.bigInt({ min, max }), (big) => {
        const value = big >= -BigInt(Number.MAX_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big
        expect(parseDateTime(formatDateTime(value, "timestamp"), "timestamp")).toBe(value)
        expect(parseDateTime(formatDateTime(value, "timestamptz"), "timestamptz")).toBe(value)
      }),
      { numRuns: 2000 }
    )
  })

  it("reads Postgres's output forms and ISO 8601 input", () => {
    expect(parseDateTime("1970-01-01", "date")).toBe(0)
    expect(parseDateTime("1970-01-01 00:00:01.5", "timestamp")).toBe(1_500_000)
    expect(parseDateTime("1970-01-01 05:30:00+05:30", "timestamptz")).toBe(0)
    expect(parseDateTime("1970-01-01T05:30:00+0530", "timestamptz")).toBe(0)
    expect(parseDateTime("1970-01-01 00:00:00Z", "timestamptz")).toBe(0)
    expect(parseDateTime("1970-01-01 05:30:00+05:30", "timestamp")).toBe(5.5 * 3_600_000_000)
    expect(parseDateTime("0001-12-31 BC", "date")).toBe(BigInt(parseDateTime("0001-01-01", "date")!) - 86_400_000_000n)
    expect(parseDateTime("infinity", "date")).toBe(Infinity)
    expect(parseDateTime("-infinity", "timestamptz")).toBe(-Infinity)
    expect(parseDateTime("2023-02-29", "date")).toBeUndefined()
    expect(parseDateTime("0000-01-01", "date")).toBeUndefined()
    expect(parseDateTime("Jan 5 2024", "date")).toBeUndefined()
    expect(formatDateTime(parseDateTime("0044-03-15 12:00:00.25+00 BC", "timestamptz")!, "timestamptz")).toBe(
      "0044-03-15 12:00:00.25+00 BC"
    )
  })
})

describe("LIKE", () => {
  it("matches %, _ and escapes, on code points", () => {
    const like = (p: string, s: string, escape = "\\", ci = false) => compileLike(p, escape, ci)(s)
    expect(like("a%", "abc")).toBe(true)
    expect(like("%c", "abc")).toBe(true)
    expect(like("%b%", "abc")).toBe(true)
    expect(like("a_c", "a😀c")).toBe(true)
    expect(like("a\\%", "a%")).toBe(true)
    expect(like("a\\%", "ab")).toBe(false)
    expect(like("a\\%", "a\\x", "")).toBe(true)
    expect(like("a\\%", "a%", "")).toBe(false)
    expect(like("a.c", "abc")).toBe(false)
    expect(like("a%", "a\nb")).toBe(true)
    expect(like("ABC", "abc", "\\", true)).toBe(true)
    expect(like("É", "é", "\\", true)).toBe(false)
    expect(() => compileLike("a\\", "\\", false)).toThrow(PatternError)
    expect(() => compileLike("a", "ab", false)).toThrow("invalid escape string")
  })
})

describe("type resolution", () => {
  it("picks the operator Postgres picks", () => {
    expect(domainOf("int2", "int8")).toBe("int8")
    expect(domainOf("int4", "numeric")).toBe("numeric")
    expect(domainOf("numeric", "float4")).toBe("float")
    expect(domainOf("varchar", "bpchar")).toBe("bpchar")
    expect(domainOf("text", "bpchar")).toBe("text")
    expect(domainOf("date", "timestamptz")).toBe("time")
    expect(domainOf("text", "int4")).toBeUndefined()
    expect(domainOf("bool", "int4")).toBeUndefined()
  })

  it("selects the common type of an IN list as select_common_type does", () => {
    expect(selectCommonType(["float4", "numeric", "numeric"])).toBe("float4")
    expect(selectCommonType(["int4", "numeric", "int4"])).toBe("numeric")
    expect(selectCommonType(["bpchar", "text"])).toBe("bpchar")
    expect(selectCommonType(["date", "timestamp", "timestamptz"])).toBe("timestamptz")
    expect(selectCommonType(["int4", "text"])).toBeUndefined()
  })
})
