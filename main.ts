import { NodeRuntime } from "@effect/platform-node"
import { Effect, Either, Layer } from "effect"
import { Main } from "./layers/Main.js"
import { formatConfigError, readStackSettings } from "./src/config/StackConfig.js"

const settings = Effect.runSync(Effect.either(readStackSettings))
if (Either.isLeft(settings)) {
  console.error(`syncline: invalid configuration: ${formatConfigError(settings.left)}`)
  process.exit(1)
}

Layer.launch(Main(settings.right)).pipe(NodeRuntime.runMain)
