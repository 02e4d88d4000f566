// Wires the parts together: installs the SQL API, takes the leader lock, reconciles, builds the
// templates, then keeps the pool filled (NOTIFY wakes it, a poll timer backs NOTIFY up) and
// reclaims abandoned claims. start() and stop() are idempotent.
import { EventEmitter } from 'node:events';
import pg from 'pg';
import pgListen, { type Subscriber } from 'pg-listen';
import type { Config, Strategy } from './config.ts';
import { connect, describeConn, ident, installApi, serverMajor, type ConnConfig } from './db.ts';
import { Janitor } from './janitor.ts';
import { errorMessage, log } from './log.ts';
import { Pool } from './pool.ts';
import { Templates } from './templates.ts';

/** Held for the sidecar's lifetime: two sidecars on one server would fight over the pool. */
const LEADER_LOCK = 7203551410;
const CHANNEL = 'pgtestpool';

// pg-listen is CommonJS with an `exports.default`; from ESM the function sits one level down.
const createSubscriber = ((pgListen as unknown as { default?: typeof pgListen }).default ?? pgListen) as unknown as typeof pgListen.default;

export interface StatusRow {
  template: string;
  build_state: string;
  ready: number;
  claimed: number;
  creating: number;
  dropping: number;
  failed: number;
  min_ready: number;
  error: string | null;
}

export class Sidecar extends EventEmitter {
  /** Holds the leader lock for our lifetime; its loss means another sidecar may take over, so we stop. */
  private leader: pg.Client | null = null;
  /** Short queries from the pool planner, the janitor, the template builder and status(), which run concurrently. */
  private db: pg.Pool | null = null;
  private subscriber: Subscriber | null = null;
  private pool: Pool | null = null;
  private janitor: Janitor | null = null;
  private templates: Templates | null = null;
  private timer: NodeJS.Timeout | null = null;
  private starting: Promise<void> | null = null;
  private stopping: Promise<void> | null = null;
  private sweeping = false;
  private initialBuildsDone = false;
  serverMajor = 0;

  constructor(
    readonly config: Config,
    readonly conn: ConnConfig,
  ) {
    super();
  }

  start(): Promise<void> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<void> {
    const leader = await connect(this.conn, 'pgtestpool sidecar');
    this.leader = leader;
    // A lost leader connection leaves us blind: stop and let the supervisor restart us.
    leader.on('error', (err) => this.fatal(`connection to PostgreSQL lost: ${errorMessage(err)}`));
    this.serverMajor = serverMajor((await leader.query('SHOW server_version_num')).rows[0].server_version_num);
    await checkPrivileges(leader);
    log.info(`attached to PostgreSQL ${this.serverMajor} at ${describeConn(this.conn)}`);
    await this.takeLeaderLock(leader);
    await installApi(leader);
    await leader.query(
      `WITH forget AS (DELETE FROM pgtestpool.settings WHERE key = 'filled_at') -- health: filled since this start
       INSERT INTO pgtestpool.settings (key, value) VALUES ('claim_timeout', $1), ('max_databases', $2)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
      [`${this.config.claim.timeoutMs} milliseconds`, String(this.config.pool.maxDatabases)],
    );

    const db = new pg.Pool({ ...this.conn, application_name: 'pgtestpool sidecar', max: 4, idleTimeoutMillis: 0 });
    db.on('error', (err) => log.warn(`idle connection: ${errorMessage(err)}`));
    this.db = db;
    this.janitor = new Janitor(db, this.config);
    await this.janitor.reconcile();
    await this.janitor.sweep();

    const strategy = this.chooseStrategy();
    this.pool = new Pool({ conn: this.conn, db, config: this.config, strategy });
    await this.listen();
    const templates = new Templates(this.conn, db, this.config, this.serverMajor);
    this.templates = templates;
    const pending = await templates.prepare();
    const { rows: surplus } = await db.query<{ name: string; reason: string }>('SELECT * FROM pgtestpool.trim_surplus()');
    for (const r of surplus) log.info(`${r.name} will be dropped: ${r.reason}`);
    // Drops of leftovers and refills of reused templates go ahead while the others build, and
    // the heartbeat runs meanwhile (a long build is not a dead sidecar).
    this.pool.wake();
    this.timer = setInterval(() => void this.poll(), this.config.pool.pollIntervalMs);
    for (const build of pending) {
      if (this.stopping) break;
      await templates.build(build);
      this.pool.wake();
    }
    this.initialBuildsDone = true;
    log.info(
      `pool running: ${this.config.templates.map((t) => `${t.name} min_ready ${t.minReady}`).join(', ')}; ` +
        `max_databases ${this.config.pool.maxDatabases}; ${this.config.pool.concurrency} in flight; ` +
        `strategy ${strategy ?? 'server default'}; ${this.janitor.describe()}`,
    );
  }

  private chooseStrategy(): Strategy | null {
    if (this.serverMajor < 15) {
      if (this.config.pool.strategy) log.warn(`pool.strategy is ignored: PostgreSQL ${this.serverMajor} has no STRATEGY option`);
      return null;
    }
    // FILE_COPY is 2x faster than WAL_LOG on tmpfs with fsync off (see README).
    return this.config.pool.strategy ?? 'file_copy';
  }

  private async takeLeaderLock(leader: pg.Client): Promise<void> {
    // A sidecar killed a moment ago may still hold it until the server notices the closed socket.
    const deadline = Date.now() + 15_000;
    for (let warned = false; ; warned = true) {
      const { rows } = await leader.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [LEADER_LOCK]);
      if (rows[0]!.ok) return;
      if (Date.now() > deadline) {
        throw new Error('another pgtestpool sidecar is attached to this server (it holds the leader lock); stop it first');
      }
      if (!warned) log.warn('another pgtestpool sidecar holds the leader lock; waiting up to 15 s');
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  private async listen(): Promise<void> {
    const subscriber = createSubscriber({ ...this.conn, application_name: 'pgtestpool listener' } as pg.ClientConfig, {
      retryLimit: Infinity,
      retryTimeout: Infinity,
    });
    subscriber.notifications.on(CHANNEL, (payload: Record<string, unknown>) => {
      if (payload?.event === 'claim') {
        log.info(`claimed ${payload.database} (template ${JSON.stringify(payload.template)}) by pid ${payload.pid}` +
          // The client chose this text: quoted, so it cannot forge log lines.
          (payload.application ? ` (application ${JSON.stringify(payload.application)})` : ''));
      } else if (payload?.event === 'release') {
        log.info(`released ${payload.database} by pid ${payload.pid}`);
      }
      this.pool?.wake();
    });
    subscriber.events.on('error', (err: Error) => log.warn(`listener: ${errorMessage(err)}`));
    // NOTIFY sent while we were disconnected is lost; the poll covers it, and a wake here re-plans at once.
    subscriber.events.on('reconnect', () => this.pool?.wake());
    await subscriber.connect();
    await subscriber.listenTo(CHANNEL);
    this.subscriber = subscriber;
  }

  private async poll(): Promise<void> {
    if (this.sweeping || this.stopping || !this.janitor) return;
    this.sweeping = true;
    try {
      await this.janitor.sweep();
      await this.templates?.retryDrops();
      // Watching starts once the first builds are done: it must not race them.
      if (this.initialBuildsDone && this.config.templates.some((t) => t.watch)) await this.templates?.checkForChanges();
    } catch (err) {
      log.warn(`janitor: ${errorMessage(err)}`);
    } finally {
      this.sweeping = false;
    }
    this.pool?.wake();
  }

  /** Per-template pool counts, as test_db_status() shows them. */
  async status(): Promise<StatusRow[]> {
    if (!this.db) return [];
    const { rows } = await this.db.query('SELECT * FROM test_db_status()');
    return rows.map((r) => ({
      ...r,
      ready: Number(r.ready),
      claimed: Number(r.claimed),
      creating: Number(r.creating),
      dropping: Number(r.dropping),
      failed: Number(r.failed),
    }));
  }

  /**
   * Resolves once every template is built (or failed) and every built one holds min_ready clones,
   * or, with `orAfterMs`, when that time has passed (claims may hold the whole budget): then
   * `filled` is false and the caller decides what that means.
   */
  async whenFilled(orAfterMs = Infinity): Promise<{ filled: boolean; status: StatusRow[] }> {
    await this.start();
    const deadline = Date.now() + orAfterMs;
    for (;;) {
      const status = await this.status();
      const filled = status.every((r) => r.build_state === 'failed' || r.ready >= r.min_ready);
      if (filled || Date.now() > deadline) return { filled, status };
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private fatal(message: string): void {
    if (this.stopping) return;
    log.error(message);
    this.emit('fatal', new Error(message));
  }

  /** Stops polling and listening, waits for CREATE/DROP in flight, closes connections. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    // A build in progress (at start or from watch) is cancelled, so docker stop stays quick.
    await this.templates?.stop();
    await this.starting?.catch(() => {});
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.subscriber?.close().catch(() => {});
    await this.pool?.stop();
    // Wait for a sweep in progress so its queries finish before the connection closes.
    while (this.sweeping) await new Promise((r) => setTimeout(r, 5));
    await this.db?.end().catch(() => {});
    this.db = null;
    await this.leader?.end().catch(() => {});
    this.leader = null;
  }
}

/**
 * A superuser can do everything the sidecar does. Any other role needs each of these, and is told
 * at once which it lacks rather than failing later, mid-claim or mid-drop.
 */
async function checkPrivileges(leader: pg.Client): Promise<void> {
  const { rows } = await leader.query(
    `SELECT current_user AS role, rolsuper, rolcreatedb,
            pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS read_stats,
            pg_has_role(current_user, 'pg_signal_backend', 'USAGE') AS signal,
            has_database_privilege(current_database(), 'CREATE') AS db_create,
            has_schema_privilege('public', 'CREATE') AS public_create,
            current_database() AS db
       FROM pg_roles WHERE rolname = current_user`,
  );
  const r = rows[0];
  if (r.rolsuper) return;
  const missing: [boolean, string, string][] = [
    [r.rolcreatedb, 'CREATEDB (to create clones)', `ALTER ROLE ${ident(r.role)} CREATEDB`],
    [r.read_stats, 'pg_read_all_stats (to see whether claiming sessions are alive)', `GRANT pg_read_all_stats TO ${ident(r.role)}`],
    [r.signal, 'pg_signal_backend (to drop databases with leaked connections)', `GRANT pg_signal_backend TO ${ident(r.role)}`],
    [r.db_create, `CREATE on database ${r.db} (for schema pgtestpool)`, `GRANT CREATE ON DATABASE ${ident(r.db)} TO ${ident(r.role)}`],
    [r.public_create, 'CREATE on schema public (for claim_test_db() and friends)', `GRANT CREATE ON SCHEMA public TO ${ident(r.role)}`],
  ];
  const lacking = missing.filter(([ok]) => !ok);
  if (lacking.length === 0) return;
  throw new Error(
    `role ${r.role} is not a superuser and lacks what the sidecar needs: ${lacking.map(([, what]) => what).join('; ')}. ` +
      `Connect as a superuser, or run as one: ${lacking.map(([, , sql]) => `${sql};`).join(' ')}`,
  );
}
