/**
 * `syncline/testing`: the in-memory Postgres, replication and snapshots the
 * project's own `TestClock` restart scenarios run on, the stack and server
 * wired over them, and the harness that drives a server from a test.
 */
export { TestServer, TestStack, TestSyncline, type TestDirs } from "../../layers/Test.js"
export { FakeInspector } from "./FakeInspector.js"
export { FakePgAdmin } from "./FakePgAdmin.js"
export { FakePostgres, type FakeWrite, textTable } from "./FakePostgres.js"
export { FakeReplication } from "./FakeReplication.js"
export { FakeSnapshot } from "./FakeSnapshot.js"
export { type Gate, Intercept, makeGate } from "./Intercept.js"
export { RecordedShapeDb } from "./RecordedShapeDb.js"
export {
  advanceUntil,
  eventually,
  type Harness,
  hasFiles,
  insertedKeys,
  type Message,
  readToEnd,
  registryRows,
  type Reply,
  startApp,
  startServer,
  storedMark,
  tempDirs,
  untilInterrupted
} from "./TestHarness.js"
