// Templates built by the user's own migration tool (`command:` + `inputs:`): a real knex
// migration folder, the connection the command gets, failures with the tool's own words, the
// content hash over the inputs, watch, command_timeout and stop() ending the whole command.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { commandEnv } from '../src/command.ts';
import { ConfigError, parseConfig } from '../src/config.ts';
import type { EmbeddedServer } from '../src/embedded.ts';
import { setQuiet } from '../src/log.ts';
import { installSchema } from '../src/schema.ts';
import { resolveSources } from '../src/sources.ts';
import { templateHash, Templates } from '../src/templates.ts';
import { ROOT, claim, client, configDir, removeConfigDir, resetPool, startServer, startSidecar, testInstalls, waitFor } from './harness.ts';

const installs = await testInstalls();
const newest = installs[installs.length - 1]!;

// (NODE_PATH: the project folders are temporary, outside this repository's node_modules, and the
// knex CLI looks for knex beside the knexfile.)
const KNEX = `NODE_PATH=${JSON.stringify(path.join(ROOT, 'node_modules'))} node ${JSON.stringify(path.join(ROOT, 'node_modules', 'knex', 'bin', 'cli.js'))}`;
/** A knex project as its users lay it out: a knexfile reading DATABASE_URL and a migrations folder. */
const KNEX_PROJECT: Record<string, string> = {
  'db/knexfile.cjs': `module.exports = { client: 'pg', connection: process.env.DATABASE_URL,
  migrations: { directory: './migrations', loadExtensions: ['.cjs'] } };\n`,
  'db/migrations/20240101000000_users.cjs': `exports.up = (knex) => knex.schema.createTable('users', (t) => {
  t.bigIncrements('id'); t.text('email').notNullable().unique(); });
exports.down = (knex) => knex.schema.dropTable('users');\n`,
  'db/migrations/20240102000000_orders.cjs': `exports.up = async (knex) => {
  await knex.schema.createTable('orders', (t) => { t.bigIncrements('id'); t.bigInteger('user_id').references('users.id'); });
  await knex('users').insert({ email: 'seeded@example.com' });
};
exports.down = (knex) => knex.schema.dropTable('orders');\n`,
};

function knexYaml(extra = ''): string {
  return `templates:
  default:
    command: ${KNEX} migrate:latest --knexfile db/knexfile.cjs
    inputs: [db/knexfile.cjs, db/migrations/*.cjs]
    min_ready: 2
${extra}pool:
  poll_interval: 100ms
  concurrency: 2
`;
}

function problems(yaml: string, files: Record<string, string> = {}): string[] {
  const file = configDir(yaml, files);
  try {
    parseConfig(yaml, file);
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems;
  } finally {
    removeConfigDir(file);
  }
}

describe('command: configuration', () => {
  test('a command needs the inputs that decide when it runs again; every mistake is named with its key', () => {
    const p = problems('templates:\n  default:\n    command: ./migrate.sh\n  other:\n    inputs: [x.sql]\n  third:\n    command: make migrate\n    inputs: [nothing/*.rb]\n    command_timeout: soon\n  fourth:\n    command: ""\n    inputs: []\n');
    assert.ok(p.some((m) => /^templates\.default\.inputs: expected the files or globs the command reads/.test(m)), p.join('\n'));
    assert.ok(p.some((m) => /^templates\.other\.inputs: expected only with command:/.test(m)), p.join('\n'));
    assert.ok(p.some((m) => /^templates\.fourth\.command: expected a shell command/.test(m)), p.join('\n'));
    assert.ok(p.some((m) => /^templates\.third\.inputs\[0\]: "nothing\/\*\.rb" matches no file/.test(m)), p.join('\n'));
    assert.ok(p.some((m) => /^templates\.third\.command_timeout: expected a duration/.test(m)), p.join('\n'));
  });

  test('a valid command resolves to one step between the migrations and the seed', () => {
    const yaml = 'templates:\n  default:\n    schema: [a.sql]\n    command: make migrate\n    inputs: [m/*.rb]\n    seed: [s.sql]\n    command_timeout: 2m\n';
    const file = configDir(yaml, { 'a.sql': 'SELECT 1;', 'm/1.rb': 'x', 'm/2.rb': 'y', 's.sql': 'SELECT 2;' });
    try {
      const t = parseConfig(yaml, file).templates[0]!;
      assert.deepEqual(t.steps.map((s) => s.kind), ['schema', 'command', 'seed']);
      assert.equal(t.command, 'make migrate');
      assert.equal(t.commandTimeoutMs, 120_000);
      assert.deepEqual(t.steps[1]!.inputs!.map((f) => path.basename(f)), ['1.rb', '2.rb']);
    } finally {
      removeConfigDir(file);
    }
  });

  test('the content hash follows the command and every input file, and nothing else', () => {
    const yaml = 'templates:\n  default:\n    command: make migrate\n    inputs: [m/*.rb]\n';
    const file = configDir(yaml, { 'm/1.rb': 'create users', 'notes.txt': 'unrelated' });
    const dir = path.dirname(file);
    try {
      const t = parseConfig(yaml, file).templates[0]!;
      const hash = () => templateHash(t, resolveSources(t, dir).steps, 15);
      const first = hash();
      writeFileSync(path.join(dir, 'notes.txt'), 'changed, but not an input');
      assert.equal(hash(), first, 'a file that is not an input');
      writeFileSync(path.join(dir, 'm/1.rb'), 'create users and orders');
      const edited = hash();
      assert.notEqual(edited, first, 'an input edited');
      writeFileSync(path.join(dir, 'm/2.rb'), 'more');
      assert.notEqual(hash(), edited, 'an input added');
      assert.notEqual(templateHash({ ...t, command: 'make other' }, resolveSources({ ...t, command: 'make other' }, dir).steps, 15), hash(), 'the command changed');
    } finally {
      removeConfigDir(file);
    }
  });

  test('the command gets the connection as PG* variables and a postgresql:// URL, a socket folder as ?host=', () => {
    const tcp = commandEnv({ host: '127.0.0.1', port: 5433, user: 'postgres', password: 'p@ss/word' }, 'pgtp_tpl_x');
    assert.deepEqual({ ...tcp, DATABASE_URL: undefined }, { PGHOST: '127.0.0.1', PGPORT: '5433', PGUSER: 'postgres', PGPASSWORD: 'p@ss/word', PGDATABASE: 'pgtp_tpl_x', DATABASE_URL: undefined });
    assert.equal(tcp.DATABASE_URL, 'postgresql://postgres:p%40ss%2Fword@127.0.0.1:5433/pgtp_tpl_x');
    const sock = commandEnv({ host: '/run/postgresql', port: 5432, user: 'app' }, 'db');
    assert.equal(sock.DATABASE_URL, 'postgresql://app@/db?host=%2Frun%2Fpostgresql&port=5432');
    assert.equal(sock.PGPASSWORD, undefined);
  });
});

describe(`command: builds on PostgreSQL ${newest.major}`, () => {
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

  test('a knex migration folder builds the template; a claimed clone has its tables, rows and knex bookkeeping', async () => {
    const sc = await startSidecar(server, knexYaml(), KNEX_PROJECT);
    try {
      const name = await claim(admin);
      const db = await client(server, name);
      try {
        const { rows } = await db.query('SELECT email FROM users');
        assert.deepEqual(rows, [{ email: 'seeded@example.com' }]);
        await db.query('INSERT INTO orders (user_id) SELECT id FROM users');
        const { rows: done } = await db.query('SELECT name FROM knex_migrations ORDER BY id');
        assert.deepEqual(done.map((r) => r.name), ['20240101000000_users.cjs', '20240102000000_orders.cjs']);
      } finally {
        await db.end();
      }
    } finally {
      await sc.stop();
    }
  });

  test('watch: a new migration file rebuilds the template, and new claims get it', async () => {
    const sc = await startSidecar(server, knexYaml('    watch: true\n'), KNEX_PROJECT);
    try {
      const dir = path.dirname(sc.configFile);
      writeFileSync(path.join(dir, 'db/migrations/20240103000000_invoices.cjs'),
        "exports.up = (knex) => knex.schema.createTable('invoices', (t) => { t.bigIncrements('id'); });\nexports.down = () => {};\n");
      await waitFor('a clone of the rebuilt template', async () => {
        const name = await claim(admin);
        const db = await client(server, name);
        try {
          return (await db.query("SELECT to_regclass('invoices') IS NOT NULL AS ok")).rows[0].ok ? true : null;
        } finally {
          await db.end();
          await admin.query('SELECT release_test_db($1)', [name]);
        }
      }, 30_000);
    } finally {
      await sc.stop();
    }
  });

  describe('failures', () => {
    let db: pg.Pool;
    before(async () => {
      await installSchema(admin);
      await resetPool(admin);
      db = new pg.Pool({ ...server.clientConfig('postgres'), max: 4 });
    });
    after(async () => {
      await db?.end();
    });

    /** Builds the one template of `yaml` with Templates alone; returns its row and what pg_database holds for it after. */
    async function build(yaml: string, files: Record<string, string>, whileBuilding?: (t: Templates) => Promise<void>, conn = server.clientConfig('postgres')) {
      const file = configDir(yaml, files);
      const templates = new Templates(conn, db, parseConfig(yaml, file), server.install.major);
      try {
        const [v] = await templates.prepare();
        const building = templates.build(v!);
        await whileBuilding?.(templates);
        const ok = await building;
        const { rows } = await admin.query('SELECT state, error, hint FROM pgtestpool.templates WHERE name = $1', ['default']);
        const { rows: left } = await admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'pgtp_tpl_default_%'");
        return { ok, row: rows[0], left: left.map((r) => r.datname), dir: path.dirname(file) };
      } finally {
        await templates.stop();
        removeConfigDir(file);
      }
    }

    test('a script that is not executable: the error is the shell\'s own (exit 126, Permission denied)', async () => {
      setQuiet(true);
      try {
        const yaml = 'templates:\n  default:\n    command: ./migrate.sh\n    inputs: [migrate.sh]\n';
        const r = await build(yaml, { 'migrate.sh': '#!/bin/sh\necho never runs\n' }); // written without the x bit
        assert.equal(r.ok, false);
        assert.equal(r.row.state, 'failed');
        assert.match(r.row.error, /command "\.\/migrate\.sh" exited with code 126/);
        assert.match(r.row.error, /Permission denied/);
        assert.deepEqual(r.left, [], 'the half-built template database is dropped');
      } finally {
        setQuiet(false);
      }
    });

    test('the failure quotes the tool: exit code, stderr and stdout lines, password never', async () => {
      setQuiet(true);
      try {
        const yaml = 'templates:\n  default:\n    command: \'echo "applying 0001_users"; echo "url $DATABASE_URL pw $PGPASSWORD"; echo "ERROR: migration 0002 failed" >&2; exit 3\'\n    inputs: [config.yaml]\n';
        const secret = 'S3cret-builder-pw';
        await admin.query(`DROP ROLE IF EXISTS builder; CREATE ROLE builder SUPERUSER LOGIN PASSWORD '${secret}'`);
        const r = await build(yaml, {}, undefined, { ...server.clientConfig('postgres'), user: 'builder', password: secret });
        assert.equal(r.row.state, 'failed');
        assert.match(r.row.error, /exited with code 3/);
        assert.match(r.row.error, /applying 0001_users/);
        assert.match(r.row.error, /ERROR: migration 0002 failed/);
        assert.match(r.row.error, /url postgresql:\/\/builder:\*\*\*@127\.0\.0\.1:\d+\/pgtp_tpl_default_\w+ pw \*\*\*/);
        assert.ok(!r.row.error.includes(secret), 'the password is not in the error');
        assert.match(r.row.hint, /fix the command or the files it reads/);
        assert.deepEqual(r.left, []);
      } finally {
        setQuiet(false);
      }
    });

    test('a command still running at command_timeout is ended with everything it started', async () => {
      setQuiet(true);
      const marker = `61.${process.pid}`;
      try {
        const yaml = `templates:\n  default:\n    command: 'sleep ${marker} | cat'\n    inputs: [config.yaml]\n    command_timeout: 1s\n`;
        const started = Date.now();
        const r = await build(yaml, {});
        assert.ok(Date.now() - started < 15_000, 'not waited out');
        assert.equal(r.row.state, 'failed');
        assert.match(r.row.error, /still running after command_timeout \(1s\)/);
        await waitFor('no process of the command left', async () => (sleepers(marker) === 0 ? true : null), 5_000);
        assert.deepEqual(r.left, []);
      } finally {
        setQuiet(false);
      }
    });

    test('stop() during a command ends it at once; the template builds again at the next start', async () => {
      setQuiet(true);
      const marker = `62.${process.pid}`;
      try {
        const yaml = `templates:\n  default:\n    command: 'sleep ${marker}'\n    inputs: [config.yaml]\n`;
        const r = await build(yaml, {}, async (t) => {
          await waitFor('the command running', async () => (sleepers(marker) > 0 ? true : null), 10_000);
          const stopping = Date.now();
          await t.stop();
          assert.ok(Date.now() - stopping < 5_000, 'stop() did not wait for the command');
        });
        assert.equal(r.ok, false);
        assert.notEqual(r.row.state, 'failed', 'stopping is not the template\'s fault');
        assert.equal(sleepers(marker), 0);
        assert.deepEqual(r.left, []);
      } finally {
        setQuiet(false);
      }
    });
  });
});

/** Processes whose command line contains `marker` (a `sleep <marker>` the command started). */
function sleepers(marker: string): number {
  let n = 0;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').includes(marker)) n++;
    } catch {
      // gone
    }
  }
  return n;
}
