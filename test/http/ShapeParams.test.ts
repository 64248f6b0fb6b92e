import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import { InvalidRequest } from "../../src/domain/errors.js"
import { LogOffset } from "../../src/domain/LogOffset.js"
import {
  invalidRequestBody,
  parseAdminParams,
  parseDeleteParams,
  parseShapeParams,
  type ShapeRequest
} from "../../src/http/ShapeParams.js"

const ok = (query: string): ShapeRequest => {
  const result = parseShapeParams(new URLSearchParams(query))
  if (Either.isLeft(result)) throw new Error(`expected success, got ${JSON.stringify(result.left.errors)}`)
  return result.right
}

const errorsOf = (query: string): Readonly<Record<string, ReadonlyArray<string>>> => {
  const result = parseShapeParams(new URLSearchParams(query))
  if (Either.isRight(result)) throw new Error(`expected errors, got ${JSON.stringify(result.right)}`)
  expect(result.left).toBeInstanceOf(InvalidRequest)
  return result.left.errors
}

describe("parseShapeParams", () => {
  it("reads a minimal initial request with the defaults", () => {
    expect(ok("offset=-1&table=items")).toEqual({
      table: { schema: "public", name: "items" },
      params: {},
      replica: "default",
      log: "full",
      offset: LogOffset.beforeAll,
      live: false,
      sse: false,
      subset: undefined
    })
  })

  it("leaves optional fields absent rather than undefined", () => {
    const req = ok("offset=-1&table=items")
    for (const key of ["where", "columns", "handle", "cursor", "secret"]) expect(key in req).toBe(false)
  })

  it("reads a full live request", () => {
    const req = ok(
      `cursor=123&handle=h-1&live=true&log=changes_only&offset=26402328_4&replica=full&table=s."T"` +
        `&where=id%20%3D%20%241&params%5B1%5D=7&columns=%22id%22%2C%22has%2Ccomma%22&secret=s3&cache-buster=x&expired_handle=old&customParam=1`
    )
    expect(req).toEqual({
      table: { schema: "s", name: "T" },
      where: "id = $1",
      params: { "1": "7" },
      columns: ["id", "has,comma"],
      replica: "full",
      log: "changes_only",
      offset: LogOffset.make(26402328n, 4),
      handle: "h-1",
      live: true,
      sse: false,
      cursor: "123",
      secret: "s3",
      subset: undefined
    })
  })

  describe("offset", () => {
    it("is required", () => {
      expect(errorsOf("table=t")).toEqual({ offset: ["can't be blank"] })
      expect(errorsOf("table=t&offset=")).toEqual({ offset: ["can't be blank"] })
    })

    it.each([
      ["-1", LogOffset.beforeAll],
      ["now", "now" as const],
      ["0_0", LogOffset.make(0n, 0)],
      ["0_inf", LogOffset.make(0n, Infinity)],
      ["0_02", LogOffset.make(0n, 2)],
      ["0012_3", LogOffset.make(12n, 3)],
      ["26402328_inf", LogOffset.make(26402328n, Infinity)],
      ["18446744073709551615_0", LogOffset.make(18446744073709551615n, 0)]
    ])("accepts %s", (text, offset) => {
      expect(ok(`table=t&handle=h&offset=${text}`).offset).toEqual(offset)
    })

    it.each(["invalid", "1", "-2", "1_", "_1", "1_-1", "1_2_3", "a_1", "1_infinity", "1.5_0", "NOW", " 1_1"])(
      "rejects %j",
      (text) => {
        expect(errorsOf(`table=t&handle=h&offset=${encodeURIComponent(text)}`)).toEqual({
          offset: ["has invalid format"]
        })
      }
    )
  })

  describe("handle", () => {
    it("is required past -1 and now", () => {
      expect(errorsOf("table=t&offset=0_0")).toEqual({ handle: ["can't be blank when offset != -1"] })
      expect(errorsOf("table=t&offset=0_0&handle=")).toEqual({ handle: ["can't be blank when offset != -1"] })
    })

    it("is dropped when offset is -1 or now", () => {
      expect("handle" in ok("table=t&offset=-1&handle=new-handle")).toBe(false)
      expect("handle" in ok("table=t&offset=now&handle=new-handle")).toBe(false)
    })

    it("is kept otherwise", () => {
      expect(ok("table=t&offset=0_inf&handle=123-456").handle).toBe("123-456")
    })

    it("is not checked when the offset itself is missing or invalid", () => {
      expect(errorsOf("table=t")).toEqual({ offset: ["can't be blank"] })
      expect(errorsOf("table=t&offset=x")).toEqual({ offset: ["has invalid format"] })
    })
  })

  describe("live", () => {
    it.each([
      ["live=true", true],
      ["live", true],
      ["live=", true],
      ["live=1", true],
      ["live=no", true],
      ["live=False", true],
      ["live=false", false],
      ["", false]
    ])("%j counts as %s", (param, live) => {
      expect(ok(`table=t&handle=h&offset=0_0&${param}`).live).toBe(live)
    })

    it("is refused with offset -1", () => {
      expect(errorsOf("table=t&offset=-1&live=true")).toEqual({ live: ["can't be true when offset == -1"] })
      expect(errorsOf("table=t&offset=-1&live")).toEqual({ live: ["can't be true when offset == -1"] })
    })

    it("is refused with offset now", () => {
      expect(errorsOf("table=t&offset=now&live=true")).toEqual({ live: ["can't be true when offset is 'now'"] })
    })

    it("false is fine with -1 and now", () => {
      expect(ok("table=t&offset=-1&live=false").live).toBe(false)
      expect(ok("table=t&offset=now&live=false").live).toBe(false)
    })
  })

  describe("live_sse", () => {
    it.each([
      ["live_sse=true", true],
      ["live_sse", true],
      ["live_sse=", true],
      ["live_sse=false", false],
      ["experimental_live_sse=true", true],
      ["experimental_live_sse", true],
      ["experimental_live_sse=false", false],
      ["live_sse=true&experimental_live_sse=true", true],
      ["live_sse=false&experimental_live_sse=true", false],
      ["", false]
    ])("%j gives sse %s with live", (param, sse) => {
      expect(ok(`table=t&handle=h&offset=0_0&live=true&${param}`).sse).toBe(sse)
    })

    it("needs live", () => {
      const message = { live_sse: ["can't be true unless live is also true"] }
      expect(errorsOf("table=t&handle=h&offset=0_0&live_sse=true")).toEqual(message)
      expect(errorsOf("table=t&handle=h&offset=0_0&live=false&live_sse=true")).toEqual(message)
      expect(errorsOf("table=t&handle=h&offset=0_0&experimental_live_sse=true")).toEqual(message)
    })

    it("is fine when false without live", () => {
      expect(ok("table=t&handle=h&offset=0_0&live_sse=false").sse).toBe(false)
    })
  })

  describe("cursor", () => {
    it("accepts an empty cursor", () => {
      expect(ok("table=t&handle=h&offset=0_0&live=true&cursor=").cursor).toBe("")
    })

    it("passes a cursor through", () => {
      expect(ok("table=t&handle=h&offset=0_0&live=true&cursor=4500").cursor).toBe("4500")
    })
  })

  describe("table", () => {
    it("is required", () => {
      expect(errorsOf("offset=-1")).toEqual({ table: ["can't be blank"] })
      expect(errorsOf("offset=-1&table=")).toEqual({ table: ["can't be blank"] })
    })

    it("is parsed as an identifier", () => {
      expect(ok(`offset=-1&table=${encodeURIComponent(`electric_test."issues for 12_0_abc"`)}`).table).toEqual({
        schema: "electric_test",
        name: "issues for 12_0_abc"
      })
      expect(ok("offset=-1&table=Public.Items").table).toEqual({ schema: "public", name: "items" })
    })

    it("reports the identifier's message", () => {
      expect(errorsOf("offset=-1&table=.invalid_shape")).toEqual({
        table: ["Invalid zero-length delimited identifier"]
      })
      expect(errorsOf("offset=-1&table=a.b.c")).toEqual({
        table: ["Invalid relation identifier, too many delimiters: a.b.c"]
      })
    })
  })

  describe("where", () => {
    it("is absent when empty", () => {
      expect("where" in ok("offset=-1&table=t&where=")).toBe(false)
    })

    it("is passed through as text", () => {
      expect(ok(`offset=-1&table=t&where=${encodeURIComponent("1 x 1")}`).where).toBe("1 x 1")
    })
  })

  describe("params", () => {
    it("reads the deepObject form", () => {
      expect(ok("offset=-1&table=t&params%5B1%5D=foo&params%5B2%5D=&params%5B10%5D=x").params).toEqual({
        "1": "foo",
        "2": "",
        "10": "x"
      })
    })

    it("reads a JSON object, turning numbers and booleans into strings", () => {
      const json = encodeURIComponent(`{"1":"a","2":5,"3":true}`)
      expect(ok(`offset=-1&table=t&params=${json}`).params).toEqual({ "1": "a", "2": "5", "3": "true" })
    })

    it("lets deepObject entries override the JSON form", () => {
      const json = encodeURIComponent(`{"1":"a","2":"b"}`)
      expect(ok(`offset=-1&table=t&params=${json}&params[2]=c`).params).toEqual({ "1": "a", "2": "c" })
    })

    it.each([
      ["params%5B0%5D=a", "parameter names must be positive integers, got: 0"],
      ["params%5B-1%5D=a", "parameter names must be positive integers, got: -1"],
      ["params%5Bx%5D=a", "parameter names must be positive integers, got: x"],
      ["params%5B01%5D=a", "parameter names must be positive integers, got: 01"],
      ["params%5B%5D=a", "parameter names must be positive integers, got: "],
      ["params%5B1=a", "parameter names must be positive integers, got: params[1"],
      [`params=${encodeURIComponent(`{"a":"1"}`)}`, "parameter names must be positive integers, got: a"],
      [`params=${encodeURIComponent(`[1]`)}`, "params must be a JSON object"],
      [`params=${encodeURIComponent(`"x"`)}`, "params must be a JSON object"],
      [`params=${encodeURIComponent(`{`)}`, "params must be valid JSON"],
      [`params=${encodeURIComponent(`{"1":{"a":1}}`)}`, `parameter values must be strings, got: {"a":1} for 1`],
      [`params=${encodeURIComponent(`{"1":null}`)}`, "parameter values must be strings, got: null for 1"]
    ])("rejects %s", (param, message) => {
      expect(errorsOf(`offset=-1&table=t&${param}`)).toEqual({ params: [message] })
    })

    it("reports every bad key", () => {
      expect(errorsOf("offset=-1&table=t&params[a]=1&params[b]=2")).toEqual({
        params: [
          "parameter names must be positive integers, got: a",
          "parameter names must be positive integers, got: b"
        ]
      })
    })
  })

  describe("columns", () => {
    it("is parsed with the identifier rules", () => {
      const columns = encodeURIComponent(`"id","has,comma","has""quote",Plain`)
      expect(ok(`offset=-1&table=t&columns=${columns}`).columns).toEqual(["id", "has,comma", `has"quote`, "plain"])
    })

    it("is absent when empty", () => {
      expect("columns" in ok("offset=-1&table=t&columns=")).toBe(false)
    })

    it("reports the identifier's message", () => {
      expect(errorsOf("offset=-1&table=t&columns=id%2C")).toEqual({
        columns: ["Invalid zero-length delimited identifier"]
      })
    })
  })

  describe("replica and log", () => {
    it.each([
      ["", "default", "full"],
      ["replica=default&log=full", "default", "full"],
      ["replica=full&log=changes_only", "full", "changes_only"],
      ["replica=&log=", "default", "full"]
    ])("%j", (param, replica, log) => {
      const req = ok(`offset=-1&table=t&${param}`)
      expect([req.replica, req.log]).toEqual([replica, log])
    })

    it("rejects other values", () => {
      expect(errorsOf("offset=-1&table=t&replica=FULL")).toEqual({ replica: ["is invalid"] })
      expect(errorsOf("offset=-1&table=t&log=changes")).toEqual({ log: ["is invalid"] })
    })
  })

  describe("secret", () => {
    it("reads secret, then the deprecated api_secret", () => {
      expect(ok("offset=-1&table=t&secret=a").secret).toBe("a")
      expect(ok("offset=-1&table=t&api_secret=b").secret).toBe("b")
      expect(ok("offset=-1&table=t&secret=a&api_secret=b").secret).toBe("a")
      expect("secret" in ok("offset=-1&table=t")).toBe(false)
    })
  })

  describe("subset", () => {
    it.each(["subset__where=x", "subset__limit=1&subset__order_by=id", "subset__order_by=id", "subset__anything=", "subset__where_expr=%7B%7D"])(
      "%s marks a subset request",
      (param) => {
        expect(ok(`offset=-1&table=t&${param}`).subset).toBeDefined()
      }
    )

    it("is absent without subset__ keys", () => {
      expect(ok("offset=-1&table=t&subset=1&xsubset__where=1").subset).toBeUndefined()
    })

    const q = (params: Record<string, string>) => `offset=-1&table=t&${new URLSearchParams(params)}`

    it("reads every subset__ parameter, keeping the clauses as text", () => {
      const req = ok(
        q({
          subset__where: "id > $1 AND v = $2",
          subset__params: `{"1":"5","2":"it's"}`,
          subset__order_by: "id DESC NULLS LAST",
          subset__limit: "10",
          subset__offset: "0"
        })
      )
      expect(req.subset).toEqual({
        where: "id > $1 AND v = $2",
        params: { "1": "5", "2": "it's" },
        orderBy: "id DESC NULLS LAST",
        limit: 10,
        offset: 0
      })
    })

    it("keeps the shape's params and the subset's apart", () => {
      const req = ok(`${q({ where: "id = $1", subset__where: "v = $1", subset__params: `{"1":"b"}` })}&params%5B1%5D=a`)
      expect(req.params).toEqual({ "1": "a" })
      expect(req.subset?.params).toEqual({ "1": "b" })
    })

    it("reads params as a JSON array for $1..$n, numbers and booleans as text", () => {
      expect(ok(q({ subset__params: `["x", 5, true, "{1,2}"]` })).subset?.params).toEqual({
        "1": "x",
        "2": "5",
        "3": "true",
        "4": "{1,2}"
      })
      expect(ok(q({ subset__params: `{"2": 2.5, "10": "y"}` })).subset?.params).toEqual({ "2": "2.5", "10": "y" })
    })

    it("leaves out blank values and the _expr forms, and reads the last of repeated values", () => {
      expect(ok(q({ subset__where: " ", subset__params: "", subset__order_by: "" })).subset).toEqual({ params: {} })
      expect(ok(q({ subset__where_expr: `{"type":"ref","column":"id"}`, subset__order_by_expr: "[]" })).subset).toEqual({
        params: {}
      })
      expect(ok("offset=-1&table=t&subset__where=a&subset__where=b").subset?.where).toBe("b")
    })

    it("takes a blank limit or offset for none, which needs no order_by", () => {
      expect(ok(q({ subset__where: "true", subset__limit: "", subset__offset: "" })).subset).toEqual({ where: "true", params: {} })
      const body = parseShapeParams(new URLSearchParams("offset=-1&table=t"), { where: "true", limit: null, offset: null })
      expect(Either.isRight(body) && body.right.subset).toEqual({ where: "true", params: {} })
    })

    it.each([
      [{ subset__limit: "0", subset__order_by: "id" }, { subset__limit: ["must be greater than 0"] }],
      [{ subset__limit: "-3", subset__order_by: "id" }, { subset__limit: ["must be greater than 0"] }],
      [{ subset__limit: "abc", subset__order_by: "id" }, { subset__limit: ["is invalid"] }],
      [{ subset__limit: "1.5", subset__order_by: "id" }, { subset__limit: ["is invalid"] }],
      [{ subset__limit: "99999999999999999999", subset__order_by: "id" }, { subset__limit: ["is invalid"] }],
      [{ subset__offset: "-1", subset__order_by: "id" }, { subset__offset: ["must be greater than or equal to 0"] }],
      [{ subset__offset: "x", subset__order_by: "id" }, { subset__offset: ["is invalid"] }],
      [{ subset__limit: "5" }, { subset__order_by: ["order_by is required when limit or offset is present"] }],
      [{ subset__offset: "5", subset__where: "true" }, { subset__order_by: ["order_by is required when limit or offset is present"] }],
      [{ subset__params: "{" }, { subset__params: ["subset__params must be valid JSON"] }],
      [{ subset__params: `"x"` }, { subset__params: ["subset__params must be a JSON object"] }],
      [{ subset__params: `{"0":"x"}` }, { subset__params: ["parameter names must be positive integers, got: 0"] }],
      [{ subset__params: `{"1":null}` }, { subset__params: ["parameter values must be strings, got: null for 1"] }],
      [{ subset__params: `["a\\u0000"]` }, { subset__params: ["parameter values must not contain a NUL byte, got one for 1"] }]
    ])("refuses %j", (params, errors) => {
      expect(errorsOf(q(params))).toEqual(errors)
    })

    it("accepts limit and offset with spaces or a sign, as integers", () => {
      expect(ok(q({ subset__limit: " 7 ", subset__offset: "+2", subset__order_by: "id" })).subset).toMatchObject({ limit: 7, offset: 2 })
    })

    it("reports every subset error at once", () => {
      expect(errorsOf(q({ subset__limit: "0", subset__offset: "-1", subset__params: "[", table: "a.b.c" }))).toEqual({
        table: ["Invalid relation identifier, too many delimiters: a.b.c"],
        subset__params: ["subset__params must be valid JSON"],
        subset__limit: ["must be greater than 0"],
        subset__offset: ["must be greater than or equal to 0"],
        subset__order_by: ["order_by is required when limit or offset is present"]
      })
    })

    it("refuses live with a subset", () => {
      expect(errorsOf("offset=0_0&handle=h&table=t&live=true&subset__where=x")).toEqual({
        live: ["can't be true for a subset snapshot"]
      })
      expect(errorsOf("offset=-1&table=t&live=true&subset__where=x")).toEqual({
        live: ["can't be true when offset == -1", "can't be true for a subset snapshot"]
      })
      expect(ok("offset=0_0&handle=h&table=t&live=false&subset__where=x").subset?.where).toBe("x")
    })
  })

  describe("POST body", () => {
    const withBody = (query: string, body: Record<string, unknown>) => parseShapeParams(new URLSearchParams(query), body)
    const okBody = (query: string, body: Record<string, unknown>): ShapeRequest => {
      const result = withBody(query, body)
      if (Either.isLeft(result)) throw new Error(`expected success, got ${JSON.stringify(result.left.errors)}`)
      return result.right
    }
    const bodyErrors = (query: string, body: Record<string, unknown>) => {
      const result = withBody(query, body)
      if (Either.isRight(result)) throw new Error(`expected errors, got ${JSON.stringify(result.right)}`)
      return result.left.errors
    }
    const base = "offset=-1&table=t"
    const onlySubset = "only a subset (where, params, order_by, limit, offset) may be sent in the body, got: "

    it("reads the subset at the top level or under `subset`, with params as an object or an array", () => {
      const subset = { where: "id = $1", params: { "1": 7 }, order_by: "id", limit: 3, offset: 1 }
      const expected = { where: "id = $1", params: { "1": "7" }, orderBy: "id", limit: 3, offset: 1 }
      expect(okBody(base, subset).subset).toEqual(expected)
      expect(okBody(base, { subset }).subset).toEqual(expected)
      expect(okBody(base, { ...subset, params: [7] }).subset).toEqual(expected)
      expect(okBody(base, { ...subset, params: `{"1":"7"}` }).subset).toEqual(expected)
      expect(okBody(base, { ...subset, limit: "3", offset: "1" }).subset).toEqual(expected)
    })

    it("overrides the query's subset key by key", () => {
      const query = `${base}&subset__where=a&subset__order_by=id&subset__limit=1&subset__params=%5B%22q%22%5D`
      expect(okBody(query, { where: "b", params: ["r"] }).subset).toEqual({ where: "b", params: { "1": "r" }, orderBy: "id", limit: 1 })
      expect(okBody(query, {}).subset).toEqual({ where: "a", params: { "1": "q" }, orderBy: "id", limit: 1 })
    })

    it("leaves the shape definition and position to the query", () => {
      const req = okBody(`${base}&where=x%20%3E%201&params%5B1%5D=s`, { where: "y = $1", params: ["b"] })
      expect(req.where).toBe("x > 1")
      expect(req.params).toEqual({ "1": "s" })
      expect(req.subset).toEqual({ where: "y = $1", params: { "1": "b" } })
    })

    it("treats null values as absent, and ignores the _expr forms", () => {
      expect(okBody(base, { where: null, params: null, order_by: null, where_expr: { x: 1 }, order_by_expr: [] }).subset).toEqual({
        params: {}
      })
    })

    it("must carry a subset, in the body or the query", () => {
      expect(bodyErrors(base, {})).toEqual({
        body: ["a POST request must carry a subset (where, params, order_by, limit or offset)"]
      })
      expect(okBody(`${base}&subset__where=x`, {}).subset).toEqual({ where: "x", params: {} })
    })

    it.each([
      [{ table: "other", where: "x" }, [`${onlySubset}table`]],
      [{ where: "x", offset_: 1 }, [`${onlySubset}offset_`]],
      [{ subset: "where x" }, [`${onlySubset}subset`, "a POST request must carry a subset (where, params, order_by, limit or offset)"]],
      [{ subset: { where: "x", handle: "h" } }, ["unknown subset key: handle"]]
    ])("refuses keys that are not the subset's: %j", (body, messages) => {
      expect(bodyErrors(base, body)).toEqual({ body: messages })
    })

    it.each([
      [{ where: 5 }, { subset__where: ["must be a string"] }],
      [{ order_by: ["id"] }, { subset__order_by: ["must be a string"] }],
      [{ limit: 1.5, order_by: "id" }, { subset__limit: ["is invalid"] }],
      [{ limit: true, order_by: "id" }, { subset__limit: ["is invalid"] }],
      [{ limit: 0, order_by: "id" }, { subset__limit: ["must be greater than 0"] }],
      [{ offset: -1, order_by: "id" }, { subset__offset: ["must be greater than or equal to 0"] }],
      [{ limit: 2 }, { subset__order_by: ["order_by is required when limit or offset is present"] }],
      [{ params: { a: "1" } }, { subset__params: ["parameter names must be positive integers, got: a"] }],
      [{ params: ["ok", ["nested"]] }, { subset__params: [`parameter values must be strings, got: ["nested"] for 2`] }],
      [{ params: { "1": "a\u0000" } }, { subset__params: ["parameter values must not contain a NUL byte, got one for 1"] }],
      [{ params: 5 }, { subset__params: ["subset__params must be a JSON object"] }]
    ])("validates %j like the query form", (body, errors) => {
      expect(bodyErrors(base, body)).toEqual(errors)
    })
  })

  describe("parameters this server does not implement", () => {
    it("refuses queryable_columns and experimental_compaction, naming them", () => {
      expect(errorsOf("offset=-1&table=t&queryable_columns=id,v")).toEqual({ queryable_columns: ["is not supported by this server"] })
      expect(errorsOf("offset=-1&table=t&experimental_compaction=true")).toEqual({
        experimental_compaction: ["log compaction is not supported by this server"]
      })
      expect(errorsOf("offset=-1&table=t&experimental_compaction=1")).toEqual({
        experimental_compaction: ["log compaction is not supported by this server"]
      })
    })

    it("accepts them blank or off, and ignores parameters it does not know", () => {
      expect(ok("offset=-1&table=t&queryable_columns=&experimental_compaction=false").table.name).toBe("t")
      expect(ok("offset=-1&table=t&experimental_compaction=").table.name).toBe("t")
      expect(ok("offset=-1&table=t&experimental_compaction=0&whatever=1&subset=2").subset).toBeUndefined()
    })
  })

  it("reads the last of repeated values", () => {
    expect(ok("offset=-1&table=a&table=b").table.name).toBe("b")
  })

  it("collects every error at once", () => {
    expect(
      errorsOf(
        "offset=-1&live=true&live_sse=true&replica=x&log=y&columns=%2C&params%5Bz%5D=1&table=a.b.c"
      )
    ).toEqual({
      live: ["can't be true when offset == -1"],
      params: ["parameter names must be positive integers, got: z"],
      table: ["Invalid relation identifier, too many delimiters: a.b.c"],
      columns: ["Invalid zero-length delimited identifier"],
      replica: ["is invalid"],
      log: ["is invalid"]
    })
    expect(errorsOf("live_sse=true")).toEqual({
      offset: ["can't be blank"],
      live_sse: ["can't be true unless live is also true"],
      table: ["can't be blank"]
    })
  })
})

describe("parseDeleteParams", () => {
  const deleteOk = (query: string) => {
    const result = parseDeleteParams(new URLSearchParams(query))
    if (Either.isLeft(result)) throw new Error(`expected success, got ${JSON.stringify(result.left.errors)}`)
    return result.right
  }
  const deleteErrors = (query: string) => {
    const result = parseDeleteParams(new URLSearchParams(query))
    if (Either.isRight(result)) throw new Error(`expected errors, got ${JSON.stringify(result.right)}`)
    return result.left.errors
  }

  it("accepts a handle alone", () => {
    expect(deleteOk("handle=h-1")).toEqual({ handle: "h-1" })
  })

  it("accepts a shape definition, without offset or handle", () => {
    expect(deleteOk("table=electric_test.items&where=x%20%3E%201&replica=full")).toEqual({
      definition: {
        table: { schema: "electric_test", name: "items" },
        where: "x > 1",
        params: {},
        replica: "full",
        log: "full"
      }
    })
  })

  it("accepts a definition with a handle and a secret", () => {
    expect(deleteOk("table=t&handle=h&api_secret=s")).toEqual({
      handle: "h",
      secret: "s",
      definition: { table: { schema: "public", name: "t" }, params: {}, replica: "default", log: "full" }
    })
  })

  it("needs a handle or a table", () => {
    expect(deleteErrors("")).toEqual({ handle: ["can't be blank when shape definition is missing"] })
    expect(deleteErrors("table=&handle=")).toEqual({ handle: ["can't be blank when shape definition is missing"] })
  })

  it("validates the definition with the GET messages", () => {
    expect(deleteErrors("table=a.b.c&replica=x&columns=%2C")).toEqual({
      table: ["Invalid relation identifier, too many delimiters: a.b.c"],
      columns: ["Invalid zero-length delimited identifier"],
      replica: ["is invalid"]
    })
  })
})

describe("NUL bytes", () => {
  // libpg-query reads the where clause as a C string and Postgres refuses NUL in any text: a NUL
  // anywhere would cut a value short or turn a bad request into a 503.
  const VALUE = "must not contain a NUL byte"
  const NAME = "parameter names must not contain a NUL byte"
  const base = "offset=-1&table=t"

  const paramValue = (n: string) => `parameter values must not contain a NUL byte, got one for ${n}`

  it.each([
    ["where, ending the clause early", `${base}&where=${encodeURIComponent("(true)\u0000) AND id = 5")}`, "where", VALUE],
    ["where, hiding a disjunct", `${base}&where=${encodeURIComponent("id=1\u0000 OR 1=1")}`, "where", VALUE],
    ["table", "offset=-1&table=t%00x", "table", VALUE],
    ["columns", `${base}&columns=id%00`, "columns", VALUE],
    ["offset", "table=t&offset=-1%00", "offset", VALUE],
    ["handle", "table=t&offset=0_0&handle=h%00", "handle", VALUE],
    ["live", "table=t&offset=0_0&handle=h&live=%00", "live", VALUE],
    ["cursor", "table=t&offset=0_0&handle=h&live=true&cursor=1%00", "cursor", VALUE],
    ["replica", `${base}&replica=full%00`, "replica", VALUE],
    ["log", `${base}&log=%00full`, "log", VALUE],
    ["secret", `${base}&secret=s%00`, "secret", VALUE],
    ["api_secret", `${base}&api_secret=%00`, "api_secret", VALUE],
    ["params[n]", `${base}&where=v%3D%241&params%5B1%5D=a%00b`, "params", paramValue("1")],
    ["the params JSON text", `${base}&params=%7B%221%22%3A%22a%00%22%7D`, "params", VALUE],
    ["an unknown parameter", `${base}&customParam=x%00`, "customParam", VALUE],
    ["a subset parameter", `${base}&subset__where=x%00`, "subset__where", VALUE]
  ])("in the value of %s names the parameter", (_, query, param, message) => {
    expect(errorsOf(query)).toEqual({ [param]: [message] })
  })

  it.each([
    ["an unknown parameter", `${base}&cus%00tom=1`, "cus\u0000tom"],
    ["a known parameter", `${base}&where%00=true`, "where\u0000"],
    ["params[n]", `${base}&params%5B1%00%5D=a`, "params"]
  ])("in the name of %s names the parameter", (_, query, param) => {
    expect(errorsOf(query)).toEqual({ [param]: [NAME] })
  })

  it("in a value decoded from the params JSON (an escape, not a raw byte) is refused under params", () => {
    const json = encodeURIComponent(`{"1":"a\\u0000b"}`)
    expect(errorsOf(`${base}&params=${json}`)).toEqual({ params: [paramValue("1")] })
  })

  it("is reported for every parameter that holds one, before any other rule is checked", () => {
    expect(errorsOf("offset=x&table=a%00&where=%00&params%5B1%5D=%00&params%5B2%5D=%00")).toEqual({
      table: [VALUE],
      where: [VALUE],
      params: [paramValue("1"), paramValue("2")]
    })
  })

  it("is refused by DELETE, with or without a table", () => {
    const deleteErrors = (query: string) => {
      const result = parseDeleteParams(new URLSearchParams(query))
      if (Either.isRight(result)) throw new Error(`expected errors, got ${JSON.stringify(result.right)}`)
      return result.left.errors
    }
    expect(deleteErrors("handle=h%00")).toEqual({ handle: [VALUE] })
    expect(deleteErrors("handle=h&x=%00")).toEqual({ x: [VALUE] })
    expect(deleteErrors("table=t&where=id%3D1%00%20OR%201%3D1")).toEqual({ where: [VALUE] })
    expect(deleteErrors("table=t&params%5B1%5D=%00")).toEqual({ params: [paramValue("1")] })
  })

  it("is refused by the admin endpoint", () => {
    const adminErrors = (query: string) => {
      const result = parseAdminParams(new URLSearchParams(query))
      if (Either.isRight(result)) throw new Error(`expected errors, got ${JSON.stringify(result.right)}`)
      return result.left.errors
    }
    expect(adminErrors("secret=s%00")).toEqual({ secret: [VALUE] })
    expect(adminErrors("secret=s&other%00=1")).toEqual({ "other\u0000": [NAME] })
  })
})

describe("parseAdminParams", () => {
  const adminOk = (query: string) => {
    const result = parseAdminParams(new URLSearchParams(query))
    if (Either.isLeft(result)) throw new Error(`expected success, got ${JSON.stringify(result.left.errors)}`)
    return result.right
  }

  it("reads the secret like a shape request, and ignores other parameters", () => {
    expect(adminOk("")).toEqual({})
    expect(adminOk("secret=a&x=1")).toEqual({ secret: "a" })
    expect(adminOk("api_secret=b")).toEqual({ secret: "b" })
    expect(adminOk("secret=a&api_secret=b")).toEqual({ secret: "a" })
  })
})

describe("invalidRequestBody", () => {
  it("wraps the errors in Electric's body", () => {
    const e = new InvalidRequest({ errors: { offset: ["can't be blank"], table: ["a", "b"] } })
    expect(invalidRequestBody(e)).toBe(
      `{"message":"Invalid request","errors":{"offset":["can't be blank"],"table":["a","b"]}}`
    )
  })

  it("is the body for a parse failure", () => {
    const result = parseShapeParams(new URLSearchParams("offset=x&table=t"))
    expect(Either.isLeft(result) && invalidRequestBody(result.left)).toBe(
      `{"message":"Invalid request","errors":{"offset":["has invalid format"]}}`
    )
  })
})
