// keep_test_db(): a failed test's database kept for debugging, announced in the log with its URL,
// dropped when its time is up, outside max_databases and within pool.max_kept.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { setQuiet } from '../src/log.ts';
import { captureStderr, claim, client, databaseExists, simpleConfig, startServer, startSidecar, testInstalls, waitFor } from './harness.ts';

const installs = await testInstalls();
const newest = installs[installs.length - 1]!;

describe(`keep_test_db, PostgreSQL ${newest.major}`, () => {
  let server: EmbeddedServer;
  let admin: pg.Client;
  before(async () => {
    server = await startServer(newest);
    admin = await client(server);
  });
  after(async () => {
    await admin?.end();
    await server?.stop();
  });

  test('a kept database outlives its claimer and idle_timeout, keeps its data, is announced with its URL, and goes when its time is up', async () => {
    const logged = captureStderr();
    setQuiet(false); // the announcement is an info line
    const sc = await startSidecar(server, simpleConfig({ minReady: 1, idle: '1s' }));
    try {
      const tester = await client(server);
      const name = await claim(tester);
      const db = await client(server, name);
      await db.query("INSERT INTO accounts (email) VALUES ('evidence@example.com')");
      await db.end();
      assert.equal((await tester.query("SELECT keep_test_db($1, '4 seconds') AS n", [name])).rows[0].n, name);
      await tester.end(); // the failed test's worker goes away, as it would
      await new Promise((r) => setTimeout(r, 2500)); // past idle_timeout (1 s) and its starved variant
      assert.ok(await databaseExists(admin, name), 'not reclaimed while kept');
      const look = await client(server, name);
      assert.equal((await look.query("SELECT count(*)::int AS n FROM accounts WHERE email = 'evidence@example.com'")).rows[0].n, 1, 'the failed test\'s rows are there to look at');
      await look.end();
      const { rows } = await admin.query('SELECT state, kept_until, url FROM test_dbs WHERE name = $1', [name]);
      assert.equal(rows[0].state, 'kept');
      assert.match(rows[0].url, new RegExp(`^postgresql://postgres@127\\.0\\.0\\.1:${server.port}/${name}$`));
      await waitFor('announced', async () => new RegExp(`kept ${name} \\(template "default", claimed by role "postgres"\\) until \\S+: psql "postgresql://postgres@`).test(logged.text()) || null, 5_000);
      await waitFor('dropped when its time is up', async () => ((await databaseExists(admin, name)) ? null : true), 10_000);
      const { rows: gone } = await admin.query('SELECT drop_reason FROM test_dbs WHERE name = $1', [name]);
      assert.match(gone[0].drop_reason, /kept until .* \(keep_test_db\): time is up/);
    } finally {
      logged.stop();
      if (!process.env.PGTESTPOOL_TEST_VERBOSE) setQuiet(true);
      await sc.stop();
    }
  });

  test('kept databases have a cap of their own: they never take max_databases, and the oldest makes room for a new one', async () => {
    const sc = await startSidecar(server, simpleConfig({ minReady: 1, max: 3 }).replace('pool:\n', 'pool:\n  max_kept: 2\n'));
    try {
      const kept: string[] = [];
      for (let i = 0; i < 3; i++) {
        const n = await claim(admin);
        await admin.query("SELECT keep_test_db($1, '1 hour')", [n]);
        kept.push(n);
      }
      // Three kept, max_databases 3: claims still work, as kept ones are outside it.
      const n = await claim(admin);
      await admin.query('SELECT release_test_db($1)', [n]);
      const { rows } = await admin.query("SELECT name FROM pgtestpool.databases WHERE state = 'kept' ORDER BY id");
      assert.deepEqual(rows.map((r) => r.name), kept.slice(1), 'the oldest went when the third was kept');
      const { rows: why } = await admin.query('SELECT drop_reason FROM test_dbs WHERE name = $1', [kept[0]]);
      assert.match(why[0].drop_reason, /kept, then dropped to make room for .* \(pool\.max_kept is 2\)/);
      // Releasing a kept database drops it now: the user is done looking.
      await admin.query('SELECT release_test_db($1)', [kept[2]]);
      await waitFor('released kept database dropped', async () => ((await databaseExists(admin, kept[2]!)) ? null : true), 10_000);
    } finally {
      await sc.stop();
    }
  });

  test('only a claimed database, only by its claimer, for a sane time', async () => {
    const sc = await startSidecar(server, simpleConfig({ minReady: 1 }));
    await admin.query("DROP ROLE IF EXISTS keeper; CREATE ROLE keeper LOGIN PASSWORD 'keeper-pw'");
    const other = await client(server, 'postgres', { user: 'keeper', password: 'keeper-pw' });
    try {
      await assert.rejects(admin.query("SELECT keep_test_db('pgtp_nothing')"), /'pgtp_nothing' is not a claimed database/);
      const n = await claim(admin);
      await assert.rejects(other.query('SELECT keep_test_db($1)', [n]), /permission denied to keep database/);
      await assert.rejects(admin.query("SELECT keep_test_db($1, '30 days')", [n]), /keep_for from a second to 7 days/);
      await admin.query('SELECT release_test_db($1)', [n]);
      await assert.rejects(admin.query('SELECT keep_test_db($1)', [n]), /is not a claimed database/);
    } finally {
      await other.end();
      await sc.stop();
      await admin.query('DROP ROLE keeper');
    }
  });
});
