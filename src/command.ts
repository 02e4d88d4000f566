// A template's `command:`: the user's own migration tool (alembic, knex, manage.py migrate, ...)
// run against the template database being built. Its output goes to the log line by line, a
// failure carries its exit code and last lines, and it never outlives the build: a timeout or
// stop() ends its whole process group.
import { spawn } from 'node:child_process';
import { postgresUrl, type ConnConfig } from './db.ts';
import { formatDuration } from './config.ts';
import { log, redact } from './log.ts';

/** Lines of output a failure quotes (all of it is in the log already). */
const TAIL_LINES = 20;
/** After SIGTERM, how long a command gets to exit before SIGKILL. */
const KILL_GRACE_MS = 3_000;

export class CommandError extends Error {
  constructor(
    message: string,
    readonly exitCode: number | null,
    readonly tail: string[],
  ) {
    super(message);
    this.name = 'CommandError';
  }
}

/**
 * The connection a command gets, in the forms tools read: PG* for libpq-based tools and psql, and
 * DATABASE_URL (postgresql://, which SQLAlchemy, Django, Prisma, knex and libpq all accept).
 */
export function commandEnv(conn: ConnConfig, database: string): Record<string, string> {
  const host = conn.host ?? 'localhost';
  const port = String(conn.port ?? 5432);
  const user = conn.user ?? 'postgres';
  const password = typeof conn.password === 'string' ? conn.password : '';
  const env: Record<string, string> = { PGHOST: host, PGPORT: port, PGUSER: user, PGDATABASE: database };
  if (password) env.PGPASSWORD = password;
  env.DATABASE_URL = postgresUrl(conn, user, database, password);
  return env;
}

export interface RunCommandOptions {
  command: string;
  cwd: string;
  env: Record<string, string>;
  timeoutMs: number;
  /** Prefix of each logged output line. */
  label: string;
  /** Strings never to log or quote (the password), replaced by ***. */
  secrets: string[];
}

export interface RunningCommand {
  done: Promise<void>;
  /** Ends the command and everything it started (idempotent); `done` then rejects. */
  kill(reason: string): void;
}

export function runCommand(opts: RunCommandOptions): RunningCommand {
  const child = spawn('/bin/sh', ['-c', opts.command], {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    // Its own process group, so a timeout or stop() ends the tool's children too (npx, a shell pipeline).
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tail: string[] = [];
  // URLs and password=... anywhere, and the password itself wherever the tool printed it.
  const hide = (line: string) => redact(opts.secrets.filter(Boolean).reduce((l, s) => l.split(s).join('***'), line));
  const onLine = (line: string) => {
    const clean = hide(line.replace(/\r$/, ''));
    tail.push(clean);
    if (tail.length > TAIL_LINES) tail.shift();
    log.info(`${opts.label}: ${clean}`);
  };
  for (const stream of [child.stdout, child.stderr]) {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop()!;
      lines.forEach(onLine);
    });
    stream.on('end', () => {
      if (partial) onLine(partial);
      partial = '';
    });
  }

  let killedFor: string | null = null;
  let killTimer: NodeJS.Timeout | null = null;
  const signalGroup = (signal: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, signal);
    } catch {
      // already gone
    }
  };
  const kill = (reason: string) => {
    if (killedFor !== null || child.exitCode !== null || child.signalCode !== null) return;
    killedFor = reason;
    signalGroup('SIGTERM');
    killTimer = setTimeout(() => signalGroup('SIGKILL'), KILL_GRACE_MS);
    killTimer.unref();
  };
  const timeout = setTimeout(() => kill(`it was still running after command_timeout (${formatDuration(opts.timeoutMs)})`), opts.timeoutMs);

  const done = new Promise<void>((resolve, reject) => {
    const lastLines = () => (tail.length ? `\nlast lines of its output:\n  ${tail.join('\n  ')}` : '\n(it printed nothing)');
    child.on('error', (err) => {
      clearTimeout(timeout);
      reject(new CommandError(`command ${JSON.stringify(opts.command)} could not be started in ${opts.cwd}: ${err.message}`, null, tail));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timeout);
      if (killTimer) clearTimeout(killTimer);
      // Whatever it left running in its group goes with it.
      signalGroup('SIGKILL');
      if (killedFor !== null) {
        reject(new CommandError(`command ${JSON.stringify(opts.command)} was stopped: ${killedFor}${lastLines()}`, code, tail));
      } else if (code !== 0) {
        const how = code === null ? `was killed by ${signal}` : `exited with code ${code}`;
        reject(new CommandError(`command ${JSON.stringify(opts.command)} ${how}${lastLines()}`, code, tail));
      } else resolve();
    });
  });
  return { done, kill };
}
