import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, TestServices } from "effect"
import type { Row } from "../../src/domain/Change.js"
import { PostgresError, StorageError } from "../../src/domain/errors.js"
import { LogOffset } from "../../src/domain/LogOffset.js"
import type { Lsn } from "../../src/domain/Lsn.js"
import { FakePostgres, type FakeWrite, textTable } from "../../src/testing/FakePostgres.js"
import { makeGate } from "../../src/testing/Intercept.js"
import {
  type Harness,
  type Message as HarnessMessage,
  readToEnd,
  registryRows,
  startServer,
  tempDirs,
  untilInterrupted
} from "../../src/testing/TestHarness.js"

/**
 * The restart bugs the reference system had with subquery shapes
 * (reference/architecture.md §8.3: bugs 1, 2B, 4, 5 and 6), each provoked on
 * a stack over the in-memory Postgres (real SQLite and shape storage) with the
 * TestClock: arrange shapes whose subqueries read other shapes, restart the
 * stack at the moment the bug needed, and check what a client sees — the same
 * handles, no 409, no insert of a row it holds nor update or delete of a row it
 * does not, and the rows the fake database has.
 */

const ORGS = textTable(16421, "orgs", ["id", "paid"])
const PROJECTS = textTable(16422, "projects", ["id", "org_id", "active"])
const ISSUES = textTable(16423, "issues", ["id", "project_id", "title"])

const makeDb = () => new FakePostgres([ORGS, PROJECTS, ISSUES])

/** Every line of a log in a chunk of its own: logs of many snapshot and log chunks. */
const CHUNK_BYTES = 64

const shapeQuery = (table: string, where: string, extra = "") => `table=${table}&where=${encodeURIComponent(where)}${extra}`

/** Issues of active projects; the shape its subquery makes is the active projects' ids. */
const ACTIVE = shapeQuery("issues", "project_id IN (SELECT id FROM projects WHERE active = 'yes')")
const ACTIVE_PROJECTS = shapeQuery("projects", "active = 'yes'", "&columns=id&replica=full")
/** Issues of projects of paying orgs: a subquery whose shape has a subquery of its own. */
const PAID = shapeQuery("issues", "project_id IN (SELECT id FROM projects WHERE org_id IN (SELECT id FROM orgs WHERE paid = 'yes'))")
const PAID_PROJECTS = shapeQuery("projects", "org_id IN (SELECT id FROM orgs WHERE paid = 'yes')", "&columns=id&replica=full")
const PAID_ORGS = shapeQuery("orgs", "paid = 'yes'", "&columns=id&replica=full")

const activeIssues = (db: FakePostgres): ReadonlyArray<Row> => {
  const active = new Set(db.rows("projects").filter((p) => p.active === "yes").map((p) => p.id))
  return db.rows("issues").filter((i) => active.has(i.project_id))
}

const paidIssues = (db: FakePostgres): ReadonlyArray<Row> => {
  const paid = new Set(db.rows("orgs").filter((o) => o.paid === "yes").map((o) => o.id))
  const projects = new Set(db.rows("projects").filter((p) => paid.has(p.org_id)).map((p) => p.id))
  return db.rows("issues").filter((i) => projects.has(i.project_id))
}

const project = (id: string, active: string, org = "o1"): FakeWrite => ({ kind: "insert", table: "projects", row: { id, org_id: org, active } })
const issue = (id: string, projectId: string): FakeWrite => ({ kind: "insert", table: "issues", row: { id, project_id: projectId, title: `issue ${id}` } })
const setActive = (id: string, active: string): FakeWrite => ({ kind: "update", table: "projects", row: { id, active } })
const setPaid = (id: string, paid: string): FakeWrite => ({ kind: "update", table: "orgs", row: { id, paid } })

/** Projects `p1…pN` (the first `active` of them active, odd ones of org o1, even of o2), two issues each. */
const seed = (db: FakePostgres, projects: number, active: number) =>
  db.commit([
    { kind: "insert", table: "orgs", row: { id: "o1", paid: "yes" } },
    { kind: "insert", table: "orgs", row: { id: "o2", paid: "no" } },
    ...Array.from({ length: projects }, (_, i) => project(`p${i + 1}`, i < active ? "yes" : "no", i % 2 === 0 ? "o1" : "o2")),
    ...Array.from({ length: projects }, (_, i) => [issue(`i${i + 1}a`, `p${i + 1}`), issue(`i${i + 1}b`, `p${i + 1}`)]).flat()
  ])

/**
 * A client following one shape as the protocol has it: from `-1`, then from
 * each offset the server gave, with its handle. It applies every message to
 * its rows and records what a strict client refuses: an insert of a row it
 * holds, an update or delete of a row it does not.
 */
interface Client {
  readonly query: string
  handle: string | undefined
  offset: string
  readonly rows: Map<string, Record<string, unknown>>
  readonly violations: Array<string>
}

const client = (query: string): Client => ({ query, handle: undefined, offset: "-1", rows: new Map(), violations: [] })

interface Message {
  readonly key?: string
  readonly value?: Record<string, unknown>
  readonly headers: { readonly operation?: string }
}

const apply = (c: Client, m: Message) => {
  const key = m.key!
  const held = c.rows.get(key)
  switch (m.headers.operation) {
    case "insert":
      if (held !== undefined) c.violations.push(`insert of ${key}, which it holds`)
      c.rows.set(key, { ...m.value })
      return
    case "update":
      if (held === undefined) c.violations.push(`update of ${key}, which it does not hold`)
      c.rows.set(key, { ...held, ...m.value })
      return
    case "delete":
      if (held === undefined) c.violations.push(`delete of ${key}, which it does not hold`)
      c.rows.delete(key)
      return
  }
}

/** Reads the shape until the server says it is up to date; any answer but 200 with the client's handle fails. */
const follow = (h: Harness, c: Client) =>
  Effect.gen(function*() {
    for (let i = 0; i < 1000; i++) {
      const res = yield* h.get(`/v1/shape?${c.query}&offset=${c.offset}${c.handle === undefined ? "" : `&handle=${c.handle}`}`)
      if (res.status !== 200) return yield* Effect.dieMessage(`${c.query} at ${c.offset} (${c.handle}): ${res.status} ${res.text}`)
      const handle = res.headers["electric-handle"]!
      if (c.handle !== undefined && handle !== c.handle) return yield* Effect.dieMessage(`handle ${c.handle} became ${handle}`)
      c.handle = handle
      for (const m of JSON.parse(res.text) as Array<Message>) if (m.headers.operation !== undefined) apply(c, m)
      c.offset = res.headers["electric-offset"]!
      if (res.headers["electric-up-to-date"] !== undefined) return c
    }
    return yield* Effect.dieMessage(`${c.query} never got up to date`)
  })

const projectKey = (id: string) => `"public"."projects"/"${id}"`
const orgKey = (id: string) => `"public"."orgs"/"${id}"`
const keyOf = (row: Row) => `"public"."issues"/"${row.id}"`
const sorted = (entries: Iterable<readonly [string, unknown]>) => [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))

/**
 * The shape as `c` follows it, and as a new client reading it from the start sees it: both strict, both at the
 * same handle, both holding exactly `expected`.
 */
const check = (h: Harness, c: Client, expected: ReadonlyArray<Row>, when: string) =>
  Effect.gen(function*() {
    const want = sorted(expected.map((r) => [keyOf(r), { ...r }] as const))
    yield* follow(h, c)
    expect(c.violations, `${when}: the client's log`).toEqual([])
    expect(sorted(c.rows), `${when}: the client's rows`).toEqual(want)
    const fresh = yield* follow(h, client(c.query))
    expect(fresh.handle, `${when}: a new client's handle`).toBe(c.handle)
    expect(fresh.violations, `${when}: the whole log`).toEqual([])
    expect(sorted(fresh.rows), `${when}: a new client's rows`).toEqual(want)
  })

/** As `check`, for a shape of ids: both clients hold exactly the rows of `keys`. */
const checkKeys = (h: Harness, c: Client, keys: ReadonlyArray<string>, when: string) =>
  Effect.gen(function*() {
    const want = [...keys].sort()
    yield* follow(h, c)
    expect(c.violations, `${when}: the client's log`).toEqual([])
    expect([...c.rows.keys()].sort(), `${when}: the client's rows`).toEqual(want)
    const fresh = yield* follow(h, client(c.query))
    expect(fresh.handle, `${when}: a new client's handle`).toBe(c.handle)
    expect(fresh.violations, `${when}: the whole log`).toEqual([])
    expect([...fresh.rows.keys()].sort(), `${when}: a new client's rows`).toEqual(want)
  })

/** Waits (in real time, bounded) until the slot's position reaches `lsn`: every shape the transaction reached has it. */
const settled = (db: FakePostgres, lsn: Lsn) =>
  TestServices.provideLive(
    Effect.timeoutFail(db.awaitConfirmed(lsn), {
      duration: "5 seconds",
      onTimeout: () => new Error(`the slot was never acknowledged up to ${lsn}: a consumer is stuck`)
    })
  ).pipe(Effect.orDie)

const commit = (db: FakePostgres, writes: ReadonlyArray<FakeWrite>) =>
  Effect.flatMap(db.commit(writes), (t) => Effect.as(settled(db, t.endLsn), t))

/** Polls (in real time, bounded) until `check` holds. */
const within = (what: string, check: Effect.Effect<boolean>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 2_500; i++) {
      if (yield* check) return
      yield* TestServices.provideLive(Effect.sleep("2 millis"))
    }
    return yield* Effect.dieMessage(`${what} never happened`)
  })

/**
 * Commits `writes` with the next move query on `table` held (a reader's `Snapshot.rows`): returns the
 * transaction once that reader is inside the query, which stays held until the test ends.
 */
const commitHoldingMove = (db: FakePostgres, table: string, writes: ReadonlyArray<FakeWrite>) =>
  Effect.gen(function*() {
    const gate = yield* makeGate
    yield* Effect.addFinalizer(() => Deferred.succeed(gate.release, undefined))
    db.intercept.rows.next(() => gate.hold, (t) => t.name === table)
    const t = yield* db.commit(writes)
    yield* Deferred.await(gate.reached)
    return t
  })

/**
 * Commits `writes` with the next commit (fsync and pointer) of shape `handle`'s log held: returns the transaction
 * once that shape's consumer is inside the commit. The commit never completes: when the stack stops, it fails as
 * the storage of a stopped stack does, so the batch is lost as a crash loses it.
 */
const commitHoldingWrite = (db: FakePostgres, handle: string, writes: ReadonlyArray<FakeWrite>) =>
  Effect.gen(function*() {
    const gate = yield* makeGate
    const lost = new StorageError({ reason: "Closed", handle, message: "the stack stopped before the batch was durable" })
    db.intercept.commit.next(
      () => Effect.zipRight(Deferred.succeed(gate.reached, undefined), Effect.zipRight(untilInterrupted, Effect.fail(lost))),
      (h) => h === handle
    )
    const t = yield* db.commit(writes)
    yield* Deferred.await(gate.reached)
    return t
  })

const restart = (h: Harness) => Effect.zipRight(h.supervisor.restart, h.active)

/** What a log says of issue `id`, in order: each message's operation, commit LSN and title. */
const issueChanges = (messages: ReadonlyArray<HarnessMessage>, id: string) =>
  messages.filter((m) => m.key === keyOf({ id })).map((m) => [m.headers.operation, m.headers["lsn"], m.value?.["title"]])

/** The registry holds exactly these shapes, none of them being removed. */
const registryHolds = (dirs: { readonly storageDir: string }, handles: ReadonlyArray<string | undefined>) =>
  Effect.map(registryRows(dirs), ({ shapes }) => {
    expect(sorted(shapes.map((s) => [s.handle, s.removing] as const))).toEqual(sorted(handles.map((h) => [h!, 0] as const)))
  })

/**
 * The `seed` data, a server (its logs chunked at `CHUNK_BYTES` when `chunked`), the shape of active projects'
 * issues read from the start, and a client of its dependency's rows.
 */
const started = (projects: number, active: number, chunked: boolean) =>
  Effect.gen(function*() {
    const db = makeDb()
    const dirs = yield* tempDirs
    yield* seed(db, projects, active)
    const h = yield* startServer(db, dirs, {}, "syncline", chunked ? { chunkBytesThreshold: CHUNK_BYTES } : {})
    const issues = client(ACTIVE)
    yield* check(h, issues, activeIssues(db), "created")
    const projectsClient = yield* follow(h, client(ACTIVE_PROJECTS))
    return { db, dirs, h, issues, projects: projectsClient }
  })

describe("subquery shapes across restarts", () => {
  it.scoped("bug 1: a dependency's materializer is rebuilt from every chunk of its log, not the first", () =>
    Effect.gen(function*() {
      const { db, dirs, h, issues, projects } = yield* started(8, 6, true)
      // Rows of the dependency's log chunks past the first, in its snapshot and in its log.
      yield* commit(db, [setActive("p7", "yes")])
      yield* commit(db, [setActive("p1", "no")])
      yield* check(h, issues, activeIssues(db), "before the restart")

      yield* restart(h)
      // Each leaves the dependency's values only if its materializer holds the row: p6 from the last snapshot
      // chunk, p7 from the log; p1 comes back.
      yield* commit(db, [setActive("p6", "no")])
      yield* commit(db, [setActive("p7", "no")])
      yield* commit(db, [setActive("p1", "yes")])
      yield* check(h, issues, activeIssues(db), "after the restart")
      expect((yield* follow(h, projects)).violations).toEqual([])
      yield* registryHolds(dirs, [issues.handle, projects.handle])
    }))

  it.scoped("bug 1b: a shape whose dependency alone changes follows it after a restart", () =>
    Effect.gen(function*() {
      const { db, dirs, h, issues, projects } = yield* started(4, 2, false)

      yield* restart(h)
      // A change of its own table, while nothing has reached its dependency since the restart.
      yield* commit(db, [issue("i9", "p1")])
      yield* check(h, issues, activeIssues(db), "after the restart, its own table's change")
      // Changes of its dependency only: rows move in, then out.
      yield* commit(db, [setActive("p3", "yes")])
      yield* check(h, issues, activeIssues(db), "after the restart, a move in")
      yield* commit(db, [setActive("p1", "no")])
      yield* check(h, issues, activeIssues(db), "after the restart, a move out")
      yield* registryHolds(dirs, [issues.handle, projects.handle])
    }))

  it.scoped("bug 2B: a crash between a dependency's write and its reader's leaves both at the reader's position", () =>
    Effect.gen(function*() {
      const { db, dirs, h, issues, projects } = yield* started(4, 2, false)

      // As after a crash, the slot will send again what both shapes already hold.
      db.dropAcks = true
      const before = yield* db.commit([setActive("p4", "yes"), issue("i9", "p4")])
      yield* db.awaitAck(before.endLsn)
      // The reader's query for the move is held: its dependency writes the transaction, the reader does not.
      const moving = yield* commitHoldingMove(db, "issues", [setActive("p3", "yes")])
      yield* within("the dependency's write of the move", Effect.map(follow(h, projects), (c) => c.rows.has(projectKey("p3"))))
      yield* follow(h, issues)
      expect(issues.offset.startsWith(`${moving.commitLsn}_`)).toBe(false)

      yield* restart(h)
      db.dropAcks = false
      yield* settled(db, moving.endLsn)
      yield* check(h, issues, activeIssues(db), "after the restart, the held move")
      yield* commit(db, [setActive("p3", "no")])
      yield* check(h, issues, activeIssues(db), "after the restart, the move back")
      expect((yield* follow(h, projects)).violations).toEqual([])
      yield* registryHolds(dirs, [issues.handle, projects.handle])
    }))

  it.scoped("bug 4: a dependency's log of many chunks is read once per entry, however often the stack restarts", () =>
    Effect.gen(function*() {
      const { db, dirs, h, issues, projects } = yield* started(3, 1, true)
      // The dependency's log: many transactions, each line in a chunk of its own.
      for (let i = 4; i <= 9; i++) yield* commit(db, [project(`p${i}`, "yes"), issue(`i${i}a`, `p${i}`)])
      yield* commit(db, [setActive("p2", "yes")])
      yield* commit(db, [setActive("p5", "no")])
      yield* check(h, issues, activeIssues(db), "before the restarts")

      yield* restart(h)
      yield* commit(db, [setActive("p9", "no")])
      yield* commit(db, [project("p10", "yes"), issue("i10a", "p10")])
      yield* check(h, issues, activeIssues(db), "after the first restart")

      // This time the dependency's log ends past the reader's: its last entry waits for the slot to send it again.
      const moving = yield* commitHoldingMove(db, "issues", [setActive("p10", "no")])
      yield* within("the dependency's write of the move", Effect.map(follow(h, projects), (c) => !c.rows.has(projectKey("p10"))))
      yield* restart(h)
      yield* settled(db, moving.endLsn)
      yield* commit(db, [setActive("p5", "yes")])
      yield* check(h, issues, activeIssues(db), "after the second restart")
      expect((yield* follow(h, projects)).violations).toEqual([])
      yield* registryHolds(dirs, [issues.handle, projects.handle])
    }))

  it.scoped("bug 5: a move its dependency takes in before its reader starts after a restart still reaches the reader", () =>
    Effect.gen(function*() {
      const { db, dirs, h, issues, projects } = yield* started(10, 6, true)

      // Nothing reaches the reader between the restart and the move: its consumer starts with the move, reading
      // a log of many chunks, while its dependency's consumer (woken at start) takes the move in at once.
      yield* restart(h)
      yield* commit(db, [setActive("p8", "yes")])
      yield* check(h, issues, activeIssues(db), "after the restart, a move in")
      yield* commit(db, [setActive("p2", "no")])
      yield* check(h, issues, activeIssues(db), "after the restart, a move out")
      yield* registryHolds(dirs, [issues.handle, projects.handle])
    }))

  it.scoped("bug 6: a restart while a shape waits for its dependency removes neither", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      yield* seed(db, 4, 4)
      const h = yield* startServer(db, dirs)
      const issues = client(PAID)
      yield* check(h, issues, paidIssues(db), "created")
      const projects = yield* follow(h, client(PAID_PROJECTS))
      const orgs = yield* follow(h, client(PAID_ORGS))
      // Every consumer is running.
      yield* commit(db, [issue("i9", "p1")])
      yield* check(h, issues, paidIssues(db), "before the restart")

      // The middle shape's query for the move is held, so the outer shape, whose own rows change in the same
      // transaction, waits for it.
      const moving = yield* commitHoldingMove(db, "projects", [
        setPaid("o2", "yes"),
        { kind: "update", table: "issues", row: { id: "i1a", title: "renamed" } },
        issue("i10", "p2")
      ])
      // The outer consumer, running and idle, got the transaction with the middle one and goes to its wait
      // without any I/O: a moment of real time puts it there.
      yield* TestServices.provideLive(Effect.sleep("20 millis"))

      yield* restart(h)
      yield* settled(db, moving.endLsn)
      yield* check(h, issues, paidIssues(db), "after the restart, the held move")
      yield* commit(db, [setPaid("o1", "no")])
      yield* check(h, issues, paidIssues(db), "after the restart, a move out")
      expect((yield* follow(h, projects)).violations).toEqual([])
      expect((yield* follow(h, orgs)).violations).toEqual([])
      yield* registryHolds(dirs, [issues.handle, projects.handle, orgs.handle])
    }))

  it.scoped("the rows a move wrote hold the later transactions its query saw, also when those reach the shape after a restart", () =>
    Effect.gen(function*() {
      const { db, dirs, h, issues, projects } = yield* started(4, 2, false)
      const title = (id: string, text: string): FakeWrite => ({ kind: "update", table: "issues", row: { id, title: text } })

      // The shape's query for a move (p3 activated) waits while two more transactions commit: it will see both.
      const gate = yield* makeGate
      yield* Effect.addFinalizer(() => Deferred.succeed(gate.release, undefined))
      db.intercept.rows.next(() => gate.hold, (t) => t.name === "issues")
      const moving = yield* db.commit([setActive("p3", "yes")])
      yield* Deferred.await(gate.reached)
      // The first also changes a row of the dependency, whose write of it is lost as a crash loses it: the shape
      // waits for that write, so neither transaction reaches it before the restart.
      yield* commitHoldingWrite(db, projects.handle!, [
        { kind: "insert", table: "issues", row: { id: "i3c", project_id: "p3", title: "new" } },
        title("i3a", "one"),
        project("p9", "yes")
      ])
      const last = yield* db.commit([title("i3a", "two")])
      yield* Deferred.succeed(gate.release, undefined)
      yield* within("the move's rows", Effect.map(follow(h, issues), (c) => c.rows.has(keyOf({ id: "i3c" }))))
      expect(issues.rows.get(keyOf({ id: "i3a" }))?.["title"], "the moved row as the query saw it").toBe("two")

      // After the restart the slot sends them again; the rows the move wrote already hold them.
      yield* restart(h)
      yield* settled(db, last.endLsn)
      yield* check(h, issues, activeIssues(db), "after the restart")
      const log = yield* readToEnd(h, ACTIVE)
      expect(issueChanges(log.messages, "i3a")).toEqual([["insert", `${moving.commitLsn}`, "two"]])
      expect(issueChanges(log.messages, "i3c")).toEqual([["insert", `${moving.commitLsn}`, "new"]])
      expect((yield* follow(h, projects)).violations).toEqual([])
      yield* registryHolds(dirs, [issues.handle, projects.handle])
    }))

  it.scoped("a move is forgotten only once its shape's log is past a transaction its snapshot could not hold", () =>
    Effect.gen(function*() {
      const { db, dirs, h, issues, projects } = yield* started(4, 2, false)
      const title = (id: string, text: string): FakeWrite => ({ kind: "update", table: "issues", row: { id, title: text } })
      const all = yield* follow(h, client("table=issues"))

      // The move's query sees the two transactions after it; they change only rows it writes.
      const gate = yield* makeGate
      yield* Effect.addFinalizer(() => Deferred.succeed(gate.release, undefined))
      db.intercept.rows.next(() => gate.hold, (t) => t.name === "issues")
      const moving = yield* db.commit([setActive("p3", "yes")])
      yield* Deferred.await(gate.reached)
      // Another shape's write of the first is lost as a crash loses it, so the slot will send both again.
      yield* commitHoldingWrite(db, all.handle!, [title("i3a", "one")])
      yield* db.commit([title("i3a", "two")])
      yield* Deferred.succeed(gate.release, undefined)
      yield* within("the move's rows", Effect.map(follow(h, issues), (c) => c.rows.get(keyOf({ id: "i3a" }))?.["title"] === "two"))
      // A transaction the move's snapshot cannot hold, which writes nothing to the shape (a new active project
      // without issues: its move finds no row), so the shape's log stays at the first move. Its move's query
      // shows the shape has taken it.
      const taken = yield* Deferred.make<void>()
      db.intercept.rows.next(() => Deferred.succeed(taken, undefined), (t) => t.name === "issues")
      const after = yield* db.commit([project("p9", "yes")])
      yield* Deferred.await(taken)

      yield* restart(h)
      yield* settled(db, after.endLsn)
      yield* check(h, issues, activeIssues(db), "after the restart")
      const log = yield* readToEnd(h, ACTIVE)
      expect(issueChanges(log.messages, "i3a")).toEqual([["insert", `${moving.commitLsn}`, "two"]])
      expect((yield* follow(h, projects)).violations).toEqual([])
      yield* registryHolds(dirs, [issues.handle, projects.handle, all.handle])
    }))

  it.scoped("a reader evaluates a move only once its dependency's write of it is durable: a crash between them loses no row", () =>
    Effect.gen(function*() {
      const db = makeDb()
      const dirs = yield* tempDirs
      yield* seed(db, 4, 4)
      // An unpaid org whose project will join a paying org.
      yield* db.commit([
        { kind: "insert", table: "orgs", row: { id: "o3", paid: "no" } },
        project("p5", "yes", "o3"),
        issue("i5a", "p5"),
        issue("i5b", "p5")
      ])
      const h = yield* startServer(db, dirs)
      const issues = client(PAID)
      yield* check(h, issues, paidIssues(db), "created")
      const projects = yield* follow(h, client(PAID_PROJECTS))
      const orgs = yield* follow(h, client(PAID_ORGS))
      // Every consumer is running.
      yield* commit(db, [issue("i9", "p1")])
      yield* check(h, issues, paidIssues(db), "before the move")
      const before = sorted(issues.rows)

      // As after a crash, the slot will send both transactions again.
      db.dropAcks = true
      // The middle shape writes the move (o2's projects come in) and is held in its commit: the move is not durable.
      const paying = yield* commitHoldingWrite(db, projects.handle!, [setPaid("o2", "yes")])
      // A later transaction brings p5 into the now paying org; a query of the move run from now on holds it.
      const joining = yield* db.commit([{ kind: "update", table: "projects", row: { id: "p5", org_id: "o2" } }])
      // Time for the outer shape to evaluate the move, were it let through before the middle shape's commit.
      yield* TestServices.provideLive(Effect.sleep("20 millis"))
      yield* follow(h, issues)
      expect(LogOffset.parse(issues.offset)!.tx < paying.commitLsn, "the outer shape's log while the move is not durable").toBe(true)
      expect(sorted(issues.rows), "the outer shape's rows while the move is not durable").toEqual(before)

      // The middle shape's write of the move is lost with the stack; it queries the move again, from a snapshot
      // that holds the later transaction too.
      yield* restart(h)
      db.dropAcks = false
      yield* settled(db, joining.endLsn)
      yield* check(h, issues, paidIssues(db), "after the restart")
      const paidOrgs = db.rows("orgs").filter((o) => o.paid === "yes").map((o) => o.id as string)
      const paidProjects = db.rows("projects").filter((p) => paidOrgs.includes(p.org_id as string)).map((p) => p.id as string)
      yield* checkKeys(h, projects, paidProjects.map(projectKey), "after the restart, the middle shape")
      yield* checkKeys(h, orgs, paidOrgs.map(orgKey), "after the restart, the inner shape")
      // The crash did lose the middle shape's write: it wrote the move again, p5 coming in with it.
      const middle = yield* readToEnd(h, PAID_PROJECTS)
      expect(middle.messages.filter((m) => m.key === projectKey("p5")).map((m) => [m.headers.operation, m.headers.lsn])).toEqual([
        ["insert", `${paying.commitLsn}`]
      ])
      yield* registryHolds(dirs, [issues.handle, projects.handle, orgs.handle])
    }))
})

/**
 * A dependency whose move's query ran late writes rows as later transactions left them, at the move's commit: its
 * readers see those rows move there, before their transactions. A reader whose snapshot holds the move but not a
 * later transaction must still see that transaction move the row.
 */
describe("a reader and the rows its dependency's move wrote ahead", () => {
  /**
   * Orgs o1 (paying) and o2, o3 (not); p5 of o3 and p6 of o2, with an issue each; the shapes of paying orgs'
   * projects, and of those orgs, followed; then o3 starts paying, with the middle shape's query for that move
   * held (`release` lets it run).
   */
  const arrange = Effect.gen(function*() {
    const db = makeDb()
    const dirs = yield* tempDirs
    yield* seed(db, 4, 4)
    yield* db.commit([
      { kind: "insert", table: "orgs", row: { id: "o3", paid: "no" } },
      project("p5", "yes", "o3"),
      project("p6", "yes", "o2"),
      issue("i5a", "p5"),
      issue("i6a", "p6")
    ])
    const h = yield* startServer(db, dirs)
    const projects = yield* follow(h, client(PAID_PROJECTS))
    const orgs = yield* follow(h, client(PAID_ORGS))
    // Every consumer is running.
    yield* commit(db, [issue("i9", "p1")])
    const gate = yield* makeGate
    yield* Effect.addFinalizer(() => Deferred.succeed(gate.release, undefined))
    db.intercept.rows.next(() => gate.hold, (t) => t.name === "projects")
    const paying = yield* db.commit([setPaid("o3", "yes")])
    yield* Deferred.await(gate.reached)
    return { db, dirs, h, projects, orgs, paying, release: Deferred.succeed(gate.release, undefined) }
  })

  /** p6 joins the paying o3: a transaction the held query will see when it runs. */
  const joins: ReadonlyArray<FakeWrite> = [{ kind: "update", table: "projects", row: { id: "p6", org_id: "o3" } }]

  /** The reader of paying orgs' issues, created now and checked. */
  const reader = (h: Harness, db: FakePostgres) =>
    Effect.gen(function*() {
      const issues = client(PAID)
      yield* check(h, issues, paidIssues(db), "created")
      return issues
    })

  /**
   * Commits `writes` with the reader's next query for a move held, lets the middle shape's held query run, and
   * waits until the reader is inside its query: the middle shape handles the transaction, the reader does not make
   * it durable, and the slot will send it again.
   */
  const readerHeldOn = (db: FakePostgres, writes: ReadonlyArray<FakeWrite>, release: Effect.Effect<unknown>, rows: string) =>
    Effect.gen(function*() {
      const gate = yield* makeGate
      yield* Effect.addFinalizer(() => Deferred.succeed(gate.release, undefined))
      db.intercept.rows.next(() => gate.hold, (t) => t.name === "issues")
      const t = yield* db.commit(writes)
      yield* release
      yield* TestServices.provideLive(
        Effect.timeoutFail(Deferred.await(gate.reached), {
          duration: "30 seconds",
          onTimeout: () => new Error(`the reader never queried the rows of ${rows}`)
        })
      ).pipe(Effect.orDie)
      return t
    })

  /** p6 joins o3, with p7, which the middle shape writes, so that its log holds the transaction (`readerHeldOn`). */
  const readerHeldOnP6 = (db: FakePostgres, release: Effect.Effect<unknown>) =>
    readerHeldOn(db, [...joins, project("p7", "yes", "o1")], release, "p6")

  /** The reader equals Postgres and holds `issue` (or not); the other shapes' logs are strict; every shape stays. */
  const settledWith = (
    arranged: { readonly h: Harness; readonly db: FakePostgres; readonly dirs: { readonly storageDir: string } },
    shapes: { readonly issues: Client; readonly projects: Client; readonly orgs: Client },
    issue: string,
    held: boolean,
    when: string
  ) =>
    Effect.gen(function*() {
      const { db, dirs, h } = arranged
      yield* check(h, shapes.issues, paidIssues(db), when)
      expect(shapes.issues.rows.has(keyOf({ id: issue }))).toBe(held)
      expect((yield* follow(h, shapes.projects)).violations).toEqual([])
      expect((yield* follow(h, shapes.orgs)).violations).toEqual([])
      yield* registryHolds(dirs, [shapes.issues.handle, shapes.projects.handle, shapes.orgs.handle])
    })

  it.scoped("a reader created while the move's query waits sees a later transaction bring a row in", () =>
    Effect.gen(function*() {
      const arranged = yield* arrange
      const { db, h, release } = arranged
      // The reader's snapshot holds the move (o3 pays: i5a is in) and not the transaction after it.
      const issues = yield* reader(h, db)
      const joining = yield* db.commit(joins)
      yield* release
      yield* settled(db, joining.endLsn)
      yield* settledWith(arranged, { ...arranged, issues }, "i6a", true, "after p6 joined o3")
    }))

  it.scoped("a move lost with a restart is queried again after a later transaction: the reader still sees it bring the row in", () =>
    Effect.gen(function*() {
      const arranged = yield* arrange
      const { db, h } = arranged
      const issues = yield* reader(h, db)
      const joining = yield* db.commit(joins)
      // The held query goes with the stack; the next one runs once p6 has joined o3.
      yield* restart(h)
      yield* settled(db, joining.endLsn)
      yield* settledWith(arranged, { ...arranged, issues }, "i6a", true, "after the restart")
    }))

  it.scoped("a reader whose move for such a row is lost with a restart is told again when the transaction comes again", () =>
    Effect.gen(function*() {
      const arranged = yield* arrange
      const { db, h, release } = arranged
      const issues = yield* reader(h, db)
      const joining = yield* readerHeldOnP6(db, release)
      yield* restart(h)
      yield* settled(db, joining.endLsn)
      yield* settledWith(arranged, { ...arranged, issues }, "i6a", true, "after the restart")
    }))

  it.scoped("a reader sees a row leave when a later move finds it already left out by an earlier move's late query", () =>
    Effect.gen(function*() {
      const arranged = yield* arrange
      const { db, h, release } = arranged
      // The reader's snapshot holds o3 paying: i5a is in.
      const issues = yield* reader(h, db)
      // o3 stops paying before the held query runs: that query leaves p5 out, and the move of o3 leaving finds
      // nothing to write.
      const leaving = yield* db.commit([setPaid("o3", "no")])
      yield* release
      yield* settled(db, leaving.endLsn)
      yield* settledWith(arranged, { ...arranged, issues }, "i5a", false, "after o3 stopped paying")
    }))

  it.scoped("a move that wrote nothing is recorded: after a restart the reader is still told of the row it left out", () =>
    Effect.gen(function*() {
      const arranged = yield* arrange
      const { db, h, release } = arranged
      const issues = yield* reader(h, db)
      // The reader's query for the move of o3 leaving is held: it does not make that transaction durable.
      const leaving = yield* readerHeldOn(db, [setPaid("o3", "no")], release, "p5")
      // The middle shape wrote nothing for either transaction; only the registry knows its move left p5 out.
      yield* restart(h)
      yield* settled(db, leaving.endLsn)
      yield* settledWith(arranged, { ...arranged, issues }, "i5a", false, "after the restart")
    }))

  it.scoped("a move's record outlives its shape's log position until its readers are past it too", () =>
    Effect.gen(function*() {
      const arranged = yield* arrange
      const { db, h, release } = arranged
      const issues = yield* reader(h, db)
      yield* readerHeldOnP6(db, release)
      // A transaction the move's snapshot cannot hold reaches the middle shape, which makes it durable while the
      // reader is still held: the move is obsolete for the middle shape, not for its reader.
      const later = yield* db.commit([project("p8", "yes", "o1")])
      yield* within("the middle shape's write of p8", Effect.map(follow(h, arranged.projects), (c) => c.rows.has(projectKey("p8"))))
      yield* restart(h)
      yield* settled(db, later.endLsn)
      yield* settledWith(arranged, { ...arranged, issues }, "i6a", true, "after the restart")
    }))
})

describe("subquery shapes and a move query Postgres refuses", () => {
  it.scoped("invalidates the reader (a 409 and a new shape) instead of retrying for ever; the slot moves on", () =>
    Effect.gen(function*() {
      const { db, h, issues } = yield* started(4, 2, false)
      // As after a column the query names was dropped: Postgres refuses it, and always will.
      db.intercept.rows.next(
        () => Effect.fail(new PostgresError({ reason: "Query", message: "column \"title\" does not exist", cause: { code: "42703" } })),
        (t) => t.name === "issues"
      )
      yield* commit(db, [setActive("p3", "yes")])
      const stale = yield* h.get(`/v1/shape?${issues.query}&offset=${issues.offset}&handle=${issues.handle}`)
      expect(stale.status).toBe(409)
      expect(stale.headers["electric-handle"]).not.toBe(issues.handle)
      yield* check(h, client(ACTIVE), activeIssues(db), "the new shape")
    }))
})
