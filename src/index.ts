/**
 * Syncline as a library: the layers `npm start` runs, `Syncline` and the
 * shape API to mount in a host's router, the stack supervisor, and the
 * settings read from Electric's environment variables.
 */
export { Logging, Main, Tracing } from "../layers/Main.js"
export { Server } from "../layers/Server.js"
export { makeStack, Stack, type StackParts } from "../layers/Stack.js"
export { Syncline, type SynclineServices, type SynclineSource } from "../layers/Syncline.js"
export {
  formatConfigError,
  publicationName,
  readStackSettings,
  slotName,
  StackConfig,
  type StackSettings,
  stackSettingsConfig
} from "./config/StackConfig.js"
export * from "./domain/errors.js"
export { createServer, type NodeServerOptions } from "./http/NodeServer.js"
export { ShapeApi } from "./http/ShapeApi.js"
export { ShutdownSignal } from "./http/ShutdownSignal.js"
export {
  type ActiveServices,
  defaultRestartPolicy,
  type RestartPolicy,
  StackSupervisor,
  type StackSupervisorService,
  type StackStatus,
  type StackView
} from "./stack/StackSupervisor.js"
