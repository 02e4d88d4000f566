// Installs and upgrades the control schema: numbered migrations (tables) applied once each and
// recorded in pgtestpool.migrations, then the API file (functions, the view) replaced only when
// its text changed. An up-to-date installation is only read, so a sidecar (re)starting while
// claims wait takes no lock they hold or wait for.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';

export const INITDB_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'initdb');
const MIGRATION_FILE = /^10-pgtestpool-(\d{3})-[a-z0-9-]+\.sql$/;
const API_FILE = '10-pgtestpool-api.sql';

export interface Migration {
  version: number;
  file: string;
  text: string;
}

/** The migration files in version order, loaded verbatim. Versions must run 1, 2, 3, … */
export function migrations(dir = INITDB_DIR): Migration[] {
  const list = readdirSync(dir)
    .map((f) => ({ f, m: MIGRATION_FILE.exec(f) }))
    .filter((x) => x.m)
    .map(({ f, m }) => ({ version: Number(m![1]), file: path.join(dir, f), text: readFileSync(path.join(dir, f), 'utf8') }))
    .sort((a, b) => a.version - b.version);
  list.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`${m.file}: migration ${m.version} follows ${i}: versions must have no gaps`);
  });
  return list;
}

export function apiSql(dir = INITDB_DIR): { text: string; hash: string } {
  const text = readFileSync(path.join(dir, API_FILE), 'utf8');
  return { text, hash: createHash('sha256').update(text).digest('hex').slice(0, 16) };
}

interface Installed {
  versions: number[];
  apiHash: string | null;
}

async function installed(client: pg.ClientBase): Promise<Installed> {
  const { rows } = await client.query<{ ledger: boolean }>(`SELECT to_regclass('pgtestpool.migrations') IS NOT NULL AS ledger`);
  if (!rows[0]!.ledger) return { versions: [], apiHash: null };
  const { rows: r } = await client.query<{ versions: number[]; api_hash: string | null }>(
    `SELECT ARRAY(SELECT version FROM pgtestpool.migrations ORDER BY version) AS versions,
            (SELECT value FROM pgtestpool.settings WHERE key = 'api_hash') AS api_hash`,
  );
  return { versions: r[0]!.versions, apiHash: r[0]!.api_hash };
}

/** A migration's table lock waits at most this long before it lets claims through and tries again. */
const MIGRATION_LOCK_TIMEOUT = '1s';
const MIGRATION_ATTEMPTS = 120;

/**
 * Applies one migration. Its ALTER TABLE queues behind claims waiting inside claim_test_db()
 * (they hold the pool table's row-exclusive lock for up to claim.timeout), and every new claim
 * would queue behind it: so it waits a second at most, steps aside, and tries again.
 */
async function applyMigration(client: pg.ClientBase, m: Migration): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await client.query(`SET lock_timeout = '${MIGRATION_LOCK_TIMEOUT}'`);
      await client.query(m.text);
      return;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      if ((err as { code?: string }).code === '55P03' && attempt < MIGRATION_ATTEMPTS) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      throw new Error(`control schema migration ${path.basename(m.file)} failed: ${(err as Error).message}`);
    } finally {
      await client.query('RESET lock_timeout').catch(() => {});
    }
  }
}

export interface InstallResult {
  applied: number[];
  apiReplaced: boolean;
}

/**
 * Brings the control schema up to date. Called under the sidecar's leader lock, so only one
 * installer runs at a time (each file also takes the installers' advisory lock, for psql at initdb).
 */
export async function installSchema(client: pg.ClientBase): Promise<InstallResult> {
  const all = migrations();
  const api = apiSql();
  const have = await installed(client);
  const newest = Math.max(0, ...have.versions);
  if (newest > all.length) {
    throw new Error(
      `the control schema pgtestpool was upgraded by a newer pgtestpool (migration ${newest}; this version knows ${all.length}): ` +
        'run that version, or drop schema pgtestpool (and the pgtp_ databases) to start afresh',
    );
  }
  const pending = all.filter((m) => !have.versions.includes(m.version));
  for (const m of pending) await applyMigration(client, m);
  const apiReplaced = pending.length > 0 || have.apiHash !== api.hash;
  if (apiReplaced) {
    try {
      await client.query(api.text);
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw new Error(`installing the SQL API (${API_FILE}) failed: ${(err as Error).message}`);
    }
    await client.query(
      `INSERT INTO pgtestpool.settings (key, value) VALUES ('api_hash', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
      [api.hash],
    );
  }
  return { applied: pending.map((m) => m.version), apiReplaced };
}
