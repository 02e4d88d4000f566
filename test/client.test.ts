// The Node client (client/index.mjs) as a user's suite uses it: 60 tests in parallel, one glue
// line each (withTestDb), isolation between them, connections closed before release, and a
// failed test's database kept and named, end to end against a real appliance.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { claimTestDb, closeControlConnections, withTestDb } from '../client/index.mjs';
import type { EmbeddedServer } from '../src/embedded.ts';
import { captureStderr, client, simpleConfig, startServer, startSidecar, testInstalls, waitFor, type RunningSidecar } from './harness.ts';

const installs = await testInstalls();
const newest = installs[installs.length - 1]!;

let server: EmbeddedServer;
let sc: RunningSidecar;
let url: string;
const setupMs: number[] = [];

before(async () => {
  server = await startServer(newest);
  sc = await startSidecar(server, simpleConfig({ minReady: 8 }));
  url = `postgresql://postgres:${server.password}@127.0.0.1:${server.port}/postgres`;
});
after(async () => {
  await closeControlConnections();
  await sc?.stop();
  await server?.stop();
});

describe('a suite of 60 tests, 8 at a time, each with its own database', { concurrency: 8 }, () => {
  for (let i = 0; i < 60; i++) {
    test(`test ${i}`, withTestDb(async (db) => {
      const c = await db.connect();
      // Every test starts from the template: its seed rows only, nobody else's.
      assert.deepEqual((await c.query('SELECT email FROM accounts ORDER BY email')).rows.map((r) => r.email), ['a@example.com', 'b@example.com']);
      await c.query('INSERT INTO accounts (email) VALUES ($1)', [`test${i}@example.com`]);
      assert.equal((await c.query('SELECT count(*)::int AS n FROM accounts')).rows[0].n, 3);
      assert.equal(db.config.database, db.name);
      assert.equal(new URL(db.url).pathname, `/${db.name}`);
    }, { get url() { return url; } }));
  }
});

test('setup is timed, and the handle works without the wrapper', async () => {
  for (let i = 0; i < 20; i++) {
    const t0 = performance.now();
    const db = await claimTestDb({ url });
    const c = await db.connect();
    await c.query('SELECT 1');
    setupMs.push(performance.now() - t0);
    await db.release();
    await db.release(); // idempotent
  }
  const sorted = [...setupMs].sort((a, b) => a - b);
  // (A figure for the closing note, not a pass/fail threshold.)
  console.log(`# client setup (claim + connect + first query) median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)} ms over ${sorted.length}`);
});

test('release closes the connections the handle opened first, so the drop never has to force them', async () => {
  const db = await claimTestDb({ url });
  const c = await db.connect();
  await db.release();
  await assert.rejects(c.query('SELECT 1'), /Client was closed|not queryable|Connection terminated/);
  const admin = await client(server);
  try {
    const { rows } = await admin.query('SELECT state, drop_reason FROM test_dbs WHERE name = $1', [db.name]);
    assert.ok(['dropping', 'dropped'].includes(rows[0].state), rows[0].state);
    assert.equal(rows[0].drop_reason, 'released');
  } finally {
    await admin.end();
  }
});

test('keep on failure, end to end: the failing test\'s database stays, with its rows, and its URL is printed', async () => {
  const printed = captureStderr();
  let name = '';
  try {
    const failing = withTestDb(async (db) => {
      name = db.name;
      const c = await db.connect();
      await c.query("INSERT INTO accounts (email) VALUES ('the-bug@example.com')");
      assert.equal(1, 2, 'the test fails');
    }, { url, keepOnFailure: '10 minutes' });
    await assert.rejects(failing(), /the test fails/, 'the test\'s own failure comes through');
  } finally {
    printed.stop();
  }
  assert.ok(printed.text().includes(`pgtestpool: kept ${name} for 10 minutes (the test failed): psql "postgresql://postgres:***@127.0.0.1:${server.port}/${name}"`), printed.text());
  const admin = await client(server);
  try {
    assert.equal((await admin.query('SELECT state FROM test_dbs WHERE name = $1', [name])).rows[0].state, 'kept');
    const look = await client(server, name);
    assert.equal((await look.query("SELECT count(*)::int AS n FROM accounts WHERE email = 'the-bug@example.com'")).rows[0].n, 1);
    await look.end();
    // A passing test with keepOnFailure is released as usual.
    let passed = '';
    await withTestDb(async (db) => { passed = db.name; }, { url, keepOnFailure: '10 minutes' })();
    await waitFor('the passing test\'s database released', async () =>
      ['dropping', 'dropped'].includes((await admin.query('SELECT state FROM test_dbs WHERE name = $1', [passed])).rows[0]?.state) || null);
    await admin.query('SELECT release_test_db($1)', [name]);
  } finally {
    await admin.end();
  }
});

test('the default URL is PGTESTPOOL_URL, and a wrong one fails with the driver\'s error, not a hang', async () => {
  const saved = process.env.PGTESTPOOL_URL;
  process.env.PGTESTPOOL_URL = url;
  try {
    const db = await claimTestDb();
    await db.release();
  } finally {
    if (saved === undefined) delete process.env.PGTESTPOOL_URL;
    else process.env.PGTESTPOOL_URL = saved;
  }
  await assert.rejects(claimTestDb({ url: `postgresql://postgres:${server.password}@127.0.0.1:1/postgres` }), /ECONNREFUSED/);
  void pg;
});
