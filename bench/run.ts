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
import { startEmbedded } from '../src/embedded.ts';
import { setQuiet } from '../src/log.ts';
import type { PgliteStrategy } from './pglite.ts';
import { measureAppliance, type ApplianceFigures } from './appliance.ts';
import { quiescent, spawnSidecar, type SidecarProcess } from './sidecar.ts';
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

const ALL_STRATEGIES = ['pgtestpool', 'clone-wal_log', 'clone-file_copy', 'fresh-schema', 'truncate', 'rollback', 'pglite'];
const USAGE = `usage: npm run bench -- [options]
  --tests N           tests per strategy, template and concurrency (default 500)
  --concurrency L     comma-separated concurrencies (default 1,4,8)
  --templates L       example,pagila (default both)
  --strategies L      subset of ${ALL_STRATEGIES.join(',')} (default all)
  --rounds R          the N tests run in R interleaved rounds (default 2)
  --time-budget S     seconds per strategy segment before the rest is projected from its rate (default 20)
  --skip-appliance    skip claim latency / refill / memory figures
  --quick             --tests 48 --rounds 2 --time-budget 3 (a smoke run)
  --out DIR           results folder (default bench/results)
PostgreSQL: the one npm start would use (PGTESTPOOL_PG_BINDIR=/usr/lib/postgresql/15/bin picks another).`;

interface Options {
  tests: number;
  concurrency: number[];
  templates: TemplateName[];
  strategies: string[];
  rounds: number;
  budgetMs: number;
  appliance: boolean;
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
    out: path.resolve(values.out ?? path.join(ROOT, 'bench', 'results')),
  };
  if (!opts.strategies.includes('pgtestpool')) problems.push('--strategies: must include pgtestpool (every figure is a ratio to it)');
  if (problems.length) {
    console.error(`bench: ${problems.join('\n       ')}\n\n${USAGE}`);
    process.exit(2);
  }
  return opts;
}

// ------------------------------------------------------------------------------------------------

interface SegmentResult {
  timings: TestTiming[];
  errors: string[];
  wallMs: number;
  /** pgtestpool only: after the last release, until the pool was full again with nothing to drop. */
  settleMs?: number;
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
  setup: ReturnType<typeof summary>;
  test: ReturnType<typeof summary>;
  teardown: ReturnType<typeof summary>;
  settleMs?: number;
  claim?: ReturnType<typeof summary>;
}

async function runSegment(strategy: Strategy, cell: Cell, n: number, firstIndex: number, budgetMs: number): Promise<SegmentResult> {
  await strategy.before(cell);
  const timings: TestTiming[] = [];
  const errors: string[] = [];
  let next = 0;
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
  const wallMs = performance.now() - t0;
  await strategy.after();
  return { timings, errors, wallMs };
}

function makeStrategies(ids: string[]): Strategy[] {
  const make: Record<string, () => Strategy> = {
    pgtestpool: () => new PgtestpoolStrategy((t) => t),
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
  const settles = segs.map((s) => s.settleMs).filter((v): v is number => v !== undefined);
  const claims = segs.flatMap((s) => s.claimMs ?? []);
  return {
    id,
    label,
    isolation,
    done,
    errors,
    measuredWallMs,
    suiteMs: projected ? (measuredWallMs * n) / Math.max(1, done) : measuredWallMs,
    projected,
    setup: summary(timings.map((t) => t.setupMs)),
    test: summary(timings.map((t) => t.testMs)),
    teardown: summary(timings.map((t) => t.teardownMs)),
    ...(settles.length ? { settleMs: settles.reduce((a, b) => a + b, 0) } : {}),
    ...(claims.length ? { claim: summary(claims) } : {}),
  };
}

function rotate<T>(xs: T[], k: number): T[] {
  const s = ((k % xs.length) + xs.length) % xs.length;
  return [...xs.slice(s), ...xs.slice(0, s)];
}

function reportCell(template: TemplateName, concurrency: number, cells: StrategyCell[], n: number): string {
  const base = cells.find((c) => c.id === 'pgtestpool')!;
  const rows = cells.map((c) => [
    c.label + (c.isolation === 'transaction' ? ' *' : ''),
    `${(c.suiteMs / 1000).toFixed(2)}${c.projected ? ` (proj. from ${c.done})` : ''}`,
    ratio(c.suiteMs, base.suiteMs),
    ms(c.setup.p50),
    ms(c.setup.p95),
    ms(c.setup.p99),
    ratio(c.setup.p50, base.setup.p50),
    ms(c.test.p50),
    ms(c.teardown.p50),
    c.errors.length ? String(c.errors.length) : '0',
  ]);
  return (
    `${template} × concurrency ${concurrency}, ${n} tests\n` +
    table(['strategy', 'suite s', 'vs pgtp', 'setup p50', 'p95', 'p99', 'vs pgtp', 'test p50', 'teardown p50', 'errors'], rows) +
    (base.settleMs !== undefined ? `\n  pgtestpool: pool full again ${(base.settleMs / 1000).toFixed(2)} s after its last release (summed over rounds; not in suite time)` : '') +
    (base.claim ? `\n  pgtestpool: claim_test_db() alone p50 ${ms(base.claim.p50)} ms, p99 ${ms(base.claim.p99)} ms` : '')
  );
}

async function main(): Promise<void> {
  const opts = options();
  mkdirSync(opts.out, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const started = Date.now();
  const server = await startEmbedded({ port: 0 });
  const cleanups: (() => Promise<void>)[] = [];
  const onSignal = () => {
    void (async () => {
      for (const c of cleanups.reverse()) await c().catch(() => {});
      await server.stop();
      process.exit(130);
    })();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const lines: string[] = [];
  const say = (s = '') => {
    console.log(s);
    lines.push(s);
  };
  const meta = {
    date: new Date().toISOString(),
    postgres: server.install.version,
    postgresSource: server.install.source,
    cores: os.availableParallelism(),
    cpu: os.cpus()[0]?.model ?? 'unknown',
    memoryGB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    tests: opts.tests,
    rounds: opts.rounds,
    timeBudgetS: opts.budgetMs / 1000,
    concurrency: opts.concurrency,
    templates: opts.templates,
  };
  say(`pgtestpool benchmark: PostgreSQL ${meta.postgres} (${meta.postgresSource}) on tmpfs with the appliance's settings, ` +
      `${meta.cores} cores (${meta.cpu}), ${meta.memoryGB} GB, Node ${meta.node}`);
  say(`${opts.tests} tests per strategy × template × concurrency, in ${opts.rounds} interleaved rounds; ` +
      `a strategy still running after ${opts.budgetMs / 1000} s in a round has the rest projected from its rate`);
  for (const t of opts.templates) say(`  template ${t}: ${TEMPLATES[t].describe}`);
  say();

  const admin = new pg.Client(server.clientConfig('postgres'));
  let sidecar: SidecarProcess | null = null;
  const pglite = new Map<TemplateName, PgliteStrategy>();
  const results: { template: TemplateName; concurrency: number; strategies: StrategyCell[] }[] = [];
  let appliance: ApplianceFigures | null = null;
  let failed = false;
  try {
    await admin.connect();
    cleanups.push(() => admin.end());

    if (opts.appliance) {
      appliance = await measureAppliance(server, admin, opts.templates, path.join(opts.out, `sidecar-appliance-${stamp}.log`), say);
      say();
    }

    // The pool as a user gets it: only the templates in config.yaml, every other setting its default.
    const yaml = `templates:\n${opts.templates.map((t) => `  ${t}:\n    schema:\n${TEMPLATES[t].files.map((f) => `      - ${JSON.stringify(f)}\n`).join('')}`).join('')}`;
    sidecar = await spawnSidecar(server, yaml, path.join(opts.out, `sidecar-${stamp}.log`));
    cleanups.push(() => sidecar!.stop());
    await quiescent(admin, opts.templates);

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
            await quiescent(admin, opts.templates);
            await admin.query('CHECKPOINT'); // every segment starts with no dirty buffers of another
            const firstIndex = r * perRound;
            let seg: SegmentResult;
            if (id === 'pglite') {
              const run = await pglite.get(t)!.run({ tests: n, concurrency: c, firstIndex, timeBudgetMs: opts.budgetMs });
              seg = {
                timings: run.setupMs.map((s, k) => ({ setupMs: s, testMs: run.testMs[k]!, teardownMs: run.teardownMs[k]! })),
                errors: run.errors,
                wallMs: run.wallMs,
              };
            } else {
              const strategy = strategies.find((s) => s.id === id)!;
              const claimed = strategy instanceof PgtestpoolStrategy ? strategy.claimMs.length : 0;
              seg = await runSegment(strategy, cell, n, firstIndex, opts.budgetMs);
              if (strategy instanceof PgtestpoolStrategy) {
                seg.claimMs = strategy.claimMs.splice(claimed);
                seg.settleMs = await quiescent(admin, opts.templates);
              }
            }
            segs.get(id)!.push(seg);
            process.stderr.write(`  ${t} c=${c} round ${r + 1}: ${id} ${seg.timings.length + seg.errors.length} tests in ${(seg.wallMs / 1000).toFixed(2)} s${seg.errors.length ? `, ${seg.errors.length} errors` : ''}\n`);
          }
        }
        const cells = order.map((id) => {
          const s = strategies.find((x) => x.id === id);
          const label = s?.label ?? 'PGlite: fresh instance per test, restored from a dump';
          return cellSummary(id, label, s?.isolation ?? 'database', segs.get(id)!, opts.tests);
        });
        results.push({ template: t, concurrency: c, strategies: cells });
        say(reportCell(t, c, cells, opts.tests));
        for (const s of cells) if (s.errors.length) say(`  ${s.id} errors (first 3): ${s.errors.slice(0, 3).join(' | ')}`);
        say();
        cellNo++;
      }
    }
    say('* weaker isolation: the test runs inside one transaction on a shared database, so it cannot commit,');
    say('  use its own connection pool or run non-transactional DDL; it has no target, its ratio shows what a database per test costs.');
    say('"proj.": the strategy did not finish its tests within the time budget; its suite time is projected from its measured rate.');
    say('setup = until the test holds a database that answered its first query; teardown = drop / release / reset / rollback.');
    say();
    say(targetsReport(results, appliance));
    failed = results.some((r) => r.strategies.some((s) => s.errors.length > 0));
  } finally {
    for (const c of cleanups.reverse()) await c().catch((err) => console.error(`cleanup: ${err}`));
    await server.stop();
  }
  const json = { meta: { ...meta, durationS: Math.round((Date.now() - started) / 1000) }, cells: results, appliance, targets: targets(results, appliance) };
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

function targets(results: { template: TemplateName; concurrency: number; strategies: StrategyCell[] }[], a: ApplianceFigures | null): Target[] {
  const out: Target[] = [];
  if (a) {
    out.push({ target: 'claim p50 ≤ 0.2 ms at 1 client', measured: `${ms(a.claimAlone.c1.p50)} ms`, met: a.claimAlone.c1.p50 <= 0.2 });
    out.push({ target: 'claim p99 ≤ 2 ms at 8 clients', measured: `${ms(a.claimAlone.c8.p99)} ms`, met: a.claimAlone.c8.p99 <= 2 });
    for (const r of a.refill) {
      const share = r.poolPerS / r.raw2PerS;
      out.push({ target: `refill ≥ 80% of raw 2-connection clone rate (${r.template})`, measured: `${r.poolPerS.toFixed(0)}/s vs ${r.raw2PerS.toFixed(0)}/s = ${(share * 100).toFixed(0)}%`, met: share >= 0.8 });
    }
  }
  for (const r of results) {
    const base = r.strategies.find((s) => s.id === 'pgtestpool')!;
    if (r.concurrency === 1) {
      out.push({ target: `setup p50 ≤ 5 ms, warm pool (${r.template}, concurrency 1)`, measured: `${ms(base.setup.p50)} ms`, met: base.setup.p50 <= 5 });
    }
    const rivals = r.strategies.filter((s) => s.id !== 'pgtestpool' && s.isolation === 'database');
    const beaten = rivals.filter((s) => s.suiteMs > base.suiteMs);
    const lost = rivals.filter((s) => s.suiteMs <= base.suiteMs);
    out.push({
      target: `suite wall time ahead of every same-isolation strategy (${r.template}, concurrency ${r.concurrency})`,
      measured: lost.length
        ? `behind ${lost.map((s) => `${s.id} (${ratio(s.suiteMs, base.suiteMs)})`).join(', ')}`
        : `ahead of all ${beaten.length}; closest ${[...beaten].sort((x, y) => x.suiteMs - y.suiteMs)[0]?.id ?? '-'} at ${ratio([...beaten].sort((x, y) => x.suiteMs - y.suiteMs)[0]?.suiteMs ?? NaN, base.suiteMs)}`,
      met: lost.length === 0,
    });
  }
  return out;
}

function targetsReport(results: Parameters<typeof targets>[0], a: ApplianceFigures | null): string {
  const ts = targets(results, a);
  return 'Targets\n' + table(['target', 'measured', 'met'], ts.map((t) => [t.target, t.measured, t.met ? 'yes' : 'NO']));
}

main().catch((err) => {
  console.error(`bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
  process.exit(1);
});
