// The JUnit 5 extension (client/java/) run as a user runs it: compiled with plain javac against
// Debian's jars, a 65-test suite run concurrently by JUnit's console launcher against a real
// appliance, then a failing test whose database is kept and named.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { EmbeddedServer } from '../src/embedded.ts';
import { EXAMPLE_SCHEMA, ROOT, client, freePort, startServer, startSidecar, testInstalls, type RunningSidecar } from './harness.ts';

const JARS = '/usr/share/java';
const jar = (name: string) => path.join(JARS, name);
// The extension and the suite compile against the Jupiter API alone (the JDBC driver is found at
// run time); Debian's console-standalone jar carries the engine that runs them.
const API = ['junit-jupiter-api.jar', 'junit-platform-commons.jar', 'apiguardian-api.jar', 'opentest4j.jar'].map(jar);
const NEEDED = ['/usr/bin/javac', '/usr/bin/java', ...API, jar('junit-platform-console-standalone.jar'), jar('postgresql.jar')];
const missing = NEEDED.filter((f) => !existsSync(f));
if (missing.length && process.env.PGTESTPOOL_TEST_REQUIRE_JAVA === '1') {
  throw new Error(`PGTESTPOOL_TEST_REQUIRE_JAVA=1 but these are missing: ${missing.join(', ')} (apt-get install openjdk-17-jdk-headless junit5 libpostgresql-jdbc-java)`);
}
const skip = missing.length
  ? `Java test helper skipped: missing ${missing.join(', ')} (apt-get install openjdk-17-jdk-headless junit5 libpostgresql-jdbc-java; PGTESTPOOL_TEST_REQUIRE_JAVA=1 makes this a failure)`
  : false;
if (skip) console.log(`# ${skip}`);

const SOURCES = path.join(ROOT, 'client', 'java', 'src', 'main', 'java');
const SUITE = path.join(ROOT, 'test', 'clients', 'junit_suite');
const PASSWORD = 'Java-runner-S3cret';
const FAILING = 'example.IsolationTest#failsOnPurpose(dev.pgtestpool.junit.TestDb)';
const ONE = 'example.IsolationTest#connectionInfoInEveryForm(dev.pgtestpool.junit.TestDb)';

let server: EmbeddedServer;
let sc: RunningSidecar;
let url: string;
let tmp: string;
let classes: string;
before(async () => {
  if (skip) return;
  tmp = mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-java-'));
  classes = path.join(tmp, 'classes');
  // Compiling and starting PostgreSQL at once: neither needs the other.
  const [compiled] = await Promise.all([compile(), (async () => {
    const installs = await testInstalls();
    server = await startServer(installs[installs.length - 1]!);
    // Two templates: the suite's @PgTestDb(template = "bare") test gets the tables without their rows.
    sc = await startSidecar(server, `templates:
  default:
    schema: [schema/*.sql]
    min_ready: 8
  bare:
    schema: [schema/001.sql]
    min_ready: 1
pool:
  max_databases: 64
  poll_interval: 100ms
  concurrency: 2
lease:
  idle_timeout: 30s
claim:
  timeout: 20s
`, EXAMPLE_SCHEMA);
    // A password of its own (the server's is the well-known default): it must never be printed.
    // Hashed with SCRAM's standard 4096 rounds: Debian's pgjdbc (42.5) refuses the embedded server's cheap 16 (PG 16+).
    const admin = await client(server);
    if (server.install.major >= 16) await admin.query('SET scram_iterations = 4096');
    await admin.query(`CREATE ROLE java_runner SUPERUSER LOGIN PASSWORD '${PASSWORD}'`);
    await admin.end();
    url = `postgresql://java_runner:${PASSWORD}@127.0.0.1:${server.port}/postgres`;
  })()]);
  console.log(`# javac: the extension in ${(compiled.extensionMs / 1000).toFixed(1)} s, the suite in ${(compiled.suiteMs / 1000).toFixed(1)} s`);
});
after(async () => {
  await sc?.stop();
  await server?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** A child process, async: this process runs the sidecar that refills the pool meanwhile. */
function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; ms: number }> {
  const started = performance.now();
  const child = spawn(cmd, args, { cwd: tmp, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 180_000);
  return new Promise((resolve) => child.on('close', (code) => {
    clearTimeout(timer);
    resolve({ code, out, ms: performance.now() - started });
  }));
}

async function compile(): Promise<{ extensionMs: number; suiteMs: number }> {
  const javaFiles = (dir: string): string[] => readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.java')).map((f) => path.join(dir, f));
  // Java 11 bytecode and API (what users on 11+ can run), every warning an error.
  const ext = await run('javac', ['--release', '11', '-Xlint:all', '-Werror', '-d', classes, '-cp', API.join(':'), ...javaFiles(SOURCES)]);
  assert.equal(ext.code, 0, ext.out);
  const suite = await run('javac', ['-d', classes, '-cp', [classes, ...API].join(':'), ...javaFiles(SUITE)]);
  assert.equal(suite.code, 0, suite.out);
  return { extensionMs: ext.ms, suiteMs: suite.ms };
}

/** JUnit's console launcher; the suite folder is on the classpath for its junit-platform.properties. */
function junit(select: string[], env: Record<string, string> = {}) {
  return run('java', ['-jar', jar('junit-platform-console-standalone.jar'),
    '-cp', [classes, SUITE, jar('postgresql.jar')].join(':'),
    '--include-engine=junit-jupiter', '--disable-banner', '--disable-ansi-colors', '--details=summary', ...select,
  ], { PGTESTPOOL_URL: url, ...env });
}

function summary(out: string, what: string): number {
  const m = new RegExp(`\\[\\s*(\\d+) tests ${what}\\s*\\]`).exec(out);
  assert.ok(m, `no "tests ${what}" in:\n${out}`);
  return Number(m[1]);
}

async function leftClaimed(): Promise<number> {
  const admin = await client(server);
  try {
    return (await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE state IN ('claimed', 'kept')")).rows[0].n;
  } finally {
    await admin.end();
  }
}

test('a 65-test JUnit suite run concurrently: every test its own database, all released', { skip }, async () => {
  const timings = path.join(tmp, 'setup-ms.txt');
  const r = await junit(['--select-package', 'example'], { PGTESTPOOL_TIMING_FILE: timings });
  assert.equal(r.code, 0, r.out);
  assert.equal(summary(r.out, 'successful'), 65, r.out);
  assert.equal(summary(r.out, 'skipped'), 1, r.out); // failsOnPurpose, without PGTESTPOOL_DEMO_FAILURE
  assert.equal(summary(r.out, 'failed'), 0, r.out);
  assert.doesNotMatch(r.out, /pgtestpool: kept/);
  assert.ok(!r.out.includes(PASSWORD), 'the password is not printed');

  // A line per @RepeatedTest: "total claim thread", in ms from @BeforeEach to connected and until the test method ran (the claim).
  const raw = readFileSync(timings, 'utf8').trim().split('\n').map((l) => l.split(' '));
  assert.equal(raw.length, 60, 'a setup time per @RepeatedTest');
  const ran = new Set(raw.map((l) => l[2])).size;
  assert.ok(ran > 1, 'the tests ran concurrently, on more than one thread');
  const lines = raw.map((l) => l.slice(0, 2).map(Number));
  const median = (i: number) => {
    const v = lines.map((l) => l[i]!).sort((a, b) => a - b);
    return (v[29]! + v[30]!) / 2;
  };
  const threads = /fixed\.parallelism=(\d+)/.exec(readFileSync(path.join(SUITE, 'junit-platform.properties'), 'utf8'))![1];
  // Glue: what a user adds to a test class (the imports of the extension's types and the annotation).
  const glue = ['IsolationTest.java', 'LifecycleTest.java'].map((f) => readFileSync(path.join(SUITE, 'example', f), 'utf8')
    .split('\n').filter((l) => /^import dev\.pgtestpool\.|^@PgTestDb$/.test(l)).length);
  console.log(`# junit: 65 tests on ${threads} threads (the @RepeatedTests ran on ${ran}) in ${(r.ms / 1000).toFixed(1)} s (with the JVM's and JUnit's start-up)`);
  console.log(`# junit: setup median ${median(0).toFixed(1)} ms from @BeforeEach to connected to its database (of which the claim: ${median(1).toFixed(1)} ms)`);
  console.log(`# junit: glue lines per test class: ${glue.join(', ')} (import PgTestDb, import TestDb, @PgTestDb)`);
  assert.ok(glue.every((n) => n === 3), `glue lines: ${glue}`);

  assert.equal(await leftClaimed(), 0, 'nothing left claimed');
  const admin = await client(server);
  try {
    const { rows } = await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE drop_reason = 'released' AND claimed_application = 'pgtestpool junit'");
    assert.equal(rows[0].n, 64, 'released by the extension: every test but the one taking no TestDb');
  } finally {
    await admin.end();
  }
});

test('keep on failure: the failing test\'s database stays with its rows, its URL printed without the password', { skip }, async () => {
  const r = await junit(['--select-method', FAILING], { PGTESTPOOL_DEMO_FAILURE: '1', PGTESTPOOL_KEEP_ON_FAILURE: '10 minutes' });
  assert.equal(r.code, 1, r.out);
  assert.equal(summary(r.out, 'failed'), 1, r.out);
  const m = /pgtestpool: kept (pgtp_default_\w+) for 10 minutes \(example\.IsolationTest#failsOnPurpose failed\): psql "postgresql:\/\/java_runner:\*\*\*@127\.0\.0\.1:\d+\/(pgtp_default_\w+)"/.exec(r.out);
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
  assert.equal(await leftClaimed(), 0, 'nothing left claimed or kept');

  // Without PGTESTPOOL_KEEP_ON_FAILURE, the same failure releases its database.
  const plain = await junit(['--select-method', FAILING], { PGTESTPOOL_DEMO_FAILURE: '1' });
  assert.equal(plain.code, 1, plain.out);
  assert.equal(summary(plain.out, 'failed'), 1, plain.out);
  assert.doesNotMatch(plain.out, /pgtestpool: kept/);
  assert.equal(await leftClaimed(), 0, 'the failed test\'s database was released');
});

test('errors say what went wrong and where, without the password', { skip }, async () => {
  const port = await freePort(); // nothing listens there
  const down = await junit(['--select-method', ONE], { PGTESTPOOL_URL: `postgresql://java_runner:${PASSWORD}@127.0.0.1:${port}/postgres` });
  assert.equal(down.code, 1, down.out);
  assert.ok(down.out.includes(`cannot connect to the appliance at postgresql://java_runner:***@127.0.0.1:${port}/postgres (PGTESTPOOL_URL)`), down.out);
  assert.match(down.out, /Is it running \(npm start, or docker compose up\)\? Else set PGTESTPOOL_URL/);
  assert.ok(!down.out.includes(PASSWORD), 'the password is not printed');
  if (server.install.major < 16) return;
  // npm start's embedded PostgreSQL 16+ hashes its postgres password with 16 SCRAM rounds, which Debian's pgjdbc refuses.
  const cheap = await junit(['--select-method', ONE], { PGTESTPOOL_URL: `postgresql://postgres:${server.password}@127.0.0.1:${server.port}/postgres` });
  if (cheap.code === 0) return console.log('# junit: this pgjdbc accepts SCRAM hashes below 4096 rounds'); // a newer driver
  assert.match(cheap.out, /refuses SCRAM passwords hashed with fewer than 4096 rounds.*SET scram_iterations = 4096; ALTER ROLE postgres PASSWORD/, cheap.out);
  assert.ok(!cheap.out.includes(`:${server.password}@`), 'the password is not printed');
});
