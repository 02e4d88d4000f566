// `npm start` as a user runs it: embedded PostgreSQL + sidecar, the ready line, Ctrl-C; and the
// clear errors for a port in use, missing binaries and a bad config.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { test } from 'node:test';
import pg from 'pg';
import { ROOT, configDir, exited, freePort, removeConfigDir, testInstalls, waitFor } from './harness.ts';

const installs = await testInstalls();
/** A folder with psql: the installs' own (the npm packages may have none), else PATH's. */
const psqlDir = () => installs.map((i) => i.bindir).find((d) => existsSync(`${d}/psql`)) ?? '/usr/bin';

/** `npm start` in its own process group, so a "Ctrl-C" reaches npm and node together as in a terminal. */
function npmStart(env: Record<string, string>) {
  const child = spawn('npm', ['start', '--silent'], {
    cwd: ROOT,
    detached: true,
    env: { ...process.env, PGHOST: '', DATABASE_URL: '', PGTESTPOOL_LOG: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  return Object.assign(child, { output: () => out, ctrlC: () => process.kill(-child.pid!, 'SIGINT') });
}

for (const install of installs) {
  test(`npm start (PostgreSQL ${install.major}): ready line, claim from the shipped config, Ctrl-C cleans up`, async () => {
    const port = await freePort();
    const child = npmStart({ PGPORT: String(port), PGTESTPOOL_PG_BINDIR: install.bindir, POSTGRES_PASSWORD: 's3cret-pw' });
    try {
      await waitFor('ready line', async () => /pgtestpool ready in [\d.]+ s/.test(child.output()), 60_000);
      assert.match(child.output(), new RegExp(`postgresql://postgres@127\\.0\\.0\\.1:${port}/postgres`));
      assert.match(child.output(), /embedded PostgreSQL .* \(neither DATABASE_URL nor PGHOST is set\)/, 'says why it runs an embedded server');
      // The printed line runs as printed (no password prompt: stdin is closed), with only the
      // password's variable in it, and prints just the name.
      const line = /: (PGPASSWORD=\S+ psql .*)$/m.exec(child.output())?.[1];
      assert.ok(line, `a psql line in ${child.output()}`);
      assert.ok(!line.includes('s3cret-pw'));
      const printed = execFileSync('/bin/sh', ['-c', line], { env: { ...process.env, PATH: `${psqlDir()}:${process.env.PATH}`, POSTGRES_PASSWORD: 's3cret-pw', PGPASSWORD: '' }, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
      assert.match(printed, /^pgtp_default_\w+\n$/);
      const c = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 's3cret-pw', database: 'postgres' });
      await c.connect();
      const name = (await c.query('SELECT claim_test_db() AS name')).rows[0].name;
      await c.end();
      const db = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 's3cret-pw', database: name });
      await db.connect();
      assert.equal((await db.query('SELECT count(*)::int AS n FROM products')).rows[0].n, 3, 'the example schema and seed rows');
      await db.end();
      assert.ok(!child.output().includes('s3cret-pw'), 'the password never reaches the log');
      const dataDir = /data in (\S+)/.exec(child.output())?.[1];
      assert.ok(dataDir && existsSync(dataDir), 'the data directory is announced and exists');
      child.ctrlC();
      await exited(child);
      // npm re-raises the SIGINT it got (so its own status is the signal); the sidecar must have stopped cleanly.
      assert.ok(child.exitCode === 0 || child.signalCode === 'SIGINT', `npm ended with ${child.exitCode ?? child.signalCode}`);
      assert.match(child.output(), /SIGINT: shutting down[\s\S]*stopped/);
      assert.doesNotMatch(child.output(), /ERROR/, 'a clean shutdown logs no errors');
      assert.ok(!existsSync(dataDir), 'Ctrl-C removes the data directory');
      await assert.rejects(
        (async () => {
          const again = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 's3cret-pw' });
          again.on('error', () => {});
          await again.connect();
        })(),
        /ECONNREFUSED/,
        'the server is gone',
      );
    } finally {
      if (child.exitCode === null) {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  });
}

test('npm start says which mode it chose and why; PGTESTPOOL_MODE=embedded overrides an exported PGHOST', async () => {
  const closed = await freePort(); // nothing listens there
  const attach = npmStart({ PGHOST: '127.0.0.1', PGPORT: String(closed) });
  try {
    await waitFor('the mode line', async () => /attaching to postgres@127\.0\.0\.1:\d+\/postgres \(PGHOST is set; PGTESTPOOL_MODE=embedded runs an embedded server instead\)/.test(attach.output()) || null, 20_000);
    await waitFor('the retry warning', async () => /cannot attach to PostgreSQL at postgres@127\.0\.0\.1:\d+\/postgres yet: connect ECONNREFUSED/.test(attach.output()) || null, 20_000);
  } finally {
    attach.ctrlC();
    await exited(attach);
  }
  const port = await freePort();
  const embedded = npmStart({ PGHOST: '127.0.0.1', PGTESTPOOL_MODE: 'embedded', PGPORT: String(port), PGTESTPOOL_PG_BINDIR: installs[0]!.bindir });
  try {
    await waitFor('ready line', async () => /pgtestpool ready in [\d.]+ s/.test(embedded.output()) || null, 60_000);
    assert.match(embedded.output(), /embedded PostgreSQL .* \(PGTESTPOOL_MODE is embedded\)/);
  } finally {
    embedded.ctrlC();
    await exited(embedded);
  }
  const bad = npmStart({ PGTESTPOOL_MODE: 'docker' });
  assert.equal(await exited(bad), 2);
  assert.match(bad.output(), /PGTESTPOOL_MODE must be embedded or attach, got "docker"/);
});

test('a port in use is a clear error that says what to do', async () => {
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  const port = (blocker.address() as net.AddressInfo).port;
  try {
    const child = npmStart({ PGPORT: String(port) });
    assert.notEqual(await exited(child), 0);
    assert.match(child.output(), new RegExp(`port ${port} on 127\\.0\\.0\\.1 is already in use .*PGPORT=`));
  } finally {
    blocker.close();
  }
});

test('no PostgreSQL binaries is a clear error that says what to do', async () => {
  const child = npmStart({ PGPORT: String(await freePort()), PGTESTPOOL_PG_BINDIR: '/nonexistent/bin' });
  assert.notEqual(await exited(child), 0);
  // (The no-binaries-anywhere message, with apt-get and npm install, is covered in embedded.test.ts.)
  assert.match(child.output(), /PGTESTPOOL_PG_BINDIR=\/nonexistent\/bin does not contain working postgres and initdb executables: point it at/);
});

test('a bad config stops start-up with every problem listed (exit 2)', async () => {
  const file = configDir('templates:\n  default:\n    schema: [nope/*.sql]\n    min_ready: lots\nlease:\n  idle_timeout: 5\n');
  try {
    const child = npmStart({ PGTESTPOOL_CONFIG: file, PGPORT: String(await freePort()) });
    assert.equal(await exited(child), 2);
    const out = child.output();
    assert.match(out, /3 problems/);
    assert.match(out, /templates\.default\.schema\[0\]: "nope\/\*\.sql" matches no file/);
    assert.match(out, /templates\.default\.min_ready: expected a whole number/);
    assert.match(out, /lease\.idle_timeout: expected a duration/);
  } finally {
    removeConfigDir(file);
  }
});
