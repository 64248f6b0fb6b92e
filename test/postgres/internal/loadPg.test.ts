import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
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

  it("keeps fetch out of the service's entry: dist/main.js loads every module of the service without it", () => {
    // A bad setting stops the service once its modules are loaded (serve.js reads the settings first), before any
    // connection; what was loaded is reported as the process exits.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "syncline-loadpg-"))
    try {
      const preload = path.join(dir, "report.mjs")
      fs.writeFileSync(
        preload,
        `import { createRequire } from "node:module"
        const cache = createRequire(import.meta.url).cache
        process.on("exit", () => process.stderr.write("loaded " + JSON.stringify({
          fetch: process.moduleLoadList.some((m) => m.includes("undici")),
          pg: Object.keys(cache).some((f) => f.includes("/node_modules/pg/lib/"))
        }) + "\\n"))\n`
      )
      const run = spawnSync(process.execPath, ["--import", pathToFileURL(preload).href, path.join(REPO_ROOT, "dist", "main.js")], {
        cwd: REPO_ROOT,
        encoding: "utf8",
        env: { ...process.env, DATABASE_URL: "postgresql://nobody@127.0.0.1:1/none", ELECTRIC_PORT: "not a port" }
      })
      expect(run.status, run.stderr).toBe(1)
      expect(run.stderr).toContain("invalid configuration")
      const line = run.stderr.split("\n").find((l) => l.startsWith("loaded "))
      expect(line, run.stderr).toBeDefined()
      expect(JSON.parse(line!.slice("loaded ".length))).toEqual({ fetch: false, pg: true })
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("is needed on Node 20 only: there pg loaded bare loads fetch, from Node 21 on navigator answers its test", () => {
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
