// The shell helper (client/shell/pgtestpool) run as a user runs it: Debian's bats with --jobs 4
// (GNU parallel), a 52-test suite against a real appliance, then a failing test whose database
// is kept and named; and the holder's life: released when the test's shell is gone.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { EmbeddedServer } from '../src/embedded.ts';
import { ROOT, client, simpleConfig, startServer, startSidecar, testInstalls, waitFor, type RunningSidecar } from './harness.ts';

const installs = await testInstalls();
const newest = installs[installs.length - 1]!;
const SUITE = path.join(ROOT, 'test', 'clients', 'bats_suite', 'suite.bats');
const PASSWORD = 'Sh-runner-S3cret';
const found = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const psqlDir = installs.map((i) => i.bindir).find((d) => spawnSync('test', ['-x', `${d}/psql`]).status === 0);
const missing = ['bats', 'parallel'].filter((c) => !found(c)).concat(psqlDir || found('psql') ? [] : ['psql']);
if (missing.length && process.env.PGTESTPOOL_TEST_REQUIRE_SHELL) throw new Error(`PGTESTPOOL_TEST_REQUIRE_SHELL is set but ${missing.join(', ')} is missing (Debian: apt-get install bats parallel postgresql-client)`);
const skip = missing.length ? `${missing.join(', ')} not installed (Debian: apt-get install bats parallel postgresql-client)` : false;

let server: EmbeddedServer;
let sc: RunningSidecar;
let url: string;
let tmp: string;
before(async () => {
  if (skip) return;
  tmp = mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-shell-'));
  server = await startServer(newest);
  sc = await startSidecar(server, simpleConfig({ minReady: 8 }));
  const admin = await client(server);
  await admin.query(`CREATE ROLE sh_runner SUPERUSER LOGIN PASSWORD '${PASSWORD}'`);
  await admin.end();
  url = `postgresql://sh_runner:${PASSWORD}@127.0.0.1:${server.port}/postgres`;
});
after(async () => {
  await sc?.stop();
  await server?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const PATH = [path.join(ROOT, 'client', 'shell'), ...(psqlDir ? [psqlDir] : []), process.env.PATH].join(':');
  return { ...process.env, PATH, PGTESTPOOL_URL: url, TMPDIR: tmp, PGHOST: '', PGPORT: '', PGUSER: '', PGPASSWORD: '', PGDATABASE: '', ...extra };
}

/** A child process, async: this process runs the sidecar that refills the pool. */
function run(cmd: string, args: string[], extra: Record<string, string> = {}): Promise<{ code: number | null; out: string; ms: number }> {
  const started = performance.now();
  const child = spawn(cmd, args, { env: env(extra), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  return new Promise((resolve) => child.on('close', (code) => {
    clearTimeout(timer);
    resolve({ code, out, ms: performance.now() - started });
  }));
}

async function leftClaimed(): Promise<number> {
  const admin = await client(server);
  try {
    return (await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE state IN ('claimed', 'kept')")).rows[0].n;
  } finally {
    await admin.end();
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

test('a 52-test bats suite, 4 jobs: every test its own database, all released, no holder or fifo left', { skip }, async () => {
  const timings = path.join(tmp, 'timings');
  const r = await run('bats', ['--jobs', '4', SUITE], { PGTESTPOOL_TIMINGS: timings });
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^1\.\.53$/m);
  assert.equal((r.out.match(/^ok /gm) ?? []).length, 53, r.out);
  assert.match(r.out, /^ok 53 fails on purpose # skip/m);
  const setups = readFileSync(timings, 'utf8').trim().split('\n').map((l) => l.split(' ').map(Number)).map(([a, b]) => (b! - a!) * 1000);
  assert.equal(setups.length, 53);
  await waitFor('every holder gone', async () => spawnSync('pgrep', ['-f', 'pgtestpool __hold']).status === 1, 5000);
  assert.deepEqual(readdirNames(tmp).filter((n) => n.startsWith('pgtestpool.')), [], 'holders remove their folders');
  assert.equal(await leftClaimed(), 0, 'nothing left claimed');
  console.log(`# bats: 53 tests (1 skipped) on 4 jobs in ${(r.ms / 1000).toFixed(1)} s; setup (claim + first connection, psql) median ${median(setups).toFixed(0)} ms; glue: 2 lines (setup/teardown)`);
});

function readdirNames(dir: string): string[] {
  return spawnSync('ls', ['-A', dir], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
}

test('keep on failure: the failing test\'s database stays with its rows, its URL printed without the password', { skip }, async () => {
  const r = await run('bats', ['--filter', 'fails on purpose', SUITE], { PGTESTPOOL_DEMO_FAILURE: '1', PGTESTPOOL_KEEP_ON_FAILURE: '10 minutes' });
  assert.equal(r.code, 1, r.out);
  const m = /pgtestpool: kept (pgtp_default_\w+) for 10 minutes \(test_fails_on_purpose failed\): psql "postgresql:\/\/sh_runner:\*\*\*@127\.0\.0\.1:\d+\/(pgtp_default_\w+)"/.exec(r.out);
  assert.ok(m, r.out);
  assert.equal(m[1], m[2]);
  assert.ok(!r.out.includes(PASSWORD), 'the password is not printed');
  const admin = await client(server);
  try {
    assert.equal((await admin.query('SELECT state FROM test_dbs WHERE name = $1', [m[1]])).rows[0].state, 'kept');
    const look = await client(server, m[1]!);
    assert.equal((await look.query("SELECT count(*)::int AS n FROM accounts WHERE email = 'the-bug@example.com'")).rows[0].n, 1);
    await look.end();
    await admin.query('SELECT release_test_db($1)', [m[1]]);
  } finally {
    await admin.end();
  }
  const plain = await run('bats', ['--filter', 'fails on purpose', SUITE], { PGTESTPOOL_DEMO_FAILURE: '1' });
  assert.equal(plain.code, 1, plain.out);
  assert.doesNotMatch(plain.out, /pgtestpool: kept/);
  assert.equal(await leftClaimed(), 0);
});

test('the holder keeps the claim while the shell lives and releases it when the shell is gone', { skip }, async () => {
  // A script that claims and then sleeps: its database is claimed and open until it is killed.
  const script = 'eval "$(pgtestpool claim --env)"; echo "$PGDATABASE"; exec sleep 60';
  const child = spawn('bash', ['-c', script], { env: env(), stdio: ['ignore', 'pipe', 'inherit'] });
  const name = await new Promise<string>((resolve) => child.stdout.once('data', (d) => resolve(String(d).trim())));
  const admin = await client(server);
  try {
    const state = async () => (await admin.query('SELECT state FROM test_dbs WHERE name = $1', [name])).rows[0]?.state;
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await state(), 'claimed', 'still claimed after the holder\'s poll');
    const look = await client(server, name);
    await look.end();
    child.kill('SIGKILL');
    await waitFor('released after the shell died', async () => (await state()) !== 'claimed', 10_000);
    assert.equal((await admin.query("SELECT count(*)::int AS n FROM pgtestpool.dropped WHERE name = $1 AND drop_reason = 'released'", [name])).rows[0].n
      + (await admin.query("SELECT count(*)::int AS n FROM pgtestpool.databases WHERE name = $1 AND drop_reason = 'released'", [name])).rows[0].n, 1);
  } finally {
    await admin.end();
  }
});

test('clear errors: an unknown template, an unreachable appliance (password hidden), release without a claim', { skip }, async () => {
  const t = await run('bash', [path.join(ROOT, 'client', 'shell', 'pgtestpool'), 'claim', '--template', 'nope']);
  assert.equal(t.code, 2);
  assert.match(t.out, /claim_test_db\('nope'\) failed on postgresql:\/\/sh_runner:\*\*\*@127\.0\.0\.1:\d+\/postgres: ERROR: +pgtestpool: unknown template 'nope' HINT: +known templates: 'default'/);
  assert.doesNotMatch(t.out, /CONTEXT/);
  const down = await run('bash', [path.join(ROOT, 'client', 'shell', 'pgtestpool'), 'claim'], { PGTESTPOOL_URL: `postgresql://sh_runner:${PASSWORD}@127.0.0.1:1/postgres` });
  assert.equal(down.code, 2);
  assert.match(down.out, /failed on postgresql:\/\/sh_runner:\*\*\*@127\.0\.0\.1:1\/postgres: psql: error: .*Connection refused/);
  assert.ok(!down.out.includes(PASSWORD));
  const rel = await run('bash', [path.join(ROOT, 'client', 'shell', 'pgtestpool'), 'release']);
  assert.equal(rel.code, 2);
  assert.match(rel.out, /no claim to release here/);
  await waitFor('no holder left', async () => spawnSync('pgrep', ['-f', 'pgtestpool __hold']).status === 1, 5000);
  assert.equal(await leftClaimed(), 0);
});
