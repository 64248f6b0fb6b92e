import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it, onTestFailed } from "vitest"
import { cleanEnv, freePort, groupMembers, REPO_ROOT, spawnCommand, stopAllChildren, waitHealthy } from "./support/process.js"
import { tempDir } from "./support/syncline.js"

/**
 * What a user does after cloning: `npm start` with no configuration. The only settings are a
 * port (so parallel runs do not collide) and a storage dir (so ./persistent stays untouched).
 */

let storageDir: string | undefined

afterAll(async () => {
  await stopAllChildren()
  if (storageDir !== undefined) {
    // A postmaster that outlived a failed test would keep writing here; the test checks it is gone.
    await fs.promises.rm(storageDir, { recursive: true, force: true }).catch(() => {})
  }
})

const processAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
  // An exited but unreaped process is as good as gone.
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return !stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")
  } catch {
    return false
  }
}

describe("npm start", () => {
  it("on a clean checkout with no configuration serves the demo table within 60 s", { timeout: 120_000 }, async () => {
    storageDir = await tempDir("npm-start")
    const port = await freePort()
    const baseUrl = `http://127.0.0.1:${port}`
    const child = spawnCommand("npm", ["start"], {
      cwd: REPO_ROOT,
      env: cleanEnv({ ELECTRIC_PORT: String(port), ELECTRIC_STORAGE_DIR: storageDir })
    })
    onTestFailed(() => {
      console.error(`npm start output:\n${child.output()}`)
    })

    const health = await waitHealthy(baseUrl, 60_000, child)
    expect(await health.json()).toEqual({ status: "active" })

    const res = await fetch(`${baseUrl}/v1/shape?table=items&offset=-1`)
    expect(res.status).toBe(200)
    expect(res.headers.get("electric-handle")).toBeTruthy()
    const body = (await res.json()) as Array<{ headers: Record<string, unknown>; value?: Record<string, unknown> }>
    const rows = body.filter((m) => m.headers["operation"] === "insert").map((m) => m.value!)
    expect(rows.map((r) => r["title"]).sort()).toEqual(
      ["Install Syncline", "Restart the service and keep syncing", "Sync a table to the client"]
    )
    expect(rows.map((r) => r["id"]).sort()).toEqual(["1", "2", "3"])

    // The banner is printed before the server listens, so it is complete by now.
    const stdout = child.stdout()
    expect(stdout).toContain(`http://localhost:${port}/v1/shape`)
    expect(stdout).toMatch(new RegExp(`curl [^\\n]*http://localhost:${port}/v1/shape\\?table=items&offset=-1`))
    expect(stdout).toContain("new ShapeStream(")
    expect(stdout).toContain(`url: "http://localhost:${port}/v1/shape"`)

    const dataDir = path.join(storageDir, "postgres")
    const postmasterPid = Number(fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")[0])
    expect(Number.isInteger(postmasterPid) && postmasterPid > 0).toBe(true)
    expect(processAlive(postmasterPid)).toBe(true)

    child.kill("SIGTERM")
    const exit = await Promise.race([
      child.exited,
      new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 30_000))
    ])
    expect(exit).toEqual({ code: 0, signal: null })

    // Postgres's fast shutdown removes postmaster.pid as its last step; allow it a moment.
    const deadline = Date.now() + 15_000
    while (Date.now() < deadline && (fs.existsSync(path.join(dataDir, "postmaster.pid")) || processAlive(postmasterPid))) {
      await new Promise((r) => setTimeout(r, 100))
    }
    expect(processAlive(postmasterPid)).toBe(false)
    expect(fs.existsSync(path.join(dataDir, "postmaster.pid"))).toBe(false)
    // Nothing of the service is left in its process group either.
    expect(groupMembers(child.pid)).toEqual([])
  })
})
