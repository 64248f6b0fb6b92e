import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"
import { LogOffset } from "../../src/domain/LogOffset.js"
import type { LogEntry } from "../../src/storage/ShapeLogStorage.js"

/** The chunk threshold of the storage tests: ten 100-byte lines. */
export const THRESHOLD = 1000

/** A JSON message of exactly 99 characters: with its newline, 100 bytes on disk. */
export const line = (tag: string, i: number): string => {
  const head = `{"key":"${tag}-${i}","value":{"id":"${i}","pad":"`
  const tail = `"}}`
  return head + "x".repeat(99 - head.length - tail.length) + tail
}

/** A log entry at `<tx>_<op>`. */
export const entry = (tx: number, op: number): LogEntry => ({
  offset: LogOffset.make(BigInt(tx), op),
  json: line("log", tx * 1000 + op)
})

export const off = (text: string): LogOffset => LogOffset.parse(text)!
export const fmt = LogOffset.format

/** A temp directory for the scope of a test. */
export const tempDir = Effect.acquireRelease(
  Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "syncline-storage-"))),
  (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
)
