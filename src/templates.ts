// Template databases: built once from the configured SQL files, keyed by a content hash kept in
// Postgres, so a sidecar restart with unchanged files reuses the template (and its ready clones).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import type { Config, TemplateConfig } from './config.ts';
import { connect, dropDatabase, forDatabase, ident, type ConnConfig } from './db.ts';
import { errorMessage, log } from './log.ts';
import { runSqlFile } from './sqlscript.ts';

/** Bump when the way templates are built changes, so old templates are rebuilt. */
const BUILD_FORMAT = 2;

export function templateHash(t: TemplateConfig, configDir: string, serverMajor: number): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ format: BUILD_FORMAT, name: t.name, serverMajor }));
  for (const file of t.files) {
    h.update(`\0${path.relative(configDir, file)}\0`);
    h.update(readFileSync(file));
  }
  return h.digest('hex');
}

interface TemplateRow {
  name: string;
  state: string;
  database: string | null;
  hash: string | null;
}

/** A template that must be built: its config, content hash and database name. */
export interface PendingBuild {
  template: TemplateConfig;
  hash: string;
  dbName: string;
}

export class Templates {
  constructor(
    private readonly conn: ConnConfig,
    private readonly db: pg.Pool,
    private readonly config: Config,
    private readonly serverMajor: number,
  ) {}

  /**
   * Phase one, fast: forgets templates no longer configured, reuses unchanged ones, and takes
   * stale ones out of service (their ready clones are dropped) before anything is built, so no
   * clone of an old version is handed out while other templates build. Returns what to build.
   */
  async prepare(): Promise<PendingBuild[]> {
    await this.removeUnconfigured();
    const pending: PendingBuild[] = [];
    for (const t of this.config.templates) {
      const hash = templateHash(t, this.config.dir, this.serverMajor);
      const { rows } = await this.db.query<TemplateRow & { exists: boolean; db_name: string }>(
        `SELECT t.*, EXISTS (SELECT 1 FROM pg_database WHERE datname = t.database) AS exists,
                pgtestpool.template_db_name($1, $2) AS db_name
           FROM (SELECT $1::text AS name) n LEFT JOIN pgtestpool.templates t USING (name)`,
        [t.name, hash],
      );
      const row = rows[0]!;
      if (row.state === 'ready' && row.hash === hash && row.database === row.db_name && row.exists) {
        await this.db.query('UPDATE pgtestpool.templates SET min_ready = $2, updated_at = now() WHERE name = $1', [t.name, t.minReady]);
        log.info(`template ${JSON.stringify(t.name)}: reusing ${row.db_name} (files unchanged)`);
        continue;
      }
      // A stale or missing version is not served while its replacement builds: tests right after
      // an edit must get the new schema.
      await this.db.query(
        `INSERT INTO pgtestpool.templates (name, state, min_ready) VALUES ($1, 'building', $2)
         ON CONFLICT (name) DO UPDATE SET state = 'building', database = NULL, hash = NULL, error = NULL,
                                          min_ready = excluded.min_ready, updated_at = now()`,
        [t.name, t.minReady],
      );
      await this.retireClones(t.name, 'template rebuilt');
      if (row.database) await this.dropQuietly(row.database);
      pending.push({ template: t, hash, dbName: row.db_name });
    }
    return pending;
  }

  /** Phase two: builds one template; a failure marks it failed (claims then fail at once) and leaves nothing behind. */
  async build({ template: t, hash, dbName }: PendingBuild): Promise<void> {
    const started = performance.now();
    log.info(`template ${JSON.stringify(t.name)}: building ${dbName} from ${t.files.length} file(s)`);
    try {
      await dropDatabase(this.db, dbName, { template: true }); // a leftover of an interrupted build
      await this.db.query(`CREATE DATABASE ${ident(dbName)}`);
      const client = await connect(forDatabase(this.conn, dbName), 'pgtestpool template build');
      try {
        for (const file of t.files) {
          await runSqlFile(client, file, { displayName: path.relative(this.config.dir, file) || file });
        }
        // Frozen and analyzed once here rather than in every clone.
        await client.query('VACUUM (FREEZE, ANALYZE)');
      } finally {
        await client.end().catch(() => {});
      }
      // VACUUM invalidated the relcache init file; a new session writes it again, FILE_COPY copies
      // it into every clone, and each test's first connection is ~3 ms faster for it.
      const warm = await connect(forDatabase(this.conn, dbName), 'pgtestpool template warm-up');
      await warm.end();
      // Cloning fails while anyone is connected to the source, so nobody may connect to it.
      await this.db.query(`ALTER DATABASE ${ident(dbName)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false`);
      await this.db.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, [dbName]);
      const ms = Math.round(performance.now() - started);
      await this.db.query(
        `UPDATE pgtestpool.templates SET state = 'ready', database = $2, hash = $3, error = NULL,
                build_ms = $4, built_at = now(), updated_at = now() WHERE name = $1`,
        [t.name, dbName, hash, ms],
      );
      log.info(`template ${JSON.stringify(t.name)}: built in ${ms} ms`);
    } catch (err) {
      const message = errorMessage(err);
      await this.dropQuietly(dbName);
      await this.db.query(
        `UPDATE pgtestpool.templates SET state = 'failed', error = $2, updated_at = now() WHERE name = $1`,
        [t.name, message],
      );
      log.error(`template ${JSON.stringify(t.name)}: build failed: ${message}`);
    }
  }

  /** Ready clones of an old version are dropped; claimed ones stay with their tests until released. */
  private async retireClones(template: string, reason: string): Promise<void> {
    await this.db.query(
      `UPDATE pgtestpool.databases SET state = 'dropping', drop_reason = $2
        WHERE template = $1 AND state IN ('ready', 'creating')`,
      [template, reason],
    );
  }

  private async removeUnconfigured(): Promise<void> {
    const names = this.config.templates.map((t) => t.name);
    const { rows } = await this.db.query<TemplateRow>('DELETE FROM pgtestpool.templates WHERE NOT (name = ANY($1)) RETURNING *', [names]);
    for (const row of rows) {
      await this.retireClones(row.name, 'template removed from config');
      if (row.database) await this.dropQuietly(row.database);
      log.info(`template ${JSON.stringify(row.name)}: removed (no longer in the config)`);
    }
  }

  private async dropQuietly(dbName: string): Promise<void> {
    try {
      await dropDatabase(this.db, dbName, { template: true });
    } catch (err) {
      log.warn(`could not drop ${dbName}: ${errorMessage(err)}`);
    }
  }
}
