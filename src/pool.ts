// Keeps min_ready clones per template, never more than pool.max_databases in use, and drops what
// was released or reclaimed. All state is in pgtestpool.databases; this module only holds the
// set of jobs in flight. A wake() (NOTIFY, poll, finished job) re-plans from the table.
import pg, { escapeLiteral } from 'pg';
import type { Config, Strategy } from './config.ts';
import { connect, dropDatabase, forDatabase, ident, type ConnConfig } from './db.ts';
import { errorMessage, log } from './log.ts';
import { cloneSetupSql } from './templates.ts';

interface PoolStateRow {
  template: string;
  database: string | null;
  min_ready: number;
  ready: string;
  creating: string;
  total_in_use: string;
  last_claimed_at: Date | null;
  claimed: string;
}

type Job = { kind: 'create'; name: string; source: string; template: string } | { kind: 'drop'; name: string; reason: string };

export interface PoolOptions {
  conn: ConnConfig;
  /** Shared connections for the table's bookkeeping. */
  db: pg.Pool;
  config: Config;
  /** null: let the server pick (no STRATEGY clause; PostgreSQL < 15 has no choice). */
  strategy: Strategy | null;
}

const MAX_BACKOFF_MS = 30_000;
/** As a literal statement: it shares a multi-statement round trip, which cannot take parameters. */
const markReadySql = (name: string) =>
  `UPDATE pgtestpool.databases SET state = 'ready', ready_at = clock_timestamp() WHERE name = ${escapeLiteral(name)} AND state = 'creating'`;

export class Pool {
  /**
   * CREATE/DROP run here, and each create's row-lock holder (hence twice the concurrency); a worker
   * connection that dies is replaced by the next job, not reused.
   */
  private readonly workers: pg.Pool;
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Template or database name -> time before which it is not retried, after a failure. */
  private readonly notBefore = new Map<string, { until: number; delay: number }>();
  private tick: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private lastAbandonCheck = 0;
  private readonly strategyClause: string;

  constructor(private readonly opts: PoolOptions) {
    this.strategyClause = opts.strategy ? ` STRATEGY ${opts.strategy.toUpperCase()}` : '';
    this.workers = new pg.Pool({ ...opts.conn, application_name: 'pgtestpool worker', max: 2 * opts.config.pool.concurrency, idleTimeoutMillis: 0 });
    this.workers.on('error', (err) => log.warn(`worker connection: ${errorMessage(err)}`));
  }

  private get free(): number {
    return this.opts.config.pool.concurrency - this.inFlight.size;
  }

  /** Re-plan soon. Cheap and safe to call from anywhere, any number of times. */
  wake(): void {
    if (this.stopped) return;
    if (this.tick) {
      this.again = true;
      return;
    }
    this.tick = this.run().finally(() => (this.tick = null));
  }

  private async run(): Promise<void> {
    try {
      do {
        this.again = false;
        await this.plan();
      } while (this.again && !this.stopped);
    } catch (err) {
      if (!this.stopped) log.error(`pool: ${errorMessage(err)}`);
    }
  }

  private async plan(): Promise<void> {
    if (this.stopped || this.free <= 0) return;
    const db = this.opts.db;
    const now = Date.now();
    if (now - this.lastAbandonCheck >= this.opts.config.pool.pollIntervalMs) {
      // Runs here, between inserts and dispatches, so every live 'creating' row is in inFlight.
      this.lastAbandonCheck = now;
      const { rows } = await db.query<{ name: string }>('SELECT * FROM pgtestpool.abandon_creating($1)', [[...this.inFlight.keys()]]);
      for (const r of rows) log.warn(`${r.name}: its creation was interrupted; it will be dropped`);
    }
    const { rows } = await db.query<PoolStateRow>('SELECT * FROM pgtestpool.pool_state()');
    let budget = this.opts.config.pool.maxDatabases - Number(rows[0]?.total_in_use ?? 0);
    const needs = rows
      .filter((r) => r.database !== null && (this.notBefore.get(`t:${r.template}`)?.until ?? 0) <= now)
      .map((r) => ({ row: r, need: r.min_ready - Number(r.ready) - Number(r.creating), idle: this.idle(r, now) }));

    if (budget <= 0 && (await this.lend(rows, needs, now))) budget++;

    // Creates first: a test may be waiting for one; drops only free memory and can wait.
    while (this.free > 0 && budget > 0 && !this.stopped) {
      // The emptiest pool first (a claim may be waiting on it, unseen), then templates in use
      // before idle ones, then the neediest.
      const held = (n: (typeof needs)[number]) => Number(n.row.ready) + Number(n.row.creating);
      const next = needs
        .filter((n) => n.need > 0)
        .sort((a, b) => held(a) - held(b) || Number(a.idle) - Number(b.idle) || b.need - a.need)[0];
      if (!next) break;
      const { rows: created } = await db.query<{ name: string; source: string }>('SELECT * FROM pgtestpool.new_clone($1)', [next.row.template]);
      const c = created[0];
      if (!c) break;
      if (this.stopped) {
        // Stopping began while the row was inserted: nothing was created, so nothing to keep.
        await db.query(`DELETE FROM pgtestpool.databases WHERE name = $1 AND state = 'creating'`, [c.name]);
        return;
      }
      next.need--;
      next.row.creating = String(Number(next.row.creating) + 1);
      budget--;
      this.dispatch({ kind: 'create', name: c.name, source: c.source, template: next.row.template });
    }
    if (this.free <= 0 || this.stopped) return;

    const { rows: drops } = await db.query<{ name: string; drop_reason: string | null }>(
      `SELECT name, drop_reason FROM pgtestpool.databases
        WHERE state = 'dropping' AND NOT (name = ANY($1)) ORDER BY id LIMIT 100`,
      [[...this.inFlight.keys()]],
    );
    for (const d of drops) {
      if (this.free <= 0 || this.stopped) break;
      if ((this.notBefore.get(`d:${d.name}`)?.until ?? 0) > now) continue;
      this.dispatch({ kind: 'drop', name: d.name, reason: d.drop_reason ?? 'released' });
    }
  }

  /**
   * The budget is spent and a template needs clones: take one ready clone from a template nobody
   * has claimed for pool.lend_after, so busy templates are not starved by idle ones. The lender
   * refills when budget frees up again.
   */
  private async lend(rows: PoolStateRow[], needs: { row: PoolStateRow; need: number; idle: boolean }[], now: number): Promise<boolean> {
    const starving = needs.filter((n) => n.need > 0 && !n.idle).sort((a, b) => b.need - a.need)[0];
    if (!starving) return false;
    const lender = rows
      .filter((r) => r.template !== starving.row.template && Number(r.ready) > 0 && this.idle(r, now))
      .sort((a, b) => Number(b.ready) - Number(a.ready))[0];
    if (!lender) return false;
    const { rows: lent } = await this.opts.db.query<{ name: string }>(
      `UPDATE pgtestpool.databases SET state = 'dropping', drop_reason = $3
        WHERE id = (SELECT id FROM pgtestpool.databases WHERE template = $1 AND state = 'ready' AND source = $2
                       -- a clone just made may be what a waiting claim of the lender is about to take
                       AND ready_at < clock_timestamp() - interval '1 second'
                     ORDER BY id DESC LIMIT 1 FOR UPDATE SKIP LOCKED)
       RETURNING name`,
      [lender.template, lender.database, `budget lent to template ${JSON.stringify(starving.row.template)} (${JSON.stringify(lender.template)} unclaimed)`],
    );
    if (!lent[0]) return false;
    log.info(`${lent[0].name}: template ${JSON.stringify(lender.template)} is unclaimed; its clone makes room for ${JSON.stringify(starving.row.template)}`);
    return true;
  }

  /** Unused: no claim outstanding and none for pool.lend_after. */
  private idle(r: PoolStateRow, now: number): boolean {
    return Number(r.claimed) === 0 && now - (r.last_claimed_at?.getTime() ?? 0) >= this.opts.config.pool.lendAfterMs;
  }

  private dispatch(job: Job): void {
    const run = (job.kind === 'create' ? this.create(job) : this.drop(job))
      .catch((err) => log.error(`pool: ${job.kind} ${job.name}: ${errorMessage(err)}`))
      .finally(() => {
        this.inFlight.delete(job.name);
        this.wake();
      });
    this.inFlight.set(job.name, run);
  }

  private async create(job: Extract<Job, { kind: 'create' }>): Promise<void> {
    const started = performance.now();
    const name = ident(job.name);
    let readyRows = 0;
    // The row lock is held from before CREATE until the clone is ready: a claim that finds the pool
    // empty waits on it (see claim_test_db) and wakes the moment the clone commits, instead of polling.
    const holder = await this.workers.connect();
    let holding = false;
    let failed = false;
    try {
      await holder.query(`BEGIN; SELECT 1 FROM pgtestpool.databases WHERE name = ${escapeLiteral(job.name)} FOR UPDATE`);
      holding = true;
      // Born closed: new databases are open to PUBLIC, and nobody may slip in before the REVOKE
      // (a session already connected would outlive it). The claim grants CONNECT to the claimer.
      await this.workers.query(`CREATE DATABASE ${name} TEMPLATE ${ident(job.source)}${this.strategyClause} ALLOW_CONNECTIONS false`);
      // The REVOKE, the template's per-clone settings and grants, then open it.
      const template = this.opts.config.templates.find((t) => t.name === job.template);
      const setup = [`REVOKE CONNECT, TEMPORARY ON DATABASE ${name} FROM PUBLIC`, ...cloneSetupSql(template, job.name), `ALTER DATABASE ${name} ALLOW_CONNECTIONS true`];
      const ready = markReadySql(job.name);
      let results: pg.QueryResult[];
      if (this.opts.strategy === 'wal_log') {
        // WAL_LOG does not copy the relcache init file; one connection here builds it, so the
        // test's first connection does not pay for it. It needs the opening committed first.
        await this.workers.query(setup.join(';\n'));
        const warm = await connect(forDatabase(this.opts.conn, job.name), 'pgtestpool warm-up');
        await warm.end();
        results = (await holder.query(`${ready}; COMMIT`)) as unknown as pg.QueryResult[];
      } else {
        // One round trip and one transaction: opened, ready and unlocked together.
        results = (await holder.query([...setup, ready, 'COMMIT'].join(';\n'))) as unknown as pg.QueryResult[];
      }
      holding = false;
      readyRows = results.at(-2)?.rowCount ?? 0;
    } catch (err) {
      const message = errorMessage(err);
      failed = true;
      if (holding) await holder.query('ROLLBACK').catch(() => {});
      await dropDatabase(this.workers, job.name).catch(() => {});
      await this.opts.db.query(`UPDATE pgtestpool.databases SET state = 'failed', error = $2 WHERE name = $1`, [job.name, message]);
      const delay = this.backoff(`t:${job.template}`);
      log.error(`clone ${job.name} of template ${JSON.stringify(job.template)} failed: ${message} (retrying in ${delay} ms)`);
      return;
    } finally {
      holder.release(failed); // after a failure, a fresh connection next time
    }
    this.notBefore.delete(`t:${job.template}`);
    const ms = Math.round(performance.now() - started);
    // 0 rows: the template was rebuilt meanwhile and the row is already marked for dropping.
    log.info(`clone ${job.name} created in ${ms} ms${readyRows === 0 ? ' (stale: will be dropped)' : ''}`);
  }

  private async drop(job: Extract<Job, { kind: 'drop' }>): Promise<void> {
    const started = performance.now();
    try {
      await dropDatabase(this.workers, job.name);
    } catch (err) {
      const delay = this.backoff(`d:${job.name}`);
      log.error(`drop ${job.name} failed: ${errorMessage(err)} (retrying in ${delay} ms)`);
      return;
    }
    this.notBefore.delete(`d:${job.name}`);
    await this.opts.db.query('SELECT pgtestpool.mark_dropped($1)', [job.name]);
    log.info(`dropped ${job.name} (${job.reason}) in ${Math.round(performance.now() - started)} ms`);
  }

  private backoff(key: string): number {
    const delay = Math.min(MAX_BACKOFF_MS, (this.notBefore.get(key)?.delay ?? 500) * 2);
    this.notBefore.set(key, { until: Date.now() + delay, delay });
    return delay;
  }

  /** Stops planning, waits for the plan and the CREATE/DROP in flight, closes the workers. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.tick;
    await Promise.allSettled([...this.inFlight.values()]);
    await this.workers.end().catch(() => {});
  }
}
