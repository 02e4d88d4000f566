// The image's process model. tini is PID 1 (it reaps zombies and forwards signals to us); this
// supervisor runs PostgreSQL (through the base image's docker-entrypoint.sh, so every convention of
// the official image holds) and the sidecar as siblings. The sidecar is never a child of the
// postmaster, so killing it cannot send PostgreSQL into crash recovery.
//
// - PostgreSQL exits: stop the sidecar and exit non-zero, so a restart policy applies.
// - The sidecar exits: restart it (with backoff) while PostgreSQL keeps serving. Its state lives in
//   PostgreSQL, so a restart loses nothing; ending the container instead would destroy, on the
//   tmpfs, every database that running tests are using.
// - SIGINT/SIGTERM (`docker stop`): stop the sidecar, then PostgreSQL with a fast shutdown; exit 0.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TEST_TUNED_SETTINGS } from './embedded.ts';

const APP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SOCKET_DIR = '/var/run/postgresql';
/** Docker's default stop timeout is 10 s for both: the sidecar gets part of it. */
const SIDECAR_STOP_MS = 6_000;
const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15 };

const say = (msg: string) => process.stderr.write(`${new Date().toISOString()} pgtestpool-supervisor: ${msg}\n`);

/** VAR or VAR_FILE (a Docker secret), as the official entrypoint reads them. */
function fileEnv(name: string, fallback = ''): string {
  const file = process.env[`${name}_FILE`];
  if (process.env[name]) return process.env[name]!;
  if (file) return readFileSync(file, 'utf8').replace(/\n+$/, '');
  return fallback;
}

function postgresUser(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('postgres:'));
  if (!line) throw new Error('no postgres user in /etc/passwd: is this image built FROM the postgres image?');
  const f = line.split(':');
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

/** Test-tuned settings first, the user's arguments after them: for -c, the last one wins. */
function postgresArgs(userArgs: string[]): string[] {
  if (process.env.PGTESTPOOL_TUNING === 'off') return userArgs;
  const tuned = Object.entries(TEST_TUNED_SETTINGS).flatMap(([k, v]) => ['-c', `${k}=${v}`]);
  return [...tuned, ...userArgs];
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

function describeExit(child: ChildProcess): string {
  return child.signalCode ? `signal ${child.signalCode}` : `exit code ${child.exitCode}`;
}

class Supervisor {
  private postgres!: ChildProcess;
  private sidecar: ChildProcess | null = null;
  private stopping = false;
  private restarts = 0;
  private restartTimer: NodeJS.Timeout | null = null;

  run(userArgs: string[]): void {
    const args = postgresArgs(userArgs);
    say(`starting PostgreSQL: postgres ${userArgs.join(' ')}`.trimEnd());
    this.postgres = spawn('docker-entrypoint.sh', ['postgres', ...args], { stdio: 'inherit' });
    this.postgres.once('error', (err) => this.fail(`cannot run docker-entrypoint.sh: ${err.message}`));
    this.postgres.once('exit', () => void this.onPostgresExit());
    process.on('SIGINT', () => void this.stop('SIGINT'));
    process.on('SIGTERM', () => void this.stop('SIGTERM'));
    // SIGHUP reloads PostgreSQL's configuration (docker kill -s HUP); Node would exit on it.
    process.on('SIGHUP', () => this.postgres.kill('SIGHUP'));
    process.on('SIGUSR1', () => {});
    process.on('SIGUSR2', () => {});
    void this.startSidecarWhenReady();
  }

  /** Ready means the real server: during initialization the entrypoint runs a temporary one on the same socket. */
  private async startSidecarWhenReady(): Promise<void> {
    const pidFile = path.join(process.env.PGDATA ?? '/var/lib/postgresql/data', 'postmaster.pid');
    for (;;) {
      if (this.stopping || this.postgres.exitCode !== null || this.postgres.signalCode !== null) return;
      const lines = (await readFile(pidFile, 'utf8').catch(() => '')).split('\n');
      if (lines[0] === String(this.postgres.pid) && lines[7]?.trim() === 'ready') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    this.startSidecar();
  }

  private startSidecar(): void {
    if (this.stopping) return;
    const user = fileEnv('POSTGRES_USER', 'postgres');
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      // The control database is the one clients reach by default: POSTGRES_DB, as in the official image.
      PGHOST: SOCKET_DIR,
      PGPORT: process.env.PGPORT || '5432',
      PGUSER: user,
      PGDATABASE: fileEnv('POSTGRES_DB', user),
      PGPASSWORD: fileEnv('POSTGRES_PASSWORD') || undefined,
      POSTGRES_PASSWORD: undefined,
      DATABASE_URL: undefined,
    };
    const started = Date.now();
    const sidecar = spawn(process.execPath, ['--import', 'tsx', path.join(APP_DIR, 'src', 'main.ts')], {
      cwd: APP_DIR,
      env,
      stdio: 'inherit',
      // As root, drop to the postgres user; under `docker run --user`, run as that user.
      ...(process.getuid?.() === 0 ? postgresUser() : {}),
    });
    sidecar.once('error', (err) => say(`cannot start the sidecar: ${err.message}`));
    this.sidecar = sidecar;
    sidecar.once('exit', () => {
      if (this.sidecar === sidecar) this.sidecar = null;
      if (this.stopping || this.postgres.exitCode !== null) return;
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

  /** docker stop: the sidecar first (it waits for CREATE/DROP in flight), then a fast shutdown. */
  async stop(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    say(`${signal}: stopping the sidecar, then PostgreSQL`);
    await this.stopSidecar();
    // SIGINT is PostgreSQL's fast shutdown; SIGTERM's smart shutdown would wait for every test's
    // connection to close.
    if (this.postgres.exitCode === null && this.postgres.signalCode === null) this.postgres.kill('SIGINT');
    await exited(this.postgres);
    say(`stopped (PostgreSQL: ${describeExit(this.postgres)})`);
    process.exit(this.postgres.exitCode ?? 0);
  }

  private fail(message: string): never {
    say(message);
    process.exit(1);
  }
}

/**
 * Like the official entrypoint: `-c x=y` means `postgres -c x=y`; `postgres --version` and any
 * other command (bash, psql) run as they are, without the sidecar.
 */
function main(argv: string[]): void {
  const args = argv.length === 0 ? ['postgres'] : argv[0]!.startsWith('-') ? ['postgres', ...argv] : argv;
  const noServer = args.some((a) => ['--help', '-?', '--version', '-V', '--describe-config', '-C'].includes(a));
  if (args[0] !== 'postgres' || noServer) {
    const child = spawn('docker-entrypoint.sh', args, { stdio: 'inherit' });
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, () => child.kill(s));
    child.once('exit', (code, signal) => process.exit(code ?? 128 + (SIGNAL_NUMBERS[signal ?? ''] ?? 0)));
    return;
  }
  new Supervisor().run(args.slice(1));
}

main(process.argv.slice(2));
