import { execFileSync } from "node:child_process"
import { createRequire } from "node:module"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { describe, expect, it } from "vitest"
import { REPO_ROOT } from "../../support/process.js"

// Each case runs in a node of its own: this process has loaded pg (and maybe fetch) long ago.
const runNode = (script: string): Record<string, unknown> => {
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href
  const out = execFileSync(process.execPath, ["--import", tsx, "--input-type=module", "-e", script], {
    cwd: REPO_ROOT,
    encoding: "utf8"
  })
  return JSON.parse(out.trim().split("\n").pop()!) as Record<string, unknown>
}

const loadPgModule = pathToFileURL(path.join(REPO_ROOT, "src/postgres/internal/loadPg.ts")).href
const report = `
  const loadedFetch = process.moduleLoadList.some((m) => m.includes("undici"))
  console.log(JSON.stringify({ loadedFetch, navigator: typeof globalThis.navigator, agent: globalThis.navigator?.userAgent ?? null }))
`

describe("loadPg", () => {
  it("loads pg without loading Node's fetch, and leaves navigator as it found it", () => {
    const before = runNode(`console.log(JSON.stringify({ navigator: typeof globalThis.navigator, agent: globalThis.navigator?.userAgent ?? null }))`)
    const after = runNode(`
      import { createRequire } from "node:module"
      const { loadPg } = await import(${JSON.stringify(loadPgModule)})
      loadPg()
      const pg = createRequire(${JSON.stringify(loadPgModule)})("pg")
      if (typeof pg.Client !== "function") throw new Error("pg did not load")
      ${report}
    `)
    expect(after).toEqual({ loadedFetch: false, navigator: before["navigator"], agent: before["agent"] })
  })

  it("answers pg's question as Node's own navigator does: loaded bare on Node 20, pg would load fetch", () => {
    // The case loadPg exists for; on Node 21 and later, navigator answers it and nothing loads either way.
    const bare = runNode(`
      import { createRequire } from "node:module"
      createRequire(${JSON.stringify(loadPgModule)})("pg")
      ${report}
    `)
    const nodeMajor = Number(process.versions.node.split(".")[0])
    expect(bare["loadedFetch"]).toBe(nodeMajor < 21)
  })
})
