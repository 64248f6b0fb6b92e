import { expect } from "vitest"
import { sleep } from "./oracle.js"
import type { ChildService } from "./process.js"

/** One service process of an oracle test, and where it listens. */
export interface Instance {
  readonly child: ChildService
  readonly baseUrl: string
}

/** Polls `/v1/health` until it reports `status` (bounded); fails early if the process exits. */
export const waitStatus = async (instance: Instance, status: "active" | "waiting", timeoutMs = 60_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (!instance.child.isRunning()) throw new Error(`${instance.baseUrl} exited before it was ${status}`)
    const body = await fetch(`${instance.baseUrl}/v1/health`, { signal: AbortSignal.timeout(2_000) })
      .then((r) => r.json() as Promise<{ status?: string }>)
      .catch(() => undefined)
    if (body?.status === status) return
    if (Date.now() > deadline) throw new Error(`${instance.baseUrl} was not ${status} within ${timeoutMs} ms`)
    await sleep(100)
  }
}

/**
 * Restarts the service and returns the instance that serves afterwards:
 * `graceful` (SIGTERM, exit 0, a new process), `admin` (the stack rebuilt in the running process) or `rolling`
 * (a new process waits read-only on the slot, clients move to it, the old one stops). `switchTo` moves the
 * clients to an instance.
 */
export const restartService = async (
  kind: "graceful" | "admin" | "rolling",
  current: Instance,
  spawn: () => Promise<Instance>,
  switchTo: (instance: Instance) => void
): Promise<Instance> => {
  switch (kind) {
    case "graceful": {
      current.child.kill("SIGTERM")
      expect(await current.child.exited).toEqual({ code: 0, signal: null })
      const next = await spawn()
      switchTo(next)
      await waitStatus(next, "active")
      return next
    }
    case "admin": {
      const res = await fetch(`${current.baseUrl}/v1/admin/restart`, { method: "POST" })
      expect(res.status).toBeLessThan(300)
      await res.body?.cancel()
      await waitStatus(current, "active")
      return current
    }
    case "rolling": {
      const next = await spawn()
      await waitStatus(next, "waiting")
      switchTo(next)
      current.child.kill("SIGTERM")
      expect(await current.child.exited).toEqual({ code: 0, signal: null })
      await waitStatus(next, "active")
      return next
    }
  }
}
