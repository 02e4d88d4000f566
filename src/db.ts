// Connection settings for the server the sidecar attaches to, and small query helpers.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

export type ConnConfig = pg.ClientConfig;

/** Quotes an identifier for SQL text (database names cannot be bind parameters). */
export function ident(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

/** The same server, another database. */
export function forDatabase(conn: ConnConfig, database: string): ConnConfig {
  return { ...conn, database };
}

/** True when the environment names a server to attach to (the image does this); else run an embedded one. */
export function attachRequested(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env.DATABASE_URL || env.PGHOST);
}

/**
 * Settings from DATABASE_URL or the standard PG* variables. Parsed here (not left to pg) because
 * pg lets a connectionString override an explicit `database`, and the sidecar must reach other
 * databases on the same server.
 */
export function connFromEnv(env: NodeJS.ProcessEnv = process.env): ConnConfig {
  const conn: ConnConfig = {
    host: env.PGHOST,
    port: env.PGPORT ? Number(env.PGPORT) : undefined,
    user: env.PGUSER || 'postgres',
    password: env.PGPASSWORD,
    database: env.PGDATABASE || 'postgres',
  };
  if (env.DATABASE_URL) {
    let url: URL;
    try {
      url = new URL(env.DATABASE_URL);
    } catch {
      throw new Error('DATABASE_URL is not a valid URL: expected postgres://user:password@host:port/database');
    }
    if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
      throw new Error(`DATABASE_URL must start with postgres:// or postgresql://, got ${url.protocol}//`);
    }
    if (url.hostname) conn.host = decodeURIComponent(url.hostname.replace(/^\[|\]$/g, ''));
    if (url.searchParams.get('host')) conn.host = url.searchParams.get('host')!;
    if (url.port) conn.port = Number(url.port);
    if (url.username) conn.user = decodeURIComponent(url.username);
    if (url.password) conn.password = decodeURIComponent(url.password);
    const db = decodeURIComponent(url.pathname.replace(/^\//, ''));
    if (db) conn.database = db;
    const sslmode = url.searchParams.get('sslmode') ?? env.PGSSLMODE;
    if (sslmode && sslmode !== 'disable') conn.ssl = { rejectUnauthorized: sslmode === 'verify-full' || sslmode === 'verify-ca' };
  } else if (env.PGSSLMODE && env.PGSSLMODE !== 'disable') {
    conn.ssl = { rejectUnauthorized: env.PGSSLMODE === 'verify-full' || env.PGSSLMODE === 'verify-ca' };
  }
  return conn;
}

/** host:port/database as user, for logs: never the password. */
export function describeConn(conn: ConnConfig): string {
  return `${conn.user ?? 'postgres'}@${conn.host ?? 'localhost'}:${conn.port ?? 5432}/${conn.database ?? 'postgres'}`;
}

export async function connect(conn: ConnConfig, applicationName = 'pgtestpool'): Promise<pg.Client> {
  const client = new pg.Client({ ...conn, application_name: applicationName });
  await client.connect();
  return client;
}

const here = path.dirname(fileURLToPath(import.meta.url));
export const INITDB_DIR = path.resolve(here, '..', 'initdb');

/** The API install files, in order, loaded verbatim. */
export function apiFiles(): { file: string; text: string }[] {
  return readdirSync(INITDB_DIR)
    .filter((f) => f.endsWith('.sql'))
    .sort()
    .map((f) => ({ file: path.join(INITDB_DIR, f), text: readFileSync(path.join(INITDB_DIR, f), 'utf8') }));
}

/** Installs (or upgrades in place) the SQL API; idempotent. */
export async function installApi(client: pg.Client): Promise<void> {
  for (const { text } of apiFiles()) await client.query(text);
}

export function serverMajor(versionNum: string | number): number {
  return Math.floor(Number(versionNum) / 10000);
}

/** Anything that runs a query: a client or a pool. */
export type Queryable = Pick<pg.Pool, 'query'>;

/**
 * Drops a database the pool made. FORCE: a test that leaked a connection must not block the drop
 * forever. A template must stop being one first.
 */
export async function dropDatabase(q: Queryable, name: string, opts: { template?: boolean } = {}): Promise<void> {
  if (opts.template) {
    await q.query(`ALTER DATABASE ${ident(name)} WITH IS_TEMPLATE false`).catch((err: { code?: string }) => {
      if (err.code !== '3D000') throw err; // already gone
    });
  }
  await q.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
}
