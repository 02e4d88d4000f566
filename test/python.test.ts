// The pytest plugin (client/python/pgtestpool_pytest.py) run as a user runs it: Debian's pytest,
// psycopg2 and pytest-xdist, a 61-test suite on 4 workers against a real appliance, then a
// failing test whose database is kept and named.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { EmbeddedServer } from '../src/embedded.ts';
import { ROOT, client, simpleConfig, startServer, startSidecar, testInstalls, type RunningSidecar } from './harness.ts';

const installs = await testInstalls();
const newest = installs[installs.length - 1]!;
const PYTHON = '/usr/bin/python3'; // Debian's, which sees apt's packages (a pyenv python3 may not)
const SUITE = path.join(ROOT, 'test', 'clients', 'pytest_suite');
const PASSWORD = 'Py-runner-S3cret';

let server: EmbeddedServer;
let sc: RunningSidecar;
let url: string;
before(async () => {
  server = await startServer(newest);
  sc = await startSidecar(server, simpleConfig({ minReady: 8 }));
  // A password of its own (the server's is the well-known default): it must never be printed.
  const admin = await client(server);
  await admin.query(`CREATE ROLE py_runner SUPERUSER LOGIN PASSWORD '${PASSWORD}'`);
  await admin.end();
  url = `postgresql://py_runner:${PASSWORD}@127.0.0.1:${server.port}/postgres`;
});
after(async () => {
  await sc?.stop();
  await server?.stop();
});

/** pytest in a child process; async, since this process runs the sidecar that refills the pool. */
function pytest(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; ms: number }> {
  const started = performance.now();
  const child = spawn(PYTHON, ['-m', 'pytest', '-q', '-p', 'no:cacheprovider', ...args, SUITE], {
    cwd: SUITE,
    env: { ...process.env, PYTHONPATH: path.join(ROOT, 'client', 'python'), PGTESTPOOL_URL: url, PYTHONDONTWRITEBYTECODE: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  return new Promise((resolve) => child.on('close', (code) => {
    clearTimeout(timer);
    resolve({ code, out, ms: performance.now() - started });
  }));
}

test('a 61-test pytest suite on 4 xdist workers: every test its own database, all released', async () => {
  const r = await pytest(['-n', '4']);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /61 passed, 1 skipped/);
  console.log(`# pytest: 61 tests on 4 workers in ${(r.ms / 1000).toFixed(1)} s (with pytest's start-up)`);
  const admin = await client(server);
  try {
    const { rows } = await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE claimed_application = '' AND state IN ('claimed', 'kept')");
    assert.equal(rows[0].n, 0, 'nothing left claimed');
    const { rows: released } = await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE drop_reason = 'released'");
    assert.ok(released[0].n >= 61, `released: ${released[0].n}`);
  } finally {
    await admin.end();
  }
});

test('keep on failure: the failing test\'s database stays with its rows, its URL printed without the password', async () => {
  const r = await pytest(['-k', 'fails_on_purpose', '--pgtestpool-keep-on-failure', '10 minutes'], { PGTESTPOOL_DEMO_FAILURE: '1' });
  assert.equal(r.code, 1, r.out);
  const m = /pgtestpool: kept (pgtp_default_\w+) for 10 minutes \(test_suite\.py::test_fails_on_purpose failed\): psql "postgresql:\/\/py_runner:\*\*\*@127\.0\.0\.1:\d+\/(pgtp_default_\w+)"/.exec(r.out);
  assert.ok(m, r.out);
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
  // Without the option, the same failure releases its database.
  const plain = await pytest(['-k', 'fails_on_purpose'], { PGTESTPOOL_DEMO_FAILURE: '1' });
  assert.equal(plain.code, 1);
  assert.doesNotMatch(plain.out, /pgtestpool: kept/);
});
