// Template databases: built once from the configured SQL files, keyed by a content hash kept in
// Postgres, so a sidecar restart with unchanged files reuses the template (and its ready clones).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import type { Config, TemplateConfig } from './config.ts';
import { connect, forDatabase, ident, type ConnConfig } from './db.ts';
import { errorMessage, log } from './log.ts';
import { runSqlFile } from './sqlscript.ts';

/** Bump when the way templates are built changes, so old templates are rebuilt. */
const BUILD_FORMAT = 1;

export function templateHash(t: TemplateConfig, configDir: string, serverMajor: number): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ format: BUILD_FORMAT, name: t.name, serverMajor }));
  for (const file of t.files) {
    h.update(`\0${path.relative(configDir, file)}\0`);
    h.update(readFileSync(file));
  }
  return h.digest('hex');
}

export function templateDbName(name: string, hash: string): string {
  const slug = name.toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 20) || 't';
  return `pgtp_tpl_${slug}_${hash.slice(0, 12)}`;
}

/** Drops a database we own, even a template or one with sessions still connected. */
export async function dropDatabase(client: pg.Pool | pg.Client, name: string): Promise<void> {
  const { rows } = await client.query<{ t: boolean }>('SELECT datistemplate AS t FROM pg_database WHERE datname = $1', [name]);
  if (rows.length === 0) return;
  // A template database cannot be dropped until it is one no more.
  if (rows[0]!.t) await client.query(`ALTER DATABASE ${ident(name)} WITH IS_TEMPLATE false`);
  await client.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
}

interface TemplateRow {
  name: string;
  state: string;
  database: string | null;
  hash: string | null;
}

export class Templates {
  constructor(
    private readonly conn: ConnConfig,
    private readonly db: pg.Pool,
    private readonly config: Config,
    private readonly serverMajor: number,
  ) {}

  /** Builds every configured template that is missing or stale; removes templates no longer configured. */
  async ensureAll(shouldStop: () => boolean = () => false): Promise<void> {
    await this.removeUnconfigured();
    for (const t of this.config.templates) {
      if (shouldStop()) return;
      await this.ensure(t);
    }
  }

  async ensure(t: TemplateConfig): Promise<void> {
    const hash = templateHash(t, this.config.dir, this.serverMajor);
    const dbName = templateDbName(t.name, hash);
    const { rows } = await this.db.query<TemplateRow & { exists: boolean }>(
      `SELECT t.*, EXISTS (SELECT 1 FROM pg_database WHERE datname = t.database) AS exists
         FROM pgtestpool.templates t WHERE t.name = $1`,
      [t.name],
    );
    const row = rows[0];
    if (row && row.state === 'ready' && row.hash === hash && row.database === dbName && row.exists) {
      await this.db.query('UPDATE pgtestpool.templates SET min_ready = $2, updated_at = now() WHERE name = $1', [t.name, t.minReady]);
      log.info(`template ${JSON.stringify(t.name)}: reusing ${dbName} (files unchanged)`);
      return;
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
    if (row?.database) await this.dropQuietly(row.database);
    await this.build(t, hash, dbName);
  }

  private async build(t: TemplateConfig, hash: string, dbName: string): Promise<void> {
    const started = performance.now();
    log.info(`template ${JSON.stringify(t.name)}: building ${dbName} from ${t.files.length} file(s)`);
    try {
      await dropDatabase(this.db, dbName); // a leftover of an interrupted build
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
    const { rows } = await this.db.query<TemplateRow>(
      'DELETE FROM pgtestpool.templates WHERE NOT (name = ANY($1)) RETURNING *',
      [names],
    );
    for (const row of rows) {
      await this.retireClones(row.name, 'template removed from config');
      if (row.database) await this.dropQuietly(row.database);
      log.info(`template ${JSON.stringify(row.name)}: removed (no longer in the config)`);
    }
  }

  private async dropQuietly(dbName: string): Promise<void> {
    try {
      await dropDatabase(this.db, dbName);
    } catch (err) {
      log.warn(`could not drop ${dbName}: ${errorMessage(err)}`);
    }
  }
}
