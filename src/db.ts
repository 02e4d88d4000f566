// Connection settings for the server the sidecar attaches to, and small query helpers.
import pg from 'pg';
import { errorMessage, log } from './log.ts';

export type ConnConfig = pg.ClientConfig;

/** Connecting to an unreachable host must fail, not hang (a reconnect or a stop waits on it). */
export const CONNECT_TIMEOUT_MS = 10_000;

/**
 * The connection, not the statement, failed: the server is restarting or gone, or our backend
 * was terminated. Such a failure says nothing about a template, a clone or the config.
 */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | null;
  const code = e?.code ?? '';
  if (/^08/.test(code) || ['57P01', '57P02', '57P03', 'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND'].includes(code)) return true;
  return /Connection terminated|Client has encountered a connection error|connection timeout|not queryable/i.test(e?.message ?? '');
}

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
  return startMode(env).mode === 'attach';
}

/**
 * Embedded server or attach, and why, so `npm start` can say which it chose: PGTESTPOOL_MODE when
 * set; else attach when DATABASE_URL or PGHOST names a server (a shell exporting PGHOST for the
 * tests must not silently turn npm start into a client of a server that is not there).
 */
export function startMode(env: NodeJS.ProcessEnv = process.env): { mode: 'embedded' | 'attach'; why: string } {
  const explicit = env.PGTESTPOOL_MODE;
  if (explicit !== undefined && explicit !== '') {
    if (explicit !== 'embedded' && explicit !== 'attach') {
      throw new Error(`PGTESTPOOL_MODE must be embedded or attach, got ${JSON.stringify(explicit)}`);
    }
    if (explicit === 'attach' && !env.DATABASE_URL && !env.PGHOST) {
      throw new Error('PGTESTPOOL_MODE=attach needs the server to attach to: set DATABASE_URL (postgresql://user:password@host:port/postgres) or PGHOST');
    }
    return { mode: explicit, why: 'PGTESTPOOL_MODE is ' + explicit };
  }
  if (env.DATABASE_URL) return { mode: 'attach', why: 'DATABASE_URL is set' };
  if (env.PGHOST) return { mode: 'attach', why: 'PGHOST is set' };
  return { mode: 'embedded', why: 'neither DATABASE_URL nor PGHOST is set' };
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

/**
 * A postgresql:// URL (libpq, node-postgres, SQLAlchemy, Django, Prisma and knex all take it) for
 * `database` on this server as `user`; a unix socket folder goes in ?host=, an IPv6 host in [].
 */
export function postgresUrl(server: { host?: string; port?: number }, user: string, database: string, password?: string): string {
  const host = server.host ?? 'localhost';
  const port = String(server.port ?? 5432);
  const auth = encodeURIComponent(user) + (password ? `:${encodeURIComponent(password)}` : '');
  return host.startsWith('/')
    ? `postgresql://${auth}@/${encodeURIComponent(database)}?host=${encodeURIComponent(host)}&port=${port}`
    : `postgresql://${auth}@${host.includes(':') ? `[${host}]` : host}:${port}/${encodeURIComponent(database)}`;
}

/** host:port/database as user, for logs: never the password. */
export function describeConn(conn: ConnConfig): string {
  return `${conn.user ?? 'postgres'}@${conn.host ?? 'localhost'}:${conn.port ?? 5432}/${conn.database ?? 'postgres'}`;
}

/**
 * A client that never crashes the process: a connection lost while idle (a server restart)
 * emits 'error', which without a listener is an uncaught exception; a query in flight fails anyway.
 */
export async function connect(conn: ConnConfig, applicationName = 'pgtestpool'): Promise<pg.Client> {
  const client = new pg.Client({ connectionTimeoutMillis: CONNECT_TIMEOUT_MS, ...conn, application_name: applicationName });
  client.on('error', (err) => log.debug(`${applicationName}: connection lost: ${errorMessage(err)}`));
  await client.connect();
  return client;
}

export function serverMajor(versionNum: string | number): number {
  return Math.floor(Number(versionNum) / 10000);
}

/** Anything that runs a query: a client or a pool. */
export type Queryable = Pick<pg.Pool, 'query'>;

/**
 * Drops a database the pool made. FORCE: a test that leaked a connection must not block the drop
 * forever. A template must stop being one first, and so must a clone a test made one
 * (ALTER DATABASE … IS_TEMPLATE true, which its owner may do): that is undone and the drop retried.
 */
export async function dropDatabase(q: Queryable, name: string, opts: { template?: boolean } = {}): Promise<void> {
  // Looked up first: an ALTER of a database that is not there (the usual case before a template
  // build) would put an ERROR in the server log at every cold start.
  const untemplate = async () => {
    const { rows } = await q.query<{ datistemplate: boolean }>('SELECT datistemplate FROM pg_catalog.pg_database WHERE datname = $1', [name]);
    if (!rows[0]?.datistemplate) return;
    await q.query(`ALTER DATABASE ${ident(name)} WITH IS_TEMPLATE false`).catch((err: { code?: string }) => {
      if (err.code !== '3D000') throw err; // dropped meanwhile
    });
  };
  if (opts.template) await untemplate();
  try {
    await q.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
  } catch (err) {
    if ((err as { code?: string }).code !== '42809') throw err; // cannot drop a template database
    await untemplate();
    await q.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
  }
}
