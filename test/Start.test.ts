import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it, onTestFailed } from "vitest"
import {
  cleanEnv,
  freePort,
  groupMembers,
  REPO_ROOT,
  spawnCommand,
  spawnSyncline,
  startNodeArgs,
  stopAllChildren,
  waitHealthy
} from "./support/process.js"
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

const cmdline = (pid: number): string => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ")
  } catch {
    return ""
  }
}

const readPostmasterPid = (dataDir: string): number => {
  const pid = Number(fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")[0])
  expect(Number.isInteger(pid) && pid > 0).toBe(true)
  return pid
}

/**
 * Waits (bounded) for the service and its Postgres to be gone: they finish shutting down a
 * moment after npm itself has exited, and Postgres removes postmaster.pid as its last step.
 */
const waitStopped = async (dataDir: string, pids: ReadonlyArray<number>): Promise<void> => {
  const deadline = Date.now() + 15_000
  while (Date.now() < deadline && (fs.existsSync(path.join(dataDir, "postmaster.pid")) || pids.some(processAlive))) {
    await new Promise((r) => setTimeout(r, 100))
  }
}

const getJson = async (url: string): Promise<Array<{ headers: Record<string, unknown>; value?: Record<string, unknown> }>> => {
  const res = await fetch(url)
  expect(res.status).toBe(200)
  return (await res.json()) as Array<{ headers: Record<string, unknown>; value?: Record<string, unknown> }>
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

    const body = await getJson(`${baseUrl}/v1/shape?table=items&offset=-1`)
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
    const postmasterPid = readPostmasterPid(dataDir)
    expect(processAlive(postmasterPid)).toBe(true)

    // The node process running the compiled service (under npm -> sh), to check it is gone after the signal.
    const service = groupMembers(child.pid).filter((pid) => cmdline(pid).startsWith(["node", ...startNodeArgs(), "dist/main.js"].join(" ")))
    expect(service).toHaveLength(1)

    // SIGTERM goes to the service process itself, as a process manager stopping it would send it.
    // Not to npm's whole group: dash (`sh` here) does not exec the script's command, dies of the
    // signal and npm re-raises it on itself. The next test signals a process group without npm in it.
    process.kill(service[0]!, "SIGTERM")
    const exit = await Promise.race([
      child.exited,
      new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 30_000))
    ])
    // The service's exit code 0 reaches the user through sh and npm.
    expect(exit).toEqual({ code: 0, signal: null })
    await waitStopped(dataDir, [postmasterPid, ...service])
    expect(processAlive(service[0]!)).toBe(false)
    expect(processAlive(postmasterPid)).toBe(false)
    expect(fs.existsSync(path.join(dataDir, "postmaster.pid"))).toBe(false)
    expect(groupMembers(child.pid)).toEqual([])
  })

  it("run directly, restarts on the same storage dir without duplicating the demo rows, and exits 0 on SIGTERM", async () => {
    expect(storageDir).toBeDefined()
    const port = await freePort()
    const baseUrl = `http://127.0.0.1:${port}`
    const child = spawnSyncline({ env: cleanEnv({ ELECTRIC_PORT: String(port), ELECTRIC_STORAGE_DIR: storageDir! }) })
    onTestFailed(() => {
      console.error(`service output:\n${child.output()}`)
    })
    await waitHealthy(baseUrl, 60_000, child)
    const body = await getJson(`${baseUrl}/v1/shape?table=items&offset=-1`)
    expect(body.filter((m) => m.headers["operation"] === "insert").map((m) => m.value!["id"]).sort()).toEqual(["1", "2", "3"])

    const dataDir = path.join(storageDir!, "postgres")
    const postmasterPid = readPostmasterPid(dataDir)
    child.kill("SIGTERM")
    const exit = await Promise.race([
      child.exited,
      new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 30_000))
    ])
    expect(exit).toEqual({ code: 0, signal: null })
    await waitStopped(dataDir, [postmasterPid])
    expect(processAlive(postmasterPid)).toBe(false)
    expect(fs.existsSync(path.join(dataDir, "postmaster.pid"))).toBe(false)
  })
})
