// Template figures for a real dump (`npm run measure:templates`): pagila's build time, its clone
// time per strategy, start-up with a cold build vs a reused template, and the time from a file
// change (watch) to the new version serving. PGTESTPOOL_PG_BINDIR picks the PostgreSQL.
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { parseConfig } from '../src/config.ts';
import { ident } from '../src/db.ts';
import { startEmbedded } from '../src/embedded.ts';
import { setQuiet } from '../src/log.ts';
import { Sidecar } from '../src/sidecar.ts';
import { PAGILA_DIR } from './workload.ts';

setQuiet(true);
const PAGILA = PAGILA_DIR;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ms = (t0: number) => performance.now() - t0;

async function main(): Promise<void> {
  const server = await startEmbedded({ port: 0 });
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-bench-'));
  mkdirSync(path.join(dir, 'pagila'));
  copyFileSync(path.join(PAGILA, 'pagila-2024-schema.sql'), path.join(dir, 'pagila/1-schema.sql'));
  copyFileSync(path.join(PAGILA, 'pagila-2024-data.sql'), path.join(dir, 'pagila/2-data.sql'));
  writeFileSync(path.join(dir, 'pagila/3-extra.sql'), 'CREATE TABLE bench_extra (id int);\n');
  const yaml = 'templates:\n  default:\n    schema: [pagila/*.sql]\n    min_ready: 8\n    watch: true\npool:\n  poll_interval: 100ms\n';
  const file = path.join(dir, 'config.yaml');
  writeFileSync(file, yaml);
  const admin = new pg.Client(server.clientConfig());
  await admin.connect();
  const sidecarUntilFilled = async () => {
    const t0 = performance.now();
    const s = new Sidecar(parseConfig(yaml, file), server.clientConfig());
    await s.whenFilled();
    return { s, ms: ms(t0) };
  };
  try {
    console.log(`PostgreSQL ${server.install.version} on tmpfs, ${os.availableParallelism()} cores; pagila 2024 schema + data (3.3 MB of COPY)\n`);
    const cold = await sidecarUntilFilled();
    const { rows } = await admin.query('SELECT build_ms, database FROM pgtestpool.templates');
    const tpl = rows[0].database as string;
    console.log(`template build (schema + data, VACUUM, warm-up)   ${rows[0].build_ms} ms`);
    console.log(`start-up, cold: build + 8 clones                   ${cold.ms.toFixed(0)} ms`);

    // File change -> new version serving (watch), while the old one serves.
    const t0 = performance.now();
    writeFileSync(path.join(dir, 'pagila/3-extra.sql'), 'CREATE TABLE bench_extra (id int, changed int);\n');
    for (;;) {
      const r = await admin.query('SELECT database FROM pgtestpool.templates');
      if (r.rows[0].database !== tpl) break;
      await new Promise((res) => setTimeout(res, 10));
    }
    console.log(`file change -> new version serving (watch)         ${ms(t0).toFixed(0)} ms`);
    await cold.s.whenFilled();
    await cold.s.stop();

    const warm = await sidecarUntilFilled();
    console.log(`start-up, template reused (inputs unchanged)       ${warm.ms.toFixed(0)} ms`);
    await warm.s.stop();

    const source = (await admin.query('SELECT database FROM pgtestpool.templates')).rows[0].database as string;
    const size = (await admin.query('SELECT pg_size_pretty(pg_database_size($1)) AS s', [source])).rows[0].s;
    const clone: Record<string, number[]> = { FILE_COPY: [], WAL_LOG: [] };
    const first: Record<string, number[]> = { FILE_COPY: [], WAL_LOG: [] };
    for (let i = 0; i < 10; i++) {
      for (const s of ['FILE_COPY', 'WAL_LOG']) {
        const name = `bench_${s.toLowerCase()}_${i}`;
        let t = performance.now();
        await admin.query(`CREATE DATABASE ${ident(name)} TEMPLATE ${ident(source)} STRATEGY ${s}`);
        clone[s]!.push(ms(t));
        t = performance.now();
        const c = new pg.Client(server.clientConfig(name));
        await c.connect();
        await c.query('SELECT count(*) FROM film_list');
        first[s]!.push(ms(t));
        await c.end();
        await admin.query(`DROP DATABASE ${ident(name)}`);
      }
    }
    for (const s of ['FILE_COPY', 'WAL_LOG']) {
      console.log(`clone (${size}) STRATEGY ${s.padEnd(9)}              median ${median(clone[s]!).toFixed(1)} ms; first connection + query ${median(first[s]!).toFixed(1)} ms`);
    }
  } finally {
    await admin.end();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
