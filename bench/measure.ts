// Quick measurements of the core (`npm run measure`): claim latency from a warm pool, claim ->
// first query on the clone, clone time per strategy, refill rate after a burst, and the time a
// fresh `npm start` takes to be ready. The full strategy-by-strategy benchmark is separate.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { parseConfig } from '../src/config.ts';
import { ident } from '../src/db.ts';
import { startEmbedded, type EmbeddedServer } from '../src/embedded.ts';
import { setQuiet } from '../src/log.ts';
import { Sidecar } from '../src/sidecar.ts';
import { pct } from './stats.ts';

setQuiet(true);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ROUNDS = Number(process.env.ROUNDS ?? 5);

const ms = (t0: number) => performance.now() - t0;
const fmt = (v: number) => (v < 1 ? v.toFixed(3) : v < 10 ? v.toFixed(2) : v.toFixed(1));
const row = (label: string, values: number[]) =>
  console.log(`${label.padEnd(44)} median ${fmt(pct(values, 50)).padStart(7)} ms   p95 ${fmt(pct(values, 95)).padStart(7)} ms   p99 ${fmt(pct(values, 99)).padStart(7)} ms   (n=${values.length})`);

async function connect(server: EmbeddedServer, database = 'postgres'): Promise<pg.Client> {
  const c = new pg.Client(server.clientConfig(database));
  await c.connect();
  return c;
}

async function waitReady(admin: pg.Client, n: number): Promise<void> {
  for (;;) {
    const { rows } = await admin.query("SELECT ready::int, creating::int FROM test_db_status() WHERE template = 'default'");
    if (rows[0].ready >= n) return;
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function releaseAll(admin: pg.Client, names: string[]): Promise<void> {
  for (const n of names) await admin.query('SELECT release_test_db($1)', [n]);
}

async function main(): Promise<void> {
  const server = await startEmbedded({ port: 0 });
  console.log(`PostgreSQL ${server.install.version} (${server.install.source}) on tmpfs, ${os.availableParallelism()} cores, example schema from config.yaml\n`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-measure-'));
  const yaml = `templates:
  default:
    schema: [${path.join(ROOT, 'schema')}/*.sql]
    min_ready: 40
pool:
  max_databases: 200
  poll_interval: 200ms
`;
  writeFileSync(path.join(dir, 'config.yaml'), yaml);
  const sidecar = new Sidecar(parseConfig(yaml, path.join(dir, 'config.yaml')), server.clientConfig());
  const admin = await connect(server);
  try {
    await sidecar.whenFilled();

    // Claim latency, 1 client: 40 claims back to back from a full pool, ROUNDS times.
    const one: number[] = [];
    const claimer = await connect(server);
    for (let r = 0; r < ROUNDS; r++) {
      await waitReady(admin, 40);
      const names: string[] = [];
      for (let i = 0; i < 40; i++) {
        const t0 = performance.now();
        names.push((await claimer.query('SELECT claim_test_db() AS n')).rows[0].n);
        one.push(ms(t0));
      }
      await releaseAll(admin, names);
    }
    row('claim, 1 client, warm pool', one);

    // 8 clients at once, 5 claims each per round (40 = the pool).
    const eight: number[] = [];
    const clients = await Promise.all(Array.from({ length: 8 }, () => connect(server)));
    for (let r = 0; r < ROUNDS; r++) {
      await waitReady(admin, 40);
      const names = (await Promise.all(clients.map(async (c) => {
        const mine: string[] = [];
        for (let i = 0; i < 5; i++) {
          const t0 = performance.now();
          mine.push((await c.query('SELECT claim_test_db() AS n')).rows[0].n);
          eight.push(ms(t0));
        }
        return mine;
      }))).flat();
      await releaseAll(admin, names);
    }
    row('claim, 8 concurrent clients, warm pool', eight);

    // What a test sees: claim, connect to the clone, first query.
    const setup: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      await waitReady(admin, 40);
      const names: string[] = [];
      for (let i = 0; i < 20; i++) {
        const t0 = performance.now();
        const name = (await claimer.query('SELECT claim_test_db() AS n')).rows[0].n;
        const db = await connect(server, name);
        await db.query('SELECT count(*) FROM accounts');
        setup.push(ms(t0));
        await db.end();
        names.push(name);
      }
      await releaseAll(admin, names);
    }
    row('claim + connect + first query on the clone', setup);

    // Refill after a burst: claim the whole pool, time until it is full again.
    const rates: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      await waitReady(admin, 40);
      await new Promise((res) => setTimeout(res, 300)); // let drops of the previous round finish
      const names = (await Promise.all(clients.map(async (c) => {
        const mine: string[] = [];
        for (let i = 0; i < 5; i++) mine.push((await c.query('SELECT claim_test_db() AS n')).rows[0].n);
        return mine;
      }))).flat();
      const t0 = performance.now();
      await waitReady(admin, 40);
      rates.push(40 / (ms(t0) / 1000));
      await releaseAll(admin, names);
    }
    console.log(`${'refill after a burst of 40 claims'.padEnd(44)} median ${fmt(pct(rates, 50)).padStart(7)} clones/s (min ${fmt(Math.min(...rates))}, max ${fmt(Math.max(...rates))})`);
    await Promise.all([...clients, claimer].map((c) => c.end()));
    await waitReady(admin, 40);
    await new Promise((res) => setTimeout(res, 500));
    await sidecar.stop();

    // The claim's own cost, with no refill competing for the two cores: fill a big pool, stop the
    // sidecar, then claim from what is there.
    const bigYaml = yaml.replace('min_ready: 40', 'min_ready: 160').replace('max_databases: 200', 'max_databases: 400');
    const filler = new Sidecar(parseConfig(bigYaml, path.join(dir, 'config.yaml')), server.clientConfig());
    await filler.whenFilled();
    await new Promise((res) => setTimeout(res, 500)); // drops of the released clones
    await filler.stop();
    const quiet1: number[] = [];
    const quiet8: number[] = [];
    const c1 = await connect(server);
    for (let i = 0; i < 80; i++) {
      const t0 = performance.now();
      await c1.query('SELECT claim_test_db() AS n');
      quiet1.push(ms(t0));
    }
    const c8 = await Promise.all(Array.from({ length: 8 }, () => connect(server)));
    await Promise.all(c8.map(async (c) => {
      for (let i = 0; i < 10; i++) {
        const t0 = performance.now();
        await c.query('SELECT claim_test_db() AS n');
        quiet8.push(ms(t0));
      }
    }));
    row('claim, 1 client, no refill running', quiet1);
    row('claim, 8 concurrent clients, no refill running', quiet8);
    await Promise.all([c1, ...c8].map((c) => c.end()));
    await admin.query("SELECT pgtestpool.release_all_claims('measure: cleanup'), pgtestpool.retire_clones('default', NULL, 'measure: cleanup')");
    const leftover = (await admin.query("SELECT name FROM pgtestpool.databases WHERE state = 'dropping'")).rows.map((r) => r.name);
    for (const n of leftover) await admin.query(`DROP DATABASE IF EXISTS ${ident(n)} WITH (FORCE)`);
    await admin.query("DELETE FROM pgtestpool.databases");

    // Raw clone cost per strategy, interleaved, plus the first connection to each clone.
    const tpl = (await admin.query("SELECT template_database FROM test_db_status() WHERE template = 'default'")).rows[0].template_database;
    const strategies = server.install.major >= 15 ? ['FILE_COPY', 'WAL_LOG'] : ['DEFAULT'];
    const clone: Record<string, number[]> = {};
    const firstConnect: Record<string, number[]> = {};
    for (let i = 0; i < 15 * ROUNDS / 5; i++) {
      for (const s of strategies) {
        const name = `measure_${s.toLowerCase()}_${i}`;
        let t0 = performance.now();
        await admin.query(`CREATE DATABASE ${ident(name)} TEMPLATE ${ident(tpl)}${s === 'DEFAULT' ? '' : ` STRATEGY ${s}`}`);
        (clone[s] ??= []).push(ms(t0));
        t0 = performance.now();
        const db = await connect(server, name);
        await db.query('SELECT 1');
        (firstConnect[s] ??= []).push(ms(t0));
        await db.end();
        await admin.query(`DROP DATABASE ${ident(name)}`);
      }
    }
    for (const s of strategies) row(`CREATE DATABASE ... STRATEGY ${s}`, clone[s]!);
    for (const s of strategies) row(`  first connection + query, ${s} clone`, firstConnect[s]!);

    // Raw back-to-back clone rate on 1 and 2 connections (the ceiling for refill).
    for (const conns of [1, 2]) {
      const cs = await Promise.all(Array.from({ length: conns }, () => connect(server)));
      const per = 20;
      const t0 = performance.now();
      await Promise.all(cs.map(async (c, k) => {
        for (let i = 0; i < per; i++) await c.query(`CREATE DATABASE ${ident(`raw_${k}_${i}`)} TEMPLATE ${ident(tpl)}${strategies[0] === 'DEFAULT' ? '' : ' STRATEGY FILE_COPY'}`);
      }));
      const rate = (conns * per) / (ms(t0) / 1000);
      console.log(`${`raw back-to-back CREATE DATABASE, ${conns} conn`.padEnd(44)} ${fmt(rate).padStart(7)} clones/s`);
      for (let k = 0; k < conns; k++) for (let i = 0; i < per; i++) await admin.query(`DROP DATABASE ${ident(`raw_${k}_${i}`)}`);
      await Promise.all(cs.map((c) => c.end()));
    }
  } finally {
    await admin.end();
    await sidecar.stop();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  // A fresh `npm start` (embedded server, shipped config) until its ready line.
  const starts: number[] = [];
  for (let i = 0; i < 3; i++) starts.push(await timeNpmStart());
  console.log(`${'fresh npm start until ready (3 runs)'.padEnd(44)} ${starts.map((s) => `${(s / 1000).toFixed(2)} s`).join(', ')}`);
}

async function timeNpmStart(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  const t0 = performance.now();
  const child = spawn('npm', ['start', '--silent'], {
    cwd: ROOT,
    detached: true,
    env: { ...process.env, PGPORT: String(port), PGHOST: '', DATABASE_URL: '' },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d) => /pgtestpool ready/.test(String(d)) && resolve());
    child.once('exit', () => reject(new Error('npm start exited before it was ready')));
  });
  const t = ms(t0);
  process.kill(-child.pid!, 'SIGINT');
  await new Promise((r) => child.once('exit', r));
  return t;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
