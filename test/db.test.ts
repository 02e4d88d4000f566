// Attaching to a server named by the environment, as the image does.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { attachRequested, connFromEnv, describeConn, ident, startMode } from '../src/db.ts';
import { redact } from '../src/log.ts';

test('DATABASE_URL wins over PG* and keeps every part, decoded', () => {
  const c = connFromEnv({ DATABASE_URL: 'postgresql://app%40x:p%40ss%2Fw@db.example:6543/my%20db?sslmode=require', PGHOST: 'other', PGUSER: 'u' });
  assert.equal(c.host, 'db.example');
  assert.equal(c.port, 6543);
  assert.equal(c.user, 'app@x');
  assert.equal(c.password, 'p@ss/w');
  assert.equal(c.database, 'my db');
  assert.deepEqual(c.ssl, { rejectUnauthorized: false });
});

test('PG* variables, with postgres/postgres defaults for user and database', () => {
  const c = connFromEnv({ PGHOST: '/var/run/postgresql', PGPORT: '5433', PGPASSWORD: 'pw' });
  assert.deepEqual([c.host, c.port, c.user, c.password, c.database], ['/var/run/postgresql', 5433, 'postgres', 'pw', 'postgres']);
  assert.equal(c.ssl, undefined);
});

test('attach only when a server is named; PGPORT alone is the embedded port', () => {
  assert.equal(attachRequested({}), false);
  assert.equal(attachRequested({ PGPORT: '5433' }), false);
  assert.equal(attachRequested({ PGHOST: 'db' }), true);
  assert.equal(attachRequested({ DATABASE_URL: 'postgres://db/x' }), true);
});

test('the mode is said with its reason, and PGTESTPOOL_MODE makes it explicit', () => {
  assert.deepEqual(startMode({ PGHOST: 'db' }), { mode: 'attach', why: 'PGHOST is set' });
  assert.deepEqual(startMode({ DATABASE_URL: 'postgres://db/x', PGHOST: 'db' }), { mode: 'attach', why: 'DATABASE_URL is set' });
  assert.deepEqual(startMode({}), { mode: 'embedded', why: 'neither DATABASE_URL nor PGHOST is set' });
  // A shell that exports PGHOST for its tests can still run npm start's own server.
  assert.deepEqual(startMode({ PGHOST: 'localhost', PGTESTPOOL_MODE: 'embedded' }), { mode: 'embedded', why: 'PGTESTPOOL_MODE is embedded' });
  assert.deepEqual(startMode({ PGHOST: 'db', PGTESTPOOL_MODE: 'attach' }), { mode: 'attach', why: 'PGTESTPOOL_MODE is attach' });
  assert.throws(() => startMode({ PGTESTPOOL_MODE: 'docker' }), /PGTESTPOOL_MODE must be embedded or attach, got "docker"/);
  assert.throws(() => startMode({ PGTESTPOOL_MODE: 'attach' }), /PGTESTPOOL_MODE=attach needs the server to attach to: set DATABASE_URL/);
});

test('a malformed DATABASE_URL is a clear error', () => {
  assert.throws(() => connFromEnv({ DATABASE_URL: 'not a url' }), /DATABASE_URL is not a valid URL: expected postgres:\/\//);
  assert.throws(() => connFromEnv({ DATABASE_URL: 'mysql://db/x' }), /must start with postgres:\/\//);
});

test('secrets never reach logs: describeConn omits the password, redact() strips URLs and key=value', () => {
  const c = connFromEnv({ DATABASE_URL: 'postgres://u:hunter2@h:1/d' });
  assert.equal(describeConn(c), 'u@h:1/d');
  assert.equal(redact('failed for postgres://u:hunter2@h:1/d'), 'failed for postgres://u:***@h:1/d');
  assert.equal(redact("host=h password=hunter2 user=u"), 'host=h password=*** user=u');
});

test('identifiers are quoted, embedded quotes doubled', () => {
  assert.equal(ident('a"b'), '"a""b"');
  assert.equal(ident('Ünï'), '"Ünï"');
});
