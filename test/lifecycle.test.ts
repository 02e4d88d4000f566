// The control schema's install and upgrade, the sidecar's restarts while claims wait, the clone
// state machine's edges (failed creates, lending under the cap, NOTIFY before the templates are
// prepared) and the control tables' size over many cycles: against real servers, every major.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { parseConfig } from '../src/config.ts';
import type { EmbeddedServer } from '../src/embedded.ts';
import { formatEntry } from '../src/log.ts';
import { installSchema, migrations } from '../src/schema.ts';
import { Sidecar } from '../src/sidecar.ts';
import { claim, client, configDir, removeConfigDir, resetPool, simpleConfig, startServer, startSidecar, testInstalls, waitFor, EXAMPLE_SCHEMA } from './harness.ts';

const installs = await testInstalls();

test('log entries: continuation lines are indented and control characters escaped, so nothing forges an entry', () => {
  const entry = formatEntry('info', 'claimed x\n2026-01-01T00:00:00.000Z pgtestpool: FORGED\r\nmore\u001b[31m', new Date(0));
  const lines = entry.trimEnd().split('\n');
  assert.equal(lines.length, 3);
  assert.match(lines[0]!, /^1970-01-01T00:00:00\.000Z pgtestpool: claimed x$/);
  for (const line of lines.slice(1)) assert.match(line, /^ {4}/);
  assert.ok(!entry.includes('\u001b') && !entry.includes('\r'));
});

test('migration files are numbered without gaps and each records itself', () => {
  const all = migrations();
  assert.ok(all.length >= 2);
  for (const m of all) {
    assert.match(m.text, new RegExp(`INSERT INTO pgtestpool\\.migrations \\(version, name\\) VALUES \\(${m.version},`), path.basename(m.file));
    assert.match(m.text.trim(), /COMMIT;$/, `${path.basename(m.file)} is one transaction`);
  }
});

for (const install of installs) {
  describe(`lifecycle (PostgreSQL ${install.major})`, () => {
    let server: EmbeddedServer;
    let admin: pg.Client;

    before(async () => {
      server = await startServer(install);
      admin = await client(server);
      await installSchema(admin);
    });
    after(async () => {
      await admin?.end();
      await server?.stop();
    });

    test('the control schema is installed once: migrations recorded, the API replaced only when it changed', async () => {
      await admin.query('CREATE DATABASE ctl_install');
      const c = await client(server, 'ctl_install');
      try {
        const first = await installSchema(c);
        assert.deepEqual(first.applied, migrations().map((m) => m.version));
        assert.equal(first.apiReplaced, true);
        const again = await installSchema(c);
        assert.deepEqual(again, { applied: [], apiReplaced: false }, 'an up-to-date schema is only read');
        // A newer pgtestpool's migration: this version refuses rather than replacing newer functions.
        await c.query(`INSERT INTO pgtestpool.migrations (version, name) VALUES (999, 'from the future')`);
        await assert.rejects(installSchema(c), /upgraded by a newer pgtestpool \(migration 999/);
      } finally {
        await c.end();
        await admin.query('DROP DATABASE ctl_install');
      }
    });

    test('a sidecar restarting while claims wait starts at once, and the waiting claims get their clones (no deadlock)', async () => {
      await resetPool(admin);
      const yaml = simpleConfig({ minReady: 1, max: 2, claimTimeout: '20s' });
      const first = await startSidecar(server, yaml);
      const held = [await claim(admin), await claim(admin)]; // the whole max_databases
      const waiters = await Promise.all(Array.from({ length: 2 }, () => client(server)));
      try {
        const claims = waiters.map((w) => claim(w).then((name) => ({ name }), (err: Error & { code?: string }) => ({ err })));
        await waitFor('claims waiting', async () =>
          Number((await admin.query(`SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'SELECT claim_test_db()%' AND state = 'active'`)).rows[0].n) === 2);
        await first.stop({ keepClaims: true });
        const configFile = configDir(yaml, EXAMPLE_SCHEMA);
        const second = new Sidecar(parseConfig(yaml, configFile), server.clientConfig());
        try {
          const started = Date.now();
          await second.start();
          const startMs = Date.now() - started;
          console.log(`faults: sidecar restart with 2 claims waiting: started in ${startMs} ms`);
          assert.ok(startMs < 5000, `start-up took ${startMs} ms with claims waiting`);
          for (const name of held) await admin.query('SELECT release_test_db($1)', [name]);
          const results = await Promise.all(claims);
          for (const r of results) assert.ok('name' in r, `a waiting claim failed: ${'err' in r ? `${r.err.code} ${r.err.message}` : ''}`);
        } finally {
          await admin.query("SELECT pgtestpool.release_all_claims('test cleanup')");
          await waitFor('cleanup drops', async () => (await admin.query("SELECT 1 FROM pgtestpool.databases WHERE state = 'dropping'")).rowCount === 0);
          await second.stop();
          removeConfigDir(configFile);
        }
      } finally {
        await Promise.all(waiters.map((w) => w.end()));
      }
    });

    test('a clone whose CREATE fails is dropped by the drop job (never left behind), and its error shows until a clone succeeds', async () => {
      await resetPool(admin);
      const sc = await startSidecar(server, simpleConfig({ minReady: 2 }));
      try {
        // The next clone's name taken by hand: its CREATE DATABASE fails ("already exists").
        const { rows } = await admin.query(`SELECT format('pgtp_default_%s_%s', (SELECT value FROM pgtestpool.settings WHERE key = 'instance'),
                                                  (SELECT last_value + 1 FROM pgtestpool.clone_seq)) AS name`);
        const squatter = rows[0].name as string;
        await admin.query(`CREATE DATABASE "${squatter}"`);
        const taken = await claim(admin);
        await waitFor('the failure recorded', async () =>
          (await admin.query(`SELECT 1 FROM pgtestpool.dropped WHERE name = $1 AND drop_reason LIKE 'creation failed:%already exists%'`, [squatter])).rowCount === 1);
        // The failed clone's row went through 'dropping' and its database (here: the squatter) is gone.
        assert.equal((await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [squatter])).rowCount, 0);
        await waitFor('the pool refilled and the error cleared', async () => {
          const { rows: s } = await admin.query(`SELECT ready, error FROM test_db_status() WHERE template = 'default'`);
          return Number(s[0].ready) >= 2 && s[0].error === null;
        });
        await admin.query('SELECT release_test_db($1)', [taken]);
      } finally {
        await sc.stop();
      }
    });

    test('lending never exceeds max_databases: the lent clone is dropped before its place is used', async () => {
      await resetPool(admin);
      const yaml = `templates:
  idle:
    schema: [schema/*.sql]
    min_ready: 2
  busy:
    schema: [schema/*.sql]
    min_ready: 2
pool:
  max_databases: 4
  poll_interval: 100ms
  lend_after: 0s
`;
      const sc = await startSidecar(server, yaml);
      const c = await client(server);
      let peak = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const { rows } = await admin.query(`SELECT count(*)::int AS n FROM pg_database WHERE datname LIKE 'pgtp\\_%' AND datname NOT LIKE 'pgtp\\_tpl\\_%'`);
          peak = Math.max(peak, rows[0].n);
          await new Promise((r) => setTimeout(r, 2));
        }
      })();
      try {
        const names = [await claim(c, 'busy'), await claim(c, 'busy'), await claim(c, 'busy')];
        await waitFor('busy served from the lent budget', async () => {
          const { rows } = await admin.query(`SELECT count(*)::int AS n FROM pgtestpool.databases WHERE template = 'busy' AND state IN ('ready', 'claimed')`);
          return rows[0].n >= 4;
        });
        sampling = false;
        await sampler;
        console.log(`faults: lending under max_databases 4: at most ${peak} clones existed`);
        assert.ok(peak <= 4, `${peak} clones existed with max_databases 4`);
        for (const n of names) await c.query('SELECT release_test_db($1)', [n]);
      } finally {
        sampling = false;
        await sampler;
        await c.end();
        await sc.stop();
      }
    });

    test('NOTIFY before the templates are prepared plans nothing: no clone of a replaced version is made at start', async () => {
      await resetPool(admin);
      const yaml = simpleConfig({ minReady: 4 });
      const first = await startSidecar(server, yaml);
      const oldTemplate = (await admin.query(`SELECT database FROM pgtestpool.templates WHERE name = 'default'`)).rows[0].database as string;
      await first.stop();
      // The files change while the sidecar is down; a client keeps sending NOTIFY all along.
      const configFile = configDir(yaml, { ...EXAMPLE_SCHEMA, 'schema/003.sql': 'CREATE TABLE extra (id int);' });
      const notifier = await client(server);
      let notifying = true;
      const spam = (async () => {
        while (notifying) await notifier.query(`NOTIFY pgtestpool, 'claim'`);
      })();
      const since = (await admin.query('SELECT clock_timestamp() AS t')).rows[0].t as Date;
      const second = new Sidecar(parseConfig(yaml, configFile), server.clientConfig());
      try {
        await second.start();
        await second.whenFilled(30_000);
        const stale = await admin.query(
          `SELECT name FROM test_dbs WHERE created_at >= $1 AND name IN (SELECT name FROM pgtestpool.databases WHERE source = $2
             UNION SELECT name FROM pgtestpool.dropped WHERE name LIKE 'pgtp\\_default\\_%' AND created_at >= $1 AND drop_reason = 'template rebuilt')`,
          [since, oldTemplate],
        );
        assert.deepEqual(stale.rows, [], 'clones of the replaced version were made after the restart');
      } finally {
        notifying = false;
        await spam;
        await notifier.end();
        await second.stop();
        removeConfigDir(configFile);
      }
    });

    test('stop() during the first template build ends it at once and leaves no half-built template', async () => {
      await resetPool(admin);
      const yaml = simpleConfig({ minReady: 1 });
      const configFile = configDir(yaml, { 'schema/001.sql': 'CREATE TABLE t (id int);\nSELECT pg_sleep(20);\n' });
      const sc = new Sidecar(parseConfig(yaml, configFile), server.clientConfig());
      try {
        const starting = sc.start();
        await waitFor('the build running', async () =>
          (await admin.query(`SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(20)%' AND pid <> pg_backend_pid()`)).rowCount === 1);
        const t0 = Date.now();
        await sc.stop();
        await starting;
        const ms = Date.now() - t0;
        console.log(`faults: stop() during the first template build: ${ms} ms`);
        assert.ok(ms < 3000, `stop() took ${ms} ms`);
        const { rows } = await admin.query(`SELECT datname FROM pg_database WHERE datname LIKE 'pgtp\\_tpl\\_%'`);
        assert.deepEqual(rows, []);
      } finally {
        await sc.stop();
        removeConfigDir(configFile);
      }
    });

    test('a PostgreSQL restart during the first build: start() still succeeds, and the template is built, not failed', async () => {
      await resetPool(admin);
      const yaml = simpleConfig({ minReady: 1 });
      const configFile = configDir(yaml, { ...EXAMPLE_SCHEMA, 'schema/003.sql': 'SELECT pg_sleep(1.5);\n' });
      const sc = new Sidecar(parseConfig(yaml, configFile), server.clientConfig());
      try {
        const starting = sc.start();
        await waitFor('the build running', async () =>
          (await admin.query(`SELECT 1 FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' AND pid <> pg_backend_pid()`)).rowCount === 1);
        await admin.end();
        await server.restart('fast');
        admin = await client(server);
        await starting;
        const { filled, status } = await sc.whenFilled(30_000);
        assert.ok(filled, JSON.stringify(status));
        assert.equal(status[0]!.build_state, 'ready');
        const c = await client(server);
        await c.query('SELECT release_test_db(claim_test_db())');
        await c.end();
      } finally {
        await sc.stop();
        removeConfigDir(configFile);
      }
    });

    test('reconnects leave exactly one listener; stop() leaves none', async () => {
      await resetPool(admin);
      const sc = await startSidecar(server, simpleConfig({ minReady: 1 }));
      const listeners = async () =>
        Number((await admin.query(`SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'pgtestpool listener'`)).rows[0].n);
      try {
        for (let i = 0; i < 3; i++) {
          await admin.end();
          await server.restart(i % 2 ? 'immediate' : 'fast');
          admin = await client(server);
          await waitFor('the sidecar attached again', async () => (await sc.sidecar.whenFilled(100)).filled && (await listeners()) >= 1);
        }
        await new Promise((r) => setTimeout(r, 1000)); // a leaked reconnect loop would have reconnected by now
        assert.equal(await listeners(), 1);
      } finally {
        await sc.stop();
      }
      await waitFor('no listener left', async () => (await listeners()) === 0, 5000);
    });

    test('a reconnect keeps serving a watched template whose broken edit is in place', async () => {
      await resetPool(admin);
      const yaml = simpleConfig({ minReady: 1 }) + 'watch: true\n';
      const sc = await startSidecar(server, yaml);
      try {
        writeFileSync(path.join(path.dirname(sc.configFile), 'schema/002.sql'), 'THIS IS NOT SQL;');
        await waitFor('the broken edit seen', async () =>
          (await admin.query(`SELECT 1 FROM pgtestpool.templates WHERE state = 'failed' AND database IS NOT NULL`)).rowCount === 1);
        await admin.end();
        await server.restart('fast');
        admin = await client(server);
        await waitFor('attached again', async () => (await sc.sidecar.whenFilled(100)).filled, 15_000);
        const name = await claim(admin); // the old version still serves
        await admin.query('SELECT release_test_db($1)', [name]);
        const { rows } = await admin.query(`SELECT state, database IS NOT NULL AS serving FROM pgtestpool.templates`);
        assert.deepEqual(rows, [{ state: 'failed', serving: true }]);
      } finally {
        await sc.stop();
      }
    });

    test('the control tables stay small over many claim/release cycles, whatever autovacuum does', async () => {
      await resetPool(admin);
      await admin.query('ALTER TABLE pgtestpool.databases SET (autovacuum_enabled = false)');
      const sc = await startSidecar(server, simpleConfig({ minReady: 4 }));
      const c = await client(server);
      const size = async () => Number((await admin.query(`SELECT pg_relation_size('pgtestpool.databases') AS b`)).rows[0].b);
      try {
        const start = await size();
        const cycles = 1000;
        for (let i = 0; i < cycles; i++) await c.query('SELECT release_test_db(claim_test_db())');
        await waitFor('drops done', async () => (await admin.query(`SELECT 1 FROM pgtestpool.databases WHERE state = 'dropping'`)).rowCount === 0, 60_000);
        await new Promise((r) => setTimeout(r, 1_500)); // one vacuum period
        const end = await size();
        console.log(`faults: control table after ${cycles} cycles (autovacuum off): ${start / 1024} kB -> ${end / 1024} kB`);
        assert.ok(end <= 96 * 1024, `pgtestpool.databases grew to ${end / 1024} kB`);
      } finally {
        await admin.query('ALTER TABLE pgtestpool.databases RESET (autovacuum_enabled)');
        await c.end();
        await sc.stop();
      }
    });
  });
}
