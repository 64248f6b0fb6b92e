import type * as http from "node:http"
import * as Effect from "effect/Effect"
import type { LogRead } from "../storage/ShapeLogStorage.js"

/** A response held whole: what the lane writes. */
export interface WholeResponse {
  readonly headers: Record<string, string | number>
  /** The body's parts, written in order: a large body shared with other requests is one of them, never copied. */
  readonly body: ReadonlyArray<Uint8Array>
}

/** What a held long-poll's lane needs from its log. */
export interface CommitLaneSource {
  /** Durable data past the offset the request waits after exists. */
  readonly hasDataAfter: () => boolean
  /** True once the log is closed: the request's fiber answers. */
  readonly closed: () => boolean
  /** The shape is still served. */
  readonly alive: () => boolean
  readonly onNextCommit: (listener: () => void) => () => void
  /** The durable LSN an up-to-date may report, taken before the read it ends. */
  readonly globalLsn: () => bigint
  /** The read the response is made of, when it is held whole (shared between the requests reading it). */
  readonly readWhole: () => Promise<LogRead | undefined>
}

/** How a lane's wait ends: with data for the fiber to answer, or answered already. */
export type LaneOutcome = "data" | "sent"

/**
 * A held long-poll answered in the callback its log calls at the commit that
 * ends the wait: the response is written before any fiber runs, so the
 * requests a commit wakes get their bytes as fast as Node can write them, and
 * their fibers finish afterwards. Anything out of the ordinary — the shape
 * gone, the log closed, a body streamed from its file, a failed read — is left to
 * the request's fiber, and so is a request the fiber answers first (the
 * timeout, a shutdown): whichever of the two claims the response first answers
 * it, and only it.
 */
export class CommitLane {
  private state: "waiting" | "writing" | "sent" | "fiber" = "waiting"
  private writing: Promise<void> = Promise.resolve()

  constructor(
    private readonly response: http.ServerResponse,
    private readonly source: CommitLaneSource,
    private readonly render: (read: LogRead, globalLsn: bigint) => WholeResponse
  ) {}

  /** Completes as the log's `awaitDataAfter` would, or with "sent" once the lane has answered. */
  readonly wait: Effect.Effect<LaneOutcome> = Effect.async<LaneOutcome>((resume) => {
    let forget: (() => void) | undefined
    const atCommit = (): void => {
      forget = undefined
      if (this.state !== "waiting") return
      if (this.source.closed()) return resume(Effect.succeed("data"))
      if (!this.source.hasDataAfter()) {
        forget = this.source.onNextCommit(atCommit)
        return
      }
      if (!this.source.alive() || this.response.headersSent || this.response.destroyed) return resume(Effect.succeed("data"))
      this.state = "writing"
      const globalLsn = this.source.globalLsn()
      this.writing = this.source.readWhole().then(
        (read) => this.write(read, globalLsn),
        () => {
          this.state = "fiber"
        }
      )
      void this.writing.then(() => resume(Effect.succeed(this.state === "sent" ? "sent" : "data")))
    }
    atCommit()
    return Effect.sync(() => forget?.())
  })

  /**
   * Once the wait is over, however it ended: true when the lane answered (the fiber has nothing left to write);
   * false when the fiber answers, and from then on the lane never will.
   */
  readonly settle: Effect.Effect<boolean> = Effect.suspend(() => {
    if (this.state === "waiting") this.state = "fiber"
    return this.state === "writing"
      ? Effect.promise(() => this.writing.then(() => this.state === "sent"))
      : Effect.succeed(this.state === "sent")
  })

  private write(read: LogRead | undefined, globalLsn: bigint): void {
    try {
      if (read === undefined || this.response.headersSent || this.response.destroyed) {
        this.state = "fiber"
        return
      }
      const { body, headers } = this.render(read, globalLsn)
      this.response.writeHead(200, headers)
      // Corked, the parts and the headers leave in one write; `end` uncorks.
      if (body.length > 1) this.response.cork()
      for (let i = 0; i < body.length - 1; i++) this.response.write(body[i])
      this.response.end(body[body.length - 1])
      this.state = "sent"
    } catch {
      // Before the headers went out the fiber can still answer; after, only dropping the connection is honest.
      if (!this.response.headersSent) {
        this.state = "fiber"
        return
      }
      this.response.destroy()
      this.state = "sent"
    }
  }
}
