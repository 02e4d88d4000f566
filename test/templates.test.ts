// Templates from config.yaml: migration folders in each tool's layout, extensions, seeds,
// per-clone settings and grants, the owner role, content-hash reuse, live rebuild with `watch`,
// several templates at once, and the real pagila dumps on every installed major.
import assert from 'node:assert/strict';
import { readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { resolveSources } from '../src/sources.ts';
import { splitSql } from '../src/sqlscript.ts';
import { PAGILA_DIR, claim, client, configDir, removeConfigDir, resetPool, startServer, startSidecar, status, testInstalls, waitFor } from './harness.ts';

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

describe(`templates (PostgreSQL ${newest.major})`, () => {
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
      const { steps, problems } = resolveSources({ schema: ['schema/**/*.sql'], migrations: [], seed: [] }, dir);
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

  test('a missing extension fails the template at once, naming it and how to add it', async () => {
    const sc = await startSidecar(server, yaml({ extensions: ['no_such_ext'], schema: [], min_ready: 1 }), {});
    try {
      const started = Date.now();
      await assert.rejects(claim(admin), (err: Error & { detail?: string }) => {
        assert.match(err.message, /template 'default' failed to build/);
        assert.match(err.detail ?? '', /extensions: extension "no_such_ext" is not available/);
        assert.match(err.detail ?? '', new RegExp(`derived image: FROM pgtestpool:${newest.major} \\+ RUN apt-get update && apt-get install -y postgresql-${newest.major}-no_such_ext`));
        return true;
      });
      assert.ok(Date.now() - started < 1000);
    } finally {
      await sc.stop();
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
      await assert.rejects(client(server, ready, as), /permission denied for database/);
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
            assert.match(err.detail ?? '', /postgresql-18-pgvector/);
          } else {
            assert.match(err.detail ?? '', /function uuidv7\(\) does not exist/);
          }
          assert.match(err.detail ?? '', /^pagila\/schema-2026\.sql:\d+: ERROR/);
          return true;
        });
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
