import type { Database, Report, Service, ServiceOptions } from "../harness.js"

/** What a part of the benchmark is given. */
export interface PartContext {
  readonly db: Database
  /** A temporary directory of the run, removed at the end. */
  readonly dir: string
  readonly report: Report
  /** Starts `node dist/main.js` on the bench's Postgres and resolves once /v1/health says active. */
  readonly startService: (options: ServiceOptions) => Promise<Service>
}

/** One selectable part: `npm run bench -- <name> …`. */
export interface Part {
  readonly name: string
  readonly describe: string
  readonly run: (context: PartContext) => Promise<void>
}
