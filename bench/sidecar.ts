// The appliance's sidecar for the benchmark: a separate process attached to the benchmark's server,
// exactly as the image runs it, and a wait for its pools to settle.
import { appendFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import type pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { configDir, exited, removeConfigDir, spawnSidecar as spawnChild, waitForReady } from '../test/harness.ts';

export interface SidecarProcess {
  child: ChildProcess;
  output: () => string;
  stop(): Promise<void>;
}

/** The test harness's child-process sidecar, with its log appended to `logFile` when it stops. */
export async function spawnSidecar(server: EmbeddedServer, yaml: string, logFile: string): Promise<SidecarProcess> {
  const configFile = configDir(yaml);
  const child = spawnChild(server, configFile);
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGCONT'); // in case a measurement paused it
      child.kill('SIGTERM');
    }
    await exited(child);
    appendFileSync(logFile, child.output());
    removeConfigDir(configFile);
  };
  try {
    await waitForReady(child, 120_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { child, output: child.output, stop };
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


/**
 * One sidecar at a time on the benchmark's server, by configuration name: use() stops the running
 * one and starts the asked one unless it already runs (the templates are reused: same inputs).
 */
export class SidecarSwitch {
  private running: { kind: string; sidecar: SidecarProcess } | null = null;

  constructor(
    private readonly server: EmbeddedServer,
    private readonly configs: Record<string, string>,
    private readonly logFile: (kind: string) => string,
  ) {}

  async use(kind: string): Promise<SidecarProcess> {
    if (this.running?.kind === kind) return this.running.sidecar;
    await this.stop();
    const yaml = this.configs[kind];
    if (yaml === undefined) throw new Error(`no sidecar configuration ${kind}`);
    const sidecar = await spawnSidecar(this.server, yaml, this.logFile(kind));
    this.running = { kind, sidecar };
    return sidecar;
  }

  get pid(): number | undefined {
    return this.running?.sidecar.child.pid;
  }

  async stop(): Promise<void> {
    const r = this.running;
    this.running = null;
    await r?.sidecar.stop();
  }
}
