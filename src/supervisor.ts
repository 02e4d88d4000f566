// The image's process model. pgtestpool-entrypoint (docker/entrypoint.sh) prepares the data
// directories as root and drops to postgres; tini is PID 1 (it reaps orphans and forwards signals
// to us); this supervisor runs PostgreSQL (through the base image's docker-entrypoint.sh, so every
// convention of the official image holds) and the sidecar as siblings. The sidecar is never a child
// of the postmaster, so killing it cannot send PostgreSQL into crash recovery.
//
// - PostgreSQL exits: stop the sidecar and exit non-zero, so a restart policy applies.
// - The sidecar exits: restart it (with backoff) while PostgreSQL keeps serving. Its state lives in
//   PostgreSQL, so a restart loses nothing; ending the container instead would destroy, on the
//   tmpfs, every database that running tests are using. An invalid config is not retried.
// - SIGINT/SIGTERM (`docker stop`), at any moment, even during initdb or init scripts: stop the
//   sidecar, then PostgreSQL with a fast shutdown; exit 0.
//
// Where PostgreSQL listens (however the port was given: -c port=, -p, PGPORT, postgresql.conf) is
// read from its postmaster.pid and written to the state file for the health check.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, renameSync, statfsSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TEST_TUNED_SETTINGS } from './tuning.ts';

const APP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/**
 * The image runs the sidecar as the plain JavaScript bundle built beside this one (dist/, see the
 * Dockerfile): no compiler at start-up, 30-40 MB less per process. From src/, through tsx.
 */
const SIDECAR_ARGS = import.meta.url.endsWith('.mjs')
  ? [fileURLToPath(new URL('./main.mjs', import.meta.url))]
  : ['--import', 'tsx', path.join(APP_DIR, 'src', 'main.ts')];
/** Read by docker/healthcheck.sh. */
const STATE_FILE = process.env.PGTESTPOOL_STATE_FILE || '/var/run/postgresql/pgtestpool.state';
/** Docker's default stop timeout is 10 s for everything: the sidecar gets part of it. */
const SIDECAR_STOP_MS = 5_000;
const POSTGRES_STOP_MS = 4_000;
/** main.ts exits with this on an invalid config: restarting cannot fix it. */
const CONFIG_ERROR_EXIT = 2;
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

const say = (msg: string) => process.stderr.write(`${new Date().toISOString()} pgtestpool-supervisor: ${msg}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** VAR or VAR_FILE (a Docker secret), as the official entrypoint reads them. */
function fileEnv(name: string, fallback = ''): string {
  const file = process.env[`${name}_FILE`];
  if (process.env[name]) return process.env[name]!;
  if (file) return readFileSync(file, 'utf8').replace(/\n+$/, '');
  return fallback;
}

/** Test-tuned settings first, the user's arguments after them: for -c, the last one wins. */
function postgresArgs(userArgs: string[]): string[] {
  if (process.env.PGTESTPOOL_TUNING === 'off') return userArgs;
  const tuned = Object.entries(TEST_TUNED_SETTINGS).flatMap(([k, v]) => ['-c', `${k}=${v}`]);
  return [...tuned, ...userArgs];
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

function describeExit(child: ChildProcess): string {
  return child.signalCode ? `signal ${child.signalCode}` : `exit code ${child.exitCode}`;
}

/** The lines of postmaster.pid that say where the server listens (see PostgreSQL's pidfile.h). */
export interface Listening {
  pid: number;
  port: number;
  /** The first unix_socket_directories entry, or null when there is none. */
  socketDir: string | null;
  /** The first listen_addresses entry, or null. */
  address: string | null;
  ready: boolean;
}

export function parsePostmasterPid(text: string): Listening | null {
  const lines = text.split('\n');
  const pid = Number(lines[0]);
  const port = Number(lines[3]);
  if (!Number.isInteger(pid) || pid <= 0 || !Number.isInteger(port) || port <= 0) return null;
  const socketDir = lines[4]?.trim() || null;
  const address = lines[5]?.trim() || null;
  return { pid, port, socketDir, address, ready: lines[7]?.trim() === 'ready' };
}

/** How the sidecar and the health check reach the server: its socket, else its TCP address. */
export function connectTarget(l: Listening): { host: string; port: number } {
  if (l.socketDir) return { host: l.socketDir, port: l.port };
  const address = !l.address || l.address === '*' || l.address === '0.0.0.0' ? '127.0.0.1' : l.address === '::' ? '::1' : l.address;
  return { host: address, port: l.port };
}

/** key=value lines, replaced atomically: the health check may read at any moment. */
function writeState(fields: Record<string, string | number>): void {
  const text = Object.entries(fields)
    .map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}\n`)
    .join('');
  try {
    writeFileSync(`${STATE_FILE}.tmp`, text);
    renameSync(`${STATE_FILE}.tmp`, STATE_FILE);
  } catch (err) {
    say(`cannot write ${STATE_FILE} (the health check reads it): ${(err as Error).message}`);
  }
}

class Supervisor {
  private postgres!: ChildProcess;
  private dataDir = process.env.PGDATA || '/var/lib/postgresql/data';
  private listening: Listening | null = null;
  private sidecar: ChildProcess | null = null;
  private stopping = false;
  private restarts = 0;
  private restartTimer: NodeJS.Timeout | null = null;

  run(userArgs: string[], earlySignals: string[]): void {
    process.on('SIGINT', () => void this.stop('SIGINT'));
    process.on('SIGTERM', () => void this.stop('SIGTERM'));
    // SIGHUP reloads PostgreSQL's configuration (docker kill -s HUP); Node would exit on it.
    process.on('SIGHUP', () => this.postgres && signal(this.postgres.pid!, 'SIGHUP'));
    process.on('SIGUSR1', () => {});
    process.on('SIGUSR2', () => {});
    if (earlySignals.length) {
      say(`${earlySignals[0]} before anything started: exiting`);
      process.exit(0);
    }
    writeState({ status: 'initializing' });
    const args = postgresArgs(userArgs);
    say(`starting PostgreSQL: postgres ${userArgs.join(' ')}`.trimEnd());
    // Its own process group: a stop during initialization signals initdb, psql and the init
    // scripts with it.
    this.postgres = spawn('docker-entrypoint.sh', ['postgres', ...args], { stdio: 'inherit', detached: true });
    this.postgres.once('error', (err) => {
      say(`cannot run docker-entrypoint.sh: ${err.message}`);
      process.exit(1);
    });
    this.postgres.once('exit', () => void this.onPostgresExit());
    void this.startSidecarWhenReady();
  }

  private postgresRunning(): boolean {
    return this.postgres.exitCode === null && this.postgres.signalCode === null;
  }

  private async readPidFile(): Promise<Listening | null> {
    return parsePostmasterPid(await readFile(path.join(this.dataDir, 'postmaster.pid'), 'utf8').catch(() => ''));
  }

  /** Ready means the real server: during initialization the entrypoint runs a temporary one in the same directory. */
  private async startSidecarWhenReady(): Promise<void> {
    for (;;) {
      if (this.stopping || !this.postgresRunning()) return;
      const l = await this.readPidFile();
      if (l && l.pid === this.postgres.pid && l.ready) {
        this.listening = l;
        break;
      }
      await sleep(100);
    }
    const { host, port } = connectTarget(this.listening);
    say(`PostgreSQL is ready (port ${port}, ${host.startsWith('/') ? 'socket in ' : 'address '}${host}); starting the sidecar`);
    this.warnIfNotInMemory();
    writeState({ status: 'running', host, port });
    this.startSidecar();
  }

  private warnIfNotInMemory(): void {
    try {
      const { type } = statfsSync(this.dataDir);
      if (type !== TMPFS_MAGIC && type !== RAMFS_MAGIC) {
        say(`WARNING: ${this.dataDir} is not on tmpfs (filesystem type 0x${type.toString(16)}): every clone and drop goes to disk, ` +
          'many times slower. Mount a tmpfs at /var/lib/postgresql and /var/lib/postgresql/data (see compose.example.yml).');
      }
    } catch {
      // not decisive: say nothing
    }
  }

  private startSidecar(): void {
    if (this.stopping || !this.listening) return;
    const { host, port } = connectTarget(this.listening);
    const user = fileEnv('POSTGRES_USER', 'postgres');
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      // The control database is the one clients reach by default: POSTGRES_DB, as in the official image.
      PGHOST: host,
      PGPORT: String(port),
      PGUSER: user,
      PGDATABASE: fileEnv('POSTGRES_DB', user),
      PGPASSWORD: fileEnv('POSTGRES_PASSWORD') || undefined,
      POSTGRES_PASSWORD: undefined,
      DATABASE_URL: undefined,
    };
    const started = Date.now();
    const sidecar = spawn(process.execPath, SIDECAR_ARGS, { cwd: APP_DIR, env, stdio: 'inherit' });
    sidecar.once('error', (err) => say(`cannot start the sidecar: ${err.message}`));
    this.sidecar = sidecar;
    sidecar.once('exit', () => {
      if (this.sidecar === sidecar) this.sidecar = null;
      if (this.stopping || !this.postgresRunning()) return;
      if (sidecar.exitCode === CONFIG_ERROR_EXIT) {
        say('the sidecar stopped: its config is invalid (see above). PostgreSQL keeps serving; fix the config and restart the container');
        writeState({ status: 'failed', host, port, message: 'the config is invalid: see the container log' });
        return;
      }
      if (Date.now() - started > 60_000) this.restarts = 0;
      const delay = Math.min(30_000, 1000 * 2 ** this.restarts++);
      say(`the sidecar stopped (${describeExit(sidecar)}); PostgreSQL keeps serving; restarting it in ${delay / 1000} s`);
      this.restartTimer = setTimeout(() => this.startSidecar(), delay);
    });
  }

  private async onPostgresExit(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    say(`PostgreSQL stopped unexpectedly (${describeExit(this.postgres)}); stopping the sidecar`);
    writeState({ status: 'failed', message: `PostgreSQL stopped (${describeExit(this.postgres)})` });
    await this.stopSidecar();
    process.exit(this.postgres.exitCode || 1);
  }

  private async stopSidecar(): Promise<void> {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const sidecar = this.sidecar;
    if (!sidecar) return;
    sidecar.kill('SIGTERM');
    const timer = setTimeout(() => sidecar.kill('SIGKILL'), SIDECAR_STOP_MS);
    await exited(sidecar);
    clearTimeout(timer);
  }

  /**
   * The real server gets SIGINT, PostgreSQL's fast shutdown (SIGTERM's smart shutdown would wait
   * for every test's connection to close). Before it is up, the entrypoint's process group (initdb,
   * psql, init scripts) gets SIGTERM and the temporary init server, in a session of its own since
   * pg_ctl started it, a fast shutdown too.
   */
  private async stopPostgres(): Promise<void> {
    const pid = this.postgres.pid!;
    let tempServer: number | null = null;
    if (this.listening) {
      signal(pid, 'SIGINT');
    } else {
      const l = await this.readPidFile();
      if (l && l.pid !== pid && alive(l.pid)) tempServer = l.pid;
      signal(-pid, 'SIGTERM');
      if (tempServer) signal(tempServer, 'SIGINT');
    }
    const deadline = Date.now() + POSTGRES_STOP_MS;
    while ((this.postgresRunning() || (tempServer && alive(tempServer))) && Date.now() < deadline) await sleep(50);
    if (this.postgresRunning() || (tempServer && alive(tempServer))) {
      say(`PostgreSQL did not stop within ${POSTGRES_STOP_MS / 1000} s: killing it`);
      signal(-pid, 'SIGKILL');
      if (tempServer) signal(tempServer, 'SIGKILL');
      await exited(this.postgres);
    }
  }

  /** docker stop: the sidecar first (it waits for CREATE/DROP in flight), then PostgreSQL. */
  async stop(sig: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const t = performance.now();
    say(`${sig}: stopping ${this.sidecar ? 'the sidecar, then ' : ''}PostgreSQL${this.listening ? '' : ' (still initializing)'}`);
    writeState({ status: 'stopping' });
    await this.stopSidecar();
    await this.stopPostgres();
    say(`stopped in ${Math.round(performance.now() - t)} ms (PostgreSQL: ${describeExit(this.postgres)})`);
    process.exit(0);
  }
}

const takeEarlySignals = (globalThis as Record<symbol, unknown>)[Symbol.for('pgtestpool.earlySignals')] as (() => string[]) | undefined;

// Run by pgtestpool-entrypoint only for the server; other commands never reach here.
if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const argv = process.argv.slice(2);
  new Supervisor().run(argv[0] === 'postgres' ? argv.slice(1) : argv, takeEarlySignals?.() ?? []);
}
