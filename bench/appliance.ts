// The appliance's own figures, on the benchmark's server: claim latency alone (refill paused),
// under refill and as a new connection's first statement, claim waits under overload, the pool's refill rate against raw back-to-back CREATE DATABASE on one and two
// connections, drop rates, and the memory a clone takes on tmpfs.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import pg from 'pg';
import { ident } from '../src/db.ts';
import type { EmbeddedServer } from '../src/embedded.ts';
import { quiescent, sleep, spawnSidecar } from './sidecar.ts';
import { ms, summary, table } from './stats.ts';
import { open } from './strategies.ts';
import { TEMPLATES, type TemplateName } from './workload.ts';

type Summary = ReturnType<typeof summary>;

export interface ApplianceFigures {
  /** Refill paused (sidecar stopped with SIGSTOP): the claim call alone, warm pool. */
  claimAlone: { c1: Summary; c8: Summary };
  /** The sidecar running and refilling while the claims go on. */
  claimUnderRefill: { c1: Summary; c8: Summary };
  /** A claim as the first statement of a new connection (refill running): what a fixture opening a control connection per test pays. */
  firstClaim: Summary;
  /** `SELECT 1` on the same connections: the client round trip no claim can beat. */
  selectOne: { c1: Summary; c8: Summary };
  refill: {
    template: TemplateName;
    clones: number;
    poolPerS: number;
    raw1PerS: number;
    raw2PerS: number;
    poolDropPerS: number;
    rawDrop1PerS: number;
    rawDrop2PerS: number;
  }[];
  memory: { template: TemplateName; databaseBytes: number; tmpfsBytesPerClone: number }[];
}

const POOL: Record<TemplateName, number> = { example: 200, pagila: 80 };
const CLAIMS = 200;
const RAW = 60;
const FIRST_CLAIMS = 100;

function clients(server: EmbeddedServer, n: number): Promise<pg.Client[]> {
  return Promise.all(Array.from({ length: n }, () => open(server, 'postgres', 'bench claims')));
}

/** `total` claims spread over the clients, as fast as they go; returns each call's latency and the names. */
async function burst(cs: pg.Client[], template: string, total: number): Promise<{ lat: number[]; names: string[] }> {
  const lat: number[] = [];
  const names: string[] = [];
  let left = total;
  await Promise.all(
    cs.map(async (c) => {
      while (left > 0) {
        left--;
        const t0 = performance.now();
        const { rows } = await c.query('SELECT claim_test_db($1) AS name', [template]);
        lat.push(performance.now() - t0);
        names.push(rows[0].name);
      }
    }),
  );
  return { lat, names };
}

async function releaseAll(c: pg.Client, names: string[]): Promise<void> {
  await c.query('SELECT release_test_db(n) FROM unnest($1::text[]) n', [names]);
}

/** Bytes the listed databases' directories take (on tmpfs: the memory they cost), by du on each. */
function duBytes(dirs: string[]): number {
  return dirs.reduce((sum, d) => sum + Number(execFileSync('du', ['-sb', d], { encoding: 'utf8' }).split('\t')[0]), 0);
}

async function rawCreates(server: EmbeddedServer, source: string, conns: number, total: number, tag: string): Promise<{ perS: number; names: string[]; dropPerS: number; bytesPerClone: number }> {
  const cs = await clients(server, conns);
  const names = Array.from({ length: total }, (_, i) => `bench_raw_${tag}_${conns}_${i}`);
  try {
    let next = 0;
    const t0 = performance.now();
    await Promise.all(cs.map(async (c) => {
      while (next < total) await c.query(`CREATE DATABASE ${ident(names[next++]!)} TEMPLATE ${ident(source)} STRATEGY FILE_COPY`);
    }));
    const perS = total / ((performance.now() - t0) / 1000);
    // Only these clones' own directories: the pool beside them creates and drops its own meanwhile.
    const { rows } = await cs[0]!.query<{ oid: string }>('SELECT oid::text FROM pg_database WHERE datname = ANY($1)', [names]);
    const bytesPerClone = duBytes(rows.map((r) => path.join(server.dataDir, 'base', r.oid))) / total;
    next = 0;
    const t1 = performance.now();
    await Promise.all(cs.map(async (c) => {
      while (next < total) await c.query(`DROP DATABASE ${ident(names[next++]!)}`);
    }));
    const dropPerS = total / ((performance.now() - t1) / 1000);
    return { perS, names, dropPerS, bytesPerClone };
  } finally {
    await Promise.all(cs.map((c) => c.end()));
  }
}

export async function measureAppliance(
  server: EmbeddedServer,
  admin: pg.Client,
  templates: TemplateName[],
  logFile: string,
  say: (s?: string) => void,
): Promise<ApplianceFigures> {
  const max = templates.reduce((a, t) => a + POOL[t] * 2, 0) + 50;
  const yaml =
    `templates:\n` +
    templates.map((t) => `  ${t}:\n    min_ready: ${POOL[t]}\n    schema:\n${TEMPLATES[t].files.map((f) => `      - ${JSON.stringify(f)}\n`).join('')}`).join('') +
    `pool:\n  max_databases: ${max}\n`;
  const sidecar = await spawnSidecar(server, yaml, logFile);
  try {
    await quiescent(admin, templates);
    const pid = sidecar.child.pid!;
    const claimAlone = { c1: summary([]), c8: summary([]) };
    const claimUnderRefill = { c1: summary([]), c8: summary([]) };
    const selectOne = { c1: summary([]), c8: summary([]) };
    for (const n of [1, 8] as const) {
      const cs = await clients(server, n);
      try {
        // Refill paused: the sidecar is stopped (its connections stay), so only the claims run.
        const alone: number[] = [];
        for (let rep = 0; rep < 2; rep++) {
          await quiescent(admin, templates);
          process.kill(pid, 'SIGSTOP');
          let names: string[] = [];
          try {
            const b = await burst(cs, 'example', CLAIMS);
            alone.push(...b.lat);
            names = b.names;
          } finally {
            process.kill(pid, 'SIGCONT');
          }
          await releaseAll(admin, names);
        }
        claimAlone[`c${n}`] = summary(alone);
        const floor: number[] = [];
        await Promise.all(cs.map(async (c) => {
          for (let i = 0; i < CLAIMS / n; i++) {
            const t0 = performance.now();
            await c.query('SELECT 1');
            floor.push(performance.now() - t0);
          }
        }));
        selectOne[`c${n}`] = summary(floor);
        await quiescent(admin, templates);
        const b = await burst(cs, 'example', CLAIMS / 2);
        claimUnderRefill[`c${n}`] = summary(b.lat);
        await releaseAll(admin, b.names);
      } finally {
        await Promise.all(cs.map((c) => c.end()));
      }
    }

    // The first claim of a new session: connect, claim (timed), release, disconnect.
    await quiescent(admin, templates);
    const first: number[] = [];
    for (let i = 0; i < FIRST_CLAIMS; i++) {
      const c = await open(server, 'postgres', 'bench first claim');
      try {
        const t0 = performance.now();
        const { rows } = await c.query('SELECT claim_test_db($1) AS name', ['example']);
        first.push(performance.now() - t0);
        await c.query('SELECT release_test_db($1)', [rows[0].name]);
      } finally {
        await c.end();
      }
    }
    const firstClaim = summary(first);

    const refill: ApplianceFigures['refill'] = [];
    const memory: ApplianceFigures['memory'] = [];
    for (const t of templates) {
      // The pool's refill: claim most of the pool at once and hold it; time until it is full again.
      await quiescent(admin, templates);
      const k = Math.round(POOL[t] * 0.75);
      const cs = await clients(server, 8);
      let poolPerS: number, poolDropPerS: number;
      try {
        const t0 = performance.now();
        const b = await burst(cs, t, k);
        await waitFull(admin, t);
        poolPerS = k / ((performance.now() - t0) / 1000);
        const t1 = performance.now();
        await releaseAll(admin, b.names);
        await quiescent(admin, templates);
        poolDropPerS = k / ((performance.now() - t1) / 1000);
      } finally {
        await Promise.all(cs.map((c) => c.end()));
      }
      // Raw back-to-back CREATE DATABASE from the same template database, the pool idle.
      const { rows } = await admin.query<{ database: string }>('SELECT database FROM pgtestpool.templates WHERE name = $1', [t]);
      const source = rows[0]!.database;
      await admin.query('CHECKPOINT');
      const r1 = await rawCreates(server, source, 1, RAW, t);
      await admin.query('CHECKPOINT');
      const r2 = await rawCreates(server, source, 2, RAW, t);
      refill.push({ template: t, clones: k, poolPerS, raw1PerS: r1.perS, raw2PerS: r2.perS, poolDropPerS, rawDrop1PerS: r1.dropPerS, rawDrop2PerS: r2.dropPerS });
      const { rows: size } = await admin.query<{ bytes: string }>(
        `SELECT pg_database_size(name)::text AS bytes FROM pgtestpool.databases WHERE template = $1 AND state = 'ready' LIMIT 1`,
        [t],
      );
      memory.push({ template: t, databaseBytes: Number(size[0]?.bytes ?? NaN), tmpfsBytesPerClone: (r1.bytesPerClone + r2.bytesPerClone) / 2 });
    }

    say('Appliance figures (example template unless named; claims as a superuser)');
    say(table(['claim_test_db() latency', 'p50 ms', 'p95 ms', 'p99 ms', 'n'], [
      ['alone (refill paused), 1 client', ms(claimAlone.c1.p50), ms(claimAlone.c1.p95), ms(claimAlone.c1.p99), String(claimAlone.c1.n)],
      ['alone (refill paused), 8 clients', ms(claimAlone.c8.p50), ms(claimAlone.c8.p95), ms(claimAlone.c8.p99), String(claimAlone.c8.n)],
      ['while the pool refills, 1 client', ms(claimUnderRefill.c1.p50), ms(claimUnderRefill.c1.p95), ms(claimUnderRefill.c1.p99), String(claimUnderRefill.c1.n)],
      ['while the pool refills, 8 clients', ms(claimUnderRefill.c8.p50), ms(claimUnderRefill.c8.p95), ms(claimUnderRefill.c8.p99), String(claimUnderRefill.c8.n)],
      ['first statement of a new connection', ms(firstClaim.p50), ms(firstClaim.p95), ms(firstClaim.p99), String(firstClaim.n)],
      ['(floor) SELECT 1, 1 client', ms(selectOne.c1.p50), ms(selectOne.c1.p95), ms(selectOne.c1.p99), String(selectOne.c1.n)],
      ['(floor) SELECT 1, 8 clients', ms(selectOne.c8.p50), ms(selectOne.c8.p95), ms(selectOne.c8.p99), String(selectOne.c8.n)],
    ]));
    say();
    say(table(['template', 'pool refill/s', 'raw CREATE/s 1 conn', '2 conns', 'refill vs raw 2', 'pool drops/s', 'raw DROP/s 1 conn', '2 conns'], refill.map((r) => [
      `${r.template} (${r.clones} clones)`, r.poolPerS.toFixed(0), r.raw1PerS.toFixed(0), r.raw2PerS.toFixed(0), `${((r.poolPerS / r.raw2PerS) * 100).toFixed(0)}%`,
      r.poolDropPerS.toFixed(0), r.rawDrop1PerS.toFixed(0), r.rawDrop2PerS.toFixed(0),
    ])));
    say();
    say(table(['template', 'pg_database_size MB', 'tmpfs per clone MB'], memory.map((m) => [
      m.template, (m.databaseBytes / 2 ** 20).toFixed(1), (m.tmpfsBytesPerClone / 2 ** 20).toFixed(1),
    ])));
    return { claimAlone, claimUnderRefill, firstClaim, selectOne, refill, memory };
  } finally {
    await sidecar.stop();
  }
}

async function waitFull(admin: pg.Client, template: string): Promise<void> {
  for (;;) {
    const { rows } = await admin.query<{ ok: boolean }>('SELECT ready >= min_ready AS ok FROM test_db_status() WHERE template = $1', [template]);
    if (rows[0]?.ok) return;
    await sleep(2);
  }
}

export interface OverloadFigures {
  clients: number;
  claims: number;
  claimsPerS: number;
  /** How long each claim_test_db() call waited, ms. */
  claim: Summary;
  maxMs: number;
  errors: string[];
}

const OVERLOAD_CLIENTS = 50;
const OVERLOAD_CLAIMS = 600;

/**
 * More demand than the pool can make clones for: 50 clients each claim, connect, query, close and
 * release back to back, on the sidecar running now (the defaults). Every claim waits in line; a
 * fair line keeps the slowest waits near the typical one.
 */
export async function measureOverload(server: EmbeddedServer, admin: pg.Client, say: (s?: string) => void): Promise<OverloadFigures> {
  await quiescent(admin, ['example']);
  const cs = await clients(server, OVERLOAD_CLIENTS);
  const lat: number[] = [];
  const errors: string[] = [];
  let left = OVERLOAD_CLAIMS;
  const t0 = performance.now();
  try {
    await Promise.all(cs.map(async (c) => {
      while (left > 0) {
        left--;
        const t1 = performance.now();
        try {
          const { rows } = await c.query('SELECT claim_test_db($1) AS name', ['example']);
          lat.push(performance.now() - t1);
          const db = await open(server, rows[0].name, 'bench overload test');
          await db.query('SELECT count(*) FROM accounts');
          await db.end();
          await c.query('SELECT release_test_db($1)', [rows[0].name]);
        } catch (err) {
          errors.push(err instanceof Error ? err.message : String(err));
        }
      }
    }));
  } finally {
    await Promise.all(cs.map((c) => c.end()));
  }
  const seconds = (performance.now() - t0) / 1000;
  const o: OverloadFigures = {
    clients: OVERLOAD_CLIENTS, claims: lat.length, claimsPerS: lat.length / seconds, claim: summary(lat), maxMs: Math.max(...lat), errors,
  };
  await quiescent(admin, ['example']);
  say(`Overload (defaults, example): ${o.clients} clients claim, connect, query, release back to back: ${o.claims} claims in ${seconds.toFixed(1)} s (${o.claimsPerS.toFixed(0)}/s)`);
  say(table(['claim wait', 'p50 ms', 'p95 ms', 'p99 ms', 'max ms', 'p99 / p50', 'failed'], [[
    `${o.clients} clients`, ms(o.claim.p50), ms(o.claim.p95), ms(o.claim.p99), ms(o.maxMs), `${(o.claim.p99 / o.claim.p50).toFixed(1)}×`, String(errors.length),
  ]]));
  if (errors.length) say(`  failures (first 3): ${errors.slice(0, 3).join(' | ')}`);
  return o;
}
