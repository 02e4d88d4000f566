// Templates built from the test side through SQL: CALL begin_template(name, version) returns a
// database to migrate (or NULL when that version serves), CALL finish_template(name) seals it.
// One builder at a time, a builder that leaves is rolled back, versions survive a sidecar
// restart, a test role can build its own, and every misuse says what to do.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { client, databaseExists, simpleConfig, startServer, startSidecar, testInstalls, waitFor, type RunningSidecar } from './harness.ts';

const installs = await testInstalls();

async function begin(c: pg.Client, name: string, version: string): Promise<string | null> {
  return (await c.query('CALL begin_template($1, $2)', [name, version])).rows[0].database;
}

/** Migrates `db` as a tool would: its own connection, closed before finish_template. */
async function migrate(server: EmbeddedServer, db: string, sql: string, user?: { user: string; password: string }): Promise<void> {
  const c = await client(server, db, user);
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

async function claimedRows(server: EmbeddedServer, admin: pg.Client, template: string, sql: string): Promise<unknown[]> {
  const name = (await admin.query('SELECT claim_test_db($1) AS n', [template])).rows[0].n;
  const c = await client(server, name);
  try {
    return (await c.query(sql)).rows;
  } finally {
    await c.end();
    await admin.query('SELECT release_test_db($1)', [name]);
  }
}

async function rejects(p: Promise<unknown>, pattern: RegExp, hint?: RegExp): Promise<void> {
  await assert.rejects(p, (err: Error & { hint?: string }) => {
    assert.match(err.message, pattern);
    if (hint) assert.match(err.hint ?? '', hint);
    return true;
  });
}

for (const install of installs) {
  describe(`templates built through SQL, PostgreSQL ${install.major}`, () => {
    let server: EmbeddedServer;
    let admin: pg.Client;
    let sc: RunningSidecar;
    before(async () => {
      server = await startServer(install);
      admin = await client(server);
      sc = await startSidecar(server, simpleConfig({ minReady: 1 }));
    });
    after(async () => {
      await sc?.stop();
      await admin?.end();
      await server?.stop();
    });

    test('begin, migrate, finish: claims get it; the same version again is NULL at once, also after a sidecar restart', async () => {
      const db = await begin(admin, 'app', 'v1');
      assert.match(db!, /^pgtp_tpl_app_/);
      await migrate(server, db!, "CREATE TABLE things (id int PRIMARY KEY, label text); INSERT INTO things VALUES (1, 'seeded')");
      await admin.query("CALL finish_template('app')");
      assert.deepEqual(await claimedRows(server, admin, 'app', 'SELECT * FROM things'), [{ id: 1, label: 'seeded' }]);
      assert.equal(await begin(admin, 'app', 'v1'), null, 'that version serves: nothing to build');
      const { rows } = await admin.query("SELECT datistemplate, datallowconn FROM pg_database WHERE datname = $1", [db]);
      assert.deepEqual(rows, [{ datistemplate: true, datallowconn: false }], 'sealed: a template nobody can enter');

      await sc.stop();
      sc = await startSidecar(server, simpleConfig({ minReady: 1 }));
      assert.equal(await begin(admin, 'app', 'v1'), null, 'kept across a restart (it is not in config.yaml, and not forgotten)');
      assert.deepEqual(await claimedRows(server, admin, 'app', 'SELECT count(*)::int AS n FROM things'), [{ n: 1 }]);
    });

    test('a new version builds beside the serving one; claims switch when it is sealed and the old one is dropped', async () => {
      const v1 = (await admin.query("SELECT database FROM pgtestpool.templates WHERE name = 'app'")).rows[0].database;
      const db = await begin(admin, 'app', 'v2');
      assert.notEqual(db, v1);
      await migrate(server, db!, 'CREATE TABLE things (id int PRIMARY KEY, label text); CREATE TABLE extra (id int)');
      assert.deepEqual(await claimedRows(server, admin, 'app', "SELECT to_regclass('extra') IS NULL AS old"), [{ old: true }], 'v1 meanwhile');
      await admin.query("CALL finish_template('app')");
      assert.deepEqual(await claimedRows(server, admin, 'app', "SELECT to_regclass('extra') IS NOT NULL AS new"), [{ new: true }]);
      await waitFor('the old version dropped', async () => ((await databaseExists(admin, v1)) ? null : true), 10_000);
    });

    test('concurrent callers: one builds, the others wait and then get NULL; a builder that leaves is rolled back for the next', async () => {
      const a = await client(server);
      const b = await client(server);
      const c = await client(server);
      try {
        const built = await begin(a, 'shared', 'v1');
        assert.ok(built);
        let bDone: string | null | undefined;
        const bWaits = begin(b, 'shared', 'v1').then((r) => (bDone = r));
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(bDone, undefined, 'waits while a builds');
        // a leaves without finishing: its half-built database is dropped, and b builds instead.
        await a.end();
        const taken = await bWaits;
        assert.ok(taken && taken !== built, `b builds in a new database (${taken})`);
        await waitFor('the abandoned database dropped', async () => ((await databaseExists(admin, built!)) ? null : true), 10_000);
        // Meanwhile claims wait for b's build (not "failed"), and the appliance stays healthy: a
        // template built through SQL is its builder's business.
        assert.equal((await admin.query("SELECT state FROM pgtestpool.templates WHERE name = 'shared'")).rows[0].state, 'building');
        assert.equal((await admin.query('SELECT pgtestpool.health() AS h')).rows[0].h, 'ok');
        let cDone: string | null | undefined;
        const cWaits = begin(c, 'shared', 'v1').then((r) => (cDone = r));
        await migrate(server, taken, 'CREATE TABLE t (id int)');
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(cDone, undefined, 'c waits while b builds');
        await b.query("CALL finish_template('shared')");
        assert.equal(await cWaits, null, 'c gets the version b built');
        assert.deepEqual(await claimedRows(server, admin, 'shared', "SELECT to_regclass('t') IS NOT NULL AS ok"), [{ ok: true }]);
      } finally {
        await a.end().catch(() => {});
        await b.end();
        await c.end();
      }
    });

    test('misuse says what to do: in a transaction, open connections, another session, a config template, bad arguments', async () => {
      await admin.query('BEGIN');
      await rejects(admin.query("CALL begin_template('x', 'v1')"), /invalid transaction termination/);
      await admin.query('ROLLBACK');
      assert.equal((await admin.query("SELECT count(*)::int AS n FROM pgtestpool.templates WHERE name = 'x'")).rows[0].n, 0, 'nothing left behind');
      await rejects(admin.query("CALL begin_template('default', 'v1')"), /template 'default' is built from config\.yaml/);
      await rejects(admin.query("CALL begin_template('', 'v1')"), /a template name of 1 to 40 bytes/);
      await rejects(admin.query("CALL begin_template('x', NULL)"), /a version of 1 to 200 characters/, /sha256 of the migration files/);
      await rejects(admin.query("CALL finish_template('nothing')"), /no template built through SQL is named 'nothing'/, /begin_template/);

      const db = await begin(admin, 'misuse', 'v1');
      const open = await client(server, db!);
      try {
        await rejects(admin.query("CALL finish_template('misuse')"), /1 connection\(s\) to pgtp_tpl_misuse_\w+ are still open/, /close your migration tool's connections/);
      } finally {
        await open.end();
      }
      const other = await client(server);
      try {
        await rejects(other.query("CALL finish_template('misuse')"), /this session is not building template 'misuse'/);
      } finally {
        await other.end();
      }
      await admin.query("CALL finish_template('misuse')");
    });

    test('a test role builds its own template: it owns the objects and the claimed clones; another role cannot replace it', async () => {
      await admin.query("DROP ROLE IF EXISTS app_builder; CREATE ROLE app_builder LOGIN PASSWORD 'builder-pw'");
      await admin.query("DROP ROLE IF EXISTS intruder; CREATE ROLE intruder LOGIN PASSWORD 'intruder-pw'");
      const role = { user: 'app_builder', password: 'builder-pw' };
      const me = await client(server, 'postgres', role);
      const them = await client(server, 'postgres', { user: 'intruder', password: 'intruder-pw' });
      try {
        const db = await begin(me, 'owned', 'v1');
        await migrate(server, db!, 'CREATE SCHEMA app; CREATE TABLE app.items (id int)', role);
        await me.query("CALL finish_template('owned')");
        const name = (await me.query("SELECT claim_test_db('owned') AS n")).rows[0].n;
        const clone = await client(server, name, role);
        await clone.query('INSERT INTO app.items VALUES (1); CREATE TABLE app.more (id int)');
        assert.equal((await clone.query('SELECT current_database() AS d')).rows[0].d, name);
        await clone.end();
        assert.equal((await admin.query('SELECT pg_get_userbyid(datdba) AS o FROM pg_database WHERE datname = $1', [name])).rows[0].o, 'app_builder');
        await me.query('SELECT release_test_db($1)', [name]);
        await rejects(them.query("CALL begin_template('owned', 'v2')"), /permission denied to build template 'owned'/, /build it as that role or a superuser/);
        await rejects(them.query('SELECT * FROM pgtestpool.templates'), /permission denied/);
      } finally {
        await me.end();
        await them.end();
        await waitFor('clones of the roles gone', async () =>
          (await admin.query("SELECT 1 FROM pgtestpool.databases WHERE state IN ('claimed', 'dropping') AND template = 'owned'")).rowCount === 0 || null, 10_000);
      }
    });
  });
}
