// Template databases: built from a template's extensions, schema files, migration folders and
// seeds, keyed by a content hash kept in Postgres (a restart with unchanged inputs reuses the
// template and its ready clones), rebuilt in the background when `watch` sees a change.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { Config, TemplateConfig } from './config.ts';
import { connect, dropDatabase, forDatabase, ident, isConnectionError, type ConnConfig } from './db.ts';
import { defaultOrigin, dumpVersionHint, extensionHint, featureHint, resourceShortage, type ServerOrigin } from './buildhints.ts';
import { errorMessage, log } from './log.ts';
import { CommandError, commandEnv, runCommand, type RunningCommand } from './command.ts';
import { inputSignature, resolveSources, stepHashParts, stepSql, type BuildStep } from './sources.ts';
import { runSqlText, SqlScriptError } from './sqlscript.ts';
import type { TemplateState } from './states.ts';

/** Bump when the way templates are built changes, so old templates are rebuilt. */
const BUILD_FORMAT = 3;

const REASSIGN_OWNER_SQL = readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), 'sql', 'reassign-owner.sql'), 'utf8');

/** Everything that shapes a template: its inputs' names, contents and order, and the server's major. */
export function templateHash(t: TemplateConfig, steps: BuildStep[], serverMajor: number): string {
  const h = createHash('sha256');
  // Settings and grants shape the clones, not the template, but ready clones made with old ones
  // must not survive a change: in the hash, a change retires them.
  h.update(JSON.stringify({ format: BUILD_FORMAT, name: t.name, serverMajor, extensions: t.extensions, owner: t.owner, settings: t.settings, grants: t.grants }));
  for (const s of steps) {
    h.update(`\0${s.kind}\0${s.display}\0${s.transaction}\0`);
    for (const part of stepHashParts(s)) h.update(part);
  }
  return h.digest('hex');
}

/** Settings whose value is a list: each element is quoted on its own (search_path: app, public). */
const LIST_SETTINGS = new Set(['search_path', 'temp_tablespaces', 'session_preload_libraries', 'local_preload_libraries', 'datestyle']);

function settingValue(name: string, value: string): string {
  const items = LIST_SETTINGS.has(name.toLowerCase()) ? value.split(',').map((v) => v.trim()).filter(Boolean) : [value];
  return items.map((v) => pg.escapeLiteral(v)).join(', ');
}

/** Per-clone SQL that CREATE DATABASE ... TEMPLATE does not copy: settings and grants. */
export function cloneSetupSql(t: TemplateConfig | undefined, clone: string): string[] {
  if (!t) return [];
  const db = ident(clone);
  return [
    ...Object.entries(t.settings).map(([k, v]) => `ALTER DATABASE ${db} SET ${ident(k)} = ${settingValue(k, v)}`),
    ...Object.entries(t.grants).map(([role, privs]) => `GRANT ${privs.join(', ')} ON DATABASE ${db} TO ${ident(role)}`),
  ];
}

/**
 * The last step of every build, from config.yaml or through SQL: the relcache init file rebuilt,
 * then closed to connections and marked a template. (VACUUM (FREEZE, ANALYZE) comes first.)
 */
export async function sealTemplate(db: pg.Pool, conn: ConnConfig, dbName: string): Promise<void> {
  // VACUUM invalidated the relcache init file; a new session writes it again, FILE_COPY copies
  // it into every clone, and each test's first connection is ~3 ms faster for it.
  const warm = await connect(forDatabase(conn, dbName), 'pgtestpool template warm-up');
  await warm.end();
  // Cloning fails while anyone is connected to the source, so nobody may connect to it.
  await db.query(`ALTER DATABASE ${ident(dbName)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false`);
  await db.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, [dbName]);
}

/** Retries of a build that failed for lack of a resource: 1 s, doubling, at most 30 s apart. */
const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 30_000;

/** Stands in for whatever a build hit when stop() ended it. */
class BuildStopped extends Error {
  constructor() {
    super('stopped during the build');
  }
}

/** A failed build as stored: the error (no HINT line in it) and, apart, the one hint that fits. */
export interface BuildFailure {
  error: string;
  hint: string | null;
}

interface TemplateRow {
  name: string;
  state: TemplateState;
  database: string | null;
  hash: string | null;
}

/** A version of a template to build: its config, resolved steps, content hash and database name. */
export interface PendingBuild {
  template: TemplateConfig;
  steps: BuildStep[];
  hash: string;
  dbName: string;
}

export interface TemplatesOptions {
  /** Where the server comes from, for the hint on a missing extension (default: from PGTESTPOOL_IMAGE). */
  origin?: ServerOrigin;
}

export class Templates {
  /** Old template databases whose drop failed (a CREATE from them was in flight): retried later. */
  private readonly toDrop = new Set<string>();
  /** Per watched template: the stat signature and hash last seen, to notice edits cheaply. */
  private readonly seen = new Map<string, { signature: string; hash: string }>();
  /** Builds that failed for lack of a resource, per template: retried by retryFailed() with backoff. */
  private readonly retries = new Map<string, { v: PendingBuild; attempt: number; dueAt: number; queued: boolean }>();
  private building: Promise<void> = Promise.resolve();
  /** Every build() in progress, however started, so stop() returns only once each has cleaned up. */
  private readonly running = new Set<Promise<boolean>>();
  private stopping = false;
  /** The backends running builds' SQL, so stop() can end them at once. */
  private readonly buildPids = new Set<number>();
  /** Build commands running, so stop() can end them (and what they started) at once. */
  private readonly commands = new Set<RunningCommand>();
  private readonly origin: ServerOrigin;

  constructor(
    private readonly conn: ConnConfig,
    private readonly db: pg.Pool,
    private readonly config: Config,
    private readonly serverMajor: number,
    options: TemplatesOptions = {},
  ) {
    this.origin = options.origin ?? defaultOrigin();
  }

  private async version(t: TemplateConfig, steps: BuildStep[]): Promise<PendingBuild> {
    const hash = templateHash(t, steps, this.serverMajor);
    const { rows } = await this.db.query<{ name: string }>('SELECT pgtestpool.template_db_name($1, $2) AS name', [t.name, hash]);
    return { template: t, steps, hash, dbName: rows[0]!.name };
  }

  /**
   * Phase one, fast: forgets templates no longer configured, reuses unchanged ones, and takes
   * stale ones out of service (their ready clones are dropped) before anything is built, so no
   * clone of an old version is handed out while other templates build. Returns what to build.
   */
  async prepare(opts: { reconnect?: boolean } = {}): Promise<PendingBuild[]> {
    await this.removeUnconfigured();
    const pending: PendingBuild[] = [];
    for (const t of this.config.templates) {
      const v = await this.version(t, t.steps);
      const { rows } = await this.db.query<TemplateRow & { exists: boolean }>(
        `SELECT t.*, EXISTS (SELECT 1 FROM pg_database WHERE datname = t.database) AS exists
           FROM pgtestpool.templates t WHERE t.name = $1`,
        [t.name],
      );
      const row = rows[0];
      const current = row?.hash === v.hash && row?.database === v.dbName && row?.exists;
      // The inputs changed only while we were attached (watch saw it: a rebuild was under way, or
      // a broken edit keeps the old version serving): after a reconnect that version goes on
      // serving, and watch, not knowing these inputs yet, builds the new one in the background.
      if (opts.reconnect && row?.exists && row.database && !current && t.watch) {
        log.info(`template ${JSON.stringify(t.name)}: ${row.database} keeps serving; its inputs changed, so watch rebuilds it`);
        await this.rewarm(row.database);
        continue;
      }
      this.seen.set(t.name, { signature: inputSignature(t, this.config.dir), hash: v.hash });
      // Reused when the serving version is the one the inputs describe, whatever state an
      // interrupted rebuild or a reverted broken edit left the row in.
      if (current) {
        await this.db.query('SELECT pgtestpool.template_reused($1, $2, $3)', [t.name, t.minReady, t.owner]);
        log.info(`template ${JSON.stringify(t.name)}: reusing ${v.dbName} (inputs unchanged)`);
        await this.rewarm(v.dbName);
        continue;
      }
      // A stale or missing version is not served while its replacement builds: tests right after
      // a restart with edited files must get the new schema.
      await this.db.query('SELECT pgtestpool.template_building($1, $2, $3)', [t.name, t.minReady, t.owner]);
      await this.retireClones(t.name, 'template rebuilt');
      if (row?.database) await this.dropTemplateDb(row.database);
      pending.push(v);
    }
    return pending;
  }

  /**
   * Builds one version. At start nothing serves meanwhile; a rebuild seen by `watch` keeps the
   * old version serving until the new one is ready, then switches. A failure marks the template
   * failed with the error and leaves nothing behind (and the old version, if any, serving).
   */
  build(v: PendingBuild, stillWanted: () => boolean = () => true): Promise<boolean> {
    if (this.stopping) return Promise.resolve(false);
    const run = this.runBuild(v, stillWanted).finally(() => this.running.delete(run));
    this.running.add(run);
    return run;
  }

  private async runBuild(v: PendingBuild, stillWanted: () => boolean): Promise<boolean> {
    const { template: t, dbName } = v;
    const started = performance.now();
    const progress: { step?: BuildStep } = {};
    const sqlSteps = v.steps.filter((s) => s.kind !== 'command').length;
    log.info(`template ${JSON.stringify(t.name)}: building ${dbName} from ${sqlSteps} file(s)` +
      (t.command !== null ? ` and the command ${JSON.stringify(t.command)}` : '') +
      (t.extensions.length ? ` and extensions ${t.extensions.join(', ')}` : ''));
    try {
      await this.createAndFill(v, progress);
      if (!stillWanted()) {
        // The files changed again (or back) while this version built: it never serves.
        log.info(`template ${JSON.stringify(t.name)}: ${dbName} is already outdated; discarding it`);
        await this.dropTemplateDb(dbName);
        return false;
      }
      const ms = Math.round(performance.now() - started);
      // Ready clones of a replaced version are retired with it; claimed ones stay with their tests.
      const { rows } = await this.db.query<{ old: string | null }>('SELECT pgtestpool.template_built($1, $2, $3, $4, $5) AS old', [
        t.name, dbName, v.hash, ms, t.owner,
      ]);
      const old = rows[0]?.old;
      log.info(`template ${JSON.stringify(t.name)}: built in ${ms} ms${old ? `; now serving it instead of ${old}` : ''}`);
      if (old) await this.dropTemplateDb(old);
      this.retries.delete(t.name);
      return true;
    } catch (err) {
      await this.dropTemplateDb(dbName);
      // The connection failed, not the build: the sidecar attaches again and builds it then.
      if (isConnectionError(err) && !this.stopping) throw err;
      if (this.stopping) {
        // Whatever failed, stop() ended it: not the template's fault, and it builds again at the next start.
        log.info(`template ${JSON.stringify(t.name)}: build of ${dbName} stopped; it is built again at the next start`);
        return false;
      }
      await this.markFailed(t.name, this.describeFailure(err, v, progress.step));
      return false;
    }
  }

  /** The error without its HINT line, and the hint: ours when we know better, else PostgreSQL's. */
  private describeFailure(err: unknown, v: PendingBuild, step: BuildStep | undefined): BuildFailure {
    let error = errorMessage(err);
    if (err instanceof CommandError) {
      this.retries.delete(v.template.name); // the tool failed: it waits for an edit, like a SQL error
      return { error, hint: 'fix the command or the files it reads (its whole output is in the sidecar log); the template is rebuilt when they change' };
    }
    const pgHint = err instanceof SqlScriptError ? err.hint : undefined;
    if (pgHint) error = error.replace(`\nHINT:  ${pgHint}`, '');
    const shortage = resourceShortage(err);
    if (shortage) return this.scheduleRetry(v, error, shortage, pgHint);
    this.retries.delete(v.template.name); // a real error: it waits for an edit
    const pgMessage = err instanceof SqlScriptError ? err.pgMessage ?? '' : error;
    const statement = err instanceof SqlScriptError ? err.statement ?? '' : '';
    const hint = extensionHint(error, this.serverMajor, this.origin) ??
      (step && step.kind !== 'command' ? dumpVersionHint(stepSql(step), this.serverMajor) : null) ??
      featureHint(pgMessage, statement, this.serverMajor) ??
      pgHint ?? null;
    return { error, hint };
  }

  /** A build that failed for lack of a resource is tried again later, 1 s doubling to 30 s apart. */
  private scheduleRetry(v: PendingBuild, error: string, shortage: { what: string; code: string }, pgHint: string | undefined): BuildFailure {
    const previous = this.retries.get(v.template.name);
    const attempt = previous?.v.hash === v.hash ? previous.attempt + 1 : 1;
    const delay = Math.min(RETRY_FIRST_MS * 2 ** (attempt - 1), RETRY_MAX_MS);
    this.retries.set(v.template.name, { v, attempt, dueAt: Date.now() + delay, queued: false });
    return {
      error: `${error}\nThe server ran out of ${shortage.what} (${shortage.code}): the build is retried automatically ` +
        `until it succeeds (attempt ${attempt} failed; next in ${Math.ceil(delay / 1000)} s, then at most every ${RETRY_MAX_MS / 1000} s).`,
      hint: `free ${shortage.what} on the server; the build is retried by itself, no change to the template's files is needed` +
        (pgHint ? ` (PostgreSQL's hint: ${pgHint})` : ''),
    };
  }

  /**
   * Called on every poll: builds that failed for lack of a resource (a full disk, too many
   * connections) are queued again once their backoff is over, unless their inputs changed since.
   * Returns at once; the builds run one at a time in the background, like `watch` rebuilds.
   */
  async retryFailed(): Promise<void> {
    if (this.stopping) return;
    const now = Date.now();
    for (const [name, r] of this.retries) {
      if (r.queued || r.dueAt > now) continue;
      const latest = this.seen.get(name)?.hash;
      if (latest !== undefined && latest !== r.v.hash) {
        this.retries.delete(name); // edited meanwhile: the new version is built instead
        continue;
      }
      r.queued = true;
      log.info(`template ${JSON.stringify(name)}: retrying the build that failed for lack of a resource (attempt ${r.attempt + 1})`);
      this.building = this.building.then(async () => {
        r.queued = false;
        if (this.retries.get(name) !== r || this.stopping) return;
        await this.build(r.v, () => this.seen.get(name) === undefined || this.seen.get(name)!.hash === r.v.hash);
      }).catch((err) => {
        log.error(`template ${JSON.stringify(name)}: ${errorMessage(err)}`);
      });
    }
  }

  /** The one way a template is marked failed: the error and, apart, the hint that claims show. */
  private async markFailed(name: string, { error, hint }: BuildFailure): Promise<void> {
    await this.db.query('SELECT pgtestpool.template_failed($1, $2, $3)', [name, error, hint]);
    log.error(`template ${JSON.stringify(name)}: build failed: ${error}${hint ? `\nHINT:  ${hint}` : ''}`);
  }

  /** Throws BuildStopped as soon as stop() was called: between statements nothing else notices. */
  private checkStopping(): void {
    if (this.stopping) throw new BuildStopped();
  }

  private async createAndFill({ template: t, steps, dbName }: PendingBuild, progress: { step?: BuildStep }): Promise<void> {
    if (t.owner) {
      const { rowCount } = await this.db.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [t.owner]);
      if (!rowCount) {
        throw new Error(`owner: role ${JSON.stringify(t.owner)} does not exist: create it first ` +
          `(e.g. an init script with CREATE ROLE ${ident(t.owner)} LOGIN PASSWORD '...')`);
      }
    }
    await dropDatabase(this.db, dbName, { template: true }); // a leftover of an interrupted build
    await this.db.query(`CREATE DATABASE ${ident(dbName)}`);
    this.checkStopping();
    const client = await connect(forDatabase(this.conn, dbName), 'pgtestpool template build');
    // stop() terminates this backend; the error then comes from the query it ran, not as an
    // unhandled 'error' event that would end the process.
    client.on('error', (err) => log.debug(`template build connection: ${errorMessage(err)}`));
    const pid = (client as unknown as { processID: number }).processID;
    this.buildPids.add(pid);
    try {
      this.checkStopping(); // stop() came while connecting: it saw no backend to end
      for (const ext of t.extensions) {
        await client.query(`CREATE EXTENSION IF NOT EXISTS ${ident(ext)} CASCADE`).catch((err) => {
          throw new Error(`extensions: ${errorMessage(err)}`, { cause: err });
        });
      }
      for (const step of steps) {
        this.checkStopping();
        progress.step = step;
        if (step.kind === 'command') {
          await this.runBuildCommand(t, step, dbName);
          continue;
        }
        if (step.transaction) await client.query('BEGIN');
        await runSqlText(client, stepSql(step), step.display);
        if (step.transaction) await client.query('COMMIT');
        // Each file starts from a fresh session, as with its own `psql -f`: pg_dump output sets
        // search_path to '' and would otherwise leave it so for the next file.
        await client.query('DISCARD ALL');
      }
      progress.step = undefined;
      if (t.owner) {
        await client.query(`SELECT set_config('pgtestpool.owner', $1, false)`, [t.owner]);
        await client.query(REASSIGN_OWNER_SQL);
      }
      // The per-clone settings and grants, tried here once: a typo or a missing role fails the
      // template with PostgreSQL's message instead of every clone, silently, later.
      for (const sql of cloneSetupSql(t, dbName)) {
        await client.query(sql).catch((err) => {
          throw new Error(`settings/grants: ${errorMessage(err)} (in: ${sql.replace(ident(dbName), '<clone>')})`, { cause: err });
        });
      }
      await client.query(`ALTER DATABASE ${ident(dbName)} RESET ALL`);
      await client.query(`REVOKE ALL ON DATABASE ${ident(dbName)} FROM ${Object.keys(t.grants).map(ident).join(', ') || 'PUBLIC'}`);
      // Frozen and analyzed once here rather than in every clone.
      await client.query('VACUUM (FREEZE, ANALYZE)');
    } finally {
      this.buildPids.delete(pid);
      await client.end().catch(() => {});
    }
    this.checkStopping();
    await sealTemplate(this.db, this.conn, dbName);
  }

  /** Runs the template's command against `dbName` (in the config's folder) and waits for it to succeed. */
  private async runBuildCommand(t: TemplateConfig, step: BuildStep, dbName: string): Promise<void> {
    const env = commandEnv(this.conn, dbName);
    const running = runCommand({
      command: step.command!,
      cwd: step.file,
      env,
      timeoutMs: t.commandTimeoutMs,
      label: `template ${JSON.stringify(t.name)}: command`,
      // (Not the image's and npm start's well-known default 'postgres': hiding that word would
      // garble every line that says postgresql.)
      secrets: env.PGPASSWORD && env.PGPASSWORD !== 'postgres' ? [env.PGPASSWORD, encodeURIComponent(env.PGPASSWORD)] : [],
    });
    this.commands.add(running);
    try {
      if (this.stopping) running.kill('pgtestpool is stopping');
      await running.done;
    } finally {
      this.commands.delete(running);
    }
    this.checkStopping();
  }

  /**
   * A server restart deletes every database's relcache init file, templates included, and without
   * it each clone's first connection costs ~7 ms more. Runs before the pool clones anything.
   */
  private async rewarm(dbName: string): Promise<void> {
    const { rows } = await this.db
      .query<{ missing: boolean; open: boolean }>(
        `SELECT (pg_stat_file(format('base/%s/pg_internal.init', oid), true)).size IS NULL AS missing, datallowconn AS open
           FROM pg_database WHERE datname = $1`,
        [dbName],
      )
      .catch((err) => {
        log.debug(`cannot check ${dbName}'s relcache init file: ${errorMessage(err)}`); // pg_stat_file needs superuser
        return { rows: [] as { missing: boolean; open: boolean }[] };
      });
    // Left open by an interrupted warm-up: cloning fails while anyone is connected to it.
    if (rows[0]?.open && !rows[0].missing) await this.db.query(`ALTER DATABASE ${ident(dbName)} WITH ALLOW_CONNECTIONS false`);
    if (!rows[0]?.missing) return;
    await this.db.query(`ALTER DATABASE ${ident(dbName)} WITH ALLOW_CONNECTIONS true`);
    try {
      const warm = await connect(forDatabase(this.conn, dbName), 'pgtestpool template warm-up');
      await warm.end();
      log.info(`template ${dbName}: relcache init file rebuilt (the server restarted since the build)`);
    } finally {
      await this.db.query(`ALTER DATABASE ${ident(dbName)} WITH ALLOW_CONNECTIONS false`);
    }
  }

  /**
   * `watch`: called on every poll. Re-resolves each watched template's inputs, and when their
   * content hash changed, builds the new version in the background (one build at a time) while
   * the old one keeps serving. Inputs that no longer resolve (a deleted file) are reported the
   * same way as a failed build.
   */
  async checkForChanges(): Promise<void> {
    if (this.stopping) return;
    for (const t of this.config.templates) {
      if (!t.watch) continue;
      // Listing and stat only; the files are read (and parsed, for migrations) only when it changed.
      const signature = inputSignature(t, this.config.dir);
      const last = this.seen.get(t.name);
      if (last && last.signature === signature) continue;
      const { steps, problems } = resolveSources(t, this.config.dir);
      if (problems.length > 0) {
        const message = problems.map((p) => `templates.${t.name}.${p.key}: ${p.message}`).join('\n');
        this.seen.set(t.name, { signature, hash: '' });
        await this.markFailed(t.name, { error: message, hint: 'fix the paths in config.yaml or restore the files' });
        continue;
      }
      const v = await this.version(t, steps);
      this.seen.set(t.name, { signature, hash: v.hash });
      if (last && last.hash === v.hash) continue; // touched, not changed
      const { rows } = await this.db.query<{ hash: string | null }>('SELECT hash FROM pgtestpool.templates WHERE name = $1', [t.name]);
      if (rows[0]?.hash === v.hash) {
        // An edit undone (after a broken one): the serving version is the right one again.
        await this.db.query('SELECT pgtestpool.template_serving_again($1)', [t.name]);
        log.info(`template ${JSON.stringify(t.name)}: inputs are back to the serving version`);
        continue;
      }
      log.info(`template ${JSON.stringify(t.name)}: inputs changed; building the new version while the current one serves`);
      await this.db.query('SELECT pgtestpool.template_rebuilding($1)', [t.name]);
      this.building = this.building.then(() => this.buildIfStillWanted(v)).catch((err) => {
        log.error(`template ${JSON.stringify(t.name)}: ${errorMessage(err)}`);
      });
    }
  }

  /**
   * A queued build runs only if its inputs are still the latest seen (an edit undone or superseded
   * meanwhile is skipped) and are not already what serves (never rebuild, and so drop, the
   * database that serves).
   */
  private async buildIfStillWanted(v: PendingBuild): Promise<void> {
    if (this.stopping || this.seen.get(v.template.name)?.hash !== v.hash) return;
    const { rows } = await this.db.query<{ hash: string | null }>('SELECT hash FROM pgtestpool.templates WHERE name = $1', [v.template.name]);
    if (rows[0]?.hash === v.hash) {
      await this.db.query('SELECT pgtestpool.template_serving_again($1)', [v.template.name]);
      return;
    }
    await this.build(v, () => this.seen.get(v.template.name)?.hash === v.hash);
  }

  /**
   * Stop: no more queued builds, and the one running ends at once (its template rebuilds at the
   * next start). Its backend is terminated, not cancelled: a cancel only ends the statement
   * running at that instant, and the build would go on with the next one.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const c of this.commands) c.kill('pgtestpool is stopping');
    for (const pid of this.buildPids) await this.db.query('SELECT pg_terminate_backend($1)', [pid]).catch(() => {});
    await Promise.all([this.building, ...this.running]);
  }

  private async retireClones(template: string, reason: string): Promise<void> {
    await this.db.query('SELECT pgtestpool.retire_clones($1, NULL, $2)', [template, reason]);
  }

  private async removeUnconfigured(): Promise<void> {
    const names = this.config.templates.map((t) => t.name);
    // Forgotten, and their ready clones retired, in one statement.
    const { rows } = await this.db.query<{ name: string; database: string | null }>('SELECT * FROM pgtestpool.templates_removed($1)', [names]);
    for (const row of rows) {
      if (row.database) await this.dropTemplateDb(row.database);
      log.info(`template ${JSON.stringify(row.name)}: removed (no longer in the config)`);
    }
  }

  private async dropTemplateDb(dbName: string): Promise<void> {
    try {
      await dropDatabase(this.db, dbName, { template: true });
      this.toDrop.delete(dbName);
    } catch (err) {
      this.toDrop.add(dbName);
      log.warn(`could not drop ${dbName} yet (${errorMessage(err)}); will retry`);
    }
  }

  /** Old template databases whose drop failed earlier: tried again on every poll. */
  async retryDrops(): Promise<void> {
    for (const name of [...this.toDrop]) await this.dropTemplateDb(name);
  }
}
