// The per-test isolation strategies the benchmark compares, on a real PostgreSQL server. Each
// strategy gets its fixed costs (pools of databases, open connections) paid in before(), outside
// any timing, as its real-world users would pay them once per suite; one() is one test.
import pg from 'pg';
import { ident } from '../src/db.ts';
import type { EmbeddedServer } from '../src/embedded.ts';
import { runSqlFile } from '../src/sqlscript.ts';
import { runWorkload, type TemplateSpec } from './workload.ts';

export interface TestTiming {
  /** Until the test holds a database that answered its first query. */
  setupMs: number;
  testMs: number;
  /** Giving the database back (drop, release, reset or rollback). */
  teardownMs: number;
}

export interface Cell {
  server: EmbeddedServer;
  spec: TemplateSpec;
  /** A template database built from spec.files, for the strategies that clone or reuse one. */
  templateDb: string;
  concurrency: number;
}

export interface Strategy {
  readonly id: string;
  readonly label: string;
  /** 'database': a test owns a database and may commit, use a pool, run DDL. 'transaction': it may not. */
  readonly isolation: 'database' | 'transaction';
  before(cell: Cell): Promise<void>;
  /** Test number i on worker slot `slot` (0 .. concurrency-1). */
  one(i: number, slot: number): Promise<TestTiming>;
  after(): Promise<void>;
}

const now = () => performance.now();

export async function open(server: EmbeddedServer, database: string, application: string): Promise<pg.Client> {
  const c = new pg.Client({ ...server.clientConfig(database), application_name: application });
  await c.connect();
  return c;
}

/** One control connection per worker slot, to the maintenance database, kept for the whole segment. */
abstract class WithControl implements Strategy {
  abstract readonly id: string;
  abstract readonly label: string;
  readonly isolation: 'database' | 'transaction' = 'database';
  protected cell!: Cell;
  protected control: pg.Client[] = [];
  private seq = 0;

  async before(cell: Cell): Promise<void> {
    this.cell = cell;
    this.control = await Promise.all(Array.from({ length: cell.concurrency }, () => open(cell.server, 'postgres', `bench ${this.id}`)));
  }

  abstract one(i: number, slot: number): Promise<TestTiming>;

  async after(): Promise<void> {
    await Promise.all(this.control.map((c) => c.end().catch(() => {})));
    this.control = [];
  }

  /** A name no earlier test used, as a per-test recipe would make. */
  protected freshName(): string {
    return `bench_${this.id.replace(/\W/g, '_')}_${process.pid}_${++this.seq}`;
  }

  protected ctl(slot: number): pg.Client {
    return this.control[slot]!;
  }
}

/** 1. The appliance: claim from the warm pool, connect, test, release (the pool drops it later). */
export class PgtestpoolStrategy extends WithControl {
  readonly id: string;
  readonly label: string;
  /** Per test: the claim call alone, for the report. */
  readonly claimMs: number[] = [];

  /** `sidecar`: the configuration the appliance runs with for this strategy (see bench/run.ts). */
  constructor(readonly sidecar: 'default' | 'tuned', tunedMinReady: number) {
    super();
    this.id = sidecar === 'default' ? 'pgtestpool' : 'pgtestpool-tuned';
    this.label = sidecar === 'default' ? 'pgtestpool: claim_test_db() + connect' : `pgtestpool hand-tuned (min_ready ${tunedMinReady})`;
  }

  async one(i: number, slot: number): Promise<TestTiming> {
    const t0 = now();
    const { rows } = await this.ctl(slot).query('SELECT claim_test_db($1) AS name', [this.cell.spec.name]);
    const t1 = now();
    this.claimMs.push(t1 - t0);
    const name: string = rows[0].name;
    const db = await open(this.cell.server, name, 'bench test');
    try {
      await db.query('SELECT 1');
      const t2 = now();
      await runWorkload(db, this.cell.spec.name, i);
      const t3 = now();
      await db.end();
      await this.ctl(slot).query('SELECT release_test_db($1)', [name]);
      return { setupMs: t2 - t0, testMs: t3 - t2, teardownMs: now() - t3 };
    } catch (err) {
      await db.end().catch(() => {});
      await this.ctl(slot).query('SELECT release_test_db($1)', [name]).catch(() => {});
      throw err;
    }
  }
}

/**
 * A database made for one test and dropped after it: `create` is the CREATE DATABASE statement,
 * `prepare` what runs on the new database before the test may start (the setup timing ends after it).
 */
abstract class DatabasePerTest extends WithControl {
  protected abstract createSql(name: string): string;
  protected abstract prepare(db: pg.Client): Promise<void>;

  async one(i: number, slot: number): Promise<TestTiming> {
    const name = this.freshName();
    const t0 = now();
    await this.ctl(slot).query(this.createSql(name));
    try {
      const db = await open(this.cell.server, name, 'bench test');
      let t2: number, t3: number;
      try {
        await this.prepare(db);
        t2 = now();
        await runWorkload(db, this.cell.spec.name, i);
        t3 = now();
      } finally {
        await db.end().catch(() => {});
      }
      await this.ctl(slot).query(`DROP DATABASE ${ident(name)}`);
      return { setupMs: t2 - t0, testMs: t3 - t2, teardownMs: now() - t3 };
    } catch (err) {
      await this.ctl(slot).query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`).catch(() => {});
      throw err;
    }
  }
}

/** 2. CREATE DATABASE ... TEMPLATE per test, then DROP. */
export class CloneStrategy extends DatabasePerTest {
  readonly id: string;
  readonly label: string;
  constructor(private readonly strategy: 'wal_log' | 'file_copy') {
    super();
    this.id = `clone-${strategy}`;
    this.label = `template clone per test (${strategy.toUpperCase()})`;
  }

  protected createSql(name: string): string {
    return `CREATE DATABASE ${ident(name)} TEMPLATE ${ident(this.cell.templateDb)} STRATEGY ${this.strategy.toUpperCase()}`;
  }

  protected async prepare(db: pg.Client): Promise<void> {
    await db.query('SELECT 1');
  }
}

/** 3. CREATE DATABASE, apply the schema (and fixture data) files, test, DROP. */
export class FreshSchemaStrategy extends DatabasePerTest {
  readonly id = 'fresh-schema';
  readonly label = 'fresh database + schema per test';

  protected createSql(name: string): string {
    return `CREATE DATABASE ${ident(name)}`;
  }

  protected async prepare(db: pg.Client): Promise<void> {
    for (const f of this.cell.spec.files) await runSqlFile(db, f);
    await db.query('RESET ALL'); // dumps set search_path for the session; a test starts clean
  }
}

/** Clones of the cell's template made once per segment (outside the timing) and their removal. */
async function cloneTemplate(cell: Cell, names: string[]): Promise<void> {
  const admin = await open(cell.server, 'postgres', 'bench setup');
  try {
    for (const name of names) {
      await admin.query(`DROP DATABASE IF EXISTS ${ident(name)}`);
      await admin.query(`CREATE DATABASE ${ident(name)} TEMPLATE ${ident(cell.templateDb)} STRATEGY FILE_COPY`);
    }
  } finally {
    await admin.end();
  }
}

async function dropAll(cell: Cell, names: string[]): Promise<void> {
  const admin = await open(cell.server, 'postgres', 'bench teardown');
  try {
    for (const name of names) await admin.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

/**
 * 4. A pool of databases (one per worker, connections kept open, as db-pool does), reset after each
 * test with TRUNCATE ... RESTART IDENTITY CASCADE and the fixture data loaded again.
 */
export class TruncateStrategy implements Strategy {
  readonly id = 'truncate';
  readonly label = 'reuse + TRUNCATE (+ reseed)';
  readonly isolation = 'database' as const;
  private cell!: Cell;
  private dbs: { name: string; client: pg.Client }[] = [];
  private truncateSql = '';

  async before(cell: Cell): Promise<void> {
    this.cell = cell;
    const names = Array.from({ length: cell.concurrency }, (_, s) => `bench_truncate_${process.pid}_${s}`);
    await cloneTemplate(cell, names);
    this.dbs = await Promise.all(names.map(async (name) => ({ name, client: await open(cell.server, name, 'bench test') })));
    // Every table the schema made (partitioned parents cover their partitions).
    const { rows } = await this.dbs[0]!.client.query<{ list: string }>(
      `SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') AS list
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'`,
    );
    this.truncateSql = `TRUNCATE ${rows[0]!.list} RESTART IDENTITY CASCADE`;
  }

  async one(i: number, slot: number): Promise<TestTiming> {
    const { client } = this.dbs[slot]!;
    const t0 = now();
    await client.query('SELECT 1');
    const t2 = now();
    let t3 = t2;
    try {
      await runWorkload(client, this.cell.spec.name, i);
    } finally {
      // Reset even after a failed test: the next one must not inherit its rows.
      t3 = now();
      await client.query(this.truncateSql);
      for (const f of this.cell.spec.seedFiles) await runSqlFile(client, f);
      await client.query('RESET ALL');
    }
    return { setupMs: t2 - t0, testMs: t3 - t2, teardownMs: now() - t3 };
  }

  async after(): Promise<void> {
    await Promise.all(this.dbs.map((d) => d.client.end().catch(() => {})));
    await dropAll(this.cell, this.dbs.map((d) => d.name));
    this.dbs = [];
  }
}

/** 5. One shared database; each test inside a transaction that is rolled back. Weaker isolation. */
export class RollbackStrategy implements Strategy {
  readonly id = 'rollback';
  readonly label = 'transaction rollback (weaker isolation)';
  readonly isolation = 'transaction' as const;
  private cell!: Cell;
  private name = '';
  private clients: pg.Client[] = [];

  async before(cell: Cell): Promise<void> {
    this.cell = cell;
    this.name = `bench_rollback_${process.pid}`;
    await cloneTemplate(cell, [this.name]);
    this.clients = await Promise.all(Array.from({ length: cell.concurrency }, () => open(cell.server, this.name, 'bench test')));
  }

  async one(i: number, slot: number): Promise<TestTiming> {
    const client = this.clients[slot]!;
    const t0 = now();
    await client.query('BEGIN');
    const t2 = now();
    let t3 = t2;
    try {
      await runWorkload(client, this.cell.spec.name, i);
    } finally {
      t3 = now();
      await client.query('ROLLBACK');
    }
    return { setupMs: t2 - t0, testMs: t3 - t2, teardownMs: now() - t3 };
  }

  async after(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.end().catch(() => {})));
    this.clients = [];
    await dropAll(this.cell, [this.name]);
  }
}
