import * as path from "node:path"
import { aptInstall, isExecutable, isRoot, run, withInstallLock } from "./debian.js"

/**
 * A headless Chromium from Debian for the tests that load a page: `chromium-headless-shell` (the small
 * build) or `chromium`, installed with apt as root when the machine has neither. Browsers downloaded
 * from elsewhere are not used.
 */

const PACKAGES = ["chromium-headless-shell", "chromium"] as const
const BINARIES = ["chromium-headless-shell", "chromium"] as const

const findChromium = async (): Promise<string | undefined> => {
  const dirs = [...(process.env["PATH"] ?? "").split(path.delimiter).filter((d) => d !== ""), "/usr/bin", "/usr/lib/chromium"]
  for (const name of BINARIES) {
    for (const dir of dirs) {
      const candidate = path.join(dir, name)
      if (await isExecutable(candidate)) return candidate
    }
  }
  return undefined
}

let binary: Promise<string> | undefined

/** The headless Chromium binary, installed first if needed; fails naming the packages when it cannot be had. */
export const chromiumBinary = (): Promise<string> => {
  binary ??= (async () => {
    const found = await findChromium()
    if (found !== undefined) return found
    if (!isRoot()) {
      throw new Error(`Chromium is needed by this test: install one of the Debian packages ${PACKAGES.join(" or ")} (as root)`)
    }
    return withInstallLock(async () => {
      const installed = await findChromium()
      if (installed !== undefined) return installed
      await aptInstall(PACKAGES, "Chromium")
      const ready = await findChromium()
      if (ready === undefined) throw new Error(`Chromium was installed (${PACKAGES.join(" or ")}) but no binary was found`)
      return ready
    })
  })()
  return binary
}

/**
 * The DOM of `url` after its scripts ran, as headless Chromium dumps it (`--dump-dom`), with
 * `--virtual-time-budget` giving the page's timers time to fire.
 */
export const dumpDom = async (url: string): Promise<string> => {
  const chromium = await chromiumBinary()
  const result = await run(chromium, [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=5000",
    "--dump-dom",
    url
  ])
  if (!result.ok) throw new Error(`${chromium} could not load ${url}:\n${result.output}`)
  return result.output
}
