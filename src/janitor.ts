// Cleans up what tests and crashes leave behind: at start, half-created clones and databases no
// row accounts for; on every poll, claims whose session is gone (or that ran past max_duration).
import type pg from 'pg';
import type { Config } from './config.ts';
import { formatDuration } from './config.ts';
import { errorMessage, log } from './log.ts';
import { dropDatabase } from './db.ts';

export class Janitor {
  constructor(
    private readonly db: pg.Pool,
    private readonly config: Config,
  ) {}

  /**
   * Start-time reconciliation. Runs while this sidecar holds the leader lock, so no other
   * sidecar can have a CREATE in flight: every 'creating' row is a leftover.
   */
  async reconcile(): Promise<void> {
    const { rows: halfCreated } = await this.db.query<{ name: string }>(
      `UPDATE pgtestpool.databases SET state = 'dropping', drop_reason = 'half-created (the sidecar stopped during CREATE)'
        WHERE state = 'creating' RETURNING name`,
    );
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
    const { rows } = await this.db.query<{ name: string; template: string; claimed_pid: number; reason: string }>(
      'SELECT * FROM pgtestpool.reclaim($1::interval, $2::interval)',
      [`${this.config.lease.idleTimeoutMs} milliseconds`, `${this.config.lease.maxDurationMs} milliseconds`],
    );
    for (const r of rows) log.info(`reclaimed ${r.name} (template ${JSON.stringify(r.template)}, claimed by pid ${r.claimed_pid}): ${r.reason}`);
    return rows.length;
  }

  describe(): string {
    return `idle_timeout ${formatDuration(this.config.lease.idleTimeoutMs)}, max_duration ${formatDuration(this.config.lease.maxDurationMs)}`;
  }
}
