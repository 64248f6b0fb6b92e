import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { Logging, Main, Tracing } from "./layers/Main.js"
import { formatConfigError, readStackSettings } from "./src/config/StackConfig.js"
import { StackSupervisor } from "./src/stack/StackSupervisor.js"

const settings = Effect.runSync(Effect.either(readStackSettings))
if (Either.isLeft(settings)) {
  console.error(`syncline: invalid configuration: ${formatConfigError(settings.left)}`)
  process.exit(1)
}

// Runs until a signal stops it, or until the stack hits an error no retry can fix.
const program = Effect.flatMap(StackSupervisor, (supervisor) => supervisor.fatal).pipe(
  Effect.provide(Main(settings.right)),
  Effect.provide(Tracing(settings.right)),
  Effect.provide(Logging(settings.right)),
  Effect.catchTag("PostgresError", (error) =>
    Effect.sync(() => {
      console.error(`syncline: ${error.message}`)
      process.exitCode = 1
    })
  )
)

// A graceful stop releases long-polls, flushes, acks and exits 0; one that overruns the budget is cut short.
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.once(signal, () => {
    setTimeout(() => {
      console.error(`syncline: shutdown took longer than ${settings.right.shutdownTimeoutMs} ms; exiting`)
      process.exit(1)
    }, settings.right.shutdownTimeoutMs).unref()
  })
}

NodeRuntime.runMain(program, { disablePrettyLogger: true })
