// The PGlite strategy: PostgreSQL compiled to WASM, in process. The template is built once into a
// PGlite data directory and dumped; every test restores a fresh instance from that dump. Tests run
// in worker threads (pglite-worker.ts), one per concurrency slot, because PGlite blocks the thread
// it runs on.
import { readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { PGlite } from '@electric-sql/pglite';
import { splitSql } from '../src/sqlscript.ts';
import type { TestResult, WorkerInit, WorkerMessage } from './pglite-worker.ts';
import { TEMPLATES, type TemplateName } from './workload.ts';

export interface StrategyRun {
  setupMs: number[]; // per completed test: new instance from the dump + waitReady + first query `SELECT 1`
  testMs: number[]; // per completed test: runWorkload
  teardownMs: number[]; // per completed test: close()
  wallMs: number; // from the start of the first test to the end of the last one
  done: number; // tests completed
  errors: string[]; // messages of failed tests (a failed test still counts as done, but record it)
}

const errorMessage = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** Loads the template's files the way `psql -f` would, statement by statement in one session. */
async function loadTemplate(db: PGlite, template: TemplateName): Promise<void> {
  for (const file of TEMPLATES[template].files) {
    for (const stmt of splitSql(await readFile(file, 'utf8'), file)) {
      try {
        if (stmt.copyData) {
          // PGlite has no COPY FROM STDIN over its query API; it reads the same data from the
          // virtual device /dev/blob instead, fed from the `blob` query option.
          const sql = stmt.sql.replace(/\bFROM\s+STDIN\b/i, "FROM '/dev/blob'");
          if (sql === stmt.sql) throw new Error('COPY data block without FROM STDIN');
          await db.exec(sql, { blob: new Blob([new Uint8Array(stmt.copyData)]) });
        } else {
          await db.exec(stmt.sql);
        }
      } catch (err) {
        throw new Error(`${file}:${stmt.line}: ${errorMessage(err)}\nSTATEMENT: ${stmt.sql.split('\n', 1)[0]}`, { cause: err });
      }
    }
    // Each file starts from a fresh session, as with its own `psql -f` (and as src/templates.ts
    // does): pg_dump output sets search_path to '' and would otherwise leave it so.
    await db.exec('DISCARD ALL');
  }
  // As the server's template build: frozen and analyzed once here rather than in every test. The
  // checkpoint leaves no WAL to replay when an instance starts from the dump.
  await db.exec('VACUUM (FREEZE, ANALYZE)');
  await db.exec('CHECKPOINT');
}

// tsx registers its loader with `--import`, and on Node 20 those hooks do not load a worker's .ts
// entry file (tsx issue #354: ERR_UNKNOWN_FILE_EXTENSION). So the worker starts from a small
// evaluated script that registers tsx in the worker through its API, then imports the real file.
// Absolute URLs, so that neither depends on the current directory.
const WORKER_URL = new URL('./pglite-worker.ts', import.meta.url).href;
const BOOTSTRAP = `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})
  .then(({ register }) => { register(); return import(${JSON.stringify(WORKER_URL)}); })`;

/** One worker thread; one request (warm-up, then one test at a time) in flight. */
class TestWorker {
  private readonly worker: Worker;
  private pending?: { resolve: (m: WorkerMessage) => void; reject: (e: Error) => void };
  private dead?: Error;
  /** Resolves when the worker has warmed up (compiled the WASM) and can take tests. */
  readonly ready: Promise<void>;

  constructor(init: WorkerInit) {
    // workerData is copied into the worker once; tests only send an index.
    this.worker = new Worker(BOOTSTRAP, { eval: true, workerData: init });
    this.ready = this.next().then((m) => {
      if (m.type !== 'ready') throw new Error(`unexpected message from worker: ${JSON.stringify(m)}`);
    });
    this.worker.on('message', (m: WorkerMessage) => this.settle((p) => p.resolve(m)));
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => this.fail(new Error(`worker exited with code ${code}`)));
  }

  get alive(): boolean {
    return !this.dead;
  }

  async test(index: number): Promise<TestResult> {
    const reply = this.next();
    this.worker.postMessage({ index });
    const m = await reply;
    if (m.type !== 'result' || m.index !== index) throw new Error(`unexpected message from worker: ${JSON.stringify(m)}`);
    return m;
  }

  terminate(): Promise<number> {
    return this.worker.terminate();
  }

  // The thread holds the process open only while a request is in flight: an idle worker kept
  // between runs must not stop the process from exiting (close() still terminates it).
  private next(): Promise<WorkerMessage> {
    if (this.dead) return Promise.reject(this.dead);
    if (this.pending) return Promise.reject(new Error('worker busy'));
    this.worker.ref();
    return new Promise((resolve, reject) => (this.pending = { resolve, reject }));
  }

  private settle(f: (p: NonNullable<TestWorker['pending']>) => void): void {
    const p = this.pending;
    this.pending = undefined;
    this.worker.unref();
    if (p) f(p);
  }

  private fail(err: Error): void {
    this.dead ??= err;
    this.settle((p) => p.reject(err));
  }
}

export class PgliteStrategy {
  private workers: TestWorker[] = [];
  private running = false;
  private closed = false;

  readonly dumpBytes: number;

  private constructor(
    readonly template: TemplateName,
    private readonly dump: Uint8Array<ArrayBuffer>,
    readonly prepareMs: number,
  ) {
    this.dumpBytes = dump.byteLength;
  }

  /** Builds the template once in PGlite (schema + data) and dumps its data dir; not timed as part of any test. */
  static async prepare(template: TemplateName): Promise<PgliteStrategy> {
    const t0 = performance.now();
    const db = new PGlite();
    try {
      await db.waitReady;
      await loadTemplate(db, template);
      // Uncompressed: restoring skips gunzip, and the dump stays in memory anyway.
      const dump = new Uint8Array(await (await db.dumpDataDir('none')).arrayBuffer());
      await db.close();
      return new PgliteStrategy(template, dump, performance.now() - t0);
    } finally {
      if (!db.closed) await db.close().catch(() => {});
    }
  }

  /** Runs tests with `concurrency` worker threads, each test on a fresh instance restored from the dump.
   *  Test indexes are firstIndex, firstIndex+1, ...; stops starting new tests once `tests` have started or
   *  `timeBudgetMs` has elapsed since the first test started (but always runs at least `concurrency` tests). */
  async run(opts: { tests: number; concurrency: number; firstIndex: number; timeBudgetMs: number }): Promise<StrategyRun> {
    if (this.closed) throw new Error('PgliteStrategy is closed');
    if (this.running) throw new Error('PgliteStrategy.run is already running');
    this.running = true;
    try {
      const { tests, firstIndex, timeBudgetMs } = opts;
      const slots = Math.max(0, Math.min(opts.concurrency, tests));
      // Untimed: start (or replace dead) workers and wait until all have compiled the WASM.
      this.workers = this.workers.filter((w) => w.alive);
      while (this.workers.length < slots) this.workers.push(new TestWorker({ template: this.template, dump: this.dump }));
      await Promise.all(this.workers.map((w) => w.ready));

      const res: StrategyRun = { setupMs: [], testMs: [], teardownMs: [], wallMs: 0, done: 0, errors: [] };
      let started = 0;
      const t0 = performance.now();
      const mayStart = () => started < tests && (started < slots || performance.now() - t0 < timeBudgetMs);
      const slot = async (w: TestWorker) => {
        while (mayStart()) {
          const index = firstIndex + started++;
          let r: TestResult;
          try {
            r = await w.test(index);
          } catch (err) {
            res.done++;
            res.errors.push(`test ${index}: worker failed: ${errorMessage(err)}`);
            return; // this slot's thread is gone; the other slots carry on
          }
          res.done++;
          // Timings only for tests that passed, so the three arrays stay aligned per test.
          if (r.error || r.setupMs === undefined || r.testMs === undefined || r.teardownMs === undefined) {
            res.errors.push(`test ${index}: ${r.error ?? 'no timings'}`);
          } else {
            res.setupMs.push(r.setupMs);
            res.testMs.push(r.testMs);
            res.teardownMs.push(r.teardownMs);
          }
        }
      };
      await Promise.all(this.workers.slice(0, slots).map(slot));
      res.wallMs = performance.now() - t0;
      return res;
    } finally {
      this.running = false;
    }
  }

  /** Terminates the worker threads. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    const workers = this.workers;
    this.workers = [];
    await Promise.all(workers.map((w) => w.terminate()));
  }
}
