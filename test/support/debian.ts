import { execFile } from "node:child_process"
import * as fs from "node:fs/promises"
import * as os from "node:os"
import * as path from "node:path"
import { cleanEnv, processAlive } from "./process.js"

/**
 * Debian packages a test needs (nginx, Chromium), installed by the test set-up: as root with apt,
 * one apt at a time across the test processes of the machine.
 */

export const isRoot = (): boolean => process.getuid?.() === 0

export interface CommandResult {
  readonly ok: boolean
  readonly output: string
}

/** Runs a command to its end without a shell; its output and whether it succeeded. */
export const run = (command: string, args: ReadonlyArray<string>, options: { readonly cwd?: string } = {}): Promise<CommandResult> =>
  new Promise((resolve) => {
    execFile(
      command,
      [...args],
      {
        cwd: options.cwd,
        env: cleanEnv({ DEBIAN_FRONTEND: "noninteractive" }),
        maxBuffer: 64 * 1024 * 1024,
        timeout: 600_000
      },
      (error, stdout, stderr) =>
        resolve({
          ok: error === null,
          output: `${stdout}${stderr}${error === null ? "" : `(failed: ${error.code ?? error.signal ?? error.message})`}`
        })
    )
  })

export const isExecutable = async (file: string): Promise<boolean> => {
  try {
    await fs.access(file, fs.constants.X_OK)
    return true
  } catch {
    return false
  }
}

/**
 * Runs `body` while holding a machine-wide lock (a directory, whose creation is atomic), so two
 * test processes never run apt at once. A lock whose owner died is taken over.
 */
export const withInstallLock = async <A>(body: () => Promise<A>): Promise<A> => {
  const lock = path.join(os.tmpdir(), "syncline-apt-install.lock")
  const owner = path.join(lock, "owner.pid")
  const deadline = Date.now() + 15 * 60_000
  for (;;) {
    try {
      await fs.mkdir(lock)
      await fs.writeFile(owner, `${process.pid}\n`)
      break
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
    }
    const pid = Number(await fs.readFile(owner, "utf8").catch(() => ""))
    const age = Date.now() - ((await fs.stat(lock).catch(() => undefined))?.mtimeMs ?? Date.now())
    // No pid yet is a holder between mkdir and writeFile, unless that was long ago.
    const abandoned = Number.isInteger(pid) && pid > 0 ? !processAlive(pid) : age > 30_000
    if (abandoned) {
      await fs.rm(lock, { recursive: true, force: true })
      continue
    }
    if (Date.now() > deadline) throw new Error(`${lock} is still held by process ${pid}`)
    await new Promise((r) => setTimeout(r, 250))
  }
  try {
    return await body()
  } finally {
    await fs.rm(lock, { recursive: true, force: true })
  }
}

let updated: Promise<CommandResult> | undefined

/**
 * As root: `apt-get update` (once per test process), then the first of `packages` that installs.
 * Fails naming the packages, with apt's output, when none does.
 */
export const aptInstall = async (packages: ReadonlyArray<string>, what: string): Promise<void> => {
  const log: Array<string> = []
  // Waits for another apt (not a test) holding dpkg's own lock instead of failing at once.
  const lockWait = ["-o", "DPkg::Lock::Timeout=300"]
  updated ??= run("apt-get", [...lockWait, "update"])
  log.push(`$ apt-get update\n${(await updated).output}`)
  for (const pkg of packages) {
    const install = await run("apt-get", [...lockWait, "install", "-y", "--no-install-recommends", pkg])
    log.push(`$ apt-get install -y ${pkg}\n${install.output}`)
    if (install.ok) return
  }
  throw new Error(`${what} is needed by this test and could not be installed (Debian packages ${packages.join(" or ")}):\n${log.join("\n")}`)
}
