// Shared test harness: real PostgreSQL servers (tmpfs, random free port) for every major this
// machine has, config folders in temp dirs, and in-process or child-process sidecars.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { parseConfig } from '../src/config.ts';
import { startEmbedded, type EmbeddedServer } from '../src/embedded.ts';
import { setQuiet } from '../src/log.ts';
import { listPostgresInstalls, type PgInstall } from '../src/pgbin.ts';
import { Sidecar } from '../src/sidecar.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Real pg_dump output to test with, kept in the repository (test/fixtures/pagila/README.md). */
export const PAGILA_DIR = path.join(ROOT, 'test', 'fixtures', 'pagila');

if (!process.env.PGTESTPOOL_TEST_VERBOSE) setQuiet(true);

/**
 * The installs to test against: one per major. PGTESTPOOL_TEST_MAJORS=15,18 limits them; CI sets
 * PGTESTPOOL_TEST_REQUIRE_MAJORS=15,18 so a missing install fails instead of silently shrinking coverage.
 */
export async function testInstalls(): Promise<PgInstall[]> {
  const all = await listPostgresInstalls();
  const byMajor = new Map<number, PgInstall>();
  for (const i of all) if (!byMajor.has(i.major)) byMajor.set(i.major, i);
  let installs = [...byMajor.values()].sort((a, b) => a.major - b.major);
  const only = process.env.PGTESTPOOL_TEST_MAJORS?.split(',').map(Number);
  if (only) installs = installs.filter((i) => only.includes(i.major));
  const required = process.env.PGTESTPOOL_TEST_REQUIRE_MAJORS?.split(',').map(Number) ?? [];
  for (const major of required) {
    if (!installs.some((i) => i.major === major)) throw new Error(`PostgreSQL ${major} is required for the tests but was not found`);
  }
  if (installs.length === 0) throw new Error('no PostgreSQL installation found for the tests');
  return installs;
}

export async function startServer(install: PgInstall): Promise<EmbeddedServer> {
  return startEmbedded({ port: 0, install, cheapPasswords: true });
}

/** A temp folder with config.yaml and the given files; returns the config path. */
export function configDir(yaml: string, files: Record<string, string> = {}): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-test-'));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, name), text);
  }
  writeFileSync(path.join(dir, 'config.yaml'), yaml);
  return path.join(dir, 'config.yaml');
}

export function removeConfigDir(configFile: string): void {
  rmSync(path.dirname(configFile), { recursive: true, force: true });
}

export const EXAMPLE_SCHEMA = {
  'schema/001.sql': `CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE notes (id serial PRIMARY KEY, account_id bigint REFERENCES accounts, body text);`,
  'schema/002.sql': `INSERT INTO accounts (email) VALUES ('a@example.com'), ('b@example.com');`,
};

/** A config with fast polling for tests; `extra` is appended (YAML). */
export function simpleConfig(opts: { minReady?: number; max?: number; idle?: string; maxDuration?: string; claimTimeout?: string; template?: string; concurrency?: number } = {}): string {
  return `templates:
  ${JSON.stringify(opts.template ?? 'default')}:
    schema: [schema/*.sql]
    min_ready: ${opts.minReady ?? 4}
pool:
  max_databases: ${opts.max ?? 64}
  poll_interval: 100ms
  concurrency: ${opts.concurrency ?? 2}
lease:
  idle_timeout: ${opts.idle ?? '30s'}
  max_duration: ${opts.maxDuration ?? '1h'}
claim:
  timeout: ${opts.claimTimeout ?? '20s'}
`;
}

export interface RunningSidecar {
  sidecar: Sidecar;
  configFile: string;
  /** Releases every claim and waits for the drops (so tests sharing a server start clean), then stops. */
  stop(opts?: { keepClaims?: boolean }): Promise<void>;
}

export async function startSidecar(
  server: EmbeddedServer,
  yaml: string,
  files: Record<string, string> = EXAMPLE_SCHEMA,
  conn: pg.ClientConfig = server.clientConfig('postgres'),
): Promise<RunningSidecar> {
  const configFile = configDir(yaml, files);
  const sidecar = new Sidecar(parseConfig(yaml, configFile), conn);
  try {
    await sidecar.start();
    const { filled, status } = await sidecar.whenFilled(60_000);
    if (!filled) throw new Error(`the pool did not fill within 60 s: ${JSON.stringify(status)}`);
  } catch (err) {
    await sidecar.stop();
    removeConfigDir(configFile);
    throw err;
  }
  return {
    sidecar,
    configFile,
    stop: async (opts = {}) => {
      try {
        if (!opts.keepClaims) {
          const admin = new pg.Client({ ...conn, user: 'postgres', password: server.password });
          await admin.connect();
          try {
            await admin.query("SELECT pgtestpool.release_all_claims('test cleanup')");
            await waitFor('cleanup drops', async () =>
              (await admin.query("SELECT 1 FROM pgtestpool.databases WHERE state = 'dropping'")).rowCount === 0);
          } finally {
            await admin.end();
          }
        }
      } finally {
        await sidecar.stop();
        removeConfigDir(configFile);
      }
    },
  };
}

export async function client(server: EmbeddedServer, database = 'postgres', user?: { user: string; password: string }): Promise<pg.Client> {
  const c = new pg.Client({ ...server.clientConfig(database), ...(user ?? {}) });
  await c.connect();
  return c;
}

export async function claim(c: pg.Client, template?: string): Promise<string> {
  const { rows } = template === undefined
    ? await c.query<{ name: string }>('SELECT claim_test_db() AS name')
    : await c.query<{ name: string }>('SELECT claim_test_db($1) AS name', [template]);
  return rows[0]!.name;
}

export async function status(c: pg.Client, template = 'default'): Promise<Record<string, unknown> & { ready: number; claimed: number; creating: number; dropping: number }> {
  const { rows } = await c.query('SELECT * FROM test_db_status() WHERE template = $1', [template]);
  const r = rows[0];
  if (!r) throw new Error(`no status row for template ${template}`);
  return { ...r, ready: Number(r.ready), claimed: Number(r.claimed), creating: Number(r.creating), dropping: Number(r.dropping) };
}

export async function databaseExists(c: pg.Client, name: string): Promise<boolean> {
  const { rowCount } = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
  return rowCount === 1;
}

/** Polls `check` until it returns a truthy value or the time is up. */
export async function waitFor<T>(what: string, check: () => Promise<T>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The sidecar as a separate process (`src/main.ts`) attached to `server`, as the image runs it. */
export function spawnSidecar(server: EmbeddedServer, configFile: string, env: Record<string, string> = {}): ChildProcess & { output: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/main.ts')], {
    cwd: ROOT,
    env: {
      ...process.env,
      ...server.libpqEnv(),
      PGTESTPOOL_CONFIG: configFile,
      PGTESTPOOL_LOG: '',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return Object.assign(child, { output: () => out });
}

export function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** Waits for a spawned sidecar's ready line; fails at once, with its output, if it exits first. */
export async function waitForReady(child: ChildProcess & { output: () => string }, timeoutMs = 60_000): Promise<void> {
  await waitFor('sidecar ready line', async () => {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`the sidecar exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${child.output()}`);
    }
    return /pgtestpool ready/.test(child.output());
  }, timeoutMs);
}

/** A clean slate on a shared test server: every pool database dropped, the control tables emptied. */
export async function resetPool(admin: pg.Client): Promise<void> {
  const { rows } = await admin.query<{ datname: string; datistemplate: boolean }>("SELECT datname, datistemplate FROM pg_database WHERE datname LIKE 'pgtp\\_%'");
  for (const r of rows) {
    if (r.datistemplate) await admin.query(`ALTER DATABASE "${r.datname}" IS_TEMPLATE false`);
    await admin.query(`DROP DATABASE "${r.datname}" WITH (FORCE)`);
  }
  await admin.query('DELETE FROM pgtestpool.databases; DELETE FROM pgtestpool.templates');
}

/** A port free on 127.0.0.1 right now (for a server a child process starts). */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** Collects what this process writes to stderr (the sidecar's log lines), still passing it on, until stop(). */
export function captureStderr(): { text: () => string; stop: () => void } {
  const chunks: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    chunks.push(String(chunk));
    return (write as (c: string | Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  return { text: () => chunks.join(''), stop: () => void (process.stderr.write = write) };
}
