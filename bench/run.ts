// `npm run bench`: per-test isolation strategies side by side on one tmpfs PostgreSQL server
// started here with the appliance's settings, strategies interleaved (order rotated per cell and
// reversed every other round) so machine drift hits them alike; then the appliance's own figures:
// claim latency, refill rate against raw CREATE DATABASE, memory per clone. Prints a table and
// writes it, with a JSON of every figure, to bench/results/.
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { setQuiet } from '../src/log.ts';
import { startServer, testInstalls } from '../test/harness.ts';
import type { PgliteStrategy } from './pglite.ts';
import { measureAppliance, measureOverload, type ApplianceFigures, type OverloadFigures } from './appliance.ts';
import { postmasterPid, selfCpuMs, treeCpuMs } from './cpu.ts';
import { quiescent, SidecarSwitch } from './sidecar.ts';
import { ms, ratio, summary, table } from './stats.ts';
import {
  CloneStrategy,
  FreshSchemaStrategy,
  PgtestpoolStrategy,
  RollbackStrategy,
  TruncateStrategy,
  type Cell,
  type Strategy,
  type TestTiming,
} from './strategies.ts';
import { ROOT, TEMPLATES, type TemplateName } from './workload.ts';

setQuiet(true);

const ALL_STRATEGIES = ['pgtestpool', 'pgtestpool-tuned', 'clone-wal_log', 'clone-file_copy', 'fresh-schema', 'truncate', 'rollback', 'pglite'];
/** The hand-tuned appliance the defaults are measured against (issue: within 10 % of it). */
const TUNED_MIN_READY = 64;
const USAGE = `usage: npm run bench -- [options]
  --tests N           tests per strategy, template and concurrency (default 500)
  --concurrency L     comma-separated concurrencies (default 1,4,8)
  --templates L       example,pagila (default both)
  --strategies L      subset of ${ALL_STRATEGIES.join(',')} (default all)
  --rounds R          the N tests run in R interleaved rounds (default 2)
  --time-budget S     seconds per strategy segment before the rest is projected from its rate (default 20)
  --postgres L        comma-separated majors (default every one found: the test harness's installs)
  --skip-appliance    skip claim latency / first claim / overload / refill / memory figures
  --quick             --tests 48 --rounds 2 --time-budget 3 (a smoke run)
  --out DIR           results folder (default bench/results)
pgtestpool runs at its defaults; pgtestpool-tuned is the same appliance hand-tuned to min_ready ${TUNED_MIN_READY}.`;

interface Options {
  tests: number;
  concurrency: number[];
  templates: TemplateName[];
  strategies: string[];
  rounds: number;
  budgetMs: number;
  appliance: boolean;
  majors: number[] | null;
  out: string;
}

function options(): Options {
  const { values } = parseArgs({
    options: {
      tests: { type: 'string' },
      concurrency: { type: 'string' },
      templates: { type: 'string' },
      strategies: { type: 'string' },
      rounds: { type: 'string' },
      'time-budget': { type: 'string' },
      'skip-appliance': { type: 'boolean' },
      postgres: { type: 'string' },
      quick: { type: 'boolean' },
      out: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const problems: string[] = [];
  const int = (v: string | undefined, key: string, dflt: number, min: number) => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) problems.push(`--${key}: expected an integer >= ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
  const list = <T extends string>(v: string | undefined, key: string, allowed: readonly T[], dflt: readonly T[]): T[] => {
    if (v === undefined) return [...dflt];
    const items = v.split(',').map((s) => s.trim()).filter(Boolean);
    for (const i of items) if (!allowed.includes(i as T)) problems.push(`--${key}: unknown ${JSON.stringify(i)}, expected one of ${allowed.join(', ')}`);
    if (items.length === 0) problems.push(`--${key}: expected a comma-separated list of ${allowed.join(', ')}`);
    return items as T[];
  };
  const quick = values.quick ?? false;
  const conc = (values.concurrency ?? '1,4,8').split(',').map((s) => Number(s.trim()));
  if (conc.some((c) => !Number.isInteger(c) || c < 1 || c > 64)) problems.push(`--concurrency: expected integers 1-64, got ${JSON.stringify(values.concurrency)}`);
  const opts: Options = {
    tests: int(values.tests, 'tests', quick ? 48 : 500, 1),
    concurrency: conc,
    templates: list(values.templates, 'templates', ['example', 'pagila'] as const, ['example', 'pagila']),
    strategies: list(values.strategies, 'strategies', ALL_STRATEGIES, ALL_STRATEGIES),
    rounds: int(values.rounds, 'rounds', 2, 1),
    budgetMs: int(values['time-budget'], 'time-budget', quick ? 3 : 20, 1) * 1000,
    appliance: !values['skip-appliance'],
    majors: values.postgres === undefined ? null : values.postgres.split(',').map((m) => Number(m.trim())),
    out: path.resolve(values.out ?? path.join(ROOT, 'bench', 'results')),
  };
  if (opts.majors?.some((m) => !Number.isInteger(m) || m < 13)) problems.push(`--postgres: expected majors such as 15,18, got ${JSON.stringify(values.postgres)}`);
  if (!opts.strategies.includes('pgtestpool')) problems.push('--strategies: must include pgtestpool (every figure is a ratio to it)');
  if (problems.length) {
    console.error(`bench: ${problems.join('\n       ')}\n\n${USAGE}`);
    process.exit(2);
  }
  return opts;
}

// ------------------------------------------------------------------------------------------------

interface Cpu {
  server: number;
  sidecar: number;
  client: number;
}

interface SegmentResult {
  timings: TestTiming[];
  errors: string[];
  wallMs: number;
  /** After the last test until the server is back where it started: the strategy's own cleanup, then every pool full with nothing left to drop. */
  settleMs: number;
  /** CPU milliseconds from the first test to the end of the settle. */
  cpu: Cpu;
  claimMs?: number[];
}

interface StrategyCell {
  id: string;
  label: string;
  isolation: 'database' | 'transaction';
  done: number;
  errors: string[];
  /** Measured wall time of the tests that ran. */
  measuredWallMs: number;
  /** Suite wall time for N tests: measured, or projected from the measured rate when the time budget cut it short. */
  suiteMs: number;
  projected: boolean;
  /** Summed over the rounds (each round is one suite run). */
  settleMs: number;
  /** CPU milliseconds per test, server (postmaster and every backend) + sidecar + client (this process). */
  cpuPerTest: Cpu & { total: number };
  setup: ReturnType<typeof summary>;
  test: ReturnType<typeof summary>;
  teardown: ReturnType<typeof summary>;
  claim?: ReturnType<typeof summary>;
}

/** What measures CPU and the settle: the server's postmaster, the sidecar running now, the pools to wait for. */
interface Probe {
  serverPid: number;
  sidecarPid: () => number | undefined;
  settle: () => Promise<void>;
}

function cpuNow(probe: Probe): Cpu {
  const sidecar = probe.sidecarPid();
  const [server, sc] = treeCpuMs([probe.serverPid, sidecar ?? -1]);
  return { server: server!, sidecar: sc!, client: selfCpuMs() };
}

const cpuDelta = (a: Cpu, b: Cpu): Cpu => ({ server: b.server - a.server, sidecar: b.sidecar - a.sidecar, client: b.client - a.client });

async function runSegment(strategy: Strategy, cell: Cell, n: number, firstIndex: number, budgetMs: number, probe: Probe): Promise<SegmentResult> {
  await strategy.before(cell);
  const timings: TestTiming[] = [];
  const errors: string[] = [];
  let next = 0;
  const cpu0 = cpuNow(probe);
  const t0 = performance.now();
  const worker = async (slot: number) => {
    while (next < n && (performance.now() - t0 < budgetMs || next < cell.concurrency)) {
      const i = firstIndex + next++;
      try {
        timings.push(await strategy.one(i, slot));
      } catch (err) {
        errors.push(`test ${i}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: cell.concurrency }, (_, slot) => worker(slot)));
  const t1 = performance.now();
  await strategy.after();
  await probe.settle();
  const settleMs = performance.now() - t1;
  return { timings, errors, wallMs: t1 - t0, settleMs, cpu: cpuDelta(cpu0, cpuNow(probe)) };
}

function makeStrategies(ids: string[]): Strategy[] {
  const make: Record<string, () => Strategy> = {
    pgtestpool: () => new PgtestpoolStrategy('default', TUNED_MIN_READY),
    'pgtestpool-tuned': () => new PgtestpoolStrategy('tuned', TUNED_MIN_READY),
    'clone-wal_log': () => new CloneStrategy('wal_log'),
    'clone-file_copy': () => new CloneStrategy('file_copy'),
    'fresh-schema': () => new FreshSchemaStrategy(),
    truncate: () => new TruncateStrategy(),
    rollback: () => new RollbackStrategy(),
  };
  return ids.filter((id) => id !== 'pglite').map((id) => make[id]!());
}

/**
 * The competitors clone the very template database the appliance built (same files, vacuumed,
 * its relcache init file in place, closed to connections), so every strategy starts from the same bytes.
 */
async function applianceTemplate(admin: pg.Client, t: TemplateName): Promise<string> {
  const { rows } = await admin.query<{ database: string | null }>(`SELECT database FROM pgtestpool.templates WHERE name = $1 AND state = 'ready'`, [t]);
  if (!rows[0]?.database) throw new Error(`template ${t} is not built: see the sidecar log in the results folder`);
  return rows[0].database;
}

function cellSummary(id: string, label: string, isolation: StrategyCell['isolation'], segs: SegmentResult[], n: number): StrategyCell {
  const timings = segs.flatMap((s) => s.timings);
  const errors = segs.flatMap((s) => s.errors);
  const done = timings.length + errors.length;
  const measuredWallMs = segs.reduce((a, s) => a + s.wallMs, 0);
  const projected = done < n;
  const claims = segs.flatMap((s) => s.claimMs ?? []);
  const cpu = segs.reduce((a, s) => ({ server: a.server + s.cpu.server, sidecar: a.sidecar + s.cpu.sidecar, client: a.client + s.cpu.client }), { server: 0, sidecar: 0, client: 0 });
  const per = (v: number) => v / Math.max(1, done);
  return {
    id,
    label,
    isolation,
    done,
    errors,
    measuredWallMs,
    suiteMs: projected ? (measuredWallMs * n) / Math.max(1, done) : measuredWallMs,
    projected,
    settleMs: segs.reduce((a, s) => a + s.settleMs, 0),
    cpuPerTest: { server: per(cpu.server), sidecar: per(cpu.sidecar), client: per(cpu.client), total: per(cpu.server + cpu.sidecar + cpu.client) },
    setup: summary(timings.map((t) => t.setupMs)),
    test: summary(timings.map((t) => t.testMs)),
    teardown: summary(timings.map((t) => t.teardownMs)),
    ...(claims.length ? { claim: summary(claims) } : {}),
  };
}

function rotate<T>(xs: T[], k: number): T[] {
  const s = ((k % xs.length) + xs.length) % xs.length;
  return [...xs.slice(s), ...xs.slice(0, s)];
}

function reportCell(template: TemplateName, concurrency: number, cells: StrategyCell[], n: number): string {
  const base = cells.find((c) => c.id === 'pgtestpool')!;
  const total = (c: StrategyCell) => c.suiteMs + c.settleMs;
  const rows = cells.map((c) => [
    c.label + (c.isolation === 'transaction' ? ' *' : ''),
    `${(c.suiteMs / 1000).toFixed(2)}${c.projected ? ` (proj. from ${c.done})` : ''}`,
    ratio(c.suiteMs, base.suiteMs),
    (c.settleMs / 1000).toFixed(2),
    (total(c) / 1000).toFixed(2),
    ratio(total(c), total(base)),
    c.cpuPerTest.total.toFixed(1),
    `${c.cpuPerTest.server.toFixed(1)}/${c.cpuPerTest.sidecar.toFixed(1)}/${c.cpuPerTest.client.toFixed(1)}`,
    ms(c.setup.p50),
    ms(c.setup.p99),
    ms(c.test.p50),
    ms(c.teardown.p50),
    c.errors.length ? String(c.errors.length) : '0',
  ]);
  const tuned = cells.find((c) => c.id === 'pgtestpool-tuned');
  const claims = [base, tuned].filter((c): c is StrategyCell => !!c?.claim)
    .map((c) => `\n  ${c.id}: claim_test_db() alone p50 ${ms(c.claim!.p50)} ms, p99 ${ms(c.claim!.p99)} ms`);
  return (
    `${template} × concurrency ${concurrency}, ${n} tests\n` +
    table(['strategy', 'suite s', 'vs pgtp', 'settle s', 'suite+settle s', 'vs pgtp', 'CPU ms/test', 'server/sidecar/client', 'setup p50', 'p99', 'test p50', 'teardown p50', 'errors'], rows) +
    claims.join('')
  );
}

interface Run {
  postgres: string;
  major: number;
  cells: { template: TemplateName; concurrency: number; strategies: StrategyCell[] }[];
  appliance: ApplianceFigures | null;
  overload: OverloadFigures | null;
  targets: Target[];
}

/** The appliance's configurations: as a user gets it (only the templates), and hand-tuned. */
function sidecarConfigs(templates: TemplateName[]): Record<'default' | 'tuned', string> {
  const schema = (t: TemplateName) => `    schema:\n${TEMPLATES[t].files.map((f) => `      - ${JSON.stringify(f)}\n`).join('')}`;
  return {
    default: `templates:\n${templates.map((t) => `  ${t}:\n${schema(t)}`).join('')}`,
    tuned:
      `templates:\n${templates.map((t) => `  ${t}:\n    min_ready: ${TUNED_MIN_READY}\n${schema(t)}`).join('')}` +
      `pool:\n  max_databases: ${templates.length * TUNED_MIN_READY + 16}\n`,
  };
}

async function benchOne(
  server: EmbeddedServer,
  opts: Options,
  stamp: string,
  say: (s?: string) => void,
  cleanups: (() => Promise<void>)[],
): Promise<Run> {
  const admin = new pg.Client(server.clientConfig('postgres'));
  await admin.connect();
  cleanups.push(() => admin.end());
  const major = server.install.major;
  const logFile = (kind: string) => path.join(opts.out, `sidecar-pg${major}-${kind}-${stamp}.log`);
  const pglite = new Map<TemplateName, PgliteStrategy>();
  const cells: Run['cells'] = [];
  let appliance: ApplianceFigures | null = null;
  let overload: OverloadFigures | null = null;

  if (opts.appliance) {
    appliance = await measureAppliance(server, admin, opts.templates, logFile('appliance'), say);
    say();
  }

  const sidecars = new SidecarSwitch(server, sidecarConfigs(opts.templates), logFile);
  cleanups.push(() => sidecars.stop());
  await sidecars.use('default');
  await quiescent(admin, opts.templates);
  if (opts.appliance) {
    overload = await measureOverload(server, admin, say);
    say();
  }

  const templateDbs = new Map<TemplateName, string>();
  for (const t of opts.templates) templateDbs.set(t, await applianceTemplate(admin, t));
  if (opts.strategies.includes('pglite')) {
    const { PgliteStrategy } = await import('./pglite.ts'); // loads the WASM only when asked for
    for (const t of opts.templates) {
      const p = await PgliteStrategy.prepare(t);
      pglite.set(t, p);
      cleanups.push(() => p.close());
      say(`PGlite ${t}: template built and dumped in ${(p.prepareMs / 1000).toFixed(1)} s (${(p.dumpBytes / 2 ** 20).toFixed(0)} MB data dir), restored per test`);
    }
  }
  const strategies = makeStrategies(opts.strategies);
  const order = [...strategies.map((s) => s.id), ...(pglite.size ? ['pglite'] : [])];
  const perRound = Math.ceil(opts.tests / opts.rounds);
  const probe: Probe = {
    serverPid: postmasterPid(server.dataDir),
    sidecarPid: () => sidecars.pid,
    settle: () => quiescent(admin, opts.templates).then(() => {}),
  };

  let cellNo = 0;
  for (const t of opts.templates) {
    for (const c of opts.concurrency) {
      const cell: Cell = { server, spec: TEMPLATES[t], templateDb: templateDbs.get(t)!, concurrency: c };
      const segs = new Map<string, SegmentResult[]>(order.map((id) => [id, []]));
      for (let r = 0; r < opts.rounds; r++) {
        const n = Math.min(perRound, opts.tests - r * perRound);
        if (n <= 0) break;
        const base = rotate(order, cellNo);
        for (const id of r % 2 === 0 ? base : [...base].reverse()) {
          const strategy = strategies.find((s) => s.id === id);
          // The appliance strategies run on a sidecar just started with their configuration (the
          // defaults start from min_ready, as a fresh CI job's appliance would); the others run
          // beside whichever sidecar is up, idle.
          if (strategy instanceof PgtestpoolStrategy) await sidecars.use(strategy.sidecar);
          await quiescent(admin, opts.templates);
          await admin.query('CHECKPOINT'); // every segment starts with no dirty buffers of another
          const firstIndex = r * perRound;
          let seg: SegmentResult;
          if (id === 'pglite') {
            const cpu0 = cpuNow(probe);
            const run = await pglite.get(t)!.run({ tests: n, concurrency: c, firstIndex, timeBudgetMs: opts.budgetMs });
            seg = {
              timings: run.setupMs.map((s, k) => ({ setupMs: s, testMs: run.testMs[k]!, teardownMs: run.teardownMs[k]! })),
              errors: run.errors,
              wallMs: run.wallMs,
              settleMs: 0, // each instance is closed inside its test
              cpu: cpuDelta(cpu0, cpuNow(probe)),
            };
          } else {
            const claimed = strategy instanceof PgtestpoolStrategy ? strategy.claimMs.length : 0;
            seg = await runSegment(strategy!, cell, n, firstIndex, opts.budgetMs, probe);
            if (strategy instanceof PgtestpoolStrategy) seg.claimMs = strategy.claimMs.splice(claimed);
          }
          segs.get(id)!.push(seg);
          process.stderr.write(`  pg${major} ${t} c=${c} round ${r + 1}: ${id} ${seg.timings.length + seg.errors.length} tests in ${(seg.wallMs / 1000).toFixed(2)} s` +
            ` + settle ${(seg.settleMs / 1000).toFixed(2)} s${seg.errors.length ? `, ${seg.errors.length} errors` : ''}\n`);
        }
      }
      const results = order.map((id) => {
        const s = strategies.find((x) => x.id === id);
        const label = s?.label ?? 'PGlite: fresh instance per test, restored from a dump';
        return cellSummary(id, label, s?.isolation ?? 'database', segs.get(id)!, opts.tests);
      });
      cells.push({ template: t, concurrency: c, strategies: results });
      say(reportCell(t, c, results, opts.tests));
      for (const s of results) if (s.errors.length) say(`  ${s.id} errors (first 3): ${s.errors.slice(0, 3).join(' | ')}`);
      say();
      cellNo++;
    }
  }
  return { postgres: server.install.version, major, cells, appliance, overload, targets: targets(cells, appliance, overload) };
}

async function main(): Promise<void> {
  const opts = options();
  mkdirSync(opts.out, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const started = Date.now();
  let installs = await testInstalls();
  if (opts.majors) {
    const missing = opts.majors.filter((m) => !installs.some((i) => i.major === m));
    if (missing.length) {
      console.error(`bench: --postgres: no PostgreSQL ${missing.join(', ')} here (found ${installs.map((i) => i.major).join(', ')})`);
      process.exit(2);
    }
    installs = installs.filter((i) => opts.majors!.includes(i.major));
  }
  let server: EmbeddedServer | null = null;
  let cleanups: (() => Promise<void>)[] = [];
  const cleanUp = async () => {
    for (const c of cleanups.reverse()) await c().catch((err) => console.error(`cleanup: ${err}`));
    cleanups = [];
    await server?.stop();
    server = null;
  };
  const onSignal = () => void cleanUp().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const lines: string[] = [];
  const say = (s = '') => {
    console.log(s);
    lines.push(s);
  };
  const meta = {
    date: new Date().toISOString(),
    postgres: installs.map((i) => `${i.version} (${i.source})`),
    cores: os.availableParallelism(),
    cpu: os.cpus()[0]?.model ?? 'unknown',
    memoryGB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    tests: opts.tests,
    rounds: opts.rounds,
    timeBudgetS: opts.budgetMs / 1000,
    concurrency: opts.concurrency,
    templates: opts.templates,
    tunedMinReady: TUNED_MIN_READY,
  };
  say(`pgtestpool benchmark on ${meta.cores} cores (${meta.cpu}), ${meta.memoryGB} GB, Node ${meta.node}; PostgreSQL ${meta.postgres.join(' and ')}, ` +
      `each on tmpfs with the appliance's settings`);
  say(`${opts.tests} tests per strategy × template × concurrency, in ${opts.rounds} interleaved rounds; ` +
      `a strategy still running after ${opts.budgetMs / 1000} s in a round has the rest projected from its rate`);
  for (const t of opts.templates) say(`  template ${t}: ${TEMPLATES[t].describe}`);
  say();
  const runs: Run[] = [];
  let failed = false;
  try {
    for (const install of installs) {
      say(`==== PostgreSQL ${install.version} (${install.source}) ====`);
      server = await startServer(install);
      const run = await benchOne(server, opts, stamp, say, cleanups);
      runs.push(run);
      say('* weaker isolation: the test runs inside one transaction on a shared database, so it cannot commit,');
      say('  use its own connection pool or run non-transactional DDL; it has no target, its ratio shows what a database per test costs.');
      say('"proj.": the strategy did not finish its tests within the time budget; its suite time is projected from its measured rate.');
      say('setup = until the test holds a database that answered its first query; teardown = drop / release / reset / rollback;');
      say('settle = after the last test until the server is back where it started (the strategy\'s cleanup, every pool full, nothing to drop);');
      say('CPU ms/test = (server + sidecar + client) CPU time from /proc over the tests and the settle, per test.');
      say();
      say(targetsReport(run.targets, install.version));
      say();
      failed ||= run.cells.some((r) => r.strategies.some((s) => s.errors.length > 0));
      await cleanUp();
    }
  } finally {
    await cleanUp();
  }
  const json = { meta: { ...meta, durationS: Math.round((Date.now() - started) / 1000) }, runs };
  const base = path.join(opts.out, `bench-${stamp}`);
  writeFileSync(`${base}.json`, JSON.stringify(json, null, 2) + '\n');
  writeFileSync(`${base}.txt`, lines.join('\n') + '\n');
  console.log(`\nwritten: ${path.relative(process.cwd(), base)}.txt and .json (${json.meta.durationS} s in all)`);
  if (failed) {
    console.error('bench: some tests failed (see the errors above): the figures of those strategies are not trustworthy');
    process.exitCode = 1;
  }
}

interface Target {
  target: string;
  measured: string;
  met: boolean;
}

function targets(results: Run['cells'], a: ApplianceFigures | null, o: OverloadFigures | null): Target[] {
  const out: Target[] = [];
  if (a) {
    out.push({ target: 'warm claim p50 ≤ 0.5 ms at 1 client, refill running', measured: `${ms(a.claimUnderRefill.c1.p50)} ms`, met: a.claimUnderRefill.c1.p50 <= 0.5 });
    const first = a.firstClaim.p50 / a.claimUnderRefill.c1.p50;
    out.push({
      target: 'first claim on a new connection ≤ 2× a warm claim (p50)',
      measured: `${ms(a.firstClaim.p50)} ms vs ${ms(a.claimUnderRefill.c1.p50)} ms = ${first.toFixed(1)}×`,
      met: first <= 2,
    });
    out.push({ target: 'claim p99 ≤ 2 ms at 8 clients, refill paused', measured: `${ms(a.claimAlone.c8.p99)} ms`, met: a.claimAlone.c8.p99 <= 2 });
    for (const r of a.refill) {
      const share = r.poolPerS / r.raw2PerS;
      out.push({ target: `refill ≥ 80% of raw 2-connection clone rate (${r.template})`, measured: `${r.poolPerS.toFixed(0)}/s vs ${r.raw2PerS.toFixed(0)}/s = ${(share * 100).toFixed(0)}%`, met: share >= 0.8 });
    }
  }
  if (o) {
    const spread = o.claim.p99 / o.claim.p50;
    out.push({
      target: `claim wait under overload (${o.clients} clients): p99 ≤ 3× p50, no timeouts`,
      measured: `p50 ${ms(o.claim.p50)} ms, p99 ${ms(o.claim.p99)} ms = ${spread.toFixed(1)}×; ${o.errors.length} failed`,
      met: spread <= 3 && o.errors.length === 0,
    });
  }
  for (const r of results) {
    const base = r.strategies.find((s) => s.id === 'pgtestpool')!;
    const where = `${r.template}, concurrency ${r.concurrency}`;
    if (r.concurrency === 1) {
      out.push({ target: `setup p50 ≤ 5 ms, warm pool (${where})`, measured: `${ms(base.setup.p50)} ms`, met: base.setup.p50 <= 5 });
    }
    const fileCopy = r.strategies.find((s) => s.id === 'clone-file_copy');
    if (fileCopy && r.concurrency >= 4) {
      const q = base.suiteMs / fileCopy.suiteMs;
      out.push({ target: `suite ≤ 0.8× template clone per test, FILE_COPY (${where})`, measured: `${q.toFixed(2)}× (suite+settle ${((base.suiteMs + base.settleMs) / (fileCopy.suiteMs + fileCopy.settleMs)).toFixed(2)}×)`, met: q <= 0.8 });
    }
    const tuned = r.strategies.find((s) => s.id === 'pgtestpool-tuned');
    if (tuned) {
      const q = base.suiteMs / tuned.suiteMs;
      out.push({ target: `defaults within 10% of hand-tuned min_ready ${TUNED_MIN_READY} (${where})`, measured: `${q.toFixed(2)}× its suite time`, met: q <= 1.1 });
    }
    const rivals = r.strategies.filter((s) => !s.id.startsWith('pgtestpool') && s.isolation === 'database');
    const lost = rivals.filter((s) => s.suiteMs <= base.suiteMs);
    const closest = [...rivals].sort((x, y) => x.suiteMs - y.suiteMs)[0];
    out.push({
      target: `suite wall time ahead of every same-isolation strategy (${where})`,
      measured: lost.length
        ? `behind ${lost.map((s) => `${s.id} (${ratio(s.suiteMs, base.suiteMs)})`).join(', ')}`
        : `ahead of all ${rivals.length}; closest ${closest?.id ?? '-'} at ${ratio(closest?.suiteMs ?? NaN, base.suiteMs)}`,
      met: lost.length === 0,
    });
  }
  return out;
}

function targetsReport(ts: Target[], postgres: string): string {
  return `Targets, PostgreSQL ${postgres}\n` + table(['target', 'measured', 'met'], ts.map((t) => [t.target, t.measured, t.met ? 'yes' : 'NO']));
}

main().catch((err) => {
  console.error(`bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
  process.exit(1);
});
