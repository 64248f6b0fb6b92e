import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import {
  advance,
  changesIn,
  cpuMsOf,
  createItems,
  dropSlot,
  fmtInt,
  fmtMb,
  fmtMs,
  fmtRatio,
  fmtS,
  fmtShortRate,
  get,
  makeAgent,
  median,
  publicationName,
  rawDecode,
  type Service,
  type ShapePosition,
  shapeUrl,
  scheduleOf,
  sized,
  slotBacklog,
  slotName,
  streamCommits,
  syncShape,
  threadCpuOf,
  threadCpuText,
  writeTxns
} from "../harness.js"
import { REPO_ROOT } from "../../../test/support/process.js"
import type { Part } from "./part.js"

/*
 * One shape, single-row transactions (half inserts, half updates) committed by 4 writers.
 *
 * Live: while a client long-polls the shape, 20k transactions are committed; Syncline's rate is
 * 20k over the time from the first write to the client having seen every change, beside the
 * writers' own commit rate; also the delay from the last commit to the client seeing it.
 *
 * Catch-up: the service is stopped (gracefully), 20k more are committed, the service is started on
 * the same storage and slot, and the client (from its handle and offset) is timed from the moment
 * the stack became active (as its metrics say: /v1/health, busy with the catch-up, answers later)
 * until it has seen every change. The limit: a second logical slot, made
 * before those commits, decoded with pgoutput (`pg_logical_slot_get_binary_changes`) afterwards.
 * Beside it in the notes: the same decoding from a copy of the service's own slot, which starts where
 * the restarted walsender starts, at the slot's restart_lsn, and so decodes again the WAL between
 * that and the slot's confirmed position (here the live part's, which takes less than Postgres's
 * 15 s between logs of its running transactions). And the same WAL streamed from another copy to a
 * client that only counts commits, reading every chunk as it arrives and doing nothing with the messages.
 * The catch-up is run five times (`BENCH_CATCHUP_ROUNDS`), each round beside its own limits; the row is the
 * round of median ratio, and the notes give every round.
 *
 * To compare builds or node flags: `BENCH_CATCHUP_ARMS="a=<dir>[ <flags>]; b=<dir>[ <flags>]"` runs every round on
 * each arm, in turns (a b, b a, a b, …), and gives a row per arm and each arm's rounds in the notes. Each `<dir>`,
 * relative to the repository, is a copy of `dist/` inside it (under `node_modules/`, say), where its imports resolve;
 * `.` is `dist/` itself. The speed of this box drifts by a third over minutes: builds compared one run after the
 * other differ by that much whatever they hold, while arms in turns meet the same drift.
 */

const STREAM = "bench_one"
const TABLE = "bench_one"
const PARAMS = `table=${TABLE}`
const RAW_SLOT = "bench_one_raw"
/** A copy of the service's slot as it stopped: what the restarted walsender decodes, without the sending. */
const RESTART_SLOT = "bench_one_restart"
/** Another copy, streamed to a client that only counts commits. */
const STREAM_SLOT = "bench_one_stream"
const ROWS = 1_000

/** What one round of the catch-up measured. */
interface CatchUpRound {
  /** The catch-up's rate over raw decoding's, both of this round's transactions. */
  readonly ratio: number
  readonly catchUpMs: number
  readonly catchUpRate: number
  readonly rawRate: number
  readonly rawMs: number
  readonly rawMessages: number
  readonly startupMs: number
  readonly activeAnsweredLateMs: number
  readonly fromSpawnRate: number
  readonly serviceCpuMs: number
  readonly mainCpuMs: number
  readonly threads: string
  readonly mainRanMs: number
  readonly mainWaitedMs: number
  readonly clientCpuMs: number
  readonly walsenderCpuMs: number | undefined
  readonly walsenderLifeCpuMs: number | undefined
  readonly slot: { readonly before: number; readonly after: number }
  readonly fromSlotMs: number
  readonly fromSlotRate: number
  readonly streamed: { readonly ms: number; readonly reads: number; readonly messages: number; readonly walsenderCpuMs: number }
  readonly streamedRate: number
}

/** A build and node flags the catch-up rounds take in turns (`BENCH_CATCHUP_ARMS`). */
export interface CatchUpArm {
  /** Undefined for the one arm of a run without `BENCH_CATCHUP_ARMS`: `dist/` as `npm start` runs it. */
  readonly label: string | undefined
  readonly entry: string | undefined
  readonly nodeArgs: ReadonlyArray<string>
}

/** `BENCH_CATCHUP_ARMS`, read once: a bad value fails the bench before it starts, not after the live part. */
export const catchUpArms: ReadonlyArray<CatchUpArm> = ((text: string | undefined): ReadonlyArray<CatchUpArm> => {
  if (text === undefined || text.trim() === "") return [{ label: undefined, entry: undefined, nodeArgs: [] }]
  return text.split(";").filter((spec) => spec.trim() !== "").map((spec) => {
    const match = /^\s*([\w.-]+)=(\S+)(.*)$/.exec(spec)
    if (match === null) throw new Error(`BENCH_CATCHUP_ARMS: "${spec}" is not <label>=<dir>[ <node flags>]`)
    const dir = match[2]!
    const entry = dir === "." ? undefined : path.resolve(REPO_ROOT, dir, "main.js")
    if (entry !== undefined && !fs.existsSync(entry)) throw new Error(`BENCH_CATCHUP_ARMS: ${entry} does not exist`)
    return { label: match[1]!, entry, nodeArgs: match[3]!.split(/\s+/).filter((a) => a !== "") }
  })
})(process.env["BENCH_CATCHUP_ARMS"])

/** The round's slots, dropped after each round and at the end, whatever happened. */
const dropSlots = async (pool: import("pg").Pool): Promise<void> => {
  await dropSlot(pool, RAW_SLOT)
  await dropSlot(pool, RESTART_SLOT)
  // The streamed copy's walsender may not have noticed yet that its client is gone: it is ended (and waited for)
  // first, so that the slot is free to drop.
  await pool.query(`SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE slot_name = $1 AND active`, [STREAM_SLOT])
  await pool.query(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, [STREAM_SLOT])
}

export const oneShape: Part = {
  name: "one-shape",
  describe: "20k single-row txns through one shape, live and in catch-up",
  run: async ({ db, dir, report, startService }) => {
    const txns = sized("TXNS", 20_000, 2_000)
    const catchUpRounds = sized("CATCHUP_ROUNDS", 5, 1)
    await createItems(db.pool, TABLE, ROWS)
    const options = { stream: STREAM, storageDir: path.join(dir, "one-shape") }
    let service: Service | undefined = await startService(options)
    const agent = makeAgent(2)
    try {
      const at: ShapePosition = (await syncShape(agent, service.baseUrl, PARAMS)).at
      let seen = 0
      let seenAt = 0
      /** Long-polls from `at` until `expected` changes were seen; fails on more. */
      const follow = async (expected: number, deadlineMs: number): Promise<void> => {
        const deadline = Date.now() + deadlineMs
        while (seen < expected) {
          if (Date.now() > deadline) throw new Error(`the client saw ${seen} of ${expected} changes`)
          const res = await get(agent, shapeUrl(service!.baseUrl, PARAMS, at, true))
          if (res.status !== 200) throw new Error(`live request: ${res.status} ${res.body.toString().slice(0, 300)}`)
          seen += changesIn(res.body)
          seenAt = res.at
          advance(at, res)
        }
        if (seen !== expected) throw new Error(`the client saw ${seen} changes, expected ${expected}`)
      }
      const statement = (first: number, label: string) => (client: import("pg").PoolClient, k: number) =>
        k % 2 === 0
          ? client.query(`INSERT INTO ${TABLE} VALUES ($1, $2, $3, now(), false)`, [first + k, label, k])
          : client.query(`UPDATE ${TABLE} SET n = n + 1, done = NOT done WHERE id = $1`, [1 + (k % ROWS)])

      // Live.
      const following = follow(txns, 180_000)
      const live = await writeTxns(db.pool, txns, statement(ROWS + 1, "live"))
      await following
      const liveMs = seenAt - live.startedAt
      const commitMs = live.doneAt - live.startedAt
      const liveRate = txns / (liveMs / 1000)
      const commitRate = txns / (commitMs / 1000)
      const lastDelayMs = seenAt - live.doneAt

      // Catch-up, in rounds: each is half a second of work on a box whose speed moves by a third from one second to
      // the next, so the row shows the median round, beside its own raw decoding, and the notes every round.
      const catchUp = async (round: number, arm: CatchUpArm): Promise<CatchUpRound> => {
        await service!.stop()
        service = undefined
        await db.pool.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [RAW_SLOT])
        await writeTxns(db.pool, txns, statement(ROWS + 1 + txns * (round + 1), "caught up"))
        const slot = await slotBacklog(db.pool, slotName(STREAM))
        await db.pool.query(`SELECT pg_copy_logical_replication_slot($1, $2)`, [slotName(STREAM), RESTART_SLOT])
        await db.pool.query(`SELECT pg_copy_logical_replication_slot($1, $2)`, [slotName(STREAM), STREAM_SLOT])
        service = await startService({ ...options, entry: arm.entry, nodeArgs: arm.nodeArgs })
        // What the catch-up costs in CPU, beside its wall time: the service shares the cores with Postgres's walsender,
        // which decodes and sends the transactions, and with this client.
        const pid = service.pid
        const cpuAtActive = { total: cpuMsOf(pid), main: cpuMsOf(pid, pid) }
        const scheduleAtActive = scheduleOf(pid, pid)
        const threadsAtActive = threadCpuOf(pid)
        const clientCpuAtActive = process.cpuUsage()
        const { rows: [sender] } = await db.pool.query<{ pid: number | null }>(
          `SELECT active_pid AS pid FROM pg_replication_slots WHERE slot_name = $1`,
          [slotName(STREAM)]
        )
        const walsenderPid = sender?.pid ?? undefined
        const walsenderCpuAtActive = walsenderPid === undefined ? 0 : cpuMsOf(walsenderPid)
        seen = 0
        await follow(txns, 300_000)
        const schedule = scheduleOf(pid, pid)
        const clientCpu = process.cpuUsage(clientCpuAtActive)
        // The walsender is a process of its own, started for the service's connection: all its CPU is this stream's.
        const walsenderLifeCpuMs = walsenderPid === undefined ? undefined : cpuMsOf(walsenderPid)
        const catchUpMs = seenAt - service.activeAt
        const raw = await rawDecode(db.pool, RAW_SLOT, publicationName(STREAM))
        if (raw.commits !== txns) throw new Error(`raw decoding found ${raw.commits} transactions, expected ${txns}`)
        // After the row's limit, which is read as it always was, right after the catch-up. Whichever of the two is
        // decoded first is the slower (the WAL is read into the cache); peeked at again and again, they take the same time.
        const fromSlot = await rawDecode(db.pool, RESTART_SLOT, publicationName(STREAM))
        if (fromSlot.commits !== txns) throw new Error(`raw decoding from the service's slot found ${fromSlot.commits} transactions, expected ${txns}`)
        const streamed = await streamCommits(db.postgres.url, STREAM_SLOT, publicationName(STREAM), txns, 60_000)
        if (streamed.changes !== fromSlot.changes) {
          throw new Error(`streaming found ${streamed.changes} change messages, decoding ${fromSlot.changes}`)
        }
        await dropSlots(db.pool)
        const catchUpRate = txns / (catchUpMs / 1000)
        const rawRate = raw.commits / (raw.ms / 1000)
        return {
          ratio: catchUpRate / rawRate,
          catchUpMs,
          catchUpRate,
          rawRate,
          rawMs: raw.ms,
          rawMessages: raw.messages,
          startupMs: service.startupMs,
          activeAnsweredLateMs: service.activeAnsweredLateMs,
          fromSpawnRate: txns / ((seenAt - service.spawnedAt) / 1000),
          serviceCpuMs: cpuMsOf(pid) - cpuAtActive.total,
          mainCpuMs: cpuMsOf(pid, pid) - cpuAtActive.main,
          threads: threadCpuText(pid, threadsAtActive, threadCpuOf(pid)),
          mainRanMs: schedule.runMs - scheduleAtActive.runMs,
          mainWaitedMs: schedule.waitMs - scheduleAtActive.waitMs,
          clientCpuMs: (clientCpu.user + clientCpu.system) / 1000,
          walsenderCpuMs: walsenderLifeCpuMs === undefined ? undefined : walsenderLifeCpuMs - walsenderCpuAtActive,
          walsenderLifeCpuMs,
          slot,
          fromSlotMs: fromSlot.ms,
          fromSlotRate: fromSlot.commits / (fromSlot.ms / 1000),
          streamed,
          streamedRate: streamed.commits / (streamed.ms / 1000)
        }
      }
      // Each arm runs every round, in turns; the order within a turn is reversed from one turn to the next, so that
      // a steady drift of the box's speed favours no arm.
      const armRounds = catchUpArms.map(() => [] as Array<CatchUpRound>)
      let round = 0
      for (let turn = 0; turn < catchUpRounds; turn++) {
        for (let k = 0; k < catchUpArms.length; k++) {
          const a = turn % 2 === 0 ? k : catchUpArms.length - 1 - k
          armRounds[a]!.push(await catchUp(round++, catchUpArms[a]!))
        }
      }
      const n = txns.toLocaleString("en-US")
      report.rows.push({
        figure: `one shape, ${n} single-row txns by 4 writers, live`,
        syncline: `${fmtShortRate(liveRate)} txn/s, the last ${fmtMs(lastDelayMs)} ms after its commit`,
        limit: `the writers' commit rate: ${fmtShortRate(commitRate)} txn/s`,
        ratio: `${fmtRatio(liveRate / commitRate)} of commits`,
        target: "≥ 0.9",
        met: liveRate / commitRate >= 0.9
      })
      for (const [a, arm] of catchUpArms.entries()) {
        const rounds = armRounds[a]!
        const byRatio = [...rounds].sort((x, y) => x.ratio - y.ratio)
        const r = byRatio[Math.floor((byRatio.length - 1) / 2)]!
        const armText = arm.label === undefined ? "" : `, arm ${arm.label}`
        const armNote = arm.label === undefined
          ? ""
          : ` (arm ${arm.label}: ${arm.entry === undefined ? "dist/" : path.relative(REPO_ROOT, path.dirname(arm.entry))}${arm.nodeArgs.length > 0 ? ` with ${arm.nodeArgs.join(" ")}` : ""}; ` +
            `its catch-up times in ms: ${rounds.map((x) => fmtInt(x.catchUpMs)).join(", ")}, median ${fmtInt(median(rounds.map((x) => x.catchUpMs)))})`
        report.rows.push({
          figure: `one shape, ${n} txns in catch-up after a restart, from active${rounds.length > 1 ? ` (median of ${rounds.length} rounds)` : ""}${armText}`,
          syncline: `${fmtShortRate(r.catchUpRate)} txn/s`,
          limit: `raw pgoutput decoding of the same WAL: ${fmtShortRate(r.rawRate)} txn/s`,
          ratio: `${fmtRatio(r.ratio)} of decoding`,
          target: "≥ 0.5",
          met: r.ratio >= 0.5
        })
        report.notes.push(
          `one shape${armNote}: live ${fmtS(liveMs)} s for ${n} changes (writers ${fmtS(commitMs)} s); catch-up in ${rounds.length} rounds ` +
            `(the service stopped, ${n} more committed, started again), in order: ` +
            `${rounds.map((x) => `${fmtRatio(x.ratio)} (${fmtS(x.catchUpMs)} s against ${fmtS(x.rawMs)} s)`).join(", ")} of raw decoding; ` +
            `the same WAL streamed to a client that only counts commits (below): ` +
            `${rounds.map((x) => fmtRatio(x.streamedRate / x.rawRate)).join(", ")} of raw decoding, of which the catch-up was ` +
            `${rounds.map((x) => fmtRatio(x.catchUpRate / x.streamedRate)).join(", ")}. ` +
            `The median round: start-up to active ` +
            `${fmtS(r.startupMs)} s as /v1/health answered, which it did ${fmtInt(r.activeAnsweredLateMs)} ms after the stack ` +
            `became active (the service's own moment, from which the catch-up is timed); then ${fmtS(r.catchUpMs)} s to the last change ` +
            `(${fmtShortRate(r.fromSpawnRate)} txn/s from spawn); raw decoding ${fmtS(r.rawMs)} s ` +
            `(${fmtInt(r.rawMessages)} pgoutput messages). CPU in the catch-up, from /v1/health's answer until the client had seen every change: ` +
            `the service ${fmtInt(r.serviceCpuMs)} ms, ${fmtInt(r.mainCpuMs)} ms of it on its main thread (the rest is its other threads: V8's compiler ` +
            `and garbage collector, and libuv's pool writing and syncing the logs; by thread, in ms, by its id's offset from the pid: ${r.threads})` +
            `${r.walsenderCpuMs === undefined ? "" : `; Postgres's walsender ${fmtInt(r.walsenderCpuMs)} ms (${fmtInt(r.walsenderLifeCpuMs!)} ms since it started)`}; this client ${fmtInt(r.clientCpuMs)} ms; ` +
            `${fmtInt(r.catchUpMs)} ms of wall time on ${os.cpus().length} cores, in which the main thread ran ${fmtInt(r.mainRanMs)} ms and ` +
            `waited ${fmtInt(r.mainWaitedMs)} ms for a core while it was ready to run. The walsender decoded ${fmtMb(r.slot.before)} MB of WAL ` +
            `from the slot's restart_lsn to its confirmed position again (sending nothing), then the catch-up's ${fmtMb(r.slot.after)} MB. ` +
            `Raw decoding as the restarted walsender decodes, from a copy of the service's slot (so those ${fmtMb(r.slot.before)} MB too): ` +
            `${fmtS(r.fromSlotMs)} s, ${fmtShortRate(r.fromSlotRate)} txn/s; the catch-up is ${fmtRatio(r.catchUpRate / r.fromSlotRate)} of that. ` +
            `Streamed from another copy of the service's slot to a client that does nothing but count the commits, timed from ` +
            `START_REPLICATION: ${fmtS(r.streamed.ms)} s, ${fmtShortRate(r.streamedRate)} txn/s, ${fmtRatio(r.streamedRate / r.rawRate)} of the ` +
            `row's limit; the catch-up from active is ${fmtRatio(r.catchUpRate / r.streamedRate)} of that. That client read every chunk as ` +
            `it arrived: ${fmtInt(r.streamed.reads)} reads of the socket for ${fmtInt(r.streamed.messages)} messages; its walsender used ` +
            `${fmtInt(r.streamed.walsenderCpuMs)} ms of CPU.`
        )
      }
    } finally {
      await agent.close()
      await service?.stop()
      await dropSlots(db.pool)
    }
  }
}
