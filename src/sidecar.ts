// Wires the parts together. One Attachment is one life of the connection to PostgreSQL: it
// installs the SQL API, takes the leader lock, reconciles, prepares and builds the templates,
// then keeps the pool filled (NOTIFY wakes it, a poll timer backs NOTIFY up) and reclaims
// abandoned claims. When the connection is lost (a server restart, a crash), the attachment is
// torn down and a new one made, with backoff: all state is in PostgreSQL, so nothing is lost.
// start() and stop() are idempotent.
import pg from 'pg';
import pgListen, { type Subscriber } from 'pg-listen';
import type { Config, Strategy } from './config.ts';
import { CONNECT_TIMEOUT_MS, connect, describeConn, ident, isConnectionError, serverMajor, type ConnConfig } from './db.ts';
import { Janitor } from './janitor.ts';
import { errorMessage, log } from './log.ts';
import { Pool } from './pool.ts';
import { installSchema } from './schema.ts';
import type { StatusRow } from './states.ts';
import type { ServerOrigin } from './buildhints.ts';
import { Templates } from './templates.ts';
import { SqlTemplates, TEMPLATES_CHANNEL } from './sqltemplates.ts';

export type { StatusRow } from './states.ts';

/** Held for the sidecar's lifetime: two sidecars on one server would fight over the pool. */
const LEADER_LOCK = 7203551410;
const CHANNEL = 'pgtestpool';
const RECONNECT_FIRST_MS = 250;
const RECONNECT_MAX_MS = 5_000;
/** Tearing an attachment down waits for work in flight; on a dead connection that fails fast. */
const CLOSE_LIMIT_MS = 15_000;
/** The first attach retries a connection lost midway (the server restarting) for this long. */
const FIRST_ATTACH_RETRY_MS = 60_000;

// pg-listen is CommonJS with an `exports.default`; from ESM the function sits one level down.
const createSubscriber = ((pgListen as unknown as { default?: typeof pgListen }).default ?? pgListen) as unknown as typeof pgListen.default;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const noop = () => {};

/** Everything that lives on one connection to PostgreSQL. */
class Attachment {
  leader: pg.Client | null = null;
  db: pg.Pool | null = null;
  subscriber: Subscriber | null = null;
  pool: Pool | null = null;
  janitor: Janitor | null = null;
  templates: Templates | null = null;
  sqlTemplates: SqlTemplates | null = null;
  timer: NodeJS.Timeout | null = null;
  sweeping: Promise<void> | null = null;
  initialBuildsDone = false;
  closing = false;
  /** Resolves with a reason when the leader connection is lost. */
  readonly lost: Promise<string>;
  readonly lose: (reason: string) => void;

  constructor() {
    let lose!: (reason: string) => void;
    this.lost = new Promise((resolve) => (lose = resolve));
    this.lose = lose;
  }

  watchLeader(leader: pg.Client): void {
    leader.on('error', (err) => this.lose(errorMessage(err)));
    leader.on('end', () => this.lose('the connection was closed'));
  }

  async poll(config: Config): Promise<void> {
    if (this.sweeping || this.closing || !this.janitor) return;
    this.sweeping = (async () => {
      try {
        await this.janitor!.sweep();
        this.sqlTemplates?.wake(); // NOTIFY is a hint: builders through SQL are looked at every poll too
        await this.templates?.retryDrops();
        await this.templates?.retryFailed(); // builds that failed for want of disk, memory, connections
        // Watching starts once the first builds are done: it must not race them.
        if (this.initialBuildsDone && config.templates.some((t) => t.watch)) await this.templates?.checkForChanges();
      } catch (err) {
        if (!this.closing) log.warn(`janitor: ${errorMessage(err)}`);
      }
    })();
    await this.sweeping;
    this.sweeping = null;
    this.pool?.wake();
  }

  /** Stops everything on this connection; idempotent, never throws. */
  async close(): Promise<void> {
    this.closing = true;
    const steps = async () => {
      await this.templates?.stop().catch(noop); // a build in progress is cancelled
      await this.sqlTemplates?.stop().catch(noop);
      if (this.timer) clearInterval(this.timer);
      await this.subscriber?.close().catch(noop);
      await this.pool?.stop().catch(noop);
      await this.sweeping; // its queries finish before the connections close
      await this.db?.end().catch(noop);
      await this.leader?.end().catch(noop);
    };
    await Promise.race([steps(), sleep(CLOSE_LIMIT_MS)]);
  }
}

export class Sidecar {
  private current: Attachment | null = null;
  /** The attachment being set up (its first builds may run long): stop() ends those too. */
  private attaching: Attachment | null = null;
  private starting: Promise<void> | null = null;
  private stopping: Promise<void> | null = null;
  private recovering: Promise<void> | null = null;
  serverMajor = 0;

  constructor(
    readonly config: Config,
    readonly conn: ConnConfig,
    /** Where the server comes from, for hints on missing extensions (default: from the environment). */
    private readonly origin?: ServerOrigin,
  ) {}

  /**
   * Resolves once attached and the first template builds are done (or stop() was called meanwhile).
   * Rejects at once on what retrying cannot fix (authentication, privileges, a newer control
   * schema, another sidecar); a connection lost midway (the server restarting) is retried for a minute.
   */
  start(): Promise<void> {
    this.starting ??= this.firstAttach();
    return this.starting;
  }

  private async firstAttach(): Promise<void> {
    const giveUpAt = Date.now() + FIRST_ATTACH_RETRY_MS;
    for (let delay = RECONNECT_FIRST_MS; ; delay = Math.min(delay * 2, RECONNECT_MAX_MS)) {
      try {
        const a = await this.attach(true);
        this.keep(a);
        return;
      } catch (err) {
        if (this.stopping) return;
        if (!isConnectionError(err) || Date.now() + delay > giveUpAt) throw err;
        log.warn(`cannot attach to PostgreSQL at ${describeConn(this.conn)} yet: ${errorMessage(err)} (retrying in ${delay} ms)`);
        await sleep(delay);
      }
    }
  }

  private keep(a: Attachment): void {
    this.current = a;
    void a.lost.then((reason) => {
      if (this.stopping || a.closing) return;
      log.warn(`lost the connection to PostgreSQL at ${describeConn(this.conn)} (${reason}); reconnecting`);
      this.recovering = this.recover(a);
    });
  }

  /** Tears the lost attachment down and attaches again, with backoff, until it works or we stop. */
  private async recover(lost: Attachment): Promise<void> {
    await lost.close();
    if (this.current === lost) this.current = null;
    const since = Date.now();
    for (let delay = RECONNECT_FIRST_MS; !this.stopping; delay = Math.min(delay * 2, RECONNECT_MAX_MS)) {
      try {
        const a = await this.attach(false);
        if (this.stopping) {
          await a.close();
          return;
        }
        log.info(`reconnected to PostgreSQL after ${((Date.now() - since) / 1000).toFixed(1)} s; the pool resumes`);
        this.keep(a);
        return;
      } catch (err) {
        if (this.stopping) return;
        log.warn(`cannot attach to PostgreSQL at ${describeConn(this.conn)} yet: ${errorMessage(err)} (retrying in ${delay} ms)`);
        await sleep(delay);
      }
    }
  }

  private async attach(first: boolean): Promise<Attachment> {
    const a = new Attachment();
    this.attaching = a;
    try {
      await this.setUp(a, first);
      return a;
    } catch (err) {
      await a.close();
      throw err;
    } finally {
      this.attaching = null;
    }
  }

  private async setUp(a: Attachment, first: boolean): Promise<void> {
    const leader = await connect(this.conn, 'pgtestpool sidecar');
    a.leader = leader;
    a.watchLeader(leader);
    this.serverMajor = serverMajor((await leader.query('SHOW server_version_num')).rows[0].server_version_num);
    await checkPrivileges(leader);
    if (first) log.info(`attached to PostgreSQL ${this.serverMajor} at ${describeConn(this.conn)}`);
    await takeLeaderLock(leader);
    const installed = await installSchema(leader);
    if (installed.applied.length) log.info(`control schema: applied migration(s) ${installed.applied.join(', ')}`);
    await leader.query(
      // health: "filled" counts from this sidecar's start (not from a reconnect)
      `WITH forget AS (DELETE FROM pgtestpool.settings WHERE key = 'filled_at' AND $3)
       INSERT INTO pgtestpool.settings (key, value) VALUES ('claim_timeout', $1), ('max_databases', $2), ('max_kept', $4)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
      [`${this.config.claim.timeoutMs} milliseconds`, String(this.config.pool.maxDatabases), first, String(this.config.pool.maxKept)],
    );

    const db = new pg.Pool({ ...this.conn, application_name: 'pgtestpool sidecar', max: 4, idleTimeoutMillis: 0, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
    db.on('error', (err) => log.debug(`idle connection: ${errorMessage(err)}`));
    a.db = db;
    a.janitor = new Janitor(db, this.config, this.conn);
    await a.janitor.reconcile();
    await a.janitor.sweep();

    const strategy = this.chooseStrategy(first);
    a.pool = new Pool({ conn: this.conn, db, config: this.config, strategy });
    a.sqlTemplates = new SqlTemplates(this.conn, db);
    a.subscriber = await this.listen(a, a.pool, a.sqlTemplates);
    const templates = new Templates(this.conn, db, this.config, this.serverMajor, { origin: this.origin });
    a.templates = templates;
    const pending = await templates.prepare({ reconnect: !first });
    // "Filled since this sidecar started" counts from here: the sweep above ran its heartbeat
    // before prepare() set this config's min_ready, and may have found the old, smaller pool full.
    if (first) await db.query("DELETE FROM pgtestpool.settings WHERE key = 'filled_at'");
    const { rows: surplus } = await db.query<{ name: string; reason: string }>('SELECT * FROM pgtestpool.trim_surplus()');
    for (const r of surplus) log.info(`${r.name} will be dropped: ${r.reason}`);
    // Only now may the pool plan: before prepare() it could clone a stale version. Drops of
    // leftovers and refills of reused templates go ahead while the others build, and the
    // heartbeat runs meanwhile (a long build is not a dead sidecar).
    a.pool.start();
    a.sqlTemplates.wake();
    a.timer = setInterval(() => void a.poll(this.config), this.config.pool.pollIntervalMs);
    for (const build of pending) {
      if (this.stopping || a.closing) break;
      await templates.build(build);
      a.pool.wake();
    }
    a.initialBuildsDone = true;
    if (first) {
      log.info(
        `pool running: ${this.config.templates.map((t) => `${t.name} min_ready ${t.minReady}`).join(', ')}; ` +
          `max_databases ${this.config.pool.maxDatabases}; ${this.config.pool.concurrency} in flight; ` +
          `strategy ${strategy ?? 'server default'}; ${a.janitor.describe()}`,
      );
    }
  }

  private chooseStrategy(first: boolean): Strategy | null {
    if (this.serverMajor < 15) {
      if (this.config.pool.strategy && first) log.warn(`pool.strategy is ignored: PostgreSQL ${this.serverMajor} has no STRATEGY option`);
      return null;
    }
    // FILE_COPY is 2x faster than WAL_LOG on tmpfs with fsync off (see README).
    return this.config.pool.strategy ?? 'file_copy';
  }

  /** NOTIFY is a wake-up only: its payload is never read, so a client cannot put words in our log. */
  private async listen(a: Attachment, pool: Pool, sqlTemplates: SqlTemplates): Promise<Subscriber> {
    // No reconnecting of its own (retryLimit 1 means no retry): a lost listener ends the whole
    // attachment, which is made again with everything on it. (pg-listen's own reconnect loop
    // outlives close() and would leave a connection and a timer behind.) No paranoid checks: we poll.
    const subscriber = createSubscriber({ ...this.conn, application_name: 'pgtestpool listener', connectionTimeoutMillis: CONNECT_TIMEOUT_MS } as pg.ClientConfig, {
      retryLimit: 1,
      paranoidChecking: false,
      parse: (payload: string) => payload, // any text, JSON or not, is just a wake-up
    });
    subscriber.notifications.on(CHANNEL, () => pool.wake());
    subscriber.notifications.on(TEMPLATES_CHANNEL, () => sqlTemplates.wake());
    subscriber.events.on('error', (err: Error) => a.lose(`listener: ${errorMessage(err)}`));
    await subscriber.connect();
    await subscriber.listenTo(CHANNEL);
    await subscriber.listenTo(TEMPLATES_CHANNEL);
    return subscriber;
  }

  /** Per-template pool counts, as test_db_status() shows them; throws while not attached. */
  async status(): Promise<StatusRow[]> {
    const db = this.current?.db;
    if (!db) throw new Error('not attached to PostgreSQL');
    const { rows } = await db.query('SELECT * FROM test_db_status()');
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
   * Resolves once every template is built (or failed, serving nothing) and every built one is
   * filled (pool_state's definition), or, with `orAfterMs`, when that time has passed (claims may
   * hold the whole budget): then `filled` is false and the caller decides what that means.
   */
  async whenFilled(orAfterMs = Infinity): Promise<{ filled: boolean; status: StatusRow[] }> {
    await this.start();
    const deadline = Date.now() + orAfterMs;
    let status: StatusRow[] = [];
    for (;;) {
      try {
        status = await this.status();
        // The config's templates: one built through SQL serves nothing until its builder comes.
        const configured = new Set(this.config.templates.map((t) => t.name));
        const filled = status.every((r) => !configured.has(r.template) || r.filled || r.build_state === 'failed');
        if (filled) return { filled, status };
      } catch {
        // reconnecting: look again
      }
      if (Date.now() > deadline) return { filled: false, status };
      await sleep(20);
    }
  }

  /** Stops polling and listening, waits for CREATE/DROP in flight, closes connections. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    // A build in progress (at start, at a reconnect, or from watch) ends at once, so docker stop stays quick.
    const setting = this.attaching;
    if (setting) setting.closing = true;
    await Promise.all([setting?.templates?.stop(), this.current?.templates?.stop()].map((p) => p?.catch(noop)));
    await this.starting?.catch(noop);
    await this.recovering;
    await this.current?.close();
    this.current = null;
  }
}

async function takeLeaderLock(leader: pg.Client): Promise<void> {
  // A sidecar killed a moment ago may still hold it until the server notices the closed socket.
  const deadline = Date.now() + 15_000;
  for (let warned = false; ; warned = true) {
    const { rows } = await leader.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [LEADER_LOCK]);
    if (rows[0]!.ok) return;
    if (Date.now() > deadline) {
      throw new Error('another pgtestpool sidecar is attached to this server (it holds the leader lock); stop it first');
    }
    if (!warned) log.warn('another pgtestpool sidecar holds the leader lock; waiting up to 15 s');
    await sleep(250);
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
