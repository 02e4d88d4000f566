// The appliance's sidecar for the benchmark: a separate process attached to the benchmark's server,
// exactly as the image runs it, and a wait for its pools to settle.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { ROOT } from './workload.ts';


export interface SidecarProcess {
  child: ChildProcess;
  output: () => string;
  stop(): Promise<void>;
}

export async function spawnSidecar(server: EmbeddedServer, yaml: string, logFile: string): Promise<SidecarProcess> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-bench-'));
  writeFileSync(path.join(dir, 'config.yaml'), yaml);
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts')], {
    cwd: ROOT,
    env: {
      ...process.env,
      ...server.libpqEnv(),
      PGTESTPOOL_CONFIG: path.join(dir, 'config.yaml'),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const keep = (d: Buffer) => {
    out += d;
    if (out.length > 4_000_000) out = out.slice(-2_000_000); // the log is for reading after a failure
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGCONT'); // in case a measurement paused it
      child.kill('SIGTERM');
    }
    await exited;
    writeFileSync(logFile, out);
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 120_000;
  while (!/pgtestpool ready/.test(out)) {
    if (child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(`the sidecar exited before it was ready:\n${out}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`the sidecar was not ready within 120 s:\n${out}`);
    }
    await sleep(20);
  }
  return { child, output: () => out, stop };
}

export const sleep = (n: number) => new Promise((r) => setTimeout(r, n));

/** Until every listed pool is full and nothing is being created, dropped or claimed. */
export async function quiescent(admin: pg.Client, templates: string[], timeoutMs = 180_000): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const { rows } = await admin.query<{ ok: boolean }>(
      `SELECT coalesce(bool_and(build_state = 'ready' AND ready >= min_ready AND creating = 0 AND dropping = 0 AND claimed = 0), false) AS ok
         FROM test_db_status() WHERE template = ANY($1)`,
      [templates],
    );
    if (rows[0]!.ok) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) {
      const { rows: s } = await admin.query('SELECT * FROM test_db_status()');
      throw new Error(`the pool did not settle within ${timeoutMs / 1000} s: ${JSON.stringify(s)}`);
    }
    await sleep(5);
  }
}

