// The sidecar's side of templates built through SQL (begin_template / finish_template): it makes
// the database a builder asked for, seals it once the builder finished, and rolls back a build
// whose session ended first. All state is in pgtestpool.templates; a wake() (NOTIFY on
// pgtestpool_templates, every poll) looks at it again.
import pg from 'pg';
import { connect, dropDatabase, forDatabase, ident, isConnectionError, type ConnConfig } from './db.ts';
import { errorMessage, log } from './log.ts';
import { sealTemplate } from './templates.ts';

export const TEMPLATES_CHANNEL = 'pgtestpool_templates';

interface Work {
  template: string;
  action: 'create' | 'seal' | 'abandon';
  hash: string;
  database: string | null;
  builder_pid: number;
  builder_role: string;
  builder_superuser: boolean;
}

export class SqlTemplates {
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;

  constructor(
    private readonly conn: ConnConfig,
    private readonly db: pg.Pool,
  ) {}

  /** Look at the requests again soon; safe to call any number of times. */
  wake(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.run().catch((err) => {
          if (!this.stopped && !isConnectionError(err)) log.error(`templates built through SQL: ${errorMessage(err)}`);
        });
      } while (this.again && !this.stopped);
    })().finally(() => (this.running = null));
  }

  /** Waits for the work in progress; idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  private async run(): Promise<void> {
    const { rows } = await this.db.query<Work>('SELECT * FROM pgtestpool.sql_template_work()');
    for (const w of rows) {
      if (this.stopped) return;
      if (w.action === 'create') await this.create(w);
      else if (w.action === 'seal') await this.seal(w);
      else if (w.action === 'abandon') await this.abandon(w);
    }
  }

  private async create(w: Work): Promise<void> {
    const { rows } = await this.db.query<{ name: string }>('SELECT pgtestpool.sql_template_db_name($1, $2) AS name', [w.template, w.hash]);
    const name = rows[0]!.name;
    try {
      // The builder owns it while it migrates (a test role can then create anything in it); the
      // sealed template goes back to us.
      await this.db.query(`CREATE DATABASE ${ident(name)}${w.builder_superuser ? '' : ` OWNER ${ident(w.builder_role)}`}`);
      await this.db.query(`REVOKE ALL ON DATABASE ${ident(name)} FROM PUBLIC`);
    } catch (err) {
      await dropDatabase(this.db, name).catch(() => {});
      await this.fail(w, `could not create its database: ${errorMessage(err)}`);
      return;
    }
    const { rows: ok } = await this.db.query<{ ok: boolean }>('SELECT pgtestpool.sql_template_created($1, $2, $3) AS ok', [w.template, w.builder_pid, name]);
    if (!ok[0]?.ok) {
      await dropDatabase(this.db, name); // the builder left meanwhile
      return;
    }
    log.info(`template ${JSON.stringify(w.template)}: ${name} made for the session building it through SQL (pid ${w.builder_pid}, role ${JSON.stringify(w.builder_role)})`);
  }

  private async seal(w: Work): Promise<void> {
    const db = w.database!;
    const started = performance.now();
    try {
      // Open again if a seal cut short (the sidecar stopped) had closed it already.
      await this.db.query(`ALTER DATABASE ${ident(db)} WITH ALLOW_CONNECTIONS true`);
      const c = await connect(forDatabase(this.conn, db), 'pgtestpool template seal');
      try {
        await c.query('VACUUM (FREEZE, ANALYZE)');
      } finally {
        await c.end().catch(() => {});
      }
      await this.db.query(`ALTER DATABASE ${ident(db)} OWNER TO CURRENT_USER`);
      await this.db.query(`ALTER DATABASE ${ident(db)} RESET ALL`);
      await sealTemplate(this.db, this.conn, db);
    } catch (err) {
      if (isConnectionError(err) && !this.stopped) throw err; // ours, not the template's: next attach
      await this.fail(w, `could not be sealed: ${errorMessage(err)}`);
      return;
    }
    const ms = Math.round(performance.now() - started);
    const { rows } = await this.db.query<{ old: string | null }>('SELECT pgtestpool.sql_template_sealed($1, $2, $3) AS old', [w.template, w.builder_pid, ms]);
    log.info(`template ${JSON.stringify(w.template)}: ${db}, built through SQL, serves now (sealed in ${ms} ms)`);
    const old = rows[0]?.old;
    if (old) await dropDatabase(this.db, old, { template: true }).catch((err) => log.warn(`could not drop ${old} yet: ${errorMessage(err)}`));
  }

  private async abandon(w: Work): Promise<void> {
    const { rows } = await this.db.query<{ db: string | null }>('SELECT pgtestpool.sql_template_abandoned($1, $2) AS db', [w.template, w.builder_pid]);
    const db = rows[0]?.db;
    if (db) await dropDatabase(this.db, db);
    log.warn(`template ${JSON.stringify(w.template)}: the session building it through SQL (pid ${w.builder_pid}) ended before finish_template(); ` +
      `${db ? `${db} was dropped` : 'nothing was made yet'}`);
  }

  private async fail(w: Work, message: string): Promise<void> {
    const { rows } = await this.db.query<{ db: string | null }>('SELECT pgtestpool.sql_template_failed($1, $2, $3) AS db', [w.template, w.builder_pid, message]);
    const db = rows[0]?.db;
    if (db) await dropDatabase(this.db, db, { template: true }).catch(() => {});
    log.error(`template ${JSON.stringify(w.template)} (built through SQL): ${message}`);
  }
}
