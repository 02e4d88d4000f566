// Keeps ready clones per template (min_ready at least, more while tests drain the pool: see
// depth.ts), never more than pool.max_databases in use, and drops what was released or reclaimed. All state is in pgtestpool.databases; this module only holds the
// set of jobs in flight. A wake() (NOTIFY, poll, finished job) re-plans from the table.
import { existsSync, statfsSync } from 'node:fs';
import path from 'node:path';
import pg, { escapeLiteral } from 'pg';
import type { Config, Strategy } from './config.ts';
import { CONNECT_TIMEOUT_MS, connect, dropDatabase, forDatabase, ident, isConnectionError, type ConnConfig } from './db.ts';
import { errorMessage, log } from './log.ts';
import { Depth, starved } from './depth.ts';
import type { PoolStateRow } from './states.ts';
import { cloneSetupSql } from './templates.ts';

/** A drop's `current` name differs from `name` when a test renamed its clone. */
type Job = { kind: 'create'; name: string; source: string; template: string } | { kind: 'drop'; name: string; current: string; reason: string };

export interface PoolOptions {
  conn: ConnConfig;
  /** Shared connections for the table's bookkeeping. */
  db: pg.Pool;
  config: Config;
  /** null: let the server pick (no STRATEGY clause; PostgreSQL < 15 has no choice). */
  strategy: Strategy | null;
}

const MAX_BACKOFF_MS = 30_000;
/** How many times pool.concurrency creates run at once while claims find a template empty. */
const STARVED_CREATE_FACTOR = 2;
/** How soon to look again at a released clone whose connections are still closing. */
const GRACE_RECHECK_MS = 50;
/** As a literal statement: it shares a multi-statement round trip, which cannot take parameters. */
const cloneReadySql = (name: string) => `SELECT pgtestpool.clone_ready(${escapeLiteral(name)}) AS ready`;

const noop = () => {};

export class Pool {
  /**
   * CREATE/DROP run here, and each create's row-lock holder (two connections per create, one per
   * drop); a worker connection that dies is replaced by the next job, not reused.
   */
  private readonly workers: pg.Pool;
  private readonly inFlight = new Map<string, { kind: Job['kind']; run: Promise<void> }>();
  /**
   * Creates and drops have slots of their own, so drops in flight never hold up a create a waiting
   * claim needs. Drops get fewer: each forces a checkpoint through the one checkpointer, so more
   * of them at once barely go faster, and they only give back memory and budget.
   */
  private readonly createSlots: number;
  private readonly dropSlots: number;
  /** Template or database name -> time before which it is not retried, after a failure. */
  private readonly notBefore = new Map<string, { until: number; delay: number }>();
  private tick: Promise<void> | null = null;
  private again = false;
  /** Off until start(): a NOTIFY must not plan clones of templates not yet prepared. */
  private started = false;
  private stopped = false;
  private graceTimer: NodeJS.Timeout | null = null;
  private lastAbandonCheck = 0;
  private readonly strategyClause: string;
  private readonly depths = new Map<string, Depth>();
  /** The server's data directory when it is on this machine (its free space bounds the depth); null: not here, or not visible. */
  private dataDir: string | null | undefined;
  /** Template database -> its size in bytes. */
  private readonly sizes = new Map<string, number>();

  constructor(private readonly opts: PoolOptions) {
    this.strategyClause = opts.strategy ? ` STRATEGY ${opts.strategy.toUpperCase()}` : '';
    this.createSlots = opts.config.pool.concurrency;
    this.dropSlots = Math.max(1, Math.ceil(opts.config.pool.concurrency / 2));
    this.workers = new pg.Pool({
      ...opts.conn, application_name: 'pgtestpool worker', max: 2 * STARVED_CREATE_FACTOR * this.createSlots + this.dropSlots, idleTimeoutMillis: 0, connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    });
    this.workers.on('error', (err) => log.warn(`worker connection: ${errorMessage(err)}`));
  }

  private free(kind: Job['kind'], slots = kind === 'create' ? this.createSlots : this.dropSlots): number {
    let busy = 0;
    for (const j of this.inFlight.values()) if (j.kind === kind) busy++;
    return slots - busy;
  }

  /** Planning begins: call once the templates are prepared. */
  start(): void {
    this.started = true;
    this.wake();
  }

  /** Re-plan soon. Cheap and safe to call from anywhere, any number of times. */
  wake(): void {
    if (!this.started || this.stopped) return;
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
    if (this.stopped || (this.free('create', STARVED_CREATE_FACTOR * this.createSlots) <= 0 && this.free('drop') <= 0)) return;
    const db = this.opts.db;
    const now = Date.now();
    if (now - this.lastAbandonCheck >= this.opts.config.pool.pollIntervalMs) {
      // Runs here, between inserts and dispatches, so every live 'creating' row is in inFlight.
      this.lastAbandonCheck = now;
      const { rows } = await db.query<{ name: string }>('SELECT name FROM pgtestpool.abandon_creating($1) name', [[...this.inFlight.keys()]]);
      for (const r of rows) log.warn(`${r.name}: its creation was interrupted; it will be dropped`);
    }
    const { rows } = await db.query<PoolStateRow>('SELECT * FROM pgtestpool.pool_state()');
    let budget = this.opts.config.pool.maxDatabases - Number(rows[0]?.in_use ?? 0);
    const dropping = rows.reduce((n, r) => n + Number(r.dropping), 0);
    const needs: { row: PoolStateRow; need: number; idle: boolean }[] = [];
    // What every template lacks of its min_ready, built yet or not: one template's extra depth
    // never takes the budget another needs for its floor.
    const shortOf = (r: PoolStateRow) => Math.max(0, r.min_ready - Number(r.ready) - Number(r.creating));
    const shortfall = rows.reduce((n, r) => n + shortOf(r), 0);
    for (const r of rows) {
      if (r.database === null || (this.notBefore.get(`t:${r.template}`)?.until ?? 0) > now) continue;
      const depth = await this.depth(r, budget - (shortfall - shortOf(r)), now);
      const need = depth - Number(r.ready) - Number(r.creating);
      if (Number(r.ready) > depth) await this.trim(r.template, depth);
      needs.push({ row: r, need, idle: this.idle(r, now) });
    }

    // Lending marks a clone for dropping; the budget it frees is spent once that drop is done.
    // While drops are pending they free budget anyway: lend nothing more meanwhile.
    if (budget <= 0 && dropping === 0) await this.lend(rows, needs, now);

    // Creates first: a test may be waiting for one; drops only free memory and can wait. While
    // claims find a template empty, twice as many at once: part of a create is waiting on the
    // checkpointer, and the tests' own sessions share the cores, so at pool.concurrency alone the
    // cores idle while every claim waits.
    const anyStarved = needs.some((n) => n.need > 0 && starved(Number(n.row.ready), n.row.last_claimed_at?.getTime() ?? 0, now));
    const createSlots = anyStarved ? STARVED_CREATE_FACTOR * this.createSlots : this.createSlots;
    while (this.free('create', createSlots) > 0 && budget > 0 && !this.stopped) {
      // Templates in use before idle ones (else a lender would take back at once the budget it
      // lent), then the emptiest pool (a claim may be waiting on it, unseen), then the neediest.
      const held = (n: (typeof needs)[number]) => Number(n.row.ready) + Number(n.row.creating);
      const next = needs
        .filter((n) => n.need > 0)
        .sort((a, b) => Number(a.idle) - Number(b.idle) || held(a) - held(b) || b.need - a.need)[0];
      if (!next) break;
      const { rows: created } = await db.query<{ name: string; source: string }>('SELECT * FROM pgtestpool.new_clone($1)', [next.row.template]);
      const c = created[0];
      if (!c) break;
      if (this.stopped) return; // nothing was created; the next attach's reconcile retires the row
      next.need--;
      next.row.creating = String(Number(next.row.creating) + 1);
      budget--;
      this.dispatch({ kind: 'create', name: c.name, source: c.source, template: next.row.template });
    }
    if (this.free('drop') <= 0 || this.stopped) return;

    // A released clone's connections get lease.release_grace to close before the drop forces
    // them: a client closing its own pool as it releases must not see its sessions killed.
    const { rows: drops } = await db.query<{ name: string; current_name: string; reason: string | null; in_grace: boolean }>(
      'SELECT * FROM pgtestpool.drops_due($1, $2::interval, 100)',
      [[...this.inFlight.keys()], `${this.opts.config.lease.releaseGraceMs} milliseconds`],
    );
    let waiting = false;
    for (const d of drops) {
      if (this.free('drop') <= 0 || this.stopped) break;
      if (d.in_grace) {
        waiting = true;
        continue;
      }
      if ((this.notBefore.get(`d:${d.name}`)?.until ?? 0) > now) continue;
      this.dispatch({ kind: 'drop', name: d.name, current: d.current_name, reason: d.reason ?? 'released' });
    }
    if (waiting) this.wakeIn(GRACE_RECHECK_MS);
  }

  private wakeIn(ms: number): void {
    if (this.graceTimer || this.stopped) return;
    this.graceTimer = setTimeout(() => {
      this.graceTimer = null;
      this.wake();
    }, ms);
  }

  /** The ready depth fell back (tests went quiet): the ready clones above it go, and their memory with them. */
  private async trim(template: string, keep: number): Promise<void> {
    const { rows } = await this.opts.db.query<{ name: string }>('SELECT name FROM pgtestpool.trim_ready($1, $2, $3) name', [
      template, keep, `surplus: the ready depth fell back to ${keep} after claims went quiet`,
    ]);
    if (rows.length) log.debug(`template ${JSON.stringify(template)}: ${rows.length} ready clone(s) above the depth ${keep} will be dropped`);
  }

  /**
   * The budget is spent and a template is below its min_ready: take one ready clone from a
   * template holding more than its own min_ready, else from one nobody has claimed for
   * pool.lend_after, so busy templates are not starved by idle ones nor by another's extra depth.
   * The lender refills when budget frees up again.
   */
  private async lend(rows: PoolStateRow[], needs: { row: PoolStateRow; need: number; idle: boolean }[], now: number): Promise<void> {
    // Only for a template below its min_ready: the extra depth of a busy one is not worth
    // another template's clones (it would take them all, one lending after another).
    const below = (n: (typeof needs)[number]) => n.row.min_ready - Number(n.row.ready) - Number(n.row.creating);
    const starving = needs.filter((n) => below(n) > 0 && !n.idle).sort((a, b) => below(b) - below(a))[0];
    if (!starving) return;
    const others = rows.filter((r) => r.template !== starving.row.template);
    // First a template's extra depth (ready clones above its own min_ready), busy or not; then an
    // unclaimed template's clones.
    const extra = others.filter((r) => Number(r.ready) > r.min_ready).sort((a, b) => Number(b.ready) - b.min_ready - (Number(a.ready) - a.min_ready))[0];
    const lender = extra ?? others.filter((r) => Number(r.ready) > 0 && this.idle(r, now)).sort((a, b) => Number(b.ready) - Number(a.ready))[0];
    if (!lender) return;
    const why = extra ? `${JSON.stringify(lender.template)} holds more than its min_ready` : `${JSON.stringify(lender.template)} unclaimed`;
    const { rows: lent } = await this.opts.db.query<{ name: string }>('SELECT name FROM pgtestpool.lend_clone($1, $2) name', [
      lender.template,
      `budget lent to template ${JSON.stringify(starving.row.template)} (${why})`,
    ]);
    if (lent[0]) log.info(`${lent[0].name}: template ${why}; its clone makes room for ${JSON.stringify(starving.row.template)}'s min_ready`);
  }

  /**
   * The ready depth for a template: min_ready, grown while claims drain the pool, bounded by the
   * budget under max_databases and by half the data directory's free space (tests write too).
   */
  private async depth(r: PoolStateRow, budget: number, now: number): Promise<number> {
    let d = this.depths.get(r.template);
    if (!d) this.depths.set(r.template, (d = new Depth()));
    const held = Number(r.ready) + Number(r.creating);
    const cap = held + Math.max(0, Math.min(budget, await this.roomFor(r.database!)));
    const before = d.current;
    const target = d.update({ floor: r.min_ready, ready: Number(r.ready), lastClaimAt: r.last_claimed_at?.getTime() ?? 0, cap }, now);
    if (before !== null && target !== before) {
      log.debug(`template ${JSON.stringify(r.template)}: ready depth ${before} -> ${target} (min_ready ${r.min_ready}${target >= cap ? `, at the cap ${cap}` : ''})`);
    }
    return target;
  }

  /** How many more clones of `database` half the free space holds; Infinity when the data directory is not visible here. */
  private async roomFor(database: string): Promise<number> {
    if (this.dataDir === undefined) {
      const dir = await this.opts.db
        .query<{ dir: string }>("SELECT current_setting('data_directory') AS dir")
        .then((res) => res.rows[0]!.dir, () => null); // not a superuser, nor pg_read_all_settings
      this.dataDir = dir && existsSync(path.join(dir, 'PG_VERSION')) ? dir : null;
    }
    if (!this.dataDir) return Infinity;
    let size = this.sizes.get(database);
    if (size === undefined) {
      const bytes = await this.opts.db
        .query<{ size: string }>('SELECT pg_database_size($1) AS size', [database])
        .then((res) => Number(res.rows[0]!.size), () => NaN); // no CONNECT right on it: no bound
      if (!(bytes > 0)) return Infinity;
      size = bytes;
      this.sizes.set(database, size);
    }
    try {
      const fs = statfsSync(this.dataDir);
      return Math.floor((fs.bavail * fs.bsize * 0.5) / size);
    } catch {
      return Infinity;
    }
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
    this.inFlight.set(job.name, { kind: job.kind, run });
  }

  private async create(job: Extract<Job, { kind: 'create' }>): Promise<void> {
    const started = performance.now();
    const name = ident(job.name);
    let becameReady = false;
    // The row lock is held from before CREATE until the clone is ready: a claim that finds the pool
    // empty waits on it (see claim_test_db) and wakes the moment the clone commits, instead of polling.
    const holder = await this.workers.connect();
    holder.on('error', noop); // a connection lost between queries: the next query fails instead
    let holding = false;
    let failed = false;
    try {
      await holder.query(`BEGIN; SELECT 1 FROM pgtestpool.databases WHERE name = ${escapeLiteral(job.name)} FOR UPDATE`);
      holding = true;
      // Born closed, and ready clones stay closed, even to superusers: the claim opens its clone
      // in the claiming transaction, so nobody enters one whose claim has not committed.
      await this.workers.query(`CREATE DATABASE ${name} TEMPLATE ${ident(job.source)}${this.strategyClause} ALLOW_CONNECTIONS false`);
      // The REVOKE (new databases are open to PUBLIC), the template's per-clone settings and grants.
      const template = this.opts.config.templates.find((t) => t.name === job.template);
      const setup = [`REVOKE CONNECT, TEMPORARY ON DATABASE ${name} FROM PUBLIC`, ...cloneSetupSql(template, job.name)];
      const ready = cloneReadySql(job.name);
      let results: pg.QueryResult[];
      if (this.opts.strategy === 'wal_log') {
        // WAL_LOG does not copy the relcache init file; one connection here builds it, so the
        // test's first connection does not pay for it. Opened for that moment only.
        await this.workers.query([...setup, `ALTER DATABASE ${name} ALLOW_CONNECTIONS true`].join(';\n'));
        const warm = await connect(forDatabase(this.opts.conn, job.name), 'pgtestpool warm-up');
        await warm.end();
        results = (await holder.query([`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`, ready, 'COMMIT'].join(';\n'))) as unknown as pg.QueryResult[];
      } else {
        // One round trip and one transaction: set up, ready and unlocked together.
        results = (await holder.query([...setup, ready, 'COMMIT'].join(';\n'))) as unknown as pg.QueryResult[];
      }
      holding = false;
      becameReady = results.at(-2)?.rows[0]?.ready === true;
    } catch (err) {
      const message = errorMessage(err);
      failed = true;
      if (holding) await holder.query('ROLLBACK').catch(() => {});
      if (this.stopped || isConnectionError(err)) {
        // Not the clone's fault: the row stays 'creating' and the next attach (or the
        // abandoned-creates check) retires it; no clone error is recorded for health to report.
        log.debug(`clone ${job.name}: interrupted (${message})`);
        return;
      }
      // The row goes to 'dropping': whatever exists of the clone is dropped by the drop job, with
      // its retries, and the template keeps the error for claims, status and health.
      await this.opts.db.query('SELECT pgtestpool.clone_failed($1, $2)', [job.name, message]);
      const delay = this.backoff(`t:${job.template}`);
      log.error(`clone ${job.name} of template ${JSON.stringify(job.template)} failed: ${message} (retrying in ${delay} ms)`);
      return;
    } finally {
      holder.off('error', noop);
      holder.release(failed); // after a failure, a fresh connection next time
    }
    this.notBefore.delete(`t:${job.template}`);
    const ms = Math.round(performance.now() - started);
    // Not ready: the template was rebuilt meanwhile and the row is already marked for dropping.
    log.debug(`clone ${job.name} created in ${ms} ms${becameReady ? '' : ' (stale: will be dropped)'}`);
  }

  private async drop(job: Extract<Job, { kind: 'drop' }>): Promise<void> {
    const started = performance.now();
    try {
      await dropDatabase(this.workers, job.current);
    } catch (err) {
      const delay = this.backoff(`d:${job.name}`);
      log.error(`drop ${job.current} failed: ${errorMessage(err)} (retrying in ${delay} ms)`);
      return;
    }
    this.notBefore.delete(`d:${job.name}`);
    const { rows } = await this.opts.db.query<{ claimed_pid: number | null; claimed_role: string | null; claimed_application: string | null }>(
      'SELECT * FROM pgtestpool.mark_dropped($1)',
      [job.name],
    );
    if (rows.length === 0) {
      // Renamed between the plan and the drop: the next plan drops it under its new name.
      log.debug(`${job.name}: still exists under another name; dropping it again`);
      return;
    }
    const who = rows[0]?.claimed_pid
      ? `; claimed by role ${JSON.stringify(rows[0].claimed_role)}, pid ${rows[0].claimed_pid}` +
        (rows[0].claimed_application ? `, application ${JSON.stringify(rows[0].claimed_application)}` : '')
      : '';
    const renamed = job.current !== job.name ? ` (renamed to ${JSON.stringify(job.current)} by a test)` : '';
    // Routine drops (a release, a surplus) only with PGTESTPOOL_LOG=debug: one line per test is noise.
    const routine = job.reason === 'released' || job.reason.startsWith('surplus');
    log[routine ? 'debug' : 'info'](`dropped ${job.name}${renamed} (${job.reason}${who}) in ${Math.round(performance.now() - started)} ms`);
  }

  private backoff(key: string): number {
    const delay = Math.min(MAX_BACKOFF_MS, (this.notBefore.get(key)?.delay ?? 500) * 2);
    this.notBefore.set(key, { until: Date.now() + delay, delay });
    return delay;
  }

  /** Stops planning, waits for the plan and the CREATE/DROP in flight, closes the workers. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.graceTimer) clearTimeout(this.graceTimer);
    await this.tick;
    await Promise.allSettled([...this.inFlight.values()].map((j) => j.run));
    await this.workers.end().catch(() => {});
  }
}
