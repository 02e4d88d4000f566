// Runs a throwaway PostgreSQL tuned for tests: its own initdb'd cluster in RAM (/dev/shm),
// a postgres child process whose lifetime we own, and nothing left behind after stop().

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import pg, { type ClientConfig } from 'pg';
import { log, errorMessage } from './log.ts';
import { TEST_TUNED_SETTINGS } from './tuning.ts';
import { findPostgres, type PgInstall } from './pgbin.ts';

export interface EmbeddedOptions {
  port?: number; // 0 or undefined = a random free port
  password?: string; // superuser postgres's password, default 'postgres'
  install?: PgInstall; // else findPostgres()
  dataParent?: string; // default /dev/shm
  settings?: Record<string, string | number>; // extra/override -c settings
  onLog?: (line: string) => void; // server log lines; default: FATAL and PANIC to log.warn
  // Passwords hashed cheaply (SCRAM 16 rounds on 16+, md5 before): ~6 ms less CPU per connection,
  // but drivers that enforce SCRAM's minimum refuse it (pgjdbc < 4096 rounds, lib/pq < 1000).
  // For the project's own tests and benchmarks; npm start keeps PostgreSQL's defaults.
  cheapPasswords?: boolean;
}

export interface EmbeddedServer {
  readonly host: string;
  readonly port: number;
  readonly socketDir: string;
  readonly dataDir: string;
  readonly install: PgInstall;
  readonly password: string;
  clientConfig(database?: string): ClientConfig;
  url(database?: string): string;
  /** PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE: for a child process (the sidecar) attaching to this server. */
  libpqEnv(database?: string): Record<string, string>;
  /**
   * For fault-injection tests: stops the server like `pg_ctl restart -m fast` (SIGINT) or
   * `-m immediate` (SIGQUIT: the next start runs crash recovery) and starts it again on the same
   * port and data directory; resolves once it accepts connections again.
   */
  restart(mode: 'fast' | 'immediate'): Promise<void>;
  stop(): Promise<void>;
}


const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const MIN_SHM_FREE = 512 * 1024 * 1024;

interface RunAs {
  name: string;
  uid: number;
  gid: number;
}

/** PostgreSQL refuses to run as root, so as root run it as `postgres` (or `nobody`). */
function unprivilegedUser(): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const passwd = fsSync.readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':'));
  for (const name of ['postgres', 'nobody']) {
    const e = passwd.find((f) => f[0] === name);
    if (e) return { name, uid: Number(e[2]), gid: Number(e[3]) };
  }
  throw new Error(
    'running as root, which PostgreSQL refuses, and there is no "postgres" or "nobody" user to run it as: ' +
      'create one (useradd --system postgres) or run pgtestpool as a non-root user',
  );
}

/** Can `user` reach dir? (uid/gid only: spawn() drops supplementary groups.) */
function traversable(dir: string, user: RunAs): boolean {
  for (let d = fsSync.realpathSync(dir); ; d = path.dirname(d)) {
    const st = fsSync.statSync(d);
    const bit = st.uid === user.uid ? 0o100 : st.gid === user.gid ? 0o010 : 0o001;
    if (!(st.mode & bit)) return false;
    if (d === path.dirname(d)) return true;
  }
}

function runsAs(install: PgInstall, user: RunAs): boolean {
  const r = spawnSync(path.join(install.bindir, 'postgres'), ['--version'], { uid: user.uid, gid: user.gid, cwd: '/', timeout: 10_000 });
  return r.status === 0;
}

/**
 * The install itself if `user` can run it; else a copy of its bin/lib/share in a shared
 * cache dir (e.g. node_modules under /root, mode 700). Copied once, reused after; the copy is
 * built aside and renamed into place, so a present cache dir is a complete one.
 */
async function installFor(install: PgInstall, user: RunAs | undefined): Promise<PgInstall> {
  if (!user || runsAs(install, user)) return install;
  const hash = createHash('sha256').update(install.bindir).digest('hex').slice(0, 8);
  const cache = path.join(os.tmpdir(), `pgtestpool-bin-${install.version}-${hash}`);
  const copy = { ...install, bindir: path.join(cache, 'bin') };
  if (fsSync.existsSync(copy.bindir) && runsAs(copy, user)) return copy;
  log.info(`user ${user.name} cannot run PostgreSQL in ${install.bindir}: copying it to ${cache}`);
  await fs.rm(cache, { recursive: true, force: true }); // a broken earlier copy
  const tmp = await fs.mkdtemp(`${cache}.tmp-`);
  try {
    for (const sub of ['bin', 'lib', 'share']) {
      const src = path.join(path.dirname(install.bindir), sub);
      if (!fsSync.existsSync(src)) continue;
      // Static libraries and headers are for building extensions, not running a server.
      const filter = (p: string) => !p.endsWith('.a') && !/[/\\](include|pkgconfig)$/.test(p);
      await fs.cp(src, path.join(tmp, sub), { recursive: true, verbatimSymlinks: true, filter });
    }
    await fs.chmod(tmp, 0o755);
    await fs.rename(tmp, cache).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err; // else a concurrent copy won
    });
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
  if (!runsAs(copy, user)) {
    throw new Error(
      `user ${user.name} cannot run PostgreSQL from ${install.bindir} nor from its copy in ${cache}: ` +
        'make the install readable by that user (chmod -R a+rX) or set PGTESTPOOL_PG_BINDIR to one it can run',
    );
  }
  return copy;
}

/** /dev/shm keeps the cluster in RAM; fall back to the temp dir when it is missing or small (Docker's default is 64 MB). */
async function defaultDataParent(): Promise<string> {
  try {
    const st = await fs.statfs('/dev/shm');
    if (st.bavail * st.bsize >= MIN_SHM_FREE) return '/dev/shm';
    log.warn(
      `/dev/shm has only ${Math.round((st.bavail * st.bsize) / 2 ** 20)} MB free: putting PostgreSQL data in ${os.tmpdir()} (slower); ` +
        'give it more room (e.g. docker run --shm-size=1g)',
    );
  } catch {
    log.warn(`/dev/shm is missing: putting PostgreSQL data in ${os.tmpdir()} (slower)`);
  }
  return os.tmpdir();
}

function listen(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen({ host: HOST, port, exclusive: true }, () => resolve(srv));
  });
}

function portInUseError(port: number): Error {
  return new Error(
    `port ${port} on ${HOST} is already in use (another PostgreSQL?): stop that server or choose another port with PGPORT=...`,
  );
}

/** Throws the clear "in use" error for a taken port; for port 0 returns a currently free one. */
async function choosePort(port: number): Promise<number> {
  try {
    const srv = await listen(port);
    const chosen = (srv.address() as net.AddressInfo).port;
    await new Promise((r) => srv.close(r));
    return chosen;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') throw portInUseError(port);
    throw new Error(`cannot use port ${port} on ${HOST}: ${errorMessage(err)}; choose another port with PGPORT=...`);
  }
}

function defaultOnLog(line: string): void {
  // Tests' own SQL errors would drown the sidecar's log; only trouble with the server itself shows.
  if (/\b(FATAL|PANIC):/.test(line) && !/password authentication failed|does not exist|terminating connection due to administrator/.test(line)) log.warn(`postgres: ${line}`);
}

/** Runs a binary to completion, returning its output; rejects with the output on failure. */
function runTool(file: string, args: string[], opts: { cwd: string; user?: RunAs }): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd: opts.cwd, uid: opts.user?.uid, gid: opts.user?.gid, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${path.basename(file)} failed (${signal ?? `exit code ${code}`}):\n${out.trim().split('\n').slice(-20).join('\n')}`));
    });
  });
}

/**
 * Runs postgres as its child and stops it when we die, however we die (even kill -9): it holds
 * the read end of a pipe from us on stdin, which hits EOF only when no process of ours holds the
 * write end. Then: SIGINT (fast shutdown), SIGQUIT after 5 s, SIGKILL after 3 more, and remove
 * the data directory. Being postgres's parent, it reaps it, so its pid is never a reused one.
 * While we live it only passes postgres's exit status on; we signal postgres directly, by the
 * pid it writes on fd 3. Args: the directory to remove, then postgres's command line.
 */
const WATCHDOG = `
dir=$1; shift
exec 4<&0 0</dev/null
"$@" 3>&- 4<&- &
pg=$!
echo $pg >&3; exec 3>&-
orphaned=; timer=
on_orphan() {
  orphaned=1
  kill -INT $pg 2>/dev/null
  { sleep 5; kill -QUIT $pg; sleep 3; kill -KILL $pg; } >/dev/null 2>&1 &
  timer=$!
}
trap on_orphan USR1
{ while read -r _; do :; done; kill -USR1 $$; } <&4 >/dev/null 2>&1 &
reader=$!
exec 4<&-
# A trapped signal interrupts wait; wait again until postgres has really exited (and is reaped).
while :; do
  wait $pg; status=$?
  kill -0 $pg 2>/dev/null || break
done
kill $reader $timer 2>/dev/null
if [ -n "$orphaned" ]; then rm -rf "$dir"; fi
exit $status
`;

interface Launched {
  /** The watchdog; its exit is postgres's exit. */
  child: ChildProcess;
  /** The postmaster's pid. */
  pid: number;
  exited: Promise<void>;
  tail: string[];
  /** Set before we stop it on purpose, so its exit is not reported as unexpected. */
  expected: boolean;
}

function running(l: { child: ChildProcess }): boolean {
  return l.child.exitCode === null && l.child.signalCode === null;
}

/** Signals the postmaster, only while its watchdog (which reaps it) lives: so never a reused pid. */
function signalPostmaster(l: Launched, signal: NodeJS.Signals): void {
  if (!running(l)) return;
  try {
    process.kill(l.pid, signal);
  } catch {
    // exited just now
  }
}

/** The pid the watchdog writes on fd 3 as soon as it has forked postgres. */
function readPid(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let text = '';
    const fd3 = child.stdio[3] as NodeJS.ReadableStream;
    fd3.on('data', (d) => (text += d));
    fd3.on('end', () => {
      const pid = Number(text.trim());
      if (Number.isInteger(pid) && pid > 0) resolve(pid);
      else reject(new Error(`the watchdog shell did not report the postgres pid (got ${JSON.stringify(text)})`));
    });
    fd3.on('error', reject);
  });
}

/** Spawns the postmaster (under its watchdog) and resolves once postmaster.pid says "ready" (what pg_ctl -w checks). */
async function launch(
  install: PgInstall,
  dir: string,
  port: number,
  settings: Record<string, string | number>,
  user: RunAs | undefined,
  onLog: (line: string) => void,
): Promise<Launched> {
  const dataDir = path.join(dir, 'data');
  const args = ['-D', dataDir, '-p', String(port), '-c', `listen_addresses=${HOST}`, '-c', `unix_socket_directories=${dir}`];
  for (const [k, v] of Object.entries(settings)) args.push('-c', `${k}=${v}`);
  const child = spawn('/bin/sh', ['-c', WATCHDOG, 'pgtestpool-watchdog', dir, path.join(install.bindir, 'postgres'), ...args], {
    cwd: dir,
    uid: user?.uid,
    gid: user?.gid,
    // Its own process group: a terminal's Ctrl-C goes to us only, and we stop the server after
    // the sidecar has finished, instead of both at once.
    detached: true,
    stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
  });
  child.stdin!.on('error', () => {}); // never written to: it is only held open
  const tail: string[] = [];
  for (const stream of [child.stdout!, child.stderr!]) {
    readline.createInterface({ input: stream }).on('line', (line) => {
      tail.push(line);
      if (tail.length > 30) tail.shift();
      onLog(line);
    });
  }
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      child.stdin!.destroy();
      resolve();
    }),
  );
  const failed = new Promise<never>((_, reject) => {
    child.once('error', reject);
    // Let the last log lines arrive before reporting them.
    exited.then(() => setTimeout(() => reject(new Error(`postgres exited during startup (code ${child.exitCode ?? child.signalCode}):\n${tail.join('\n')}`)), 50));
  });
  failed.catch(() => {}); // handled via the race below
  const pidRead = readPid(child);
  pidRead.catch(() => {}); // raced below; the watchdog's exit explains a missing pid better
  let pid: number | undefined;
  const deadline = Date.now() + START_TIMEOUT_MS;
  const ready = (async () => {
    pid = await pidRead;
    for (;;) {
      const text = await fs.readFile(path.join(dataDir, 'postmaster.pid'), 'utf8').catch(() => '');
      const lines = text.split('\n');
      if (lines[0] === String(pid) && lines[7]?.trim() === 'ready') return;
      if (!running({ child })) return;
      if (Date.now() > deadline) {
        throw new Error(`postgres did not accept connections within ${START_TIMEOUT_MS / 1000} s:\n${tail.join('\n')}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  try {
    await Promise.race([ready, failed]);
    if (!running({ child })) await failed;
  } catch (err) {
    // Make sure it is gone before the caller removes its directory.
    if (running({ child })) {
      if (pid !== undefined) signalPostmaster({ child, pid, exited, tail, expected: true }, 'SIGKILL');
      else child.kill('SIGKILL'); // no pid: postgres was never forked
      await exited;
    }
    throw err;
  }
  return { child, pid: pid!, exited, tail, expected: false };
}

// Servers not yet stopped, killed synchronously if the process exits first (e.g. a crashed test run).
const live = new Set<{ killNow(): void }>();
let exitHooked = false;
function trackForExit(s: { killNow(): void }): void {
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', () => {
      for (const x of live) x.killNow();
    });
  }
  live.add(s);
}

// Leftovers of killed owners. Each server directory holds an owner file naming the process that
// started it (pid + start time, since pids are reused); a start removes the directories whose
// owner is gone, stopping a postmaster still running there. Never one whose owner lives: tests
// run many servers side by side in one /dev/shm.
const DIR_PREFIX = 'pgtestpool-';
const OWNER_FILE = 'owner';

/** A process's start time (clock ticks since boot, /proc/<pid>/stat field 22); undefined without /proc or process. */
function startTime(pid: number): string | undefined {
  try {
    const stat = fsSync.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Alive and not a zombie (a dead process its parent has not reaped yet). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = fsSync.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return !fsSync.existsSync('/proc/self'); // no /proc (macOS): kill(0) has to do
  }
}

function ownerAlive(owner: string): boolean {
  const [pid, start] = owner.trim().split(' ');
  if (!pid || !processAlive(Number(pid))) return false;
  const now = startTime(Number(pid));
  return !start || now === undefined || now === start; // a different start time: the pid was reused
}

/** The postmaster running in dataDir, if any: its pid from postmaster.pid, checked against its command line. */
function leftoverPostmaster(dataDir: string): number | undefined {
  let pid: number;
  try {
    pid = Number(fsSync.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return undefined; // no postmaster.pid: no server ran, or it stopped cleanly
  }
  if (!Number.isInteger(pid) || pid <= 0 || !processAlive(pid)) return undefined;
  const argv = commandLine(pid);
  const d = argv.indexOf('-D');
  return path.basename(argv[0] ?? '') === 'postgres' && d > 0 && argv[d + 1] === dataDir ? pid : undefined;
}

/** A process's argv: from /proc, else (macOS) from ps, split on spaces (our paths have none). */
function commandLine(pid: number): string[] {
  try {
    return fsSync.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    const ps = spawnSync('ps', ['-o', 'args=', '-p', String(pid)], { encoding: 'utf8', timeout: 5_000 });
    return ps.status === 0 ? ps.stdout.trim().split(/\s+/) : [];
  }
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (processAlive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

/** Immediate shutdown (the data is being thrown away), SIGKILL if that does not do. */
async function stopLeftover(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGQUIT');
    if (await waitGone(pid, 5_000)) return;
    process.kill(pid, 'SIGKILL');
    await waitGone(pid, 2_000);
  } catch {
    // gone meanwhile
  }
}

/** Removes the server directories in `parent` whose owner process is gone; one log line each. */
async function removeLeftovers(parent: string): Promise<void> {
  const names = (await fs.readdir(parent).catch(() => [] as string[])).filter((n) => n.startsWith(DIR_PREFIX));
  for (const name of names) {
    const dir = path.join(parent, name);
    const owner = await fs.readFile(path.join(dir, OWNER_FILE), 'utf8').catch(() => undefined);
    if (owner === undefined ? !olderVersionLeftover(dir) : ownerAlive(owner)) continue;
    const pm = leftoverPostmaster(path.join(dir, 'data'));
    if (pm !== undefined) await stopLeftover(pm);
    const by = owner === undefined ? 'an earlier pgtestpool version' : `process ${owner.trim().split(' ')[0]}`;
    try {
      await fs.rm(dir, { recursive: true, force: true, maxRetries: 3 });
      log.info(`removed ${dir}, left by ${by} that is gone${pm !== undefined ? ` (stopped its PostgreSQL, pid ${pm})` : ''}`);
    } catch (err) {
      log.warn(`cannot remove ${dir}, left by ${by} that is gone: ${errorMessage(err)}; remove it by hand`);
    }
  }
}

/**
 * Versions before owner files ran postgres as a child of node: their leftover is a cluster whose
 * postmaster has another parent now (its node died), or none running and untouched for a while
 * (no younger: it may be one whose initdb runs right now). Needs /proc; else such dirs stay.
 */
function olderVersionLeftover(dir: string): boolean {
  if (!/^pgtestpool-[A-Za-z0-9]{6}$/.test(path.basename(dir)) || !fsSync.existsSync('/proc/self')) return false;
  const dataDir = path.join(dir, 'data');
  try {
    if (!fsSync.existsSync(path.join(dataDir, 'PG_VERSION'))) return false; // not a cluster (yet)
    const pm = leftoverPostmaster(dataDir);
    if (pm === undefined) return Date.now() - fsSync.statSync(dir).mtimeMs > 60_000;
    const stat = fsSync.readFileSync(`/proc/${pm}/stat`, 'utf8');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    return !/^node/.test(path.basename(commandLine(ppid)[0] ?? ''));
  } catch {
    return false; // gone meanwhile, or not readable: not ours to judge
  }
}

async function writeOwner(dir: string): Promise<void> {
  await fs.writeFile(path.join(dir, OWNER_FILE), `${process.pid} ${startTime(process.pid) ?? ''}\n`);
}

export async function startEmbedded(opts: EmbeddedOptions = {}): Promise<EmbeddedServer> {
  const password = opts.password ?? 'postgres';
  if (/[\r\n]/.test(password)) throw new Error('the postgres password must not contain a line break');
  const requested = opts.port ?? 0;
  if (!Number.isInteger(requested) || requested < 0 || requested > 65535) {
    throw new Error(`invalid port ${requested}: use 1-65535 (or 0 for a random free port)`);
  }
  const parent = opts.dataParent ?? (await defaultDataParent());
  await removeLeftovers(parent); // first: a killed server's leftover may hold the port
  let port = await choosePort(requested); // before initdb, so a taken port fails fast and leaves nothing
  const user = unprivilegedUser();
  if (user && port > 0 && port < 1024) {
    throw new Error(`port ${port} is privileged: PostgreSQL runs as user ${user.name} here and cannot bind ports below 1024; choose another port with PGPORT=...`);
  }
  const install = await installFor(opts.install ?? (await findPostgres()), user);
  if (user && !traversable(parent, user)) {
    throw new Error(`user ${user.name} (PostgreSQL refuses to run as root) cannot reach ${parent}: use a dataParent it can enter (e.g. /tmp)`);
  }
  // Cheap password hashing for roles created later too (see cheapPasswordHash).
  const cheap = opts.cheapPasswords ?? false;
  const hashing: Record<string, string | number> = !cheap ? {} : install.major >= 16 ? { scram_iterations: 16 } : { password_encryption: 'md5' };
  const settings = { ...TEST_TUNED_SETTINGS, ...hashing, ...opts.settings };
  const onLog = opts.onLog ?? defaultOnLog;

  const dir = await fs.mkdtemp(path.join(parent, DIR_PREFIX));
  const dataDir = path.join(dir, 'data');
  try {
    await writeOwner(dir);
    if (user) await fs.chown(dir, user.uid, user.gid);
    const t0 = Date.now();
    // Password via a file readable only by the server's user, gone right after initdb.
    const pwfile = path.join(dir, 'pwfile');
    await fs.writeFile(pwfile, `${password}\n`, { mode: 0o600 });
    try {
      if (user) await fs.chown(pwfile, user.uid, user.gid);
      await runTool(
        path.join(install.bindir, 'initdb'),
        [
          '-D', dataDir, '-U', 'postgres', '-E', 'UTF8', '--locale=C',
          // md5 where SCRAM's hashing cost cannot be lowered (see cheapPasswordHash).
          '--auth-local=trust', `--auth-host=${!cheap || install.major >= 16 ? 'scram-sha-256' : 'md5'}`, `--pwfile=${pwfile}`,
          '--no-sync', // nothing to make durable
          ...(install.major >= 18 ? ['--no-data-checksums'] : []), // 18 turned them on by default: pure CPU cost here
        ],
        { cwd: dir, user },
      );
    } finally {
      await fs.rm(pwfile, { force: true });
    }
    const t1 = Date.now();
    let launched: Launched;
    try {
      launched = await launch(install, dir, port, settings, user, onLog);
    } catch (err) {
      if (!/could not bind|could not create any TCP\/IP sockets/.test(errorMessage(err))) throw err;
      // Someone took the port between our check and postgres binding it.
      if (requested !== 0) throw portInUseError(requested);
      port = await choosePort(0);
      launched = await launch(install, dir, port, settings, user, onLog);
    }
    const relaunch = () => launch(install, dir, port, settings, user, onLog);
    const server = new Server(install, dir, dataDir, port, password, launched, relaunch);
    try {
      if (cheap) await cheapPasswordHash(server);
    } catch (err) {
      await server.stop();
      throw err;
    }
    log.debug(`PostgreSQL ${install.version} on ${HOST}:${port}, data in ${dir}: initdb ${t1 - t0} ms, start ${Date.now() - t1} ms`);
    return server;
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Every test opens a connection to its clone, and SCRAM's default 4096 hashing rounds cost ~6 ms
 * of CPU per connection (client and server): more than the clone itself. On this throwaway
 * server the password is re-hashed with 16 rounds (PG 16+: scram_iterations, also the default for
 * roles created later) or as md5 (PG 15 and older). Done over the trusted local socket.
 */
async function cheapPasswordHash(server: Server): Promise<void> {
  const c = new pg.Client({ host: server.socketDir, port: server.port, user: 'postgres', database: 'postgres' });
  await c.connect();
  try {
    await c.query(server.install.major >= 16 ? 'SET scram_iterations = 16' : "SET password_encryption = 'md5'");
    await c.query(`ALTER ROLE postgres PASSWORD ${c.escapeLiteral(server.password)}`);
  } finally {
    await c.end();
  }
}

class Server implements EmbeddedServer {
  readonly host = HOST;
  private stopping: Promise<void> | undefined;
  private restarting: Promise<void> | undefined;

  constructor(
    readonly install: PgInstall,
    private readonly dir: string,
    readonly dataDir: string,
    readonly port: number,
    readonly password: string,
    private proc: Launched,
    private readonly relaunch: () => Promise<Launched>,
  ) {
    trackForExit(this);
    this.watch(proc);
  }

  private watch(l: Launched): void {
    l.exited.then(() => {
      if (!this.stopping && !l.expected) log.error(`PostgreSQL on port ${this.port} exited unexpectedly:\n${l.tail.slice(-10).join('\n')}`);
    });
  }

  get socketDir(): string {
    return this.dir;
  }

  clientConfig(database = 'postgres'): ClientConfig {
    return { host: HOST, port: this.port, user: 'postgres', password: this.password, database };
  }

  libpqEnv(database = 'postgres'): Record<string, string> {
    return { PGHOST: HOST, PGPORT: String(this.port), PGUSER: 'postgres', PGPASSWORD: this.password, PGDATABASE: database };
  }

  url(database = 'postgres'): string {
    return `postgres://postgres:${encodeURIComponent(this.password)}@${HOST}:${this.port}/${encodeURIComponent(database)}`;
  }

  /** Sends the shutdown signal and waits for the exit; SIGKILL if it takes too long. */
  private async halt(l: Launched, signal: NodeJS.Signals): Promise<void> {
    l.expected = true;
    const waitExit = (ms: number) =>
      Promise.race([l.exited.then(() => true), new Promise<boolean>((r) => setTimeout(r, ms, false).unref())]);
    if (!running(l)) return;
    signalPostmaster(l, signal);
    if (!(await waitExit(STOP_TIMEOUT_MS))) {
      log.warn(`PostgreSQL on port ${this.port} did not stop within ${STOP_TIMEOUT_MS / 1000} s: killing it`);
      signalPostmaster(l, 'SIGKILL');
      await waitExit(5_000);
    }
  }

  restart(mode: 'fast' | 'immediate'): Promise<void> {
    if (this.stopping) return Promise.reject(new Error(`cannot restart PostgreSQL on port ${this.port}: it is being stopped`));
    // One at a time: a second restart waits for the first.
    const next = (this.restarting ?? Promise.resolve()).catch(() => {}).then(() => this.restartNow(mode));
    this.restarting = next;
    return next;
  }

  private async restartNow(mode: 'fast' | 'immediate'): Promise<void> {
    if (this.stopping) throw new Error(`cannot restart PostgreSQL on port ${this.port}: it is being stopped`);
    await this.halt(this.proc, mode === 'fast' ? 'SIGINT' : 'SIGQUIT');
    // postgres binds with SO_REUSEADDR, so TIME_WAIT does not block the port; but anyone's
    // bind(0) may get it in this gap: retry a moment before giving up.
    const deadline = Date.now() + 5_000;
    for (;;) {
      try {
        this.proc = await this.relaunch();
        break;
      } catch (err) {
        const bind = /could not bind|could not create any TCP\/IP sockets/.test(errorMessage(err));
        if (!bind || Date.now() > deadline) {
          throw new Error(`restarting PostgreSQL on port ${this.port} failed${bind ? ' (someone else took the port)' : ''}: ${errorMessage(err)}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    this.watch(this.proc);
    log.debug(`PostgreSQL on port ${this.port} restarted (${mode})`);
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.restarting?.catch(() => {}); // then stop what it started
      await this.halt(this.proc, 'SIGINT'); // "fast" shutdown: abort sessions, exit cleanly
      // A postmaster whose watchdog was killed (by hand) would outlive its deleted directory.
      const orphan = leftoverPostmaster(this.dataDir);
      if (orphan !== undefined) await stopLeftover(orphan);
      await fs.rm(this.dir, { recursive: true, force: true, maxRetries: 3 });
      live.delete(this);
    })();
    return this.stopping;
  }

  /** Synchronous best effort for process 'exit', when stop() was never awaited. */
  killNow(): void {
    signalPostmaster(this.proc, 'SIGKILL');
    try {
      fsSync.rmSync(this.dir, { recursive: true, force: true, maxRetries: 3 });
    } catch {
      // best effort
    }
  }
}
