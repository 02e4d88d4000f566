// config.yaml validation: every problem is reported at once, with its key and what is expected.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, parseConfig, parseDuration } from '../src/config.ts';
import { configDir, removeConfigDir } from './harness.ts';

function problemsOf(yaml: string, files: Record<string, string> = {}): string[] {
  const file = configDir(yaml, files);
  try {
    parseConfig(yaml, file);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${err}`);
    assert.ok(err.message.includes(file), 'the message names the file');
    return err.problems;
  } finally {
    removeConfigDir(file);
  }
  assert.fail('expected the config to be rejected');
}

test('the shipped config.yaml is valid and matches its schema folder', async () => {
  const { loadConfig } = await import('../src/config.ts');
  const { ROOT } = await import('./harness.ts');
  const config = loadConfig(`${ROOT}/config.yaml`);
  assert.equal(config.templates[0]!.name, 'default');
  assert.ok(config.templates[0]!.steps.length >= 1);
  assert.equal(config.lease.idleTimeoutMs, 30_000);
  assert.equal(config.claim.timeoutMs, 30_000);
});

test('defaults: min_ready 8, max_databases 64, idle 30s, max 1h, claim timeout 30s, strategy auto', () => {
  const file = configDir('templates:\n  default:\n    schema: [a.sql]\n', { 'a.sql': 'SELECT 1;' });
  try {
    const c = parseConfig('templates:\n  default:\n    schema: [a.sql]\n', file);
    assert.equal(c.templates[0]!.minReady, 8);
    assert.equal(c.pool.maxDatabases, 64);
    assert.equal(c.pool.strategy, null);
    assert.equal(c.lease.idleTimeoutMs, 30_000);
    assert.equal(c.lease.maxDurationMs, 3_600_000);
    assert.equal(c.claim.timeoutMs, 30_000);
    assert.ok(c.pool.concurrency >= 1);
  } finally {
    removeConfigDir(file);
  }
});

test('every problem is reported, each with its key and the expected value', () => {
  const problems = problemsOf(`
templates:
  default:
    schema: [missing/*.sql, nofile.sql]
    min_ready: -1
    extra: 1
  other:
    schema: 42
pool:
  max_databases: two
  strategy: copy
  concurrency: 0
lease:
  idle_timeout: 30
  max_duration: forever
claim:
  timeout: 5x
unknown_section: {}
`);
  const expect = [
    /^templates\.default\.extra: unknown key \(expected one of: extensions, schema, migrations, command, inputs, command_timeout, seed, settings, grants, owner, min_ready, watch\)$/,
    /^templates\.default\.min_ready: expected a whole number from 0 to 1000, got number -1$/,
    /^templates\.default\.schema\[0\]: "missing\/\*\.sql" matches no file/,
    /^templates\.default\.schema\[1\]: file "nofile\.sql" not found/,
    /^templates\.other\.schema: expected a list of SQL files or globs/,
    /^pool\.max_databases: expected a whole number from 1 to 10000, got "two"$/,
    /^pool\.strategy: expected file_copy, wal_log or auto, got "copy"$/,
    /^pool\.concurrency: expected a whole number from 1 to 64, got number 0$/,
    /^lease\.idle_timeout: expected a duration with a unit such as 500ms, 30s, 5m or 1h, got number 30$/,
    /^lease\.max_duration: expected a duration/,
    /^claim\.timeout: expected a duration/,
    /^unknown_section: unknown key/,
  ];
  for (const re of expect) assert.ok(problems.some((p) => re.test(p)), `missing problem ${re}; got:\n${problems.join('\n')}`);
  assert.equal(problems.length, expect.length, problems.join('\n'));
});

test('duplicate template names, an empty file and min_ready above max_databases are reported', () => {
  assert.match(problemsOf('templates:\n  a:\n    schema: []\n  a:\n    schema: []\n').join('\n'), /unique/i);
  assert.match(problemsOf('').join('\n'), /^templates: expected a mapping/m);
  assert.match(
    problemsOf('templates:\n  a:\n    schema: []\n    min_ready: 10\npool:\n  max_databases: 4\n').join('\n'),
    /pool\.max_databases: expected at least the sum of every template's min_ready \(10\), got 4/,
  );
  assert.match(problemsOf('templates: [\n').join('\n'), /^YAML: /m);
});

test('durations', () => {
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration('30s'), 30_000);
  assert.equal(parseDuration('1h30m'), 5_400_000);
  assert.equal(parseDuration('1.5s'), 1500);
  assert.equal(parseDuration('30'), null);
  assert.equal(parseDuration(30), null);
  assert.equal(parseDuration('soon'), null);
});

test('template sources, settings, grants, owner and watch: every mistake reported with its key', () => {
  const problems = problemsOf(`
watch: sometimes
templates:
  default:
    extensions: [citext, "bad ext"]
    migrations: {dir: db/migrations, format: alembic}
    seed: [../outside/seed.sql]
    settings: {"bad name!": 1, timezone: [UTC]}
    grants: {reader: [SELECT]}
    owner: 42
  other:
    migrations:
      - {dir: missing_folder, format: flyway}
`, { 'db/migrations/V1__a.sql': 'SELECT 1;' });
  const expect = [
    /^watch: expected true or false, got "sometimes"$/,
    /^templates\.default\.extensions\[1\]: expected an extension name/,
    /^templates\.default\.migrations\.format: expected one of flyway, golang-migrate, dbmate, prisma, goose, drizzle, sqitch, liquibase, numbered, got "alembic"$/,
    /^templates\.default\.seed\[0\]: file "\.\.\/outside\/seed\.sql" not found .*it is outside the config's folder .*mount it or move it under that folder$/,
    /^templates\.default\.settings\.bad name!: expected a PostgreSQL setting name$/,
    /^templates\.default\.settings\.timezone: expected a string, number or boolean, got a list$/,
    /^templates\.default\.grants\.reader: expected a list of database privileges among CONNECT, TEMPORARY, TEMP, CREATE, ALL/,
    /^templates\.default\.owner: expected a role name, got number 42$/,
    /^templates\.other\.migrations\[0\]: migrations folder .*missing_folder/,
  ];
  for (const re of expect) assert.ok(problems.some((p) => re.test(p)), `missing problem ${re}; got:\n${problems.join('\n')}`);
  assert.equal(problems.length, expect.length, problems.join('\n'));
});

test('watch defaults to the top-level value and a template may override it', () => {
  const text = 'watch: true\ntemplates:\n  a:\n    schema: []\n  b:\n    schema: []\n    watch: false\n';
  const file = configDir(text);
  try {
    const c = parseConfig(text, file);
    assert.deepEqual(c.templates.map((t) => [t.name, t.watch]), [['a', true], ['b', false]]);
  } finally {
    removeConfigDir(file);
  }
});
