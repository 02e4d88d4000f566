// Helpers shared by the fault-injection and isolation suites (test/faults.test.ts,
// test/isolation.test.ts): accounting of the pool's databases against the server's, settling,
// child-process bookkeeping, and small statistics.
import type { ChildProcess } from 'node:child_process';
import pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { exited, waitFor } from './harness.ts';

/** pgtp_% databases on the server that no row of pgtestpool.databases or pgtestpool.templates accounts for. */
export async function orphans(admin: pg.Client): Promise<string[]> {
  const { rows } = await admin.query<{ datname: string }>(
    `SELECT db.datname FROM pg_database db
      WHERE db.datname LIKE 'pgtp\\_%'
        AND NOT EXISTS (SELECT 1 FROM pgtestpool.databases d WHERE d.name = db.datname)
        AND NOT EXISTS (SELECT 1 FROM pgtestpool.templates t WHERE t.database = db.datname)
      ORDER BY 1`,
  );
  return rows.map((r) => r.datname);
}

/** Rows that say a database is ready or claimed while no such database exists. */
export async function rowsWithoutDatabase(admin: pg.Client): Promise<string[]> {
  const { rows } = await admin.query<{ name: string; state: string }>(
    `SELECT d.name, d.state FROM pgtestpool.databases d
      WHERE d.state IN ('ready', 'claimed') AND NOT EXISTS (SELECT 1 FROM pg_database db WHERE db.datname = d.name)
      ORDER BY d.id`,
  );
  return rows.map((r) => `${r.name} (${r.state})`);
}

export interface PoolCounts {
  ready: number;
  claimed: number;
  creating: number;
  dropping: number;
  failed: number;
}

export async function counts(admin: pg.Client, template = 'default'): Promise<PoolCounts> {
  const { rows } = await admin.query(
    `SELECT count(*) FILTER (WHERE state = 'ready' AND source = (SELECT database FROM pgtestpool.templates WHERE name = $1))::int AS ready,
            count(*) FILTER (WHERE state = 'claimed')::int AS claimed,
            count(*) FILTER (WHERE state = 'creating')::int AS creating,
            count(*) FILTER (WHERE state = 'dropping')::int AS dropping,
            count(*) FILTER (WHERE state = 'failed')::int AS failed
       FROM pgtestpool.databases WHERE template = $1`,
    [template],
  );
  return rows[0] as PoolCounts;
}

/** Waits until the pool holds min_ready clones and nothing is being created, dropped, or still claimed. */
export async function settle(admin: pg.Client, minReady: number, timeoutMs = 30_000, template = 'default'): Promise<PoolCounts> {
  let last: PoolCounts | null = null;
  try {
    return (await waitFor('the pool to settle', async () => {
      last = await counts(admin, template);
      return last.ready >= minReady && last.creating === 0 && last.dropping === 0 && last.claimed === 0 ? last : null;
    }, timeoutMs))!;
  } catch (err) {
    throw new Error(`${(err as Error).message}; last counts: ${JSON.stringify(last)}`);
  }
}

/** A superuser connection that survives server restarts: errors on the idle socket are swallowed. */
export async function quietClient(server: EmbeddedServer, database = 'postgres', user?: { user: string; password: string }, application?: string): Promise<pg.Client> {
  const c = new pg.Client({ ...server.clientConfig(database), ...(user ?? {}), application_name: application, connectionTimeoutMillis: 10_000 });
  c.on('error', () => {});
  await c.connect();
  return c;
}

/** Kills a child process (if still running) and waits for it, bounded. */
export async function killChild(child: ChildProcess | null | undefined, signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 10_000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const done = await Promise.race([exited(child).then(() => true), sleep(timeoutMs).then(() => false)]);
  if (!done) {
    child.kill('SIGKILL');
    await Promise.race([exited(child), sleep(5_000)]);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function pgCode(err: unknown): string | undefined {
  return (err as { code?: string } | null)?.code;
}

/** The documented claim failure: no ready clone within claim.timeout (SQLSTATE 55P03, "… within …"). */
export function isDocumentedTimeout(err: unknown): boolean {
  return pgCode(err) === '55P03' && /within/.test((err as Error).message);
}

/** Message, detail and hint of a PostgreSQL error, for matching. */
export function fullMessage(err: unknown): string {
  const e = err as { message?: string; detail?: string; hint?: string };
  return [e.message, e.detail, e.hint].filter(Boolean).join(' | ');
}

/** Multi-line text (PostgreSQL errors with a DETAIL, a build error with its note) on one figure line. */
export function oneLine(text: unknown): string {
  return String(text).replace(/\s*[\r\n]+\s*/g, ' / ');
}

/** Process-wide 'uncaughtException' / 'unhandledRejection' collected while `fn` runs. */
export async function catchingStrayErrors<T>(fn: (stray: Error[]) => Promise<T>): Promise<T> {
  const stray: Error[] = [];
  const onError = (err: unknown) => stray.push(err instanceof Error ? err : new Error(String(err)));
  process.on('uncaughtException', onError);
  process.on('unhandledRejection', onError);
  try {
    return await fn(stray);
  } finally {
    process.off('uncaughtException', onError);
    process.off('unhandledRejection', onError);
  }
}

/** The server restart another engineer adds to EmbeddedServer (src/embedded.ts). */
export type RestartMode = 'fast' | 'immediate';
export function restartOf(server: EmbeddedServer): (mode: RestartMode) => Promise<void> {
  const fn = (server as unknown as { restart?: (mode: RestartMode) => Promise<void> }).restart;
  if (typeof fn !== 'function') throw new Error('EmbeddedServer.restart(mode) is not implemented yet (src/embedded.ts)');
  return (mode) => fn.call(server, mode);
}
