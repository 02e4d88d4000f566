// npm run soak: many claim → connect → query → release cycles against one sidecar, reporting
// whether anything drifts: the control table's size, the pages a refill plan reads, and the
// claim latency at the start and at the end. Uses the test harness's server and sidecar.
import { parseArgs } from 'node:util';
import pg from 'pg';
import { client, simpleConfig, startServer, startSidecar, testInstalls } from '../test/harness.ts';
import { ms, pct } from './stats.ts';

const { values: opts } = parseArgs({
  options: {
    cycles: { type: 'string', default: '10000' },
    concurrency: { type: 'string', default: '4' },
    major: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (opts.help) {
  process.stdout.write('npm run soak -- [--cycles 10000] [--concurrency 4] [--major 15]\n');
  process.exit(0);
}
const cycles = Number(opts.cycles);
const concurrency = Number(opts.concurrency);
if (!Number.isInteger(cycles) || cycles < 100) throw new Error(`--cycles: expected a whole number of at least 100, got ${opts.cycles}`);
if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`--concurrency: expected a whole number of at least 1, got ${opts.concurrency}`);

const installs = await testInstalls();
const install = opts.major ? installs.find((i) => i.major === Number(opts.major)) : installs[0];
if (!install) throw new Error(`--major ${opts.major}: no such PostgreSQL here (found ${installs.map((i) => i.major).join(', ')})`);

const server = await startServer(install);
const sc = await startSidecar(server, simpleConfig({ minReady: 8 }).replace('poll_interval: 100ms', 'poll_interval: 1s'));
const admin = await client(server);

async function tableFigures(): Promise<{ kB: number; planPages: number; dead: number }> {
  const { rows } = await admin.query(`SELECT pg_relation_size('pgtestpool.databases') AS b,
                                             (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'pgtestpool.databases'::regclass) AS dead`);
  const plan = await admin.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM pgtestpool.pool_state()`);
  const top = plan.rows[0]['QUERY PLAN'][0];
  const planPages = (top['Shared Hit Blocks'] ?? top.Plan['Shared Hit Blocks'] ?? 0) + (top['Shared Read Blocks'] ?? top.Plan['Shared Read Blocks'] ?? 0);
  return { kB: Number(rows[0].b) / 1024, planPages, dead: Number(rows[0].dead) };
}

const startFigures = await tableFigures();
const claimMs: number[] = [];
let done = 0;
let failures = 0;
const started = performance.now();
const workers = Array.from({ length: concurrency }, async () => {
  const control = await client(server);
  try {
    while (done < cycles) {
      done++;
      const t0 = performance.now();
      const { rows } = await control.query<{ name: string }>('SELECT claim_test_db() AS name');
      claimMs.push(performance.now() - t0);
      const name = rows[0]!.name;
      try {
        const db = new pg.Client(server.clientConfig(name));
        await db.connect();
        await db.query('SELECT count(*) FROM accounts');
        await db.end();
      } catch {
        failures++;
      }
      await control.query('SELECT release_test_db($1)', [name]);
    }
  } finally {
    await control.end();
  }
});
await Promise.all(workers);
const seconds = (performance.now() - started) / 1000;
await new Promise((r) => setTimeout(r, 2_500)); // the drops catch up, a vacuum comes round
const endFigures = await tableFigures();
const window = Math.min(500, Math.floor(claimMs.length / 4));
const first = claimMs.slice(0, window);
const last = claimMs.slice(-window);

process.stdout.write(
  [
    `soak: ${cycles} cycles (claim, connect, query, release) at concurrency ${concurrency} on PostgreSQL ${install.version}: ${seconds.toFixed(1)} s, ${(cycles / seconds).toFixed(0)} cycles/s, ${failures} failures`,
    `  pgtestpool.databases: ${startFigures.kB} kB -> ${endFigures.kB} kB (dead rows at the end: ${endFigures.dead})`,
    `  pages a refill plan (pool_state()) reads: ${startFigures.planPages} -> ${endFigures.planPages}`,
    `  claim p50 / p99, first ${window} cycles: ${ms(pct(first, 50))} / ${ms(pct(first, 99))} ms; last ${window}: ${ms(pct(last, 50))} / ${ms(pct(last, 99))} ms`,
  ].join('\n') + '\n',
);
await admin.end();
await sc.stop();
await server.stop();
if (failures > 0) process.exit(1);
