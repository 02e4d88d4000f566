// Cleans up what tests and crashes leave behind: at start, half-created clones and databases no
// row accounts for; on every poll, claims whose session is gone (or that ran past max_duration),
// ready clones someone entered, and the control tables' dead rows.
import type pg from 'pg';
import type { Config } from './config.ts';
import { formatDuration } from './config.ts';
import { errorMessage, log } from './log.ts';
import { dropDatabase, postgresUrl, type ConnConfig } from './db.ts';

/** How often the control tables are vacuumed: each claim and drop leaves dead row versions. */
const VACUUM_EVERY_MS = 1_000;
/**
 * While claims wait on an empty pool, an abandoned clone (its claiming session gone, nobody
 * connected) is reclaimed after this instead of lease.idle_timeout. Long enough for a test that
 * claims on one connection and then connects to its clone; a suite that never releases no longer
 * waits idle_timeout per test.
 */
const STARVED_IDLE_MS = 2_000;
const CONTROL_TABLES = ['pgtestpool.databases', 'pgtestpool.templates', 'pgtestpool.settings', 'pgtestpool.dropped'];

export class Janitor {
  private lastVacuum = 0;

  constructor(
    private readonly db: pg.Pool,
    private readonly config: Config,
    /** The server as the sidecar reaches it: kept databases are announced with a URL on it. */
    private readonly conn: ConnConfig = {},
  ) {}

  /**
   * Start-time reconciliation. Runs while this sidecar holds the leader lock, so no other
   * sidecar can have a CREATE in flight: every 'creating' row is a leftover.
   */
  async reconcile(): Promise<void> {
    const { rows: halfCreated } = await this.db.query<{ name: string }>('SELECT name FROM pgtestpool.reconcile_creating() name');
    for (const r of halfCreated) log.info(`reconcile: ${r.name} was half-created; it will be dropped`);

    // Only databases with our prefix that no row accounts for; nothing else on the server is touched.
    const { rows: orphans } = await this.db.query<{ name: string; is_template: boolean }>('SELECT * FROM pgtestpool.orphans()');
    for (const o of orphans) {
      try {
        await dropDatabase(this.db, o.name, { template: o.is_template });
        log.info(`reconcile: dropped ${o.name} (not accounted for by the control tables)`);
      } catch (err) {
        log.warn(`reconcile: could not drop ${o.name}: ${errorMessage(err)}`);
      }
    }
  }

  /** One poll: heartbeat, housekeeping, reclaim. Returns how many claims were reclaimed. */
  async sweep(): Promise<number> {
    await this.db.query('SELECT pgtestpool.heartbeat()');
    const { rows: vanished } = await this.db.query<{ name: string; was: string }>('SELECT * FROM pgtestpool.forget_vanished()');
    for (const v of vanished) log.warn(`${v.name} (${v.was}) no longer exists: it was dropped outside pgtestpool`);
    const { rows: stale } = await this.db.query<{ name: string }>('SELECT name FROM pgtestpool.retire_stale() name');
    for (const r of stale) log.debug(`${r.name}: a clone of a replaced template version; it will be dropped`);
    const { rows: entered } = await this.db.query<{ name: string; entered_by: string }>('SELECT * FROM pgtestpool.retire_entered()');
    for (const e of entered) log.warn(`${e.name} was entered while ready (${JSON.stringify(e.entered_by)}): it will never be handed out, and is dropped`);
    const { rows } = await this.db.query<{ name: string; template: string; claimed_pid: number; reason: string }>(
      'SELECT * FROM pgtestpool.reclaim($1::interval, $2::interval, $3::interval)',
      [
        `${this.config.lease.idleTimeoutMs} milliseconds`,
        `${this.config.lease.maxDurationMs} milliseconds`,
        `${Math.min(STARVED_IDLE_MS, this.config.lease.idleTimeoutMs)} milliseconds`,
      ],
    );
    for (const r of rows) log.info(`reclaimed ${r.name} (template ${JSON.stringify(r.template)}, claimed by pid ${r.claimed_pid}): ${r.reason}`);
    await this.announceKept();
    await this.vacuum();
    return rows.length;
  }

  /** Each database keep_test_db() kept, once: where to find it, and until when. */
  private async announceKept(): Promise<void> {
    const { rows } = await this.db.query<{ name: string; template: string; claimed_role: string; claimed_application: string | null; kept_until: Date }>(
      'SELECT * FROM pgtestpool.kept_to_announce()',
    );
    for (const k of rows) {
      const url = postgresUrl(this.conn, k.claimed_role, k.name);
      log.info(`kept ${k.name} (template ${JSON.stringify(k.template)}, claimed by role ${JSON.stringify(k.claimed_role)}` +
        `${k.claimed_application ? `, application ${JSON.stringify(k.claimed_application)}` : ''}) until ${k.kept_until.toISOString()}: psql "${url}"`);
    }
  }

  /**
   * Keeps the control tables small whatever autovacuum does (it may not come round for minutes,
   * and every refill plan reads the pool's table). SKIP_LOCKED and no TRUNCATE: never wait for
   * anyone (truncating the file's tail needs a lock that a waiting claim's transaction blocks for
   * up to 5 s, and new claims would queue behind it); the freed space is reused instead.
   */
  private async vacuum(): Promise<void> {
    if (Date.now() - this.lastVacuum < VACUUM_EVERY_MS) return;
    this.lastVacuum = Date.now();
    await this.db.query(`VACUUM (SKIP_LOCKED, TRUNCATE false) ${CONTROL_TABLES.join(', ')}`).catch((err) => log.debug(`vacuum: ${errorMessage(err)}`));
  }

  describe(): string {
    return `idle_timeout ${formatDuration(this.config.lease.idleTimeoutMs)}, max_duration ${formatDuration(this.config.lease.maxDurationMs)}`;
  }
}
