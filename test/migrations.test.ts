import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { compareVersions, MIGRATION_FORMATS, MigrationError, readMigrations, type MigrationFormat } from '../src/migrations.ts';
import { splitSql } from '../src/sqlscript.ts';

const roots: string[] = [];
after(() => roots.forEach((r) => rmSync(r, { recursive: true, force: true })));

/** A temp folder holding `files` (relative path -> content), written in the given (deliberately shuffled) order. */
function folder(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'pgtestpool-migrations-'));
  roots.push(root);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

/** [relative file, version, name, transaction] per step, for compact exact comparisons. */
const summary = (root: string, format: MigrationFormat) =>
  readMigrations(root, format).map((s) => [s.file.slice(root.length + 1), s.version, s.name, s.transaction]);

function migrationError(root: string, format: MigrationFormat, ...patterns: RegExp[]): string {
  try {
    readMigrations(root, format);
  } catch (err) {
    assert.ok(err instanceof MigrationError, `expected MigrationError, got ${String(err)}`);
    for (const p of patterns) assert.match(err.message, p);
    return err.message;
  }
  assert.fail(`expected readMigrations(${format}) to throw`);
}

test('compareVersions: numeric, part by part, leading and trailing zeros ignored', () => {
  const sorted = ['10', '1.2.10', '9', '2', '1.2.9', '100', '1.10', '1.9', '20240101120000', '99999999999999999999'];
  sorted.sort(compareVersions);
  assert.deepEqual(sorted, ['1.2.9', '1.2.10', '1.9', '1.10', '2', '9', '10', '100', '20240101120000', '99999999999999999999']);
  assert.equal(compareVersions('001', '1'), 0);
  assert.equal(compareVersions('1.0', '1'), 0);
  assert.ok(compareVersions('99999999999999999999', '99999999999999999998') > 0); // beyond Number precision
});

describe('formats', () => {
  test('flyway: versioned by numeric version (recursively), then repeatables by description; undo and other files ignored', () => {
    const root = folder({
      'V10__add_index.sql': 'CREATE INDEX i ON users (name);',
      'V2__users.sql': 'CREATE TABLE users (id int, name text);',
      'R__views.sql': 'CREATE OR REPLACE VIEW v AS SELECT 1;',
      'V1.2.10__ten.sql': 'SELECT 1210;',
      'V1__init.sql': 'CREATE SCHEMA app;',
      'V9__orders.sql': 'CREATE TABLE orders ();',
      'V1_1__seed.sql': 'SELECT 11;',
      'V1.2.9__nine.sql': 'SELECT 129;',
      'R__a_functions.sql': 'CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;',
      'V3__concurrent_index.sql': 'CREATE INDEX CONCURRENTLY j ON users (id);',
      'V3__concurrent_index.sql.conf': 'executeInTransaction=false\n',
      'sub/V5__in_subfolder.sql': 'SELECT 5;',
      'U2__users.sql': 'DROP TABLE users;',
      'views.sql': 'not a migration name, ignored like flyway does',
      'afterMigrate.sql': 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC;',
      'README.md': '# migrations',
      'flyway.conf': 'flyway.locations=filesystem:.',
      '.DS_Store': '',
    });
    assert.deepEqual(summary(root, 'flyway'), [
      ['V1__init.sql', '1', 'init', true],
      ['V1_1__seed.sql', '1.1', 'seed', true],
      ['V1.2.9__nine.sql', '1.2.9', 'nine', true],
      ['V1.2.10__ten.sql', '1.2.10', 'ten', true],
      ['V2__users.sql', '2', 'users', true],
      ['V3__concurrent_index.sql', '3', 'concurrent index', false],
      ['sub/V5__in_subfolder.sql', '5', 'in subfolder', true],
      ['V9__orders.sql', '9', 'orders', true],
      ['V10__add_index.sql', '10', 'add index', true],
      ['R__a_functions.sql', '', 'a functions', true],
      ['R__views.sql', '', 'views', true],
    ]);
    const [first] = readMigrations(root, 'flyway');
    assert.equal(first?.file, join(root, 'V1__init.sql'));
    assert.equal(first?.sql, 'CREATE SCHEMA app;');
  });

  test('golang-migrate: .up.sql by numeric version, .down.sql and other files ignored', () => {
    const root = folder({
      '10_add_index.up.sql': 'CREATE INDEX i ON users (name);',
      '10_add_index.down.sql': 'DROP INDEX i;',
      '2_users.up.sql': 'CREATE TABLE users ();',
      '2_users.down.sql': 'DROP TABLE users;',
      '100_last.up.sql': 'SELECT 100;',
      '1_init.up.sql': 'CREATE SCHEMA app;',
      '1_init.down.sql': 'DROP SCHEMA app;',
      '9_orders.up.sql': 'CREATE TABLE orders ();',
      '000011_padded.up.sql': 'SELECT 11;',
      'README.md': '# migrations',
      'schema.sql': 'not a migration name',
    });
    assert.deepEqual(summary(root, 'golang-migrate'), [
      ['1_init.up.sql', '1', 'init', false],
      ['2_users.up.sql', '2', 'users', false],
      ['9_orders.up.sql', '9', 'orders', false],
      ['10_add_index.up.sql', '10', 'add_index', false],
      ['000011_padded.up.sql', '000011', 'padded', false],
      ['100_last.up.sql', '100', 'last', false],
    ]);
  });

  test('dbmate: numeric order, up sections only, transaction:false honoured', () => {
    const root = folder({
      '10_add_index.sql': '-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON users (name);\n\n-- migrate:down\nDROP INDEX i;\n',
      '2_users.sql': '-- migrate:up\nCREATE TABLE users (id int, name text);\n-- migrate:down\nDROP TABLE users;\n',
      '20240101120000_timestamped.sql': '-- migrate:up\nSELECT 1;\n',
      '1_init.sql': '-- migrate:up\nCREATE SCHEMA app;\n\n-- migrate:down\nDROP SCHEMA app;\n',
      '9_orders.sql': '-- migrate:up\nCREATE TABLE orders ();\n-- migrate:down\nDROP TABLE orders;\n',
      'README.md': '# migrations',
      'schema.sql': '-- dumped by dbmate, not a migration',
    });
    const steps = readMigrations(root, 'dbmate');
    assert.deepEqual(summary(root, 'dbmate'), [
      ['1_init.sql', '1', 'init', true],
      ['2_users.sql', '2', 'users', true],
      ['9_orders.sql', '9', 'orders', true],
      ['10_add_index.sql', '10', 'add_index', false],
      ['20240101120000_timestamped.sql', '20240101120000', 'timestamped', true],
    ]);
    for (const s of steps) assert.doesNotMatch(s.sql, /DROP|migrate:/);
  });

  test('dbmate: the up section keeps its line numbers; the down section is blanked', () => {
    const text = [
      '-- a header comment is allowed before the up marker', // 1
      '-- migrate:up', // 2
      'CREATE TABLE t (', // 3
      '  id int', // 4
      ');', // 5
      "INSERT INTO t VALUES (1);", // 6
      '', // 7
      '-- migrate:down', // 8
      'DROP TABLE t;', // 9
    ].join('\r\n');
    const root = folder({ '20240101120000_t.sql': '\uFEFF' + text });
    const [step, ...rest] = readMigrations(root, 'dbmate');
    assert.equal(rest.length, 0);
    assert.ok(step);
    assert.equal(step.sql.split('\n').length, 9);
    assert.deepEqual(
      splitSql(step.sql, step.file).map((s) => [s.line, s.sql]),
      [
        [3, 'CREATE TABLE t (\r\n  id int\r\n);'],
        [6, 'INSERT INTO t VALUES (1);'],
      ],
    );
    assert.doesNotMatch(step.sql, /DROP|migrate:|header/);
    assert.ok(!step.sql.startsWith('\uFEFF'));
  });

  test('dbmate: several up sections in one file become separate steps, each with its own transaction flag', () => {
    const root = folder({
      '1_two.sql': '-- migrate:up\nCREATE TABLE t (id int);\n-- migrate:down\nDROP TABLE t;\n\n-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON t (id);\n-- migrate:down\nDROP INDEX i;\n',
    });
    const steps = readMigrations(root, 'dbmate');
    assert.deepEqual(
      steps.map((s) => [s.name, s.transaction, splitSql(s.sql).map((st) => [st.line, st.sql])]),
      [
        ['two (up section 1)', true, [[2, 'CREATE TABLE t (id int);']]],
        ['two (up section 2)', false, [[7, 'CREATE INDEX CONCURRENTLY i ON t (id);']]],
      ],
    );
  });

  test('prisma: <timestamp>_<name>/migration.sql subfolders in numeric order; lock file and other files ignored', () => {
    const root = folder({
      '10_add_index/migration.sql': 'CREATE INDEX i ON users (name);',
      '2_users/migration.sql': 'CREATE TABLE users ();',
      '20240101120000_timestamped/migration.sql': 'SELECT 1;',
      '0_init/migration.sql': 'CREATE SCHEMA app;',
      '0_init/README.md': 'baseline made with prisma migrate diff',
      '9_orders/migration.sql': 'CREATE TABLE orders ();',
      'migration_lock.toml': 'provider = "postgresql"\n',
      'README.md': '# migrations',
    });
    assert.deepEqual(summary(root, 'prisma'), [
      ['0_init/migration.sql', '0', 'init', false],
      ['2_users/migration.sql', '2', 'users', false],
      ['9_orders/migration.sql', '9', 'orders', false],
      ['10_add_index/migration.sql', '10', 'add_index', false],
      ['20240101120000_timestamped/migration.sql', '20240101120000', 'timestamped', false],
    ]);
  });

  test('goose: numeric order, the Up section only (line numbers kept), NO TRANSACTION honoured', () => {
    const root = folder({
      '10_index.sql': '-- +goose NO TRANSACTION\n-- +goose Up\nCREATE INDEX CONCURRENTLY i ON users (name);\n-- +goose Down\nDROP INDEX i;\n',
      '2_users.sql': '-- +goose Up\n-- +goose StatementBegin\nCREATE TABLE users (id int, name text);\n-- +goose StatementEnd\n\n-- +goose Down\nDROP TABLE users;\n',
      '20240101120000_stamp.sql': '-- +goose Up\nSELECT 1;\n',
      '1_init.sql': '-- comment\n-- +goose Up\nCREATE SCHEMA app;\n-- +goose Down\nDROP SCHEMA app;\n',
      'README.md': '',
    });
    assert.deepEqual(summary(root, 'goose'), [
      ['1_init.sql', '1', 'init', true],
      ['2_users.sql', '2', 'users', true],
      ['10_index.sql', '10', 'index', false],
      ['20240101120000_stamp.sql', '20240101120000', 'stamp', true],
    ]);
    const steps = readMigrations(root, 'goose');
    for (const st of steps) assert.doesNotMatch(st.sql, /DROP/);
    assert.equal(steps[0]!.sql.split('\n')[2], 'CREATE SCHEMA app;', 'line 3 stays line 3');
    migrationError(folder({ '1_a.sql': 'CREATE TABLE a ();' }), 'goose', /1_a\.sql has no "-- \+goose Up" line/);
    migrationError(folder({ '1_a.sql': '-- +goose Up\n', '2_b.go': 'package m' }), 'goose', /2_b\.go: goose Go migrations .* cannot be run by pgtestpool: build the template with command:/);
  });

  test('drizzle: the journal\'s order; a file it does not list, or a listed file missing, is refused', () => {
    const journal = (tags: string[]) => JSON.stringify({ version: '7', dialect: 'postgresql', entries: tags.map((tag, idx) => ({ idx, version: '7', when: 1700000000000 + idx, tag, breakpoints: true })) });
    const files = {
      '0000_init.sql': 'CREATE TABLE a (id int);\n--> statement-breakpoint\nCREATE TABLE b (id int);\n',
      '0001_more.sql': 'ALTER TABLE a ADD COLUMN x int;\n',
      '0002_last.sql': 'SELECT 1;\n',
      'meta/_journal.json': journal(['0000_init', '0001_more', '0002_last']),
      'meta/0000_snapshot.json': '{}',
    };
    assert.deepEqual(summary(folder(files), 'drizzle'), [
      ['0000_init.sql', '0', '0000_init', true],
      ['0001_more.sql', '1', '0001_more', true],
      ['0002_last.sql', '2', '0002_last', true],
    ]);
    assert.equal(splitSql(readMigrations(folder(files), 'drizzle')[0]!.sql).length, 2, 'the breakpoint is a comment between two statements');
    migrationError(folder({ ...files, '0003_stray.sql': 'SELECT 2;' }), 'drizzle', /0003_stray\.sql is not in meta\/_journal\.json/);
    migrationError(folder({ ...files, 'meta/_journal.json': journal(['0000_init', '0001_more', '0002_last', '0003_gone']) }), 'drizzle', /lists 0003_gone, but 0003_gone\.sql is missing/);
    migrationError(folder({ '0000_init.sql': '' }), 'drizzle', /no meta\/_journal\.json: point dir at the folder drizzle-kit generate writes/);
  });

  test('sqitch: plan order, tags and notes skipped, a reworked change deploys its earlier script first', () => {
    const root = folder({
      'sqitch.plan': '%syntax-version=1.0.0\n%project=app\n\nappschema 2024-01-01T00:00:00Z Ada <ada@example.com> # the schema\nusers [appschema] 2024-01-02T00:00:00Z Ada <ada@example.com>\n@v1.0 2024-01-03T00:00:00Z Ada <ada@example.com> # release\n\nusers [users@v1.0] 2024-01-04T00:00:00Z Ada <ada@example.com> # add email\n',
      'deploy/appschema.sql': 'BEGIN;\nCREATE SCHEMA app;\nCOMMIT;\n',
      'deploy/users@v1.0.sql': 'BEGIN;\nCREATE TABLE app.users (id int);\nCOMMIT;\n',
      'deploy/users.sql': 'BEGIN;\nALTER TABLE app.users ADD COLUMN email text;\nCOMMIT;\n',
      'revert/users.sql': 'DROP TABLE app.users;',
      'sqitch.conf': '[core]\n\tengine = pg\n',
    });
    assert.deepEqual(summary(root, 'sqitch'), [
      ['deploy/appschema.sql', '1', 'appschema', false],
      ['deploy/users@v1.0.sql', '2', 'users', false],
      ['deploy/users.sql', '3', 'users', false],
    ]);
    migrationError(folder({ 'sqitch.plan': '%project=x\nmissing 2024-01-01T00:00:00Z A <a@b>\n' }), 'sqitch', /sqitch\.plan:2: change missing has no deploy script deploy\/missing\.sql/);
    migrationError(folder({ 'deploy/a.sql': '' }), 'sqitch', /no sqitch\.plan: point dir at the sqitch project folder/);
  });

  test('liquibase formatted SQL: changesets in path order, rollback lines not run, runInTransaction and dbms honoured', () => {
    const root = folder({
      '002_orders.sql': '--liquibase formatted sql\n\n--changeset ada:3 runInTransaction:false\nCREATE INDEX CONCURRENTLY i ON users (id);\n--rollback DROP INDEX i;\n',
      '001_users.sql': '--liquibase formatted sql\n--changeset ada:1\nCREATE TABLE users (id int);\n--rollback DROP TABLE users;\n\n--changeset ada:2 dbms:oracle\nCREATE TABLE oracle_only (id number);\n\n--changeset ada:2b dbms:!oracle\nCREATE TABLE not_oracle (id int);\n',
      'notes.sql': '-- plain SQL, not a changelog\nSELECT 1;\n',
      'changelog.xml': '<databaseChangeLog/>',
    });
    assert.deepEqual(summary(root, 'liquibase'), [
      ['001_users.sql', '1', 'ada:1', true],
      ['001_users.sql', '2', 'ada:2b', true],
      ['002_orders.sql', '3', 'ada:3', false],
    ]);
    const steps = readMigrations(root, 'liquibase');
    assert.equal(splitSql(steps[0]!.sql).length, 1, 'only its own changeset, no other statement');
    assert.equal(steps[0]!.sql.split('\n')[2], 'CREATE TABLE users (id int);', 'line numbers kept');
    migrationError(folder({ 'a.sql': '--liquibase formatted sql\n--changeset a:1\nSELECT 1;\n', 'b.sql': '--liquibase formatted sql\n--changeset a:1\nSELECT 2;\n' }), 'liquibase', /changeset a:1 appears twice \(a\.sql:2 and b\.sql:2\)/);
    migrationError(folder({ 'a.sql': '--liquibase formatted sql\n--changeset nocolon\nSELECT 1;\n' }), 'liquibase', /a\.sql:2: expected "--changeset author:id"/);
    migrationError(folder({ 'a.sql': '-- plain\nSELECT 1;' }), 'liquibase', /no liquibase migrations found .*--liquibase formatted sql/);
  });

  test('numbered: any separator, numeric order, non-.sql files ignored, BOM stripped', () => {
    const root = folder({
      '10.more.sql': 'SELECT 10;',
      '2-users.sql': 'CREATE TABLE users ();',
      '100_last.sql': 'SELECT 100;',
      '001_init.sql': '\uFEFFCREATE SCHEMA app;',
      '9 orders.sql': 'CREATE TABLE orders ();',
      '11.sql': 'SELECT 11;',
      'README.md': '# migrations',
      'notes.txt': 'ignored',
    });
    assert.deepEqual(summary(root, 'numbered'), [
      ['001_init.sql', '001', 'init', false],
      ['2-users.sql', '2', 'users', false],
      ['9 orders.sql', '9', 'orders', false],
      ['10.more.sql', '10', 'more', false],
      ['11.sql', '11', '', false],
      ['100_last.sql', '100', 'last', false],
    ]);
    assert.equal(readMigrations(root, 'numbered')[0]?.sql, 'CREATE SCHEMA app;');
  });
});

describe('errors', () => {
  test('unknown format lists the known ones', () => {
    const root = folder({ '1_a.sql': '' });
    migrationError(root, 'alembic' as MigrationFormat, /unknown migration format "alembic"/, new RegExp(MIGRATION_FORMATS.join(', ')));
  });

  test('folder missing, or a file instead of a folder', () => {
    const root = folder({ 'file.sql': '' });
    migrationError(join(root, 'nope'), 'flyway', /nope does not exist/);
    migrationError(join(root, 'file.sql'), 'flyway', /file\.sql is not a folder/);
  });

  test('no migrations found names the expected pattern', () => {
    const root = folder({ 'README.md': '', '1_init.up.sql': '' });
    migrationError(root, 'flyway', /no flyway migrations found in .*it contains 1_init\.up\.sql, README\.md.*V<version>__<description>\.sql/);
    migrationError(folder({}), 'dbmate', /no dbmate migrations found .*it is empty.*<version>_<name>\.sql/);
    migrationError(folder({ 'migration_lock.toml': '' }), 'prisma', /no prisma migrations .*<timestamp>_<name>\/migration\.sql/);
    migrationError(folder({ 'V1__x.sql': '' }), 'golang-migrate', /no golang-migrate migrations .*<version>_<title>\.up\.sql/);
    migrationError(folder({ 'README.md': '' }), 'numbered', /no numbered migrations .*001_init\.sql/);
  });

  test('flyway: same version twice (1.1 = 1_1 = 1.01) names both files', () => {
    migrationError(folder({ 'V1_1__a.sql': '', 'V1.01__b.sql': '', 'V2__c.sql': '' }), 'flyway', /V1\.01__b\.sql and V1_1__a\.sql have the same version/);
    migrationError(folder({ 'R__x.sql': '', 'sub/R__x.sql': '' }), 'flyway', /R__x\.sql and sub\/R__x\.sql are both repeatable migration "x"/);
  });

  test('flyway: names that look like migrations but do not parse', () => {
    const msg = migrationError(
      folder({ 'V1__ok.sql': '', 'V2_single_underscore.sql': '', 'v3__lowercase.sql': '', 'V4.sql': '' }),
      'flyway',
      /V2_single_underscore\.sql, V4\.sql, v3__lowercase\.sql look like flyway migrations but their names do not parse/,
    );
    assert.doesNotMatch(msg, /V1__ok/);
  });

  test('golang-migrate: duplicate versions and unparseable names', () => {
    migrationError(folder({ '1_a.up.sql': '', '001_b.up.sql': '' }), 'golang-migrate', /001_b\.up\.sql and 1_a\.up\.sql have the same version/);
    migrationError(folder({ '1_a.up.sql': '', '2_b.sql': '', 'init.up.sql': '', '3.up.sql': '' }), 'golang-migrate', /2_b\.sql, 3\.up\.sql, init\.up\.sql look like golang-migrate migrations/);
  });

  test('dbmate: a file without -- migrate:up, statements before it, a down before the up, duplicate versions', () => {
    migrationError(folder({ '1_a.sql': '-- migrate:up\nSELECT 1;', '2_b.sql': 'CREATE TABLE t ();\n' }), 'dbmate', /2_b\.sql has no "-- migrate:up" line/);
    migrationError(folder({ '1_a.sql': '-- ok\n\nSELECT 0;\n-- migrate:up\nSELECT 1;' }), 'dbmate', /1_a\.sql:3: statement before "-- migrate:up"/);
    migrationError(folder({ '1_a.sql': '-- migrate:down\nSELECT 0;\n-- migrate:up\nSELECT 1;' }), 'dbmate', /1_a\.sql:1: "-- migrate:down" comes before/);
    migrationError(folder({ '01_a.sql': '-- migrate:up\n', '1_b.sql': '-- migrate:up\n' }), 'dbmate', /01_a\.sql and 1_b\.sql have the same version/);
  });

  test('prisma: a migration folder without migration.sql, a folder name without a number', () => {
    migrationError(folder({ '1_a/migration.sql': '', '2_b/notes.md': '' }), 'prisma', /migration folder 2_b has no migration\.sql/);
    migrationError(folder({ '1_a/migration.sql': '', 'init/migration.sql': '' }), 'prisma', /init looks like a prisma migration but its name does not parse/);
  });

  test('numbered: .sql files without a leading number are listed, duplicates and down files refused', () => {
    migrationError(
      folder({ '1_a.sql': '', 'init.sql': '', 'seed-data.sql': '', 'README.md': '' }),
      'numbered',
      /init\.sql, seed-data\.sql look like numbered migrations .*start with its number/,
    );
    migrationError(folder({ '1_a.sql': '', '01_b.sql': '' }), 'numbered', /01_b\.sql and 1_a\.sql have the same version/);
    migrationError(folder({ '1_a.up.sql': '', '1_a.down.sql': '' }), 'numbered', /1_a\.down\.sql looks like a golang-migrate down migration/);
  });
});
