import { describe, expect, it } from "@effect/vitest"
import { MessageFramer } from "../../../src/postgres/internal/MessageFramer.js"

/** A backend message: its type byte, its length word (counting itself), its payload. */
const message = (type: string, payload: string): Buffer => {
  const body = Buffer.from(payload)
  const out = Buffer.alloc(5 + body.length)
  out[0] = type.charCodeAt(0)
  out.writeUInt32BE(4 + body.length, 1)
  body.copy(out, 5)
  return out
}

const messages = [message("d", "first row"), message("N", ""), message("d", "é".repeat(40)), message("d", ""), message("c", "")]
const stream = Buffer.concat(messages)

/** Every message handed over, as type and payload; the chunks fed one by one. */
const frame = (chunks: ReadonlyArray<Buffer>): Array<string> => {
  const framer = new MessageFramer()
  const seen: Array<string> = []
  for (const chunk of chunks) {
    const rest = framer.feed(chunk, (data, start, end) => {
      seen.push(`${String.fromCharCode(data[start]!)}:${data.toString("utf8", start + 5, end)}`)
      return false
    })
    expect(rest).toBe(chunk.length)
  }
  return seen
}

const expected = messages.map((m) => `${String.fromCharCode(m[0]!)}:${m.toString("utf8", 5)}`)

describe("MessageFramer", () => {
  it("hands over the same messages however the bytes are cut, in one piece, byte by byte or split in two anywhere", () => {
    expect(frame([stream])).toEqual(expected)
    expect(frame(Array.from(stream, (b) => Buffer.from([b])))).toEqual(expected)
    for (let cut = 1; cut < stream.length; cut++) {
      expect(frame([stream.subarray(0, cut), stream.subarray(cut)])).toEqual(expected)
    }
  })

  it("stops at the message its reader says ends the read, and says where the rest of the chunk starts", () => {
    const stopAtSecond = (framer: MessageFramer, chunk: Buffer) => {
      let n = 0
      return framer.feed(chunk, () => ++n === 2)
    }
    expect(stopAtSecond(new MessageFramer(), stream)).toBe(messages[0]!.length + messages[1]!.length)
    // The second message completed from a split: the rest starts where it ends in the second chunk.
    const framer = new MessageFramer()
    const cut = messages[0]!.length + 2
    expect(stopAtSecond(framer, stream.subarray(0, cut))).toBe(cut)
    let seen = 0
    const rest = framer.feed(stream.subarray(cut), () => ++seen === 1)
    expect(seen).toBe(1)
    expect(rest).toBe(messages[1]!.length - 2)
  })

  it("refuses a length word too short to count itself", () => {
    const bad = Buffer.from([0x64, 0, 0, 0, 3])
    expect(() => new MessageFramer().feed(bad, () => false)).toThrow(/impossible length 3/)
    const framer = new MessageFramer()
    framer.feed(bad.subarray(0, 2), () => false)
    expect(() => framer.feed(bad.subarray(2), () => false)).toThrow(/impossible length 3/)
  })
})
