// One concurrency slot of the PGlite strategy (see pglite.ts). PGlite runs PostgreSQL
// synchronously on the JS thread, so real concurrency needs one thread per slot. The worker gets the
// template's data-dir dump once (workerData) and then runs one test per request, each on a fresh
// instance restored from that dump; all per-test timings are taken here, next to the work.
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { PGlite } from '@electric-sql/pglite';
import { runWorkload, type TemplateName } from './workload.ts';

export interface WorkerInit {
  template: TemplateName;
  dump: Uint8Array<ArrayBuffer>;
}
export interface TestRequest {
  index: number;
}
/** The time of each phase that completed; `error` names the phase that failed. */
export interface TestResult {
  index: number;
  setupMs?: number;
  testMs?: number;
  teardownMs?: number;
  error?: string;
}
export type WorkerMessage = { type: 'ready' } | ({ type: 'result' } & TestResult);

const errorMessage = (err: unknown) => (err instanceof Error ? err.message : String(err));

async function runTest(template: TemplateName, dump: Blob, index: number): Promise<TestResult> {
  const result: TestResult = { index };
  let db: PGlite | undefined;
  let phase = 'setup';
  try {
    const t0 = performance.now();
    db = new PGlite({ loadDataDir: dump });
    await db.waitReady;
    await db.query('SELECT 1');
    const t1 = performance.now();
    result.setupMs = t1 - t0;
    phase = 'test';
    await runWorkload(db, template, index);
    result.testMs = performance.now() - t1;
  } catch (err) {
    result.error = `${phase}: ${errorMessage(err)}`;
  }
  // Close even after a failure: an open instance would keep this thread busy and its memory held.
  if (db) {
    const t2 = performance.now();
    try {
      await db.close();
      result.teardownMs = performance.now() - t2;
    } catch (err) {
      result.error ??= `teardown: ${errorMessage(err)}`;
    }
  }
  return result;
}

const port = parentPort;
if (!port) throw new Error('pglite-worker.ts must run in a worker thread (see pglite.ts)');
const { template, dump: bytes } = workerData as WorkerInit;
const dump = new Blob([bytes]); // immutable, so one Blob serves every restore

// Warm-up, untimed: the first instance in a thread compiles pglite.wasm, which PGlite then caches
// per thread, so no timed test pays for the compile.
const warm = new PGlite({ loadDataDir: dump });
await warm.query('SELECT 1');
await warm.close();

port.on('message', (req: TestRequest) => {
  void runTest(template, dump, req.index).then((r) => port.postMessage({ type: 'result', ...r } satisfies WorkerMessage));
});
port.postMessage({ type: 'ready' } satisfies WorkerMessage);
