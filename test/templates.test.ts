// Templates from config.yaml: migration folders in each tool's layout, extensions, seeds,
// per-clone settings and grants, the owner role, content-hash reuse, live rebuild with `watch`,
// several templates at once, and the real pagila dumps on every installed major.
import assert from 'node:assert/strict';
import fs, { readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { dumpVersionHint, extensionHint, featureHint, resourceShortage } from '../src/buildhints.ts';
import { parseConfig } from '../src/config.ts';
import type { EmbeddedServer } from '../src/embedded.ts';
import { resolveSources } from '../src/sources.ts';
import { runSqlText, splitSql, SqlScriptError } from '../src/sqlscript.ts';
import { Templates } from '../src/templates.ts';
import { installSchema } from '../src/schema.ts';
import { PAGILA_DIR, claim, client, configDir, databaseExists, removeConfigDir, resetPool, startServer, startSidecar, status, testInstalls, waitFor } from './harness.ts';

const installs = await testInstalls();
const newest = installs[installs.length - 1]!;

// Five or more migrations per format, named out of order on purpose, with a version 10 after 9:
// in text order "10" sorts before "9", and 10 alters what 9 creates, so a wrong order fails the build.
const MIGRATION_SQL = [
  'CREATE TABLE applied (version int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());',
  'CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL UNIQUE);',
  'CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id bigint NOT NULL REFERENCES users);',
  'CREATE INDEX orders_user_idx ON orders (user_id);',
  "INSERT INTO users (email) VALUES ('first@example.com');",
  'CREATE TABLE invoices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders);',
  'ALTER TABLE invoices ADD COLUMN total_cents integer NOT NULL DEFAULT 0;',
];
const VERSIONS = [1, 2, 3, 5, 8, 9, 10];
const body = (i: number) => `${MIGRATION_SQL[i]}\nINSERT INTO applied (version) VALUES (${VERSIONS[i]});\n`;

const FORMATS: Record<string, () => Record<string, string>> = {
  flyway: () => ({
    ...Object.fromEntries(VERSIONS.map((v, i) => [`migrations/V${v}__step_${v}.sql`, body(i)])),
    'migrations/R__views.sql': 'CREATE OR REPLACE VIEW user_orders AS SELECT u.email, count(o.id) AS orders FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.email;',
    'migrations/U10__undo.sql': 'DROP TABLE nothing_here;',
  }),
  'golang-migrate': () => ({
    ...Object.fromEntries(VERSIONS.map((v, i) => [`migrations/${String(v).padStart(6, '0')}_step_${v}.up.sql`, body(i)])),
    ...Object.fromEntries(VERSIONS.map((v) => [`migrations/${String(v).padStart(6, '0')}_step_${v}.down.sql`, 'DROP TABLE nothing_here;'])),
  }),
  dbmate: () =>
    Object.fromEntries(VERSIONS.map((v, i) => [
      `migrations/2024010100000${v === 10 ? '' : '0'}${v}_step_${v}.sql`,
      `-- migrate:up${v === 3 ? ' transaction:false' : ''}\n${body(i)}\n-- migrate:down\nDROP TABLE nothing_here;\n`,
    ])),
  prisma: () => ({
    ...Object.fromEntries(VERSIONS.map((v, i) => [`migrations/2024010100${String(v).padStart(4, '0')}_step_${v}/migration.sql`, body(i)])),
    'migrations/migration_lock.toml': 'provider = "postgresql"\n',
  }),
  goose: () =>
    Object.fromEntries(VERSIONS.map((v, i) => [
      `migrations/${String(v).padStart(5, '0')}_step_${v}.sql`,
      `${v === 3 ? '-- +goose NO TRANSACTION\n' : ''}-- +goose Up\n-- +goose StatementBegin\n${body(i)}-- +goose StatementEnd\n\n-- +goose Down\nDROP TABLE nothing_here;\n`,
    ])),
  // Tags out of name order on purpose: the journal decides.
  drizzle: () => ({
    ...Object.fromEntries(VERSIONS.map((v, i) => [`migrations/${String(i).padStart(4, '0')}_step_${v}.sql`, body(i).replace(';\n', ';\n--> statement-breakpoint\n')])),
    'migrations/meta/_journal.json': JSON.stringify({ version: '7', dialect: 'postgresql', entries: VERSIONS.map((v, i) => ({ idx: i, version: '7', when: 1700000000000 + i, tag: `${String(i).padStart(4, '0')}_step_${v}`, breakpoints: true })) }),
  }),
  sqitch: () => ({
    'migrations/sqitch.plan': `%syntax-version=1.0.0\n%project=app\n\n${VERSIONS.map((v) => `step_${v} 2024-01-0${1 + (v % 8)}T00:00:00Z Ada <ada@example.com> # step ${v}`).join('\n')}\n@v1 2024-02-01T00:00:00Z Ada <ada@example.com>\n`,
    ...Object.fromEntries(VERSIONS.map((v, i) => [`migrations/deploy/step_${v}.sql`, `-- Deploy app:step_${v}\nBEGIN;\n${body(i)}COMMIT;\n`])),
    ...Object.fromEntries(VERSIONS.map((v) => [`migrations/revert/step_${v}.sql`, 'DROP TABLE nothing_here;'])),
  }),
  liquibase: () =>
    Object.fromEntries(VERSIONS.map((v, i) => [
      `migrations/changelog/${String(v).padStart(3, '0')}_step_${v}.sql`,
      `--liquibase formatted sql\n\n--changeset ada:${v}${v === 3 ? ' runInTransaction:false' : ''}\n${body(i)}--rollback DROP TABLE nothing_here;\n`,
    ])),
  numbered: () => Object.fromEntries(VERSIONS.map((v, i) => [`migrations/${v}_step_${v}.sql`, body(i)])),
};

function yaml(template: Record<string, unknown>, extra = ''): string {
  return `templates:\n  default:\n${Object.entries(template).map(([k, v]) => `    ${k}: ${JSON.stringify(v)}`).join('\n')}\npool:\n  poll_interval: 100ms\n  concurrency: 2\n${extra}`;
}

/** pagila 2026 with its pgvector parts removed, statement by statement. */
function pagila2026WithoutVector(): string {
  const text = readFileSync(path.join(PAGILA_DIR, 'pagila-schema.sql'), 'utf8');
  return splitSql(text)
    .filter((s) => !/film_embedding|EXTENSION (IF NOT EXISTS )?vector\b/.test(s.sql))
    .map((s) => s.sql)
    .join('\n\n');
}

/** The control schema on a fresh server, for tests that drive Templates without a sidecar. */
async function installControlSchema(admin: pg.Client): Promise<void> {
  await installSchema(admin);
  await resetPool(admin);
}

async function templateRow(admin: pg.Client, name = 'default'): Promise<{ state: string; error: string | null; hint: string | null; database: string | null; updated_at: Date }> {
  const { rows } = await admin.query('SELECT state, error, hint, database, updated_at FROM pgtestpool.templates WHERE name = $1', [name]);
  assert.ok(rows[0], `no row for template ${name}`);
  return rows[0];
}

/** Templates on its own (no sidecar, no pool), to drive builds, stop() and retries directly. */
async function templatesFor(server: EmbeddedServer, yamlText: string, files: Record<string, string>) {
  const configFile = configDir(yamlText, files);
  const db = new pg.Pool({ ...server.clientConfig('postgres'), max: 4 });
  const templates = new Templates(server.clientConfig('postgres'), db, parseConfig(yamlText, configFile), server.install.major);
  return {
    templates,
    async close() {
      await templates.stop();
      await db.end();
      removeConfigDir(configFile);
    },
  };
}

describe('build hints', () => {
  test('a missing extension: what to do depends on where the server comes from', () => {
    const msg = 'extensions: extension "vector" is not available';
    assert.match(extensionHint(msg, 17, 'image')!, /FROM pgtestpool:17 \+ RUN apt-get update && apt-get install -y postgresql-17-pgvector/);
    const unknown = extensionHint('extension "no_such_ext" is not available', 17, 'image')!;
    assert.doesNotMatch(unknown, /postgresql-17-no_such_ext/, 'no package name that was not verified');
    assert.match(unknown, /apt-cache search postgresql-17 no_such_ext/);
    const npm = extensionHint(msg, 18, 'npm')!;
    assert.match(npm, /no extensions beyond contrib/);
    assert.match(npm, /PGTESTPOOL_PG_BINDIR/);
    assert.doesNotMatch(npm, /apt-get|postgresql-18-/);
    const other = extensionHint('could not open extension control file "/usr/share/postgresql/15/extension/vector.control": No such file or directory', 15, 'other')!;
    assert.match(other, /the extension "vector" is not installed on this server \(PostgreSQL 15\): install it where that server runs/);
    assert.doesNotMatch(other, /apt-get|postgresql-15-/);
    assert.equal(extensionHint('relation "x" does not exist', 15, 'image'), null);
  });

  test('a dump from a newer major: both versions are named', () => {
    const dump = '--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version 18.1 (Debian 18.1-1.pgdg13+2)\n-- Dumped by pg_dump version 18.1\n\nSET x = 1;\n';
    assert.match(dumpVersionHint(dump, 15)!, /dumped from PostgreSQL 18\.1 by pg_dump 18\.1, and this server is PostgreSQL 15/);
    assert.equal(dumpVersionHint(dump, 18), null);
    assert.equal(dumpVersionHint(readFileSync(path.join(PAGILA_DIR, 'pagila-schema.sql'), 'utf8'), 15), null, 'its header says 12.11');
    assert.equal(dumpVersionHint('CREATE TABLE t (id int);', 15), null);
  });

  test('resource failures are told apart from errors in the files', () => {
    assert.deepEqual(resourceShortage(new SqlScriptError('x', { sqlstate: '53100' })), { what: 'disk space', code: 'SQLSTATE 53100 disk_full' });
    assert.equal(resourceShortage(new Error('extensions: ...', { cause: Object.assign(new Error('too many'), { code: '53300' }) }))?.what, 'connections');
    assert.equal(resourceShortage(Object.assign(new Error('write'), { code: 'ENOSPC' }))?.what, 'disk space');
    assert.equal(resourceShortage(new SqlScriptError('x', { sqlstate: '42601' })), null);
    assert.equal(resourceShortage(new Error('plain')), null);
  });
});

// Statements of newer majors, each run on every installed major: where the major has it, it must
// work (so the example is right); where not, the real error must get the hint that names it.
const NEWER_FEATURES: { major: number; what: RegExp; sql: string }[] = [
  { major: 18, what: /uuidv7\(\)/, sql: 'SELECT uuidv7();' },
  { major: 18, what: /VIRTUAL generated columns/, sql: 'CREATE TABLE virt (a int, b int GENERATED ALWAYS AS (a * 2) VIRTUAL);' },
  { major: 17, what: /JSON_TABLE/, sql: `SELECT * FROM JSON_TABLE('[{"a":1}]'::jsonb, '$[*]' COLUMNS (a int PATH '$.a')) jt;` },
  { major: 17, what: /MERGE \.\.\. RETURNING/, sql: 'CREATE TABLE m (id int); MERGE INTO m USING (SELECT 1 AS id) s ON m.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id) RETURNING m.id;' },
  { major: 17, what: /transaction_timeout/, sql: 'SET transaction_timeout = 0;' },
  { major: 17, what: /JSON_EXISTS/, sql: `SELECT JSON_VALUE('{"a":1}'::jsonb, '$.a');` },
  { major: 16, what: /any_value\(\)/, sql: 'SELECT any_value(x) FROM (VALUES (1)) v(x);' },
  { major: 16, what: /IS JSON/, sql: `SELECT '{}' IS JSON;` },
];

for (const install of installs) {
  describe(`newer-major hints on PostgreSQL ${install.major}`, () => {
    let server: EmbeddedServer;
    before(async () => {
      server = await startServer(install);
    });
    after(async () => {
      await server?.stop();
    });
    for (const f of NEWER_FEATURES) {
      test(`${f.sql.slice(0, 50)} (PostgreSQL ${f.major}+)`, async () => {
        const c = await client(server);
        try {
          await c.query('BEGIN');
          const run = runSqlText(c, f.sql, 'f.sql');
          if (install.major >= f.major) {
            await run;
            return;
          }
          const err = await run.then(() => assert.fail('expected an error'), (e: SqlScriptError) => e);
          const hint = featureHint(err.pgMessage ?? '', err.statement ?? '', install.major);
          assert.ok(hint, `no hint for: ${err.pgMessage}`);
          assert.match(hint, f.what);
          assert.match(hint, new RegExp(`needs PostgreSQL ${f.major} or newer, and this server is PostgreSQL ${install.major}`));
        } finally {
          await c.query('ROLLBACK').catch(() => {});
          await c.end();
        }
      });
    }
  });
}

describe(`templates (PostgreSQL ${newest.major})`, () => {
  let server: EmbeddedServer;
  let admin: pg.Client;
  before(async () => {
    server = await startServer(newest);
    admin = await client(server);
    await installControlSchema(admin);
  });
  after(async () => {
    await admin?.end();
    await server?.stop();
  });

  for (const [format, files] of Object.entries(FORMATS)) {
    test(`migrations, format ${format}: applied in numeric version order`, async () => {
      const sc = await startSidecar(server, yaml({ migrations: { dir: 'migrations', format }, min_ready: 1 }), files());
      try {
        const db = await client(server, await claim(admin));
        const { rows } = await db.query('SELECT version FROM applied ORDER BY at');
        assert.deepEqual(rows.map((r) => r.version), VERSIONS, 'every up migration, in numeric order, once');
        assert.equal((await db.query("SELECT count(*)::int AS n FROM information_schema.columns WHERE table_name = 'invoices' AND column_name = 'total_cents'")).rows[0].n, 1);
        if (format === 'flyway') assert.equal((await db.query('SELECT count(*)::int AS n FROM user_orders')).rows[0].n, 1, 'repeatable migration ran last');
        await db.end();
      } finally {
        await sc.stop();
      }
    });
  }

  test('extensions, schema, seed; per-clone settings and grants', async () => {
    await admin.query('DROP ROLE IF EXISTS report_reader; CREATE ROLE report_reader');
    const files = {
      'schema/1.sql': 'CREATE TABLE people (email citext PRIMARY KEY, token text DEFAULT encode(gen_random_bytes(8), \'hex\'));',
      'seed/1.sql': "INSERT INTO people (email) VALUES ('Ada@Example.com');",
    };
    const sc = await startSidecar(server, yaml({
      extensions: ['citext', 'pgcrypto'], schema: ['schema/*.sql'], seed: ['seed/*.sql'], min_ready: 1,
      settings: { timezone: 'Pacific/Auckland', statement_timeout: '5s' }, grants: { report_reader: ['CONNECT'] },
    }), files);
    try {
      const name = await claim(admin);
      const db = await client(server, name);
      assert.equal((await db.query("SELECT count(*)::int AS n FROM people WHERE email = 'ada@example.com'")).rows[0].n, 1, 'citext + seed');
      assert.equal((await db.query('SHOW timezone')).rows[0].TimeZone, 'Pacific/Auckland');
      assert.equal((await db.query('SHOW statement_timeout')).rows[0].statement_timeout, '5s');
      await db.end();
      assert.equal((await admin.query("SELECT has_database_privilege('report_reader', $1, 'CONNECT') AS ok", [name])).rows[0].ok, true);
    } finally {
      await sc.stop();
      await resetPool(admin); // clones carry grants to the role
      await admin.query('DROP ROLE report_reader');
    }
  });

  test('schema/**/*.sql in a folder with a symlink loop applies each file once', async () => {
    const inputs = configDir('', {
      'schema/0_table.sql': 'CREATE TABLE applied (file text);',
      'schema/a.sql': "INSERT INTO applied VALUES ('a');",
      'schema/sub/b.sql': "INSERT INTO applied VALUES ('b');",
    });
    const dir = path.dirname(inputs);
    symlinkSync(path.join(dir, 'schema'), path.join(dir, 'schema/sub/loop')); // schema/sub/loop/sub/loop/...
    try {
      const { steps, problems } = resolveSources({ schema: ['schema/**/*.sql'], migrations: [], command: null, inputs: [], seed: [] }, dir);
      assert.deepEqual(problems, []);
      assert.deepEqual(steps.map((s) => s.display), ['schema/0_table.sql', 'schema/a.sql', 'schema/sub/b.sql']);
      const sc = await startSidecar(server, yaml({ schema: [`${dir}/schema/**/*.sql`], min_ready: 1 }), {});
      try {
        const db = await client(server, await claim(admin));
        const { rows } = await db.query('SELECT file, count(*)::int AS n FROM applied GROUP BY file ORDER BY file');
        assert.deepEqual(rows, [{ file: 'a', n: 1 }, { file: 'b', n: 1 }]);
        await db.end();
      } finally {
        await sc.stop();
      }
    } finally {
      removeConfigDir(inputs);
    }
  });

  test('a missing extension fails the template at once, naming it; the hint is stored apart', async () => {
    const sc = await startSidecar(server, yaml({ extensions: ['no_such_ext'], schema: [], min_ready: 1 }), {});
    try {
      const started = Date.now();
      await assert.rejects(claim(admin), (err: Error & { detail?: string }) => {
        assert.match(err.message, /template 'default' failed to build/);
        assert.match(err.detail ?? '', /extensions: extension "no_such_ext" is not available/);
        assert.doesNotMatch(err.detail ?? '', /HINT/, 'the hint is not part of the error');
        return true;
      });
      assert.ok(Date.now() - started < 1000);
      const row = await templateRow(admin);
      assert.doesNotMatch(row.error!, /HINT/);
      assert.match(row.hint ?? '', new RegExp(`the extension "no_such_ext" is not installed on this server \\(PostgreSQL ${newest.major}\\)`));
    } finally {
      await sc.stop();
    }
  });

  test('a file dumped from a newer major fails with a hint naming both versions', async () => {
    const newer = `${newest.major + 1}.2`;
    const dump = `--\n-- PostgreSQL database dump\n--\n\n-- Dumped from database version ${newer}\n-- Dumped by pg_dump version ${newer}\n\nCREATE TABLE ok (id int);\nSELECT some_function_of_the_future();\n`;
    const sc = await startSidecar(server, yaml({ schema: ['dump.sql'], min_ready: 1 }), { 'dump.sql': dump });
    try {
      await assert.rejects(claim(admin), /failed to build/);
      const row = await templateRow(admin);
      assert.equal(row.state, 'failed');
      assert.match(row.error!, /^dump\.sql:9: ERROR: +function some_function_of_the_future\(\) does not exist/);
      assert.doesNotMatch(row.error!, /HINT/, "PostgreSQL's own hint (explicit type casts) is not in the error");
      assert.match(row.hint!, new RegExp(`dumped from PostgreSQL ${newer.replace('.', '\\.')} by pg_dump ${newer.replace('.', '\\.')}, and this server is PostgreSQL ${newest.major}`));
    } finally {
      await sc.stop();
    }
  });

  test('stop() during a build ends it at once and leaves no template database behind', async () => {
    // Many tiny statements: between them the build's backend is idle most of the time, and a
    // cancel (pg_cancel_backend) arriving then finds nothing to cancel: the build ran on to its end.
    const files = { 'schema/a.sql': 'CREATE TABLE t (id int);', 'schema/b.sql': 'SELECT 1;\n'.repeat(100_000) };
    const tpl = await templatesFor(server, yaml({ schema: ['schema/*.sql'], min_ready: 1 }), files);
    try {
      const [v] = await tpl.templates.prepare();
      const building = tpl.templates.build(v!);
      let settled = false;
      void building.finally(() => (settled = true));
      await waitFor('the build idle between two statements', async () =>
        (await admin.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgtestpool template build' AND state = 'idle' AND query = 'SELECT 1;'")).rowCount! > 0);
      const started = performance.now();
      await tpl.templates.stop();
      const stopMs = performance.now() - started;
      assert.equal(await databaseExists(admin, v!.dbName), false, 'the half-built template is dropped by the time stop() returns');
      await Promise.race([building, new Promise((r) => setTimeout(r, 3000))]);
      assert.ok(settled, 'the build ended');
      const ms = performance.now() - started;
      assert.ok(ms < 1000, `stop() took ${stopMs.toFixed(0)} ms, the build ended ${ms.toFixed(0)} ms after it`);
      assert.equal(await building, false);
      const { rows } = await admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'pgtp\\_tpl\\_%'");
      assert.deepEqual(rows, []);
      assert.notEqual((await templateRow(admin)).state, 'ready');
    } finally {
      await tpl.close();
      await resetPool(admin);
    }
  });

  test('a build that failed for lack of a resource is retried until it succeeds; a bad file is not', async () => {
    // temp_file_limit stands in for a full disk: the same class of error (53, insufficient resources).
    await admin.query("ALTER ROLE postgres SET temp_file_limit = '64kB'");
    const cfg = `templates:
  default:
    schema: [spill.sql]
    min_ready: 1
  broken:
    schema: [broken.sql]
    min_ready: 1
`;
    const tpl = await templatesFor(server, cfg, {
      'spill.sql': 'CREATE TABLE sorted AS SELECT g FROM generate_series(1, 300000) g ORDER BY g DESC;',
      'broken.sql': 'CREATE TABLE (;',
    });
    try {
      for (const v of await tpl.templates.prepare()) await tpl.templates.build(v);
      let row = await templateRow(admin);
      assert.equal(row.state, 'failed');
      assert.match(row.error!, /^spill\.sql:1: ERROR: +temporary file size exceeds "?temp_file_limit/);
      assert.match(row.error!, /ran out of a configured limit \(SQLSTATE 53400 configuration_limit_exceeded\): the build is retried automatically/);
      assert.match(row.hint!, /retried by itself/);
      const broken = await templateRow(admin, 'broken');
      assert.equal(broken.state, 'failed');
      assert.doesNotMatch(broken.error!, /retried/);

      await tpl.templates.retryFailed(); // not due yet (1 s backoff)
      await new Promise((r) => setTimeout(r, 1300));
      await tpl.templates.retryFailed(); // due: fails again, next in 2 s
      await waitFor('the second attempt', async () => /attempt 2 failed/.test((await templateRow(admin)).error ?? ''));

      await admin.query('ALTER ROLE postgres RESET temp_file_limit'); // the "disk" has room again
      await waitFor('the template built by a retry', async () => {
        await tpl.templates.retryFailed(); // what the sidecar's poll does
        return (await templateRow(admin)).state === 'ready';
      }, 15_000);
      row = await templateRow(admin);
      assert.equal(row.error, null);
      assert.equal(row.hint, null);
      assert.ok(row.database && (await databaseExists(admin, row.database)));
      const after = await templateRow(admin, 'broken');
      assert.equal(after.state, 'failed');
      assert.deepEqual(after.updated_at, broken.updated_at, 'the bad file was not built again');
    } finally {
      await admin.query('ALTER ROLE postgres RESET temp_file_limit');
      await tpl.close();
      await resetPool(admin);
    }
  });

  test('owner: the role owns its claimed clone and its objects, and reaches nothing else', async () => {
    await admin.query("DROP ROLE IF EXISTS app_owner; CREATE ROLE app_owner LOGIN PASSWORD 'owner-pw'");
    const as = { user: 'app_owner', password: 'owner-pw' };
    const files = { 'schema/1.sql': 'CREATE SCHEMA app; CREATE TABLE app.items (id serial PRIMARY KEY, label text); CREATE TABLE notes (id int); CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$; CREATE TYPE mood AS ENUM (\'ok\');' };
    const sc = await startSidecar(server, yaml({ schema: ['schema/*.sql'], owner: 'app_owner', min_ready: 2 }), files);
    const owner = await client(server, 'postgres', as);
    try {
      const mine = await claim(owner);
      const db = await client(server, mine, as);
      await db.query("INSERT INTO app.items (label) VALUES ('x')");
      await db.query('CREATE TABLE scratch (id int); DROP TABLE notes; ALTER TYPE mood ADD VALUE \'meh\'');
      assert.equal((await db.query('SELECT app.f() AS v')).rows[0].v, 1);
      await db.end();
      const ready = (await admin.query("SELECT name FROM test_dbs WHERE state = 'ready' LIMIT 1")).rows[0].name;
      await assert.rejects(client(server, ready, as), /not currently accepting connections/); // ready clones are closed to all
      const tpl = (await status(admin)).template_database as string;
      await assert.rejects(client(server, tpl, as), /not currently accepting connections|permission denied/);
      await assert.rejects(owner.query(`DROP DATABASE "${ready}"`), /must be owner/);
      await assert.rejects(owner.query(`DROP DATABASE "${tpl}"`), /must be owner|cannot drop a template/);
    } finally {
      await owner.end();
      await sc.stop();
      await resetPool(admin); // the template's objects belong to the role
      await admin.query('DROP ROLE app_owner');
    }
  });

  test('owner: partitioned tables, their partitions and identity columns belong to the role too', async () => {
    await admin.query("DROP ROLE IF EXISTS part_owner; CREATE ROLE part_owner LOGIN PASSWORD 'pw'");
    const files = { 'schema/1.sql': `CREATE TABLE meas (id bigint GENERATED ALWAYS AS IDENTITY, at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE meas_2024 PARTITION OF meas FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE meas_2025 PARTITION OF meas FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE MATERIALIZED VIEW meas_totals AS SELECT count(*) AS n FROM meas;` };
    const sc = await startSidecar(server, yaml({ schema: ['schema/*.sql'], owner: 'part_owner', min_ready: 1 }), files);
    try {
      const name = await claim(admin);
      const db = await client(server, name, { user: 'part_owner', password: 'pw' });
      await db.query("INSERT INTO meas (at, v) VALUES ('2024-05-01', 1), ('2025-05-01', 2)");
      await db.query('ALTER TABLE meas_2025 ADD CONSTRAINT positive CHECK (v > 0)');
      await db.query('REFRESH MATERIALIZED VIEW meas_totals');
      await db.end();
    } finally {
      await sc.stop();
      await resetPool(admin);
      await admin.query('DROP ROLE part_owner');
    }
  });

  test('settings: list settings keep their elements; grants to a missing role fail the template at once', async () => {
    const files = { 'schema/1.sql': 'CREATE SCHEMA app; CREATE TABLE app.thing (id int);' };
    const ok = await startSidecar(server, yaml({ schema: ['schema/*.sql'], min_ready: 1, settings: { search_path: 'app, public' } }), files);
    try {
      const db = await client(server, await claim(admin));
      assert.equal((await db.query('SHOW search_path')).rows[0].search_path, 'app, public');
      await db.query('SELECT * FROM thing');
      await db.end();
    } finally {
      await ok.stop();
    }
    const bad = await startSidecar(server, yaml({ schema: ['schema/*.sql'], min_ready: 1, grants: { no_such_role: ['CONNECT'] } }), files);
    try {
      await assert.rejects(claim(admin), (err: Error & { detail?: string }) => {
        assert.match(err.detail ?? '', /settings\/grants: role "no_such_role" does not exist/);
        return true;
      });
    } finally {
      await bad.stop();
    }
  });

  test('a restart with changed settings does not hand out clones made with the old ones', async () => {
    const files = { 'schema/1.sql': 'CREATE TABLE t (id int);' };
    const first = await startSidecar(server, yaml({ schema: ['schema/*.sql'], min_ready: 2, settings: { timezone: 'UTC' } }), files);
    await first.stop();
    const second = await startSidecar(server, yaml({ schema: ['schema/*.sql'], min_ready: 2, settings: { timezone: 'Asia/Tokyo' } }), files);
    try {
      for (let i = 0; i < 3; i++) {
        const db = await client(server, await claim(admin));
        assert.equal((await db.query('SHOW timezone')).rows[0].TimeZone, 'Asia/Tokyo');
        await db.end();
      }
    } finally {
      await second.stop();
    }
  });

  test('watch polls by listing and stat alone: no input file is read until one changes', async () => {
    const sc = await startSidecar(server, yaml({ schema: [], migrations: [{ dir: 'db', format: 'numbered' }], min_ready: 1, watch: true }), {
      'db/001_a.sql': 'CREATE TABLE m1 (id int);',
      'db/002_b.sql': 'CREATE TABLE m2 (id int);',
    });
    const dir = path.dirname(sc.configFile);
    const reads: string[] = [];
    const readFile = fs.readFileSync;
    // Every module's `import { readFileSync } from 'node:fs'` sees this (syncBuiltinESMExports).
    fs.readFileSync = ((file: fs.PathOrFileDescriptor, ...rest: unknown[]) => {
      if (String(file).startsWith(dir)) reads.push(String(file));
      return (readFile as (...a: unknown[]) => unknown)(file, ...rest);
    }) as typeof fs.readFileSync;
    syncBuiltinESMExports();
    try {
      await new Promise((r) => setTimeout(r, 1500)); // poll_interval 100ms: some 15 polls
      assert.equal(reads.length, 0, `unchanged inputs are never read (read: ${reads.join(', ')})`);
      writeFileSync(path.join(dir, 'db/003_c.sql'), 'CREATE TABLE m3 (id int);');
      await waitFor('the new migration serving', async () => {
        const name = await claim(admin);
        const db = await client(server, name);
        try {
          return (await db.query("SELECT to_regclass('m3') IS NOT NULL AS ok")).rows[0].ok;
        } finally {
          await db.end();
          await admin.query('SELECT release_test_db($1)', [name]);
        }
      });
      assert.ok(reads.some((f) => f.endsWith('003_c.sql')), 'a changed folder is read');
    } finally {
      fs.readFileSync = readFile;
      syncBuiltinESMExports();
      await sc.stop();
    }
  });

  test('watch: an edit undone while its build runs never serves', async () => {
    const v1 = 'CREATE TABLE u (original int); SELECT pg_sleep(0.8);';
    const sc = await startSidecar(server, yaml({ schema: ['schema/*.sql'], min_ready: 2, watch: true }), { 'schema/1.sql': v1 });
    const file = path.join(path.dirname(sc.configFile), 'schema/1.sql');
    try {
      const serving = (await status(admin)).template_database;
      writeFileSync(file, 'CREATE TABLE u (edited int); SELECT pg_sleep(0.8);');
      await waitFor('rebuild started', async () => (await status(admin)).build_state === 'building', 5000);
      writeFileSync(file, v1);
      await new Promise((r) => setTimeout(r, 2500)); // the edited version's build ends meanwhile
      const st = await status(admin);
      assert.equal(st.template_database, serving, 'still the original version');
      assert.equal(st.build_state, 'ready');
      const db = await client(server, await claim(admin));
      await db.query('SELECT original FROM u');
      await db.end();
    } finally {
      await sc.stop();
    }
  });

  test('restart with unchanged inputs reuses the template; a changed file rebuilds it', async (t) => {
    const files = { 'schema/1.sql': 'CREATE TABLE a (id int);' };
    const cfg = yaml({ schema: ['schema/*.sql'], min_ready: 4 });
    let started = performance.now();
    const first = await startSidecar(server, cfg, files);
    const cold = performance.now() - started;
    const tpl = (await status(admin)).template_database;
    await first.stop();
    started = performance.now();
    const second = await startSidecar(server, cfg, files);
    const warm = performance.now() - started;
    try {
      assert.equal((await status(admin)).template_database, tpl, 'reused, not rebuilt');
      t.diagnostic(`start-up: cold build ${cold.toFixed(0)} ms, reused template ${warm.toFixed(0)} ms`);
    } finally {
      await second.stop();
    }
    const third = await startSidecar(server, cfg, { 'schema/1.sql': 'CREATE TABLE a (id int, added int);' });
    try {
      assert.notEqual((await status(admin)).template_database, tpl, 'a changed file means a new template');
      const db = await client(server, await claim(admin));
      await db.query('SELECT added FROM a');
      await db.end();
    } finally {
      await third.stop();
    }
  });

  test('a reused template whose relcache init file is gone (server restart) gets it back before cloning', async () => {
    const files = { 'schema/1.sql': 'CREATE TABLE rewarm (id int);' };
    const cfg = yaml({ schema: ['schema/*.sql'], min_ready: 1 });
    const initFile = async () => {
      const { rows } = await admin.query<{ oid: number; size: string | null }>(
        `SELECT oid, (pg_stat_file(format('base/%s/pg_internal.init', oid), true)).size AS size FROM pg_database WHERE datname = $1`,
        [(await status(admin)).template_database]);
      return rows[0]!;
    };
    const first = await startSidecar(server, cfg, files);
    const built = await initFile();
    await first.stop();
    assert.ok(built.size !== null, 'the build leaves the init file in the template');
    // What a restart does (RelationCacheInitFileRemove), without restarting the shared server.
    rmSync(path.join(server.dataDir, 'base', String(built.oid), 'pg_internal.init'));
    assert.equal((await initFile()).size, null);
    const second = await startSidecar(server, cfg, files);
    try {
      const rewarmed = await initFile();
      assert.equal(rewarmed.oid, built.oid, 'reused, not rebuilt');
      assert.ok(rewarmed.size !== null, 'the init file is back, so clones copy it');
      const { rows } = await admin.query<{ datallowconn: boolean }>('SELECT datallowconn FROM pg_database WHERE oid = $1', [rewarmed.oid]);
      assert.equal(rows[0]!.datallowconn, false, 'closed to connections again');
    } finally {
      await second.stop();
    }
  });

  test('watch: an edit builds the new version while claims keep working; a broken edit keeps the old one', async (t) => {
    const sc = await startSidecar(server, yaml({ schema: ['schema/*.sql'], min_ready: 3, watch: true }), { 'schema/1.sql': 'CREATE TABLE v (one int);' });
    const file = path.join(path.dirname(sc.configFile), 'schema/1.sql');
    const claimer = await client(server);
    let claiming = true;
    const failures: unknown[] = [];
    // Claims in flight the whole time: none may fail.
    const loop = (async () => {
      while (claiming) {
        try {
          const name = await claim(claimer);
          await claimer.query('SELECT release_test_db($1)', [name]);
        } catch (err) {
          failures.push(err);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    try {
      const held = await claim(admin); // a clone of the first version, kept through the switch
      const v1 = (await status(admin)).template_database;
      const changed = performance.now();
      writeFileSync(file, 'CREATE TABLE v (one int, two int);');
      await waitFor('new version serving', async () => (await status(admin)).template_database !== v1, 20_000);
      const switchMs = performance.now() - changed;
      const db = await client(server, await claim(admin));
      await db.query('SELECT two FROM v');
      await db.end();
      const old = await client(server, held);
      await old.query('SELECT one FROM v'); // the held clone of the old version is untouched
      await old.end();
      await waitFor('old ready clones replaced', async () =>
        (await admin.query("SELECT 1 FROM test_dbs d WHERE d.state = 'ready' AND NOT EXISTS (SELECT 1 FROM pgtestpool.databases x JOIN pgtestpool.templates t ON t.name = x.template WHERE x.name = d.name AND x.source = t.database)")).rowCount === 0);

      // A broken edit: reported, the current version keeps serving.
      const v2 = (await status(admin)).template_database;
      writeFileSync(file, 'CREATE TABLE v (one int, two int,, broken);');
      await waitFor('failure reported', async () => (await status(admin)).build_state === 'failed', 20_000);
      const st = await status(admin);
      assert.equal(st.template_database, v2, 'the old version still serves');
      assert.match(String(st.error), /schema\/1\.sql:1: ERROR: +syntax error/);
      const still = await client(server, await claim(admin));
      await still.query('SELECT two FROM v');
      await still.end();
      // Fixed again: back to ready.
      writeFileSync(file, 'CREATE TABLE v (one int, two int, three int);');
      await waitFor('fixed version serving', async () => {
        const s = await status(admin);
        return s.build_state === 'ready' && s.template_database !== v2;
      }, 20_000);
      assert.deepEqual(failures, [], 'no claim failed during the rebuilds');
      t.diagnostic(`file change -> new version serving: ${switchMs.toFixed(0)} ms`);
    } finally {
      claiming = false;
      await loop;
      await claimer.end();
      await sc.stop();
    }
  });

  test('several templates: each its own pool within one max_databases budget', async () => {
    const cfg = `templates:
  default:
    schema: [a.sql]
    min_ready: 3
  analytics:
    schema: [b.sql]
    min_ready: 3
pool:
  max_databases: 7
  poll_interval: 100ms
`;
    const sc = await startSidecar(server, cfg, { 'a.sql': 'CREATE TABLE a (id int);', 'b.sql': 'CREATE TABLE b (id int);' });
    try {
      const b = await client(server, await claim(admin, 'analytics'));
      await b.query('SELECT * FROM b');
      await b.end();
      await waitFor('both pools full', async () => (await status(admin, 'default')).ready === 3 && (await status(admin, 'analytics')).ready === 3);
      const { rows } = await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE state IN ('ready', 'claimed', 'creating')");
      assert.ok(rows[0].n <= 7);
    } finally {
      await sc.stop();
    }
  });

  test('an unclaimed template lends its ready clones to a busy one when max_databases is spent', async () => {
    const cfg = `templates:
  default:
    schema: [a.sql]
    min_ready: 2
  analytics:
    schema: [b.sql]
    min_ready: 2
pool:
  max_databases: 4
  poll_interval: 100ms
  lend_after: 300ms
`;
    const sc = await startSidecar(server, cfg, { 'a.sql': 'CREATE TABLE a (id int);', 'b.sql': 'CREATE TABLE b (id int);' });
    try {
      await claim(admin);
      await claim(admin); // default: 2 claimed, 0 ready; analytics holds the other 2 of 4
      await waitFor('default refilled from analytics\' budget', async () => (await status(admin, 'default')).ready === 2, 10_000);
      assert.equal((await status(admin, 'analytics')).ready, 0);
      const { rows } = await admin.query("SELECT count(*)::int AS n FROM test_dbs WHERE template = 'analytics' AND drop_reason LIKE 'budget lent to template \"default\"%'");
      assert.equal(rows[0].n, 2);
      // A claim of the lender still works: it waits for budget, which a release frees.
      const other = await client(server);
      try {
        const waiting = claim(other, 'analytics');
        const held = (await admin.query("SELECT name FROM test_dbs WHERE template = 'default' AND state = 'claimed' LIMIT 1")).rows[0].name;
        await admin.query('SELECT release_test_db($1)', [held]);
        assert.match(await waiting, /^pgtp_analytics_/);
      } finally {
        await other.end();
      }
    } finally {
      await sc.stop();
    }
  });
});

for (const install of installs) {
  describe(`pagila on PostgreSQL ${install.major}`, () => {
    let server: EmbeddedServer;
    let admin: pg.Client;
    before(async () => {
      server = await startServer(install);
      admin = await client(server);
      await installControlSchema(admin);
    });
    after(async () => {
      await admin?.end();
      await server?.stop();
    });
    const files = {
      'pagila/schema.sql': readFileSync(path.join(PAGILA_DIR, 'pagila-2024-schema.sql'), 'utf8'),
      'pagila/data.sql': readFileSync(path.join(PAGILA_DIR, 'pagila-2024-data.sql'), 'utf8'),
      // After a dump that sets search_path to '' for its session: each file starts afresh.
      'pagila/extra.sql': 'CREATE TABLE extra (id int);',
    };

    test('the 2024 schema + data builds, and a claimed clone answers queries with the rows in place', async (t) => {
      const sc = await startSidecar(server, yaml({ schema: ['pagila/schema.sql', 'pagila/data.sql', 'pagila/extra.sql'], min_ready: 2 }), files);
      try {
        const st = await status(admin);
        const name = await claim(admin);
        const db = await client(server, name);
        const { rows } = await db.query('SELECT (SELECT count(*) FROM film_list)::int AS films, (SELECT count(*) FROM payment)::int AS payments, (SELECT count(*) FROM rental)::int AS rentals');
        assert.deepEqual(rows[0], { films: 2360, payments: 16049, rentals: 16044 });
        await db.query('SELECT * FROM sales_by_film_category LIMIT 3');
        await db.query('SELECT * FROM public.extra');
        await db.end();
        const build = (await admin.query('SELECT build_ms FROM pgtestpool.templates')).rows[0].build_ms;
        t.diagnostic(`pagila template built in ${build} ms (ready: ${st.ready})`);
      } finally {
        await sc.stop();
      }
    });

    test('the 2026 schema as shipped fails at once, naming what is missing', async () => {
      const sc = await startSidecar(server, yaml({ schema: ['pagila/schema-2026.sql'], min_ready: 1 }),
        { 'pagila/schema-2026.sql': readFileSync(path.join(PAGILA_DIR, 'pagila-schema.sql'), 'utf8') });
      try {
        await assert.rejects(claim(admin), (err: Error & { detail?: string }) => {
          if (install.major >= 18) {
            assert.match(err.detail ?? '', /extension "vector" is not available/);
          } else {
            assert.match(err.detail ?? '', /function uuidv7\(\) does not exist/);
          }
          assert.match(err.detail ?? '', /^pagila\/schema-2026\.sql:\d+: ERROR/);
          assert.doesNotMatch(err.detail ?? '', /HINT/);
          return true;
        });
        const { hint } = await templateRow(admin);
        if (install.major >= 18) assert.match(hint!, /the extension "vector" is not installed on this server \(PostgreSQL 18\)/);
        else assert.match(hint!, new RegExp(`uuidv7\\(\\) needs PostgreSQL 18 or newer, and this server is PostgreSQL ${install.major}`));
      } finally {
        await sc.stop();
      }
    });

    if (install.major >= 18) {
      test('the 2026 schema with its vector parts removed builds', async () => {
        const sc = await startSidecar(server, yaml({ schema: ['pagila/schema-2026.sql'], min_ready: 1 }),
          { 'pagila/schema-2026.sql': pagila2026WithoutVector() });
        try {
          const db = await client(server, await claim(admin));
          const { rows } = await db.query("SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('film', 'rental', 'payment')");
          assert.equal(rows[0].n, 3);
          await db.end();
        } finally {
          await sc.stop();
        }
      });
    }
  });
}
