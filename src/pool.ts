// Keeps min_ready clones per template, never more than pool.max_databases in use, and drops what
// was released or reclaimed. All state is in pgtestpool.databases; this module only holds the
// set of jobs in flight. A wake() (NOTIFY, poll, finished job) re-plans from the table.
import type pg from 'pg';
import type { Config, Strategy } from './config.ts';
import { connect, forDatabase, ident, type ConnConfig } from './db.ts';
import { errorMessage, log } from './log.ts';

interface PoolStateRow {
  template: string;
  database: string | null;
  min_ready: number;
  ready: string;
  creating: string;
  in_use: string;
}

type Job = { kind: 'create'; name: string; source: string; template: string } | { kind: 'drop'; name: string; reason: string };

export interface PoolOptions {
  conn: ConnConfig;
  db: pg.Pool;
  config: Config;
  /** null: let the server pick (no STRATEGY clause; PostgreSQL < 15 has no choice). */
  strategy: Strategy | null;
}

const MAX_BACKOFF_MS = 30_000;

export class Pool {
  private readonly workers: pg.Client[] = [];
  private readonly idle: pg.Client[] = [];
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Template or database name -> time before which it is not retried, after a failure. */
  private readonly notBefore = new Map<string, { until: number; delay: number }>();
  private ticking = false;
  private again = false;
  private stopped = false;
  private readonly strategyClause: string;

  constructor(private readonly opts: PoolOptions) {
    this.strategyClause = opts.strategy ? ` STRATEGY ${opts.strategy.toUpperCase()}` : '';
  }

  async start(): Promise<void> {
    for (let i = 0; i < this.opts.config.pool.concurrency; i++) {
      const client = await connect(this.opts.conn, 'pgtestpool worker');
      client.on('error', (err) => log.error(`worker connection: ${errorMessage(err)}`));
      this.workers.push(client);
      this.idle.push(client);
    }
  }

  /** Re-plan soon. Cheap and safe to call from anywhere, any number of times. */
  wake(): void {
    if (this.stopped) return;
    if (this.ticking) {
      this.again = true;
      return;
    }
    this.ticking = true;
    void this.tick();
  }

  private async tick(): Promise<void> {
    try {
      do {
        this.again = false;
        await this.plan();
      } while (this.again && !this.stopped);
    } catch (err) {
      if (!this.stopped) log.error(`pool: ${errorMessage(err)}`);
    } finally {
      this.ticking = false;
    }
  }

  private async plan(): Promise<void> {
    if (this.stopped || this.idle.length === 0) return;
    const db = this.opts.db;
    const { rows } = await db.query<PoolStateRow>('SELECT * FROM pgtestpool.pool_state()');
    let budget = this.opts.config.pool.maxDatabases - rows.reduce((n, r) => n + Number(r.in_use), 0);
    const now = Date.now();
    const needs = rows
      .filter((r) => r.database !== null && (this.notBefore.get(`t:${r.template}`)?.until ?? 0) <= now)
      .map((r) => ({ row: r, need: r.min_ready - Number(r.ready) - Number(r.creating) }));

    // Creates first: a test may be waiting for one; drops only free memory and can wait.
    while (this.idle.length > 0 && budget > 0 && !this.stopped) {
      const next = needs.filter((n) => n.need > 0).sort((a, b) => b.need - a.need)[0];
      if (!next) break;
      const { rows: created } = await db.query<{ name: string; source: string }>(
        'SELECT * FROM pgtestpool.new_clone($1)',
        [next.row.template],
      );
      const c = created[0];
      if (!c) break;
      next.need--;
      budget--;
      this.dispatch({ kind: 'create', name: c.name, source: c.source, template: next.row.template });
    }
    if (this.idle.length === 0 || this.stopped) return;

    const { rows: drops } = await db.query<{ name: string; drop_reason: string | null }>(
      `SELECT name, drop_reason FROM pgtestpool.databases
        WHERE state = 'dropping' AND NOT (name = ANY($1)) ORDER BY id LIMIT $2`,
      [[...this.inFlight.keys()], this.idle.length + this.notBefore.size],
    );
    for (const d of drops) {
      if (this.idle.length === 0 || this.stopped) break;
      if ((this.notBefore.get(`d:${d.name}`)?.until ?? 0) > now) continue;
      this.dispatch({ kind: 'drop', name: d.name, reason: d.drop_reason ?? 'released' });
    }
  }

  private dispatch(job: Job): void {
    const worker = this.idle.pop()!;
    const run = (job.kind === 'create' ? this.create(worker, job) : this.drop(worker, job))
      .catch((err) => log.error(`pool: ${job.kind} ${job.name}: ${errorMessage(err)}`))
      .finally(() => {
        this.inFlight.delete(job.name);
        this.idle.push(worker);
        this.wake();
      });
    this.inFlight.set(job.name, run);
  }

  private async create(worker: pg.Client, job: Extract<Job, { kind: 'create' }>): Promise<void> {
    const started = performance.now();
    try {
      await worker.query(`CREATE DATABASE ${ident(job.name)} TEMPLATE ${ident(job.source)}${this.strategyClause}`);
      // New databases are open to PUBLIC; the claim grants CONNECT to the claiming role only.
      await worker.query(`REVOKE CONNECT, TEMPORARY ON DATABASE ${ident(job.name)} FROM PUBLIC`);
      if (this.opts.strategy === 'wal_log') {
        // WAL_LOG does not copy the relcache init file; one connection here builds it, so the
        // test's first connection does not pay for it.
        const warm = await connect(forDatabase(this.opts.conn, job.name), 'pgtestpool warm-up');
        await warm.end();
      }
    } catch (err) {
      const message = errorMessage(err);
      await worker.query(`DROP DATABASE IF EXISTS ${ident(job.name)} WITH (FORCE)`).catch(() => {});
      await worker.query(
        `UPDATE pgtestpool.databases SET state = 'failed', error = $2 WHERE name = $1`,
        [job.name, message],
      );
      const delay = this.backoff(`t:${job.template}`);
      log.error(`clone ${job.name} of template ${JSON.stringify(job.template)} failed: ${message} (retrying in ${delay} ms)`);
      return;
    }
    this.notBefore.delete(`t:${job.template}`);
    const { rowCount } = await worker.query(
      `UPDATE pgtestpool.databases SET state = 'ready', ready_at = now() WHERE name = $1 AND state = 'creating'`,
      [job.name],
    );
    const ms = Math.round(performance.now() - started);
    // rowCount 0: the template was rebuilt meanwhile and the row is already marked for dropping.
    log.info(`clone ${job.name} created in ${ms} ms${rowCount === 0 ? ' (stale: will be dropped)' : ''}`);
  }

  private async drop(worker: pg.Client, job: Extract<Job, { kind: 'drop' }>): Promise<void> {
    const started = performance.now();
    try {
      // FORCE: a test that leaked a connection must not block the drop forever.
      await worker.query(`DROP DATABASE IF EXISTS ${ident(job.name)} WITH (FORCE)`);
    } catch (err) {
      const delay = this.backoff(`d:${job.name}`);
      log.error(`drop ${job.name} failed: ${errorMessage(err)} (retrying in ${delay} ms)`);
      return;
    }
    this.notBefore.delete(`d:${job.name}`);
    await worker.query(`DELETE FROM pgtestpool.databases WHERE name = $1 AND state = 'dropping'`, [job.name]);
    log.info(`dropped ${job.name} (${job.reason}) in ${Math.round(performance.now() - started)} ms`);
  }

  private backoff(key: string): number {
    const delay = Math.min(MAX_BACKOFF_MS, (this.notBefore.get(key)?.delay ?? 500) * 2);
    this.notBefore.set(key, { until: Date.now() + delay, delay });
    return delay;
  }

  get busy(): number {
    return this.inFlight.size;
  }

  /** Stops planning, waits for CREATE/DROP in flight, closes the worker connections. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.allSettled([...this.inFlight.values()]);
    const workers = this.workers.splice(0);
    this.idle.length = 0;
    await Promise.allSettled(workers.map((w) => w.end()));
  }
}
