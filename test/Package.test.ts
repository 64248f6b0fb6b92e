import { execFile } from "node:child_process"
import * as fs from "node:fs/promises"
import * as path from "node:path"
import { promisify } from "node:util"
import { beforeAll, describe, expect, it } from "vitest"
import { REPO_ROOT } from "./support/process.js"

/**
 * The package as a host app sees it: `npm run build` compiles it to `dist/`
 * with declarations, and `syncline` and `syncline/testing` resolve through
 * `package.json` `exports` (a self-reference, as from a dependent's code) to
 * modules that load and to types that check.
 */

const run = promisify(execFile)

beforeAll(async () => {
  await run("npm", ["run", "build"], { cwd: REPO_ROOT })
}, 120_000)

describe("the package's entry points", () => {
  it("load by name and export the service's layers, the shape API and the test harness", async () => {
    const script = `
      const main = await import("syncline")
      const testing = await import("syncline/testing")
      console.log(JSON.stringify({ main: Object.keys(main).sort(), testing: Object.keys(testing).sort() }))
    `
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { cwd: REPO_ROOT })
    const exported = JSON.parse(stdout.trim().split("\n").at(-1)!) as { main: Array<string>; testing: Array<string> }
    expect(exported.main).toEqual(expect.arrayContaining([
      "Main",
      "Server",
      "Stack",
      "Syncline",
      "ShapeApi",
      "ShutdownSignal",
      "StackSupervisor",
      "StackConfig",
      "readStackSettings",
      "PostgresError"
    ]))
    expect(exported.testing).toEqual(expect.arrayContaining([
      "FakePostgres",
      "TestStack",
      "TestServer",
      "startServer",
      "startApp",
      "TestSyncline",
      "advanceUntil",
      "readToEnd",
      "makeGate",
      "tempDirs"
    ]))
  }, 60_000)

  it("type-check by name in a dependent's code", async () => {
    const dir = await fs.mkdtemp(path.join(REPO_ROOT, ".package-check-"))
    try {
      await fs.writeFile(
        path.join(dir, "host.ts"),
        [
          `import { Effect, Layer } from "effect"`,
          `import { HttpRouter, HttpServer } from "@effect/platform"`,
          `import { Main, ShapeApi, StackSupervisor, type StackSettings, Syncline } from "syncline"`,
          `import { FakePostgres, type Harness, startApp, startServer, tempDirs } from "syncline/testing"`,
          `export const app = (settings: StackSettings) => Layer.launch(Main(settings))`,
          `export const router: typeof ShapeApi = ShapeApi`,
          `export const status = Effect.flatMap(StackSupervisor, (s) => s.status)`,
          `export const harness = (db: FakePostgres): Effect.Effect<Harness, unknown, never> =>`,
          `  Effect.scoped(Effect.flatMap(tempDirs, (dirs) => startServer(db, dirs)))`,
          `export const hosted = Layer.merge(HttpServer.serve(HttpRouter.mount(HttpRouter.empty, "/sync", ShapeApi)), Syncline.drain)`,
          `export const hostedHarness = (db: FakePostgres): Effect.Effect<Harness, unknown, never> =>`,
          `  Effect.scoped(Effect.flatMap(tempDirs, (dirs) => startApp(hosted, db, dirs, { mount: "/sync" })))`,
          `export const withStack = hosted.pipe(Layer.provide(Syncline.layer))`
        ].join("\n")
      )
      await fs.writeFile(
        path.join(dir, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: {
            target: "ES2022",
            module: "NodeNext",
            moduleResolution: "NodeNext",
            strict: true,
            noEmit: true,
            skipLibCheck: true,
            types: ["node"]
          },
          files: ["host.ts"]
        })
      )
      const result = await run(path.join(REPO_ROOT, "node_modules", ".bin", "tsc"), ["-p", dir], { cwd: REPO_ROOT }).then(
        () => ({ ok: true, output: "" }),
        (error: { stdout?: string }) => ({ ok: false, output: error.stdout ?? String(error) })
      )
      expect(result).toEqual({ ok: true, output: "" })
    } finally {
      await fs.rm(dir, { recursive: true, force: true })
    }
  }, 60_000)
})
