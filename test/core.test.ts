// The core behaviours against real servers: every test runs on each PostgreSQL major found
// (PG 15 from Debian and PG 18 from npm in CI).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import { parseConfig } from '../src/config.ts';
import type { EmbeddedServer } from '../src/embedded.ts';
import { DEPTH_TIMING } from '../src/depth.ts';
import { Sidecar } from '../src/sidecar.ts';
import {
  claim, client, configDir, databaseExists, exited, removeConfigDir, simpleConfig, spawnSidecar, startServer,
  startSidecar, status, testInstalls, waitFor, waitForReady, EXAMPLE_SCHEMA,
} from './harness.ts';

const installs = await testInstalls();

async function poolDatabases(admin: pg.Client): Promise<string[]> {
  const { rows } = await admin.query<{ datname: string }>(
    "SELECT datname FROM pg_database WHERE datname LIKE 'pgtp\\_%' AND datname NOT LIKE 'pgtp\\_tpl\\_%' ORDER BY 1",
  );
  return rows.map((r) => r.datname);
}

for (const install of installs) {
  describe(`PostgreSQL ${install.major} (${install.source})`, () => {
    let server: EmbeddedServer;
    let admin: pg.Client;

    before(async () => {
      server = await startServer(install);
      admin = await client(server);
    });
    after(async () => {
      await admin?.end();
      await server?.stop();
    });

    test('claim returns a fresh database that already has the schema', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 3 }));
      try {
        const name = await claim(admin);
        assert.match(name, /^pgtp_default_[a-z0-9]+_\d+$/);
        const db = await client(server, name);
        const { rows } = await db.query('SELECT email FROM accounts ORDER BY id');
        assert.deepEqual(rows.map((r) => r.email), ['a@example.com', 'b@example.com']);
        await db.query("INSERT INTO accounts (email) VALUES ('c@example.com')");
        await db.end();
        // Another claim never sees the first test's rows.
        const other = await client(server, await claim(admin));
        const { rows: fresh } = await other.query('SELECT count(*)::int AS n FROM accounts');
        assert.equal(fresh[0].n, 2);
        await other.end();
        const { rows: who } = await admin.query('SELECT state, claimed_pid, claimed_role FROM test_dbs WHERE name = $1', [name]);
        assert.equal(who[0].state, 'claimed');
        assert.equal(who[0].claimed_role, 'postgres');
        assert.equal(who[0].claimed_pid, (admin as unknown as { processID: number }).processID);
      } finally {
        await sc.stop();
      }
    });

    test('health: ok only once the templates are built and every pool has been full since the sidecar started', async () => {
      const health = async () => (await admin.query('SELECT pgtestpool.health() AS h')).rows[0].h as string;
      const first = await startSidecar(server, simpleConfig({ minReady: 3 }));
      await waitFor('healthy', async () => (await health()) === 'ok');
      const held = [await claim(admin), await claim(admin), await claim(admin)];
      await first.stop({ keepClaims: true });
      // Restarted with a pool that cannot fill while the claims are held: not healthy, and says why.
      const configFile = configDir(simpleConfig({ minReady: 5, max: 6 }), EXAMPLE_SCHEMA);
      const second = new Sidecar(parseConfig(readFileSync(configFile, 'utf8'), configFile), server.clientConfig());
      try {
        await second.start();
        let last = '';
        await waitFor('reported as filling', async () => /^filling pools: default 3\/5 ready$/.test((last = await health()))).catch((err) => {
          throw new Error(`${err.message}; health() said: ${last}`);
        });
        for (const name of held) await admin.query('SELECT release_test_db($1)', [name]);
        await waitFor('healthy once full', async () => (await health()) === 'ok');
        await second.stop();
        await admin.query("UPDATE pgtestpool.settings SET value = (now() - interval '1 minute')::text WHERE key = 'sidecar_seen'");
        assert.match(await health(), /^the sidecar was last seen \d+ s ago$/);
      } finally {
        await second.stop();
        removeConfigDir(configFile);
      }
    });

    test('ready clones carry the relcache init file, so a test\'s first connection does not rebuild it', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 2 }));
      try {
        const { rows } = await admin.query(
          "SELECT d.oid, d.datname FROM pg_database d WHERE d.datname IN (SELECT template_database FROM test_db_status() UNION ALL SELECT name FROM test_dbs WHERE state = 'ready')",
        );
        assert.equal(rows.length, 3);
        for (const r of rows) {
          assert.ok(existsSync(path.join(server.dataDir, 'base', String(r.oid), 'pg_internal.init')), `${r.datname} has pg_internal.init`);
        }
      } finally {
        await sc.stop();
      }
    });

    test('50 concurrent claimers get 50 distinct databases, and the pool refills after the burst', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 8, max: 64 }));
      const clients = await Promise.all(Array.from({ length: 50 }, () => client(server)));
      try {
        const names = await Promise.all(clients.map((c) => claim(c)));
        assert.equal(new Set(names).size, 50, 'every claimer gets its own database');
        for (const name of names) assert.ok(await databaseExists(admin, name), `${name} exists when handed out`);
        const { rows } = await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE state = 'claimed'");
        assert.equal(rows[0].n, 50);
        // Refill: back to min_ready without anybody asking, within the max_databases cap.
        const s = await waitFor('refill to min_ready', async () => {
          const st = await status(admin);
          return st.ready >= 8 ? st : null;
        });
        assert.ok(s!.ready + s!.claimed + s!.creating <= 64);
      } finally {
        await Promise.all(clients.map((c) => c.end()));
        await sc.stop();
      }
    });

    test('max_databases caps the pool: claims beyond it wait, then fail with the pool state', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 2, max: 3, claimTimeout: '1s' }));
      try {
        const held = [await claim(admin), await claim(admin), await claim(admin)];
        assert.equal(new Set(held).size, 3);
        await assert.rejects(claim(admin), (err: Error & { detail?: string }) => {
          assert.match(err.message, /no ready database for template 'default' within/);
          assert.match(err.detail ?? '', /claimed 3/);
          assert.match(err.detail ?? '', /max_databases 3/);
          return true;
        });
        // Releasing one frees room: the next claim succeeds.
        await admin.query('SELECT release_test_db($1)', [held[0]]);
        assert.ok(await claim(admin));
      } finally {
        await sc.stop();
      }
    });

    test('release drops the database (even with a leaked connection) and replaces it', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 2 }));
      try {
        const name = await claim(admin);
        const leaked = await client(server, name);
        leaked.on('error', () => {});
        await admin.query('SELECT release_test_db($1)', [name]);
        // (Its tombstone, not just its absence: the drop is recorded a moment after it is done.)
        await waitFor('released database dropped', async () =>
          !(await databaseExists(admin, name)) && (await admin.query('SELECT 1 FROM pgtestpool.dropped WHERE name = $1', [name])).rowCount === 1);
        await assert.rejects(leaked.query('SELECT 1'), 'the leaked connection was terminated');
        await waitFor('pool replenished', async () => (await status(admin)).ready >= 2);
        await assert.rejects(admin.query('SELECT release_test_db($1)', [name]), (err: Error & { detail?: string }) => {
          assert.match(err.message, /was already released or reclaimed/);
          assert.match(err.detail ?? '', /^dropped: released$/);
          return true;
        });
        await assert.rejects(admin.query('SELECT release_test_db($1)', ['pgtp_default_nosuch_1']), /is not a database handed out by claim_test_db/);
        const ready = (await admin.query("SELECT name FROM test_dbs WHERE state = 'ready' LIMIT 1")).rows[0].name;
        await assert.rejects(admin.query('SELECT release_test_db($1)', [ready]), /is not claimed \(it is ready\)/);
        await leaked.end().catch(() => {});
      } finally {
        await sc.stop();
      }
    });

    test('claims waiting on an empty pool are served in arrival order', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 1, max: 3 }));
      const clients: pg.Client[] = [];
      try {
        // Everything claimed, max_databases reached: every new claim waits.
        const held = [await claim(admin), await claim(admin), await claim(admin)];
        const waits: Promise<string>[] = [];
        for (let i = 0; i < 6; i++) {
          const c = await client(server);
          clients.push(c);
          waits.push(claim(c));
          await new Promise((r) => setTimeout(r, 150)); // a clear arrival order
        }
        // Each release makes room for one clone; each served claim releases at once.
        for (const name of held) await admin.query('SELECT release_test_db($1)', [name]);
        // The order the line handed out clones is claimed_at (set under the line's lock). Not the
        // order the answers reach this process: the head lets go of the line before its claim
        // commits, so the next claim's answer can overtake it by a fraction of a millisecond.
        const claimedAt: number[] = [];
        for (const w of waits) {
          const name = await w;
          const { rows } = await admin.query(
            'SELECT (extract(epoch FROM claimed_at) * 1000000)::bigint::text AS us FROM pgtestpool.databases WHERE name = $1', [name]);
          claimedAt.push(Number(rows[0].us)); // microseconds: Date would round ties to one ms
          await admin.query('SELECT release_test_db($1)', [name]);
        }
        const order = claimedAt.map((t, i) => ({ t, i })).sort((a, b) => a.t - b.t).map(({ i }) => i);
        assert.deepEqual(order, [0, 1, 2, 3, 4, 5]);
      } finally {
        for (const c of clients) await c.end();
        await sc.stop();
      }
    });

    test('claims that drain the pool make it deeper than min_ready, within max_databases', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 2, max: 12 }));
      const held: string[] = [];
      try {
        // A burst that empties the pool twice over: tests running in parallel.
        for (let i = 0; i < 6; i++) held.push(await claim(admin));
        const deeper = await waitFor('more than min_ready ready', async () => {
          const st = await status(admin);
          return st.ready > 2 ? st : null;
        }, 10_000);
        const inUse = deeper!.ready + deeper!.claimed + deeper!.creating + deeper!.dropping;
        assert.ok(inUse <= 12, `within max_databases: ${JSON.stringify(deeper)}`);
        // Claims keep coming: the extra depth is there to serve them without a wait.
        for (let i = 0; i < 3; i++) held.push(await claim(admin));
        const st = await waitFor('refilled', async () => ((await status(admin)).creating === 0 ? status(admin) : null), 10_000);
        assert.ok(st!.ready + st!.claimed <= 12, `still within max_databases: ${JSON.stringify(st)}`);
      } finally {
        for (const n of held) await admin.query('SELECT release_test_db($1)', [n]);
        await sc.stop();
      }
    });

    test('once claims go quiet the extra depth falls back to min_ready and the ready clones above it are dropped', async () => {
      const saved = { ...DEPTH_TIMING };
      Object.assign(DEPTH_TIMING, { calmMs: 1_500, shrinkEveryMs: 200 }); // 30 s and 10 s in real use
      const sc = await startSidecar(server, simpleConfig({ minReady: 2, max: 20 }));
      try {
        const held: string[] = [];
        for (let i = 0; i < 8; i++) held.push(await claim(admin));
        await waitFor('deeper than min_ready', async () => ((await status(admin)).ready > 3 ? true : null), 10_000);
        for (const n of held) await admin.query('SELECT release_test_db($1)', [n]);
        const st = await waitFor('back to min_ready', async () => {
          const s = await status(admin);
          return s.ready === 2 && s.dropping === 0 && s.creating === 0 ? s : null;
        }, 15_000);
        assert.equal(st!.ready, 2);
        const { rows } = await admin.query(`SELECT count(*)::int AS n FROM pgtestpool.dropped WHERE drop_reason LIKE 'surplus: the ready depth fell back%'`);
        assert.ok(rows[0].n >= 2, `ready clones above the depth were dropped as surplus (${rows[0].n})`);
      } finally {
        Object.assign(DEPTH_TIMING, saved);
        await sc.stop();
      }
    });

    test('claims waiting on a full pool: a clone whose claimer left is reclaimed within seconds, not after idle_timeout', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 1, max: 2, idle: '30s' }));
      try {
        const leaver = await client(server);
        const abandoned = await claim(leaver);
        await leaver.end(); // "just disconnect": never released
        const keeper = await client(server);
        const kept = await claim(keeper); // its session lives on: never reclaimed
        // max_databases 2, both claimed: this claim waits until the abandoned one is reclaimed.
        const waiter = await client(server);
        const started = Date.now();
        const got = await claim(waiter);
        const waited = Date.now() - started;
        assert.ok(waited < 10_000, `waited ${waited} ms: the abandoned clone was not reclaimed early`);
        assert.ok(!(await databaseExists(admin, abandoned)), 'the abandoned clone was dropped');
        assert.ok(await databaseExists(admin, kept), "a live claimer's clone is kept");
        assert.notEqual(got, abandoned, 'names are never reused');
        const { rows } = await admin.query('SELECT drop_reason FROM pgtestpool.dropped WHERE name = $1', [abandoned]);
        assert.match(rows[0].drop_reason, /claims were waiting/);
        await keeper.end();
        await waiter.end();
      } finally {
        await sc.stop();
      }
    });

    test('a claimer that disconnects without releasing is reclaimed after idle_timeout', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 2, idle: '1s' }));
      try {
        const claimer = await client(server);
        const name = await claim(claimer);
        const user = await client(server, name);
        await claimer.end(); // the claiming session is gone, but a connection to the clone remains
        await new Promise((r) => setTimeout(r, 1800));
        assert.ok(await databaseExists(admin, name), 'not reclaimed while connected');
        const started = Date.now();
        await user.end();
        await waitFor('reclaim', async () => !(await databaseExists(admin, name)));
        const waited = Date.now() - started;
        assert.ok(waited >= 900, `reclaimed after ${waited} ms, not before idle_timeout`);
        // While the claiming session lives, the claim is kept even with no connection to the clone.
        const holder = await client(server);
        const kept = await claim(holder);
        await new Promise((r) => setTimeout(r, 1800));
        assert.ok(await databaseExists(admin, kept));
        await holder.end();
      } finally {
        await sc.stop();
      }
    });

    test('a claim older than max_duration is reclaimed even while its session lives', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 1, maxDuration: '1s' }));
      try {
        const name = await claim(admin);
        await waitFor('max_duration reclaim', async () => !(await databaseExists(admin, name)), 10_000);
        // The test learns why its database went.
        await assert.rejects(admin.query('SELECT release_test_db($1)', [name]), (err: Error & { detail?: string }) => {
          assert.match(err.detail ?? '', /claimed for more than max_duration/);
          return true;
        });
      } finally {
        await sc.stop();
      }
    });

    test('NOTIFY is only a hint: with the listener cut off, polling still refills and drops', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 3 }));
      try {
        // Cut the LISTEN connection; until pg-listen reconnects, no event reaches the sidecar.
        await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgtestpool listener'");
        const name = await claim(admin);
        // A state change that sends no NOTIFY at all: only the poll can notice it.
        await admin.query("UPDATE pgtestpool.databases SET state = 'dropping', drop_reason = 'test' WHERE name = $1", [name]);
        await waitFor('dropped by the poll', async () => !(await databaseExists(admin, name)));
        await waitFor('refilled', async () => (await status(admin)).ready >= 3);
      } finally {
        await sc.stop();
      }
    });

    test('unknown template: an immediate error listing the known ones; injection attempts are just names', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 1 }));
      try {
        const started = Date.now();
        await assert.rejects(claim(admin, 'nope'), (err: Error & { hint?: string }) => {
          assert.match(err.message, /unknown template 'nope'/);
          assert.match(err.hint ?? '', /known templates: 'default'/);
          return true;
        });
        assert.ok(Date.now() - started < 1000, 'fails at once');
        await assert.rejects(claim(admin, "default'; DROP TABLE pgtestpool.databases; --"), /unknown template/);
        await assert.rejects(admin.query('SELECT release_test_db($1)', ['x"; DROP DATABASE postgres; --']), /not a database handed out/);
        assert.ok((await admin.query("SELECT to_regclass('pgtestpool.databases') AS t")).rows[0].t, 'control table intact');
      } finally {
        await sc.stop();
      }
    });

    test('a non-superuser reaches only what it claimed, and cannot release what it did not claim', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 3 }));
      await admin.query("DROP ROLE IF EXISTS tester; CREATE ROLE tester LOGIN PASSWORD 'tester-pw'");
      const tester = await client(server, 'postgres', { user: 'tester', password: 'tester-pw' });
      try {
        const mine = await claim(tester);
        const db = await client(server, mine, { user: 'tester', password: 'tester-pw' });
        assert.equal((await db.query('SELECT current_database() AS d')).rows[0].d, mine);
        await db.end();
        // Not an unclaimed clone, not someone else's claim, not the template.
        // Ready clones accept no connections at all, not even a superuser's (see the isolation tests).
        const ready = (await admin.query("SELECT name FROM test_dbs WHERE state = 'ready' LIMIT 1")).rows[0].name;
        await assert.rejects(client(server, ready, { user: 'tester', password: 'tester-pw' }), /not currently accepting connections/);
        await assert.rejects(client(server, ready), /not currently accepting connections/);
        const theirs = await claim(admin);
        await assert.rejects(client(server, theirs, { user: 'tester', password: 'tester-pw' }), /permission denied for database/);
        const tpl = (await admin.query("SELECT template_database FROM test_db_status()")).rows[0].template_database;
        await assert.rejects(client(server, tpl, { user: 'tester', password: 'tester-pw' }), /not currently accepting connections|permission denied/);
        await assert.rejects(tester.query(`DROP DATABASE "${theirs}"`), /must be owner/);
        await assert.rejects(tester.query('SELECT release_test_db($1)', [theirs]), (err: Error & { detail?: string }) => {
          assert.match(err.message, /permission denied to release/);
          assert.match(err.detail ?? '', /claimed by role postgres; you are tester/);
          return true;
        });
        await assert.rejects(tester.query('SELECT * FROM pgtestpool.databases'), /permission denied/);
        // Its own claim it may release; a superuser may release anyone's.
        await tester.query('SELECT release_test_db($1)', [mine]);
        await admin.query('SELECT release_test_db($1)', [theirs]);
      } finally {
        await tester.end();
        await sc.stop();
        await waitFor('tester clones dropped', async () =>
          (await admin.query("SELECT 1 FROM test_dbs WHERE claimed_role = 'tester' AND state <> 'dropped'")).rowCount === 0);
        await admin.query('DROP ROLE tester');
      }
    });

    test('template names that need quoting work end to end', async () => {
      const weird = 'Ünï "quoted"; name';
      const sc = await startSidecar(server, simpleConfig({ minReady: 2, template: weird }));
      try {
        const name = await claim(admin, weird);
        const db = await client(server, name);
        assert.equal((await db.query('SELECT count(*)::int AS n FROM accounts')).rows[0].n, 2);
        await db.end();
        await admin.query('SELECT release_test_db($1)', [name]);
        await waitFor('dropped', async () => !(await databaseExists(admin, name)));
        assert.equal((await status(admin, weird)).build_state, 'ready');
      } finally {
        await sc.stop();
      }
    });

    test('a template whose SQL fails: claims fail at once with the file, line and message', async () => {
      const files = { ...EXAMPLE_SCHEMA, 'schema/003.sql': 'SELECT 1;\nCREATE TABLE broken (id int REFERENCES nowhere);\n' };
      const sc = await startSidecar(server, simpleConfig({ minReady: 1 }), files);
      try {
        const started = Date.now();
        await assert.rejects(claim(admin), (err: Error & { detail?: string }) => {
          assert.match(err.message, /template 'default' failed to build/);
          assert.match(err.detail ?? '', /schema\/003\.sql:2: ERROR: +relation "nowhere" does not exist/);
          return true;
        });
        assert.ok(Date.now() - started < 1000);
        const st = await status(admin);
        assert.equal(st.build_state, 'failed');
        // The image's HEALTHCHECK says why it is not healthy.
        await waitFor('health reports the failure', async () =>
          /^template build failed: default: schema\/003\.sql:2/.test((await admin.query('SELECT pgtestpool.health() AS h')).rows[0].h));
        // Clones left by earlier tests' templates are dropped; none are made of the failed one.
        await waitFor('no clones of a failed template', async () => (await poolDatabases(admin)).length === 0);
        const { rows } = await admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'pgtp\\_tpl\\_%'");
        assert.deepEqual(rows, [], 'the half-built template is dropped');
      } finally {
        await sc.stop();
      }
    });

    test('a sidecar restart with unchanged files reuses the template and its ready clones', async () => {
      const yaml = simpleConfig({ minReady: 3 });
      const first = await startSidecar(server, yaml);
      const cfgFiles = EXAMPLE_SCHEMA;
      const before = (await admin.query("SELECT name FROM test_dbs WHERE state = 'ready' ORDER BY name")).rows.map((r) => r.name);
      const tpl = (await status(admin)).template_database;
      await first.stop({ keepClaims: true });
      const second = await startSidecar(server, yaml, cfgFiles);
      try {
        assert.equal((await status(admin)).template_database, tpl, 'template reused, not rebuilt');
        const after = (await admin.query("SELECT name FROM test_dbs WHERE state = 'ready' ORDER BY name")).rows.map((r) => r.name);
        assert.deepEqual(after, before, 'ready clones survive the restart');
      } finally {
        await second.stop();
      }
    });

    test('a claim racing the surplus trim is never dropped under its test', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 3 }));
      const b = await client(server);
      const t = await client(server);
      try {
        await b.query('BEGIN');
        const name = await claim(b); // claimed, not yet committed: the row is locked
        // Every ready row is now surplus, including the one b holds.
        await admin.query("UPDATE pgtestpool.templates SET min_ready = 0 WHERE name = 'default'");
        // The trim neither waits for the claim (an uncommitted claim may hold its row for as long
        // as its transaction lasts) nor takes the row it holds.
        const started = Date.now();
        const trimmed = (await t.query<{ name: string }>('SELECT * FROM pgtestpool.trim_surplus()')).rows.map((r) => r.name);
        assert.ok(Date.now() - started < 1000, 'the trim did not wait for the claim');
        await b.query('COMMIT');
        assert.ok(!trimmed.includes(name), 'the claimed database was not trimmed');
        const row = (await admin.query('SELECT state FROM test_dbs WHERE name = $1', [name])).rows[0];
        assert.equal(row.state, 'claimed');
        assert.ok(trimmed.length >= 1, 'the other ready clones were trimmed');
      } finally {
        await admin.query("UPDATE pgtestpool.templates SET min_ready = 3 WHERE name = 'default'");
        await b.end();
        await t.end();
        await sc.stop();
      }
    });

    test('worker connections that die are replaced: the pool keeps refilling, nothing stays "creating"', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 2 }));
      try {
        for (let round = 0; round < 3; round++) {
          await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgtestpool worker'");
          await claim(admin);
          await claim(admin);
          await waitFor('refilled after losing the workers', async () => (await status(admin)).ready >= 2);
        }
        await waitFor('no stuck creating rows', async () =>
          (await admin.query("SELECT 1 FROM test_dbs WHERE state = 'creating'")).rowCount === 0);
      } finally {
        await sc.stop();
      }
    });

    test('a database dropped by hand is forgotten, never handed out', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 2 }));
      try {
        const ready = (await admin.query("SELECT name FROM test_dbs WHERE state = 'ready' ORDER BY name LIMIT 1")).rows[0].name;
        await admin.query(`DROP DATABASE "${ready}" WITH (FORCE)`);
        await waitFor('forgotten', async () =>
          (await admin.query("SELECT 1 FROM test_dbs WHERE name = $1 AND state = 'dropped'", [ready])).rowCount === 1);
        const row = (await admin.query('SELECT drop_reason FROM test_dbs WHERE name = $1', [ready])).rows[0];
        assert.match(row.drop_reason, /dropped outside pgtestpool/);
        await waitFor('refilled', async () => (await status(admin)).ready >= 2);
        for (let i = 0; i < 3; i++) {
          const name = await claim(admin);
          assert.notEqual(name, ready);
          assert.ok(await databaseExists(admin, name));
        }
      } finally {
        await sc.stop();
      }
    });

    test('claim_test_db() in a REPEATABLE READ transaction fails at once instead of waiting for clones it cannot see', async () => {
      const sc = await startSidecar(server, simpleConfig({ minReady: 1, claimTimeout: '10s' }));
      const c = await client(server);
      try {
        await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
        await claim(c); // the one ready clone is in the snapshot
        const started = Date.now();
        await assert.rejects(claim(c), (err: Error & { hint?: string }) => {
          assert.match(err.message, /this transaction cannot see new ones/);
          assert.match(err.hint ?? '', /outside any transaction/);
          return true;
        });
        assert.ok(Date.now() - started < 2000, 'fails at once');
      } finally {
        await c.query('ROLLBACK').catch(() => {});
        await c.end();
        await sc.stop();
      }
    });

    test('a non-superuser sidecar: told exactly what it lacks; with it, it serves, sees live claimers, drops leaked connections', async () => {
      const role = 'pool admin';
      const tester = 'np tester"; DROP DATABASE postgres; --';
      await admin.query('CREATE DATABASE np_control');
      await admin.query(`CREATE ROLE "${role}" LOGIN PASSWORD 'pw1' CREATEDB`);
      await admin.query(`CREATE ROLE "${tester.replace(/"/g, '""')}" LOGIN PASSWORD 'pw2'`);
      const conn = { ...server.clientConfig('np_control'), user: role, password: 'pw1' };
      const npAdmin = await client(server, 'np_control');
      let sc: Awaited<ReturnType<typeof startSidecar>> | null = null;
      try {
        await assert.rejects(startSidecar(server, simpleConfig({ minReady: 2, idle: '1s' }), EXAMPLE_SCHEMA, conn), (err: Error) => {
          assert.match(err.message, /role pool admin is not a superuser and lacks what the sidecar needs/);
          assert.match(err.message, /pg_read_all_stats/);
          assert.match(err.message, /pg_signal_backend/);
          assert.match(err.message, /CREATE on database np_control/);
          assert.match(err.message, /CREATE on schema public/);
          assert.match(err.message, /GRANT pg_signal_backend TO "pool admin";/);
          return true;
        });
        await admin.query(`GRANT pg_read_all_stats, pg_signal_backend TO "${role}"`);
        await admin.query(`GRANT CREATE ON DATABASE np_control TO "${role}"`);
        await npAdmin.query(`GRANT CREATE ON SCHEMA public TO "${role}"`);
        sc = await startSidecar(server, simpleConfig({ minReady: 2, idle: '1s' }), EXAMPLE_SCHEMA, conn);

        // A role whose name is an injection attempt claims; the GRANT inside claim_test_db() quotes it.
        const t = await client(server, 'np_control', { user: tester, password: 'pw2' });
        const name = await claim(t);
        const leaked = await client(server, name, { user: tester, password: 'pw2' });
        leaked.on('error', () => {});
        await leaked.end();
        // Its session is alive (seen through pg_read_all_stats): no reclaim after idle_timeout.
        await new Promise((r) => setTimeout(r, 2000));
        assert.equal((await npAdmin.query('SELECT state FROM test_dbs WHERE name = $1', [name])).rows[0].state, 'claimed');
        // A leaked connection of another role does not block the drop (pg_signal_backend).
        const leaked2 = await client(server, name, { user: tester, password: 'pw2' });
        leaked2.on('error', () => {});
        await t.query('SELECT release_test_db($1)', [name]);
        await waitFor('dropped despite the leaked connection', async () => !(await databaseExists(admin, name)));
        assert.ok(await databaseExists(admin, 'postgres'));
        await leaked2.end().catch(() => {});
        await t.end();
      } finally {
        await sc?.stop();
        await npAdmin.end();
        // This pool's databases (its own instance tag), then the control database and the roles.
        const { rows } = await admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'pgtp\\_%' AND datdba = (SELECT oid FROM pg_roles WHERE rolname = $1)", [role]);
        for (const r of rows) {
          await admin.query(`ALTER DATABASE "${r.datname}" IS_TEMPLATE false`);
          await admin.query(`DROP DATABASE "${r.datname}" WITH (FORCE)`);
        }
        await admin.query('DROP DATABASE np_control WITH (FORCE)');
        await admin.query(`DROP ROLE "${role}"`);
        await admin.query(`DROP ROLE "${tester.replace(/"/g, '""')}"`);
      }
    });

    test('sidecar killed with SIGKILL mid-refill and restarted: nothing handed out twice, nothing left over', async () => {
      const configFile = configDir(simpleConfig({ minReady: 12, concurrency: 2 }), EXAMPLE_SCHEMA);
      let child = spawnSidecar(server, configFile);
      try {
        await waitForReady(child);
        const claimers = await Promise.all(Array.from({ length: 10 }, () => client(server)));
        const first: string[] = [];
        // Kill it while it is creating replacements. A kill can land between two creates; then
        // start it again and retry, so the case under test is really exercised.
        for (let attempt = 1; ; attempt++) {
          first.push(...(await Promise.all(claimers.slice(0, 5).map((c) => claim(c)))));
          await waitFor('a clone in flight', async () => (await status(admin)).creating > 0, 10_000);
          child.kill('SIGKILL');
          await exited(child);
          const leftover = (await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE state = 'creating'")).rows[0].n;
          if (leftover > 0) break;
          assert.ok(attempt < 5, 'five kills in a row missed every in-flight CREATE');
          child = spawnSidecar(server, configFile);
          await waitForReady(child);
        }

        child = spawnSidecar(server, configFile);
        await waitForReady(child);
        await waitFor('no creating or dropping rows', async () =>
          (await admin.query("SELECT 1 FROM test_dbs WHERE state IN ('creating', 'dropping')")).rowCount === 0);
        const second = await Promise.all(claimers.map((c) => claim(c)));
        const all = [...first, ...second];
        assert.equal(new Set(all).size, all.length, 'no database handed out twice');
        // Every pool database on the server is accounted for by a ready or claimed row, and vice versa.
        await waitFor('pool settled', async () => (await status(admin)).creating === 0);
        const rows = (await admin.query("SELECT name FROM test_dbs WHERE state IN ('ready', 'claimed') ORDER BY name")).rows.map((r) => r.name);
        assert.deepEqual(await poolDatabases(admin), rows.sort());
        for (const name of first) assert.ok(rows.includes(name), `${name} (claimed before the kill) is still claimed`);
        await Promise.all(claimers.map((c) => c.end()));
      } finally {
        child.kill('SIGTERM');
        assert.equal(await exited(child), 0, `SIGTERM stops the sidecar cleanly; its output:\n${child.output()}`);
        removeConfigDir(configFile);
      }
    });
  });
}
