import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

// Examples and tests import the package by name, as a host app does; here the names lead to the sources.
const source = (file: string) => fileURLToPath(new URL(file, import.meta.url))

export default defineConfig({
  resolve: {
    alias: [
      { find: /^syncline$/, replacement: source("./src/index.ts") },
      { find: /^syncline\/testing$/, replacement: source("./src/testing/index.ts") }
    ]
  },
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/support/globalSetup.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    fileParallelism: true,
    maxWorkers: 2
  }
})
