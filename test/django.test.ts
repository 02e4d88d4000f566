// The Django test runner (client/python/pgtestpool_django.py) run as a user runs it: Debian's
// Django 3.2 and psycopg2, `manage.py test --parallel 4` on a 55-test suite whose template is built
// from the test side through SQL (begin_template / migrate / finish_template, once per version of
// the migrations), each worker on a clone of its own, a failed test's database kept with its rows,
// and a new migration file building a new version.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { EmbeddedServer } from '../src/embedded.ts';
import { ROOT, client, simpleConfig, startServer, startSidecar, testInstalls, type RunningSidecar } from './harness.ts';

const PYTHON = '/usr/bin/python3'; // Debian's, which sees apt's packages (a pyenv python3 may not)
const SUITE = path.join(ROOT, 'test', 'clients', 'django_suite');
const PASSWORD = 'Dj-runner-S3cret';
const TESTS = 55; // and DemoFailure, skipped unless PGTESTPOOL_DEMO_FAILURE=1

const hasDjango = await new Promise<boolean>((resolve) => {
  const c = spawn(PYTHON, ['-c', 'import django, psycopg2; assert django.VERSION[:2] >= (3, 2)'], { stdio: 'ignore' });
  c.on('error', () => resolve(false));
  c.on('close', (code) => resolve(code === 0));
});
const missing = `Django >= 3.2 and psycopg2 are not importable by ${PYTHON} (apt-get install python3-django python3-psycopg2)`;

if (!hasDjango) {
  const required = process.env.PGTESTPOOL_TEST_REQUIRE_PYTHON === '1';
  test('the Django test runner', { skip: required ? false : missing }, () => {
    assert.fail(`${missing}, and PGTESTPOOL_TEST_REQUIRE_PYTHON=1 requires it`);
  });
} else {
  describe('the Django test runner', () => {
    let server: EmbeddedServer;
    let sc: RunningSidecar;
    let url: string;
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pgtp-django-'));
    before(async () => {
      const installs = await testInstalls();
      server = await startServer(installs[installs.length - 1]!);
      // config.yaml's template is not the suite's: the runner builds "django" through SQL beside it.
      sc = await startSidecar(server, simpleConfig({ minReady: 1 }));
      // A password of its own (the server's is the well-known default): it must never be printed.
      const admin = await client(server);
      await admin.query(`CREATE ROLE dj_runner SUPERUSER LOGIN PASSWORD '${PASSWORD}'`);
      await admin.end();
      url = `postgresql://dj_runner:${PASSWORD}@127.0.0.1:${server.port}/postgres`;
    });
    after(async () => {
      fs.rmSync(tmp, { recursive: true, force: true });
      await sc?.stop();
      await server?.stop();
    });

    /** manage.py in a child process; async, since this process runs the sidecar that refills the pool. */
    function manage(args: string[], env: Record<string, string> = {}, cwd = SUITE): Promise<{ code: number | null; out: string; ms: number }> {
      const started = performance.now();
      const child = spawn(PYTHON, ['manage.py', ...args], {
        cwd,
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

    async function appliance<T>(fn: (admin: Awaited<ReturnType<typeof client>>) => Promise<T>): Promise<T> {
      const admin = await client(server);
      try {
        return await fn(admin);
      } finally {
        await admin.end();
      }
    }

    const leftClaimed = () => appliance(async (a) =>
      (await a.query("SELECT count(*)::int AS n FROM test_dbs WHERE state IN ('claimed', 'kept')")).rows[0].n as number);
    const templateRow = () => appliance(async (a) =>
      (await a.query("SELECT hash, database, built_at FROM pgtestpool.templates WHERE name = 'django'")).rows[0]);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const setupMs = (out: string) => Number(/pgtestpool: setup_databases (\d+) ms/.exec(out)?.[1]);
    function workers(out: string): { connect: number; claim: number; name: string }[] {
      return [...out.matchAll(/pgtestpool: worker \d+: connected in ([\d.]+) ms, default on (pgtp_django_\w+) \(claimed in ([\d.]+) ms\)/g)]
        .map((m) => ({ connect: Number(m[1]), name: m[2]!, claim: Number(m[3]) }));
    }

    let version1 = '';
    test(`manage.py test --parallel 4: the first run migrates the template once, ${TESTS} tests on 4 workers each on its own clone, all released`, async () => {
      const timings = path.join(tmp, 'timings');
      const r = await manage(['test', '--parallel', '4'], { DJANGO_SUITE_TIMINGS: timings });
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, new RegExp(`Ran ${TESTS + 1} tests`));
      assert.match(r.out, /OK \(skipped=1\)/);
      const built = /pgtestpool: template 'django' version (\w+) built in (pgtp_tpl_django_\w+) \(migrate and seal (\d+) ms\)/.exec(r.out);
      assert.ok(built, r.out);
      version1 = built[1]!;
      assert.doesNotMatch(r.out, /Creating test database/, 'Django made no database of its own');
      const ws = workers(r.out);
      assert.equal(ws.length, 4, r.out);
      assert.equal(new Set(ws.map((w) => w.name)).size, 4, 'a clone per worker');
      assert.ok(!r.out.includes(PASSWORD), 'the password is not printed');

      const setups = fs.readFileSync(timings, 'utf8').trim().split('\n').map(Number);
      assert.equal(setups.length, TESTS);
      assert.equal(await leftClaimed(), 0, 'nothing left claimed');
      const released = await appliance(async (a) =>
        (await a.query("SELECT count(*)::int AS n FROM test_dbs WHERE template = 'django' AND drop_reason = 'released'")).rows[0].n as number);
      assert.ok(released >= 5, `the main process's clone and the 4 workers' released: ${released}`);
      assert.equal((await templateRow()).database, built[2]);

      console.log(`# django: ${TESTS} tests (+1 skipped) on 4 workers in ${(r.ms / 1000).toFixed(1)} s wall (with Django's start-up and the first migrate)`);
      console.log(`# django: first run: setup_databases ${setupMs(r.out)} ms, of which migrate + seal of the template ${built[3]} ms`);
      console.log(`# django: per worker: connect median ${median(ws.map((w) => w.connect)).toFixed(1)} ms, claim median ${median(ws.map((w) => w.claim)).toFixed(1)} ms`);
      console.log(`# django: SETUP MEDIAN per test ${median(setups).toFixed(2)} ms (test start to a first query on its worker's clone, Django's per-test transaction), n=${setups.length}`);
      const glue = ['suite/settings.py', 'manage.py'].flatMap((f) => fs.readFileSync(path.join(SUITE, f), 'utf8').split('\n'))
        .filter((l) => /pgtestpool/i.test(l) && !l.trim().startsWith('#'));
      console.log(`# django: glue: ${glue.length} line(s): ${glue.map((l) => l.trim()).join(' | ')}`);
      assert.equal(glue.length, 1);
    });

    test('the second run reuses the template: begin_template returns NULL, no migrate', async () => {
      const before = await templateRow();
      const r = await manage(['test', '--parallel', '4']);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, new RegExp(`pgtestpool: template 'django' version ${version1} serves already: no migrate`));
      assert.doesNotMatch(r.out, /built in/);
      assert.deepEqual(await templateRow(), before, 'the same version, database and build time');
      assert.equal(await leftClaimed(), 0);
      const ws = workers(r.out);
      console.log(`# django: second run: setup_databases ${setupMs(r.out)} ms (template reused), wall ${(r.ms / 1000).toFixed(1)} s, ` +
        `per worker connect ${median(ws.map((w) => w.connect)).toFixed(1)} ms + claim ${median(ws.map((w) => w.claim)).toFixed(1)} ms (medians)`);
    });

    test('keep on failure: a test failing in a worker keeps a database with its rows, named without the password', async () => {
      // Two classes on 2 workers: the failure happens in a worker (and is shown without tblib).
      const r = await manage(['test', '--parallel', '2', 'shop.tests.DemoFailure', 'shop.tests.ClassData'],
        { PGTESTPOOL_DEMO_FAILURE: '1', PGTESTPOOL_KEEP_ON_FAILURE: '10 minutes' });
      assert.equal(r.code, 1, r.out);
      assert.match(r.out, /FAILED \(failures=1\)/);
      assert.match(r.out, /AssertionError: 1 != 2 : fails on purpose/);
      assert.equal(workers(r.out).length, 2, r.out);
      const m = /pgtestpool: kept (pgtp_django_\w+) for 10 minutes \(shop\.tests\.DemoFailure\.test_fails_on_purpose failed\): psql "postgresql:\/\/dj_runner:\*\*\*@127\.0\.0\.1:\d+\/(pgtp_django_\w+)"/.exec(r.out);
      assert.ok(m, r.out);
      assert.equal(m[1], m[2]);
      assert.ok(!r.out.includes(PASSWORD), 'the password is not printed');
      await appliance(async (admin) => {
        assert.equal((await admin.query('SELECT state FROM test_dbs WHERE name = $1', [m[1]])).rows[0].state, 'kept');
        const look = await client(server, m[1]!);
        try {
          // What the test saw before Django rolled it back: the data migration's rows and its own.
          const { rows } = await look.query('SELECT email FROM shop_account ORDER BY id');
          assert.deepEqual(rows.map((x) => x.email), ['a@example.com', 'b@example.com', 'the-bug@example.com']);
        } finally {
          await look.end();
        }
        await admin.query('SELECT release_test_db($1)', [m[1]]);
      });
      assert.equal(await leftClaimed(), 0);

      // Without PGTESTPOOL_KEEP_ON_FAILURE, the same failure keeps nothing.
      const plain = await manage(['test', 'shop.tests.DemoFailure'], { PGTESTPOOL_DEMO_FAILURE: '1' });
      assert.equal(plain.code, 1, plain.out);
      assert.doesNotMatch(plain.out, /pgtestpool: kept/);
      assert.equal(await leftClaimed(), 0);
    });

    test('a new migration file builds a new version, which claims get from then on', async () => {
      const copy = path.join(tmp, 'suite');
      fs.cpSync(SUITE, copy, { recursive: true });
      fs.writeFileSync(path.join(copy, 'shop', 'migrations', '0003_audit.py'), `from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [("shop", "0002_seed")]

    operations = [migrations.RunSQL("CREATE TABLE shop_audit (id serial PRIMARY KEY, what text)", "DROP TABLE shop_audit")]
`);
      const r = await manage(['test', '--parallel', '4'], {}, copy);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, new RegExp(`Ran ${TESTS + 1} tests`));
      const built = /pgtestpool: template 'django' version (\w+) built in (pgtp_tpl_django_\w+) \(migrate and seal (\d+) ms\)/.exec(r.out);
      assert.ok(built, r.out);
      assert.notEqual(built[1], version1, 'another version');
      await appliance(async (admin) => {
        assert.equal((await templateRow()).database, built[2]);
        const name = (await admin.query("SELECT claim_test_db('django') AS n")).rows[0].n;
        const c = await client(server, name);
        try {
          assert.equal((await c.query("SELECT to_regclass('shop_audit') IS NOT NULL AS ok")).rows[0].ok, true);
        } finally {
          await c.end();
          await admin.query('SELECT release_test_db($1)', [name]);
        }
      });
      assert.equal(await leftClaimed(), 0);
      console.log(`# django: a new migration: version ${built[1]} built (migrate + seal ${built[3]} ms) beside ${version1}`);
    });
  });
}
