import { describe, expect, it } from "@effect/vitest"
import { LogOffset } from "../../src/domain/LogOffset.js"
import type { ReadSpan } from "../../src/storage/internal/committedRead.js"
import { FileNames } from "../../src/storage/internal/files.js"
import { RECENT_LOG_BYTES, RecentBudget, RecentCommits } from "../../src/storage/internal/RecentCommits.js"

/** `n` lines of the log as a commit writes them, each `{"i":<k>}` and a newline, `k` from `first`. */
const commitBytes = (first: number, n: number): Buffer =>
  Buffer.from(Array.from({ length: n }, (_, k) => `{"i":${first + k}}\n`).join(""), "utf8")

const span = (start: number, end: number): ReadSpan => ({
  file: FileNames.log,
  start,
  end,
  count: undefined,
  nextOffset: LogOffset.make(1n, 0),
  reachedEnd: true
})

const bodyOf = (recent: RecentCommits, start: number, end: number, format: "array" | "lines" = "array") => {
  const opened = recent.read(span(start, end), format)
  if (opened === undefined) return undefined
  if (opened._tag !== "Whole") throw new Error("a recent read is whole")
  return Buffer.from(opened.read.body).toString("utf8")
}

const nextCheckPhase = () => new Promise((resolve) => setImmediate(resolve))

/** A commit's buffer as the log's is: its own memory, `held` bytes of it in use (a buffer grown past its content). */
const ownBuffer = (data: Buffer, held = data.length): Buffer => {
  const buf = Buffer.allocUnsafeSlow(held)
  data.copy(buf)
  return buf.subarray(0, data.length)
}

describe("RecentCommits", () => {
  it("serves a span lying in the kept commits, across their buffers, joined as the format says", () => {
    const recent = new RecentCommits(new RecentBudget())
    const first = commitBytes(0, 3)
    const second = commitBytes(3, 2)
    recent.add(1000, ownBuffer(first))
    recent.add(1000 + first.length, ownBuffer(second))
    const all = Buffer.concat([first, second]).toString("utf8")
    const end = 1000 + all.length
    expect(bodyOf(recent, 1000, end)).toBe(all.slice(0, -1).replaceAll("\n", ","))
    expect(bodyOf(recent, 1000, end, "lines")).toBe(all.slice(0, -1))
    // From the middle of the first commit into the second.
    const from = 1000 + first.indexOf("\n") + 1
    expect(bodyOf(recent, from, end)).toBe(all.slice(from - 1000, -1).replaceAll("\n", ","))
    // Not all of it here: the caller reads the files.
    expect(bodyOf(recent, 999, end)).toBeUndefined()
    expect(bodyOf(recent, 1000, end + 1)).toBeUndefined()
    expect(bodyOf(recent, end, end)).toBeUndefined()
    recent.clear()
  })

  it("shares a read's body with the requests reading alike: the first after a commit at any size, then up to RECENT_LOG_BYTES", () => {
    const recent = new RecentCommits(new RecentBudget())
    // 3 MiB of lines each.
    const lines = (tag: string) => Buffer.from(`{"${tag}":"${"x".repeat(1000)}"}\n`.repeat(3 * 1024), "utf8")
    const first = lines("a")
    const second = lines("b")
    recent.add(0, first)
    recent.add(first.length, second)
    const end = first.length + second.length
    const whole = recent.read(span(0, end), "array")
    expect(whole).toBeDefined()
    expect(recent.read(span(0, end), "array")).toBe(whole)
    // 6 MiB shared already: a body of another 3 MiB is streamed from the file rather than held for one response,
    // while a small one still fits, and is shared.
    expect(recent.read(span(first.length, end), "array")).toBeUndefined()
    const lastLine = end - (second.length / (3 * 1024))
    const small = recent.read(span(lastLine, end), "array")
    expect(small).toBeDefined()
    expect(recent.read(span(lastLine, end), "array")).toBe(small)
    // A commit starts the sharing over.
    recent.add(end, lines("c"))
    const after = recent.read(span(first.length, end), "array")
    expect(after).toBeDefined()
    expect(recent.read(span(first.length, end), "array")).toBe(after)
    recent.clear()
  })

  it("shares the first read after a commit however large it is, as the requests the commit wakes read it", () => {
    const budget = new RecentBudget()
    const recent = new RecentCommits(budget)
    const data = Buffer.from(`{"i":"${"x".repeat(1000)}"}\n`.repeat(9 * 1024), "utf8")
    expect(data.length).toBeGreaterThan(RECENT_LOG_BYTES)
    recent.add(0, data)
    const woken = recent.read(span(0, data.length), "array")
    expect(woken).toBeDefined()
    expect(recent.read(span(0, data.length), "array")).toBe(woken)
    recent.clear()
  })

  it("starts over at a commit that does not follow the kept bytes", () => {
    const budget = new RecentBudget()
    const recent = new RecentCommits(budget)
    recent.add(0, ownBuffer(commitBytes(0, 2)))
    const later = commitBytes(10, 2)
    recent.add(5000, ownBuffer(later))
    expect(bodyOf(recent, 0, 10)).toBeUndefined()
    expect(bodyOf(recent, 5000, 5000 + later.length)).toBe(later.toString("utf8").slice(0, -1).replaceAll("\n", ","))
    expect(budget.used).toBe(later.length)
    recent.clear()
    expect(budget.used).toBe(0)
  })

  it("keeps at most RECENT_LOG_BYTES of a log, counting the whole buffers its commits lie in, newest first", () => {
    const budget = new RecentBudget(4 * RECENT_LOG_BYTES)
    const recent = new RecentCommits(budget)
    // Each buffer holds a third of the bound, its commit's lines filling most of it: three fit, the fourth pushes out
    // the oldest.
    const held = Math.floor(RECENT_LOG_BYTES / 3)
    const data = Buffer.alloc(Math.floor(held * 0.6), "x")
    data[data.length - 1] = 0x0a
    let at = 0
    const starts: Array<number> = []
    for (let i = 0; i < 4; i++) {
      starts.push(at)
      recent.add(at, ownBuffer(data, held))
      at += data.length
    }
    expect(budget.used).toBe(3 * held)
    expect(bodyOf(recent, starts[0]!, at)).toBeUndefined()
    expect(bodyOf(recent, starts[1]!, at)).toBeDefined()
    recent.clear()
    expect(budget.used).toBe(0)
  })

  it("shares its storage's budget: a log over it lets go of its oldest commits, or keeps its newest for the turn only", async () => {
    const data = commitBytes(0, 10)
    const len = data.length
    const budget = new RecentBudget(Math.floor(2.5 * len))
    const a = new RecentCommits(budget)
    const b = new RecentCommits(budget)
    a.add(0, ownBuffer(data))
    a.add(len, ownBuffer(data))
    expect(budget.used).toBe(2 * len)
    // Over the budget with nothing older of its own: b keeps its commit for the reads of this turn.
    b.add(0, ownBuffer(data))
    expect(bodyOf(b, 0, len)).toBeDefined()
    expect(bodyOf(a, 0, 2 * len)).toBeDefined()
    await nextCheckPhase()
    expect(bodyOf(b, 0, len)).toBeUndefined()
    expect(budget.used).toBe(2 * len)
    // Over it with older commits of its own: a lets go of its oldest.
    a.add(2 * len, ownBuffer(data))
    expect(budget.used).toBe(2 * len)
    expect(bodyOf(a, 0, 3 * len)).toBeUndefined()
    expect(bodyOf(a, len, 3 * len)).toBeDefined()
    await nextCheckPhase()
    expect(bodyOf(a, len, 3 * len)).toBeDefined()
    a.clear()
    expect(budget.used).toBe(0)
  })

  it("keeps a copy of a small commit lying in a large buffer, holding only its own bytes", () => {
    const budget = new RecentBudget()
    const recent = new RecentCommits(budget)
    const data = commitBytes(0, 3)
    const buffer = ownBuffer(data, 16_384)
    recent.add(0, buffer)
    expect(budget.used).toBe(data.length)
    // The commit's buffer may be let go of: what is read is the copy.
    buffer.fill(0)
    expect(bodyOf(recent, 0, data.length)).toBe(data.toString("utf8").slice(0, -1).replaceAll("\n", ","))
    recent.clear()
  })

  it("with no budget, keeps a commit for the reads its commit wakes, in the same turn, and no longer", async () => {
    const budget = new RecentBudget(0)
    const recent = new RecentCommits(budget)
    const data = commitBytes(0, 4)
    recent.add(0, ownBuffer(data))
    expect(bodyOf(recent, 0, data.length)).toBe(data.toString("utf8").slice(0, -1).replaceAll("\n", ","))
    await nextCheckPhase()
    expect(bodyOf(recent, 0, data.length)).toBeUndefined()
    expect(budget.used).toBe(0)
  })
})
