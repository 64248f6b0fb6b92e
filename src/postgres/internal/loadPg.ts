import { createRequire } from "node:module"

/**
 * Loads `pg` (and so its module state) before anything else imports it. On load, pg asks whether it runs in a
 * Cloudflare Worker: where `navigator` is not defined, as on Node 20, it builds a fetch `Response` to find out,
 * and that loads Node's whole fetch implementation (undici), about a tenth of the service's start-up, which the
 * service never uses. Node 21 and later define `navigator` with Node's user agent, which answers at once; on
 * Node 20 a stand-in with that user agent is there while pg loads, and only then.
 */
export const loadPg = (): void => {
  const requireCjs = createRequire(import.meta.url)
  if ("navigator" in globalThis) {
    requireCjs("pg")
    return
  }
  Object.defineProperty(globalThis, "navigator", {
    value: { userAgent: `Node.js/${process.versions.node.split(".")[0]}` },
    configurable: true
  })
  try {
    requireCjs("pg")
  } finally {
    delete (globalThis as { navigator?: unknown }).navigator
  }
}
