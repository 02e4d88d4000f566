// `npm start` killed every way a user kills it: the embedded PostgreSQL never outlives it by more
// than a few seconds, and the next start cleans up what a killed one left. Real processes, real
// PostgreSQL; each test prints how long until everything was gone.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, test } from 'node:test';
import { EXAMPLE_SCHEMA, ROOT, configDir, exited, freePort, removeConfigDir, simpleConfig, testInstalls, waitFor } from './harness.ts';

const install = (await testInstalls())[0]!; // one major is enough: this is about processes
const configFile = configDir(simpleConfig({ minReady: 2 }), EXAMPLE_SCHEMA);
const GONE_WITHIN_MS = 5_000;

// Everything a test started, killed and removed at the end whatever happened. By pid and start
// time, so a pid some other process has reused since is left alone.
const spawned = new Map<number, string | undefined>();
const dirs = new Set<string>();
function track(pid: number): void {
  spawned.set(pid, startTime(pid));
}
after(() => {
  for (const [pid, start] of spawned) {
    if (start === undefined || startTime(pid) !== start) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  removeConfigDir(configFile);
});

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ host: '127.0.0.1', port, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

function readProc(pid: number, file: string): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return undefined;
  }
}

function startTime(pid: number): string | undefined {
  const stat = readProc(pid, 'stat');
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

/** Alive = exists and is not a zombie. */
function alive(pid: number): boolean {
  const stat = readProc(pid, 'stat');
  return stat !== undefined && stat[stat.lastIndexOf(')') + 2] !== 'Z';
}

function argv(pid: number): string[] {
  return (readProc(pid, 'cmdline') ?? '').split('\0').filter(Boolean);
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = readProc(Number(name), 'stat');
    if (stat && Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(name));
  }
  return out;
}

function descendants(pid: number): number[] {
  const out: number[] = [];
  for (const c of childrenOf(pid)) out.push(c, ...descendants(c));
  return out;
}

/** Processes whose command line names `dir` (postgres's -D, the watchdog's arguments). */
function processesIn(dir: string): number[] {
  return fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number).filter((pid) => alive(pid) && argv(pid).some((a) => a.includes(dir)));
}

interface Started {
  npm: ChildProcess & { output(): string };
  node: number; // the node process running src/main.ts
  watchdog: number;
  postmaster: number;
  dir: string; // the server directory (data dir's parent)
  pids: number[]; // npm and everything under it
}

/** `npm start` in its own process group, as a terminal runs it. */
function spawnNpm(port: number): ChildProcess & { output(): string } {
  const env: NodeJS.ProcessEnv = { ...process.env, PGPORT: String(port), PGTESTPOOL_CONFIG: configFile, PGTESTPOOL_PG_BINDIR: install.bindir, PGTESTPOOL_LOG: '' };
  delete env.PGHOST; // else it attaches to that server instead of starting one
  delete env.DATABASE_URL;
  const child = spawn('npm', ['start', '--silent'], { cwd: ROOT, detached: true, env, stdio: ['ignore', 'pipe', 'pipe'] });
  track(child.pid!);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return Object.assign(child, { output: () => out });
}

/** `npm start` until its ready line, and the processes and directory it runs. */
async function npmStart(port: number): Promise<Started> {
  const npm = spawnNpm(port);
  await waitFor('the ready line', async () => {
    if (npm.exitCode !== null || npm.signalCode !== null) throw new Error(`npm start ended (${npm.exitCode ?? npm.signalCode}) before it was ready:\n${npm.output()}`);
    return /pgtestpool ready in/.test(npm.output());
  }, 60_000);
  const dataDir = /data in (\S+)/.exec(npm.output())?.[1];
  assert.ok(dataDir, `no data directory announced:\n${npm.output()}`);
  const dir = path.dirname(dataDir);
  dirs.add(dir);
  const pids = [npm.pid!, ...descendants(npm.pid!)];
  const node = pids.find((p) => argv(p).includes('src/main.ts') && /node$/.test(argv(p)[0] ?? ''));
  assert.ok(node, `no node process running src/main.ts under npm (${pids.map((p) => argv(p).join(' ')).join('; ')})`);
  const watchdog = childrenOf(node).find((p) => argv(p).includes('pgtestpool-watchdog'));
  assert.ok(watchdog, 'no watchdog shell under node');
  const postmaster = Number(fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  assert.ok(childrenOf(watchdog).includes(postmaster), 'the postmaster runs under the watchdog');
  for (const p of pids) track(p);
  return { npm, node, watchdog, postmaster, dir, pids };
}

/** Waits until none of its processes lives, its directory is gone and its port is free; returns the seconds that took. */
async function allGone(s: Started, port: number, since: number): Promise<string> {
  const left = async () => {
    const procs = [...s.pids.filter(alive), ...processesIn(s.dir)];
    const what: string[] = [];
    if (procs.length) what.push(`processes ${[...new Set(procs)].map((p) => `${p} (${argv(p).slice(0, 2).join(' ')})`).join(', ')}`);
    if (fs.existsSync(s.dir)) what.push(`directory ${s.dir}`);
    if (!(await portFree(port))) what.push(`port ${port} in use`);
    return what;
  };
  for (;;) {
    const what = await left();
    if (what.length === 0) return ((Date.now() - since) / 1000).toFixed(1);
    if (Date.now() - since > GONE_WITHIN_MS) assert.fail(`${GONE_WITHIN_MS / 1000} s later still there: ${what.join('; ')}\n${s.npm.output()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A second start on the same port works (nothing left holds it), and stops cleanly. */
async function startsAgain(port: number): Promise<Started> {
  const again = await npmStart(port);
  again.npm.kill('SIGTERM');
  await exited(again.npm);
  await allGone(again, port, Date.now());
  return again;
}

test('kill -9 of the node process: the server is gone within seconds, the port free for the next start', async () => {
  const port = await freePort();
  const s = await npmStart(port);
  const t0 = Date.now();
  process.kill(s.node, 'SIGKILL');
  const secs = await allGone(s, port, t0);
  console.log(`faults: kill -9 of npm start's node: server gone after ${secs} s`);
  await startsAgain(port);
});

test('a server a killed start left running: the next start on that port stops it and removes its directory', async () => {
  const port = await freePort();
  const s = await npmStart(port);
  // The watchdog first, so nothing is left to stop the postmaster: what a kill -9 of an older
  // version (or of the whole process tree at once) leaves.
  process.kill(s.watchdog, 'SIGKILL');
  process.kill(s.node, 'SIGKILL');
  process.kill(s.npm.pid!, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 300));
  // Any start on this machine removes leftovers, so on a machine where other test runs start
  // servers too, one of theirs may beat ours to it: then only check that it is gone.
  const beaten = () => !alive(s.postmaster) && !fs.existsSync(s.dir);
  assert.ok(alive(s.postmaster) || beaten(), 'the postmaster survived (the leftover this test is about)');
  const t0 = Date.now();
  const again = await npmStart(port);
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  const removed = new RegExp(`^(\\S+) pgtestpool: removed ${s.dir}, left by process ${s.node} that is gone \\(stopped its PostgreSQL, pid ${s.postmaster}\\)$`, 'm').exec(again.npm.output());
  assert.ok(!alive(s.postmaster) && !fs.existsSync(s.dir), 'the leftover is gone');
  if (removed) {
    const cleaned = ((Date.parse(removed[1]!) - t0) / 1000).toFixed(1);
    console.log(`faults: a leftover server: the next npm start removed it ${cleaned} s after its launch, and was ready after ${secs} s`);
  } else {
    assert.match(again.npm.output(), /pgtestpool ready/);
    console.log(`faults: a leftover server: removed by another start on this machine before ours; ours was ready on its port after ${secs} s`);
  }
  again.npm.kill('SIGTERM');
  await exited(again.npm);
  await allGone(again, port, Date.now());
});

test('SIGTERM to npm (kill <npm pid>): graceful stop, nothing left', async () => {
  const port = await freePort();
  const s = await npmStart(port);
  const t0 = Date.now();
  s.npm.kill('SIGTERM');
  const secs = await allGone(s, port, t0);
  await exited(s.npm);
  assert.match(s.npm.output(), /SIGTERM: shutting down[\s\S]*stopped/);
  assert.doesNotMatch(s.npm.output(), /ERROR/);
  console.log(`faults: SIGTERM to npm: everything gone after ${secs} s`);
});

test('kill -9 of npm: its node notices and stops gracefully, nothing left', async () => {
  const port = await freePort();
  const s = await npmStart(port);
  const t0 = Date.now();
  process.kill(s.npm.pid!, 'SIGKILL');
  const secs = await allGone(s, port, t0);
  assert.match(s.npm.output(), /parent process \d+ is gone[\s\S]*stopped/);
  console.log(`faults: kill -9 of npm: everything gone after ${secs} s`);
});

test('Ctrl-C (SIGINT to the process group) with the CPU loaded: graceful stop, nothing left', async () => {
  const port = await freePort();
  const s = await npmStart(port);
  const busy = [0, 1].map(() => spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }));
  for (const b of busy) track(b.pid!);
  try {
    await new Promise((r) => setTimeout(r, 200)); // let them take the cores
    const t0 = Date.now();
    process.kill(-s.npm.pid!, 'SIGINT');
    const secs = await allGone(s, port, t0);
    assert.match(s.npm.output(), /SIGINT: shutting down[\s\S]*stopped/);
    assert.doesNotMatch(s.npm.output(), /ERROR|exiting now/);
    console.log(`faults: Ctrl-C under CPU load: graceful stop, everything gone after ${secs} s`);
  } finally {
    for (const b of busy) b.kill('SIGKILL');
  }
});

test('SIGTERM to npm during start-up (initdb running): the server it was starting is stopped and removed too', async () => {
  const port = await freePort();
  const npm = spawnNpm(port);
  // Its server directory appears (owner file = node's pid) before initdb runs.
  const dir = (await waitFor('the server directory', async () => {
    const node = descendants(npm.pid!).find((p) => argv(p).includes('src/main.ts'));
    if (node === undefined) return undefined;
    return fs.readdirSync('/dev/shm').map((n) => path.join('/dev/shm', n)).find((d) => {
      try {
        return fs.readFileSync(path.join(d, 'owner'), 'utf8').startsWith(`${node} `);
      } catch {
        return false;
      }
    });
  }, 60_000))!;
  dirs.add(dir);
  const t0 = Date.now();
  npm.kill('SIGTERM');
  await exited(npm);
  while ((fs.existsSync(dir) || processesIn(dir).length) && Date.now() - t0 < GONE_WITHIN_MS) await new Promise((r) => setTimeout(r, 20));
  assert.ok(!fs.existsSync(dir) && processesIn(dir).length === 0, `left behind: ${dir}, processes ${processesIn(dir).join(', ')}\n${npm.output()}`);
  assert.ok(await portFree(port));
  assert.match(npm.output(), /SIGTERM: shutting down[\s\S]*stopped/);
  assert.doesNotMatch(npm.output(), /ERROR/);
  console.log(`faults: SIGTERM to npm during start-up: everything gone after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});
