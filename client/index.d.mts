import type pg from 'pg';

export interface ClaimOptions {
  /** The appliance, default PGTESTPOOL_URL or postgresql://postgres:postgres@127.0.0.1:5432/postgres. */
  url?: string;
  /** Default 'default'. */
  template?: string;
}

export interface TestDb {
  name: string;
  /** postgresql://user:password@host:port/<name> */
  url: string;
  config: { host: string; port: number; user: string; password?: string; database: string };
  /** A pg.Client on the clone; closed by release() and keep(). */
  connect(): Promise<pg.Client>;
  release(): Promise<void>;
  keep(keepFor?: string): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export function claimTestDb(options?: ClaimOptions): Promise<TestDb>;
export function withTestDb<A extends unknown[], R>(
  fn: (db: TestDb, ...args: A) => Promise<R> | R,
  options?: ClaimOptions & { keepOnFailure?: string },
): (...args: A) => Promise<R>;
export function closeControlConnections(): Promise<void>;
