// pgtestpool's Node client: a fresh database per test in one line, from any test framework.
//
//   import { withTestDb } from 'pgtestpool/client';
//   test('signs up', withTestDb(async (db) => { const c = await db.connect(); ... }));
//
// The claim runs on one control connection per process (a session's first claim costs ~3 ms,
// the next ~0.3 ms), outside any transaction; release closes the connections this handle opened
// first; a failed test's database can be kept to look at (keepOnFailure, or
// PGTESTPOOL_KEEP_ON_FAILURE=1h), its URL printed.
import pg from 'pg';

const DEFAULT_URL = 'postgresql://postgres:postgres@127.0.0.1:5432/postgres';
const controls = new Map();

/** The appliance's URL: the option, else PGTESTPOOL_URL, else npm start's default. */
function applianceUrl(url) {
  return url ?? process.env.PGTESTPOOL_URL ?? DEFAULT_URL;
}

/** One control connection per appliance URL and process; reconnects after it was lost. */
async function control(url) {
  let entry = controls.get(url);
  if (!entry) {
    const client = new pg.Client({ connectionString: url, application_name: 'pgtestpool client' });
    entry = { client, ready: client.connect().then(() => client), lost: false };
    // A lost control connection ends its claims' leases (the sidecar reclaims them); the next claim opens a new one.
    client.on('error', () => (entry.lost = true));
    client.on('end', () => (entry.lost = true));
    controls.set(url, entry);
    // Idle, it is no reason to keep the process alive (a runner exits when its tests are done);
    // query() holds it while a query is in flight.
    entry.ready.then(() => client.connection?.stream?.unref?.()).catch(() => {});
  }
  try {
    return await entry.ready;
  } catch (err) {
    controls.delete(url);
    throw err;
  } finally {
    if (entry.lost) controls.delete(url);
  }
}

/** A query on the control connection, which keeps the process alive only meanwhile. */
async function query(url, sql, params) {
  const ctl = await control(url);
  const stream = ctl.connection?.stream;
  // (Counted: with claims from concurrent tests, the first to finish must not unref the others.)
  if ((ctl.pgtestpoolInFlight = (ctl.pgtestpoolInFlight ?? 0) + 1) === 1) stream?.ref?.();
  try {
    return await ctl.query(sql, params);
  } finally {
    if (--ctl.pgtestpoolInFlight === 0) stream?.unref?.();
  }
}

/** The clone's connection settings, from the appliance URL with the database swapped. */
function cloneSettings(url, name) {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(name)}`;
  const config = {
    host: decodeURIComponent(u.hostname.replace(/^\[|\]$/g, '')) || u.searchParams.get('host') || 'localhost',
    port: Number(u.port || 5432),
    user: decodeURIComponent(u.username || 'postgres'),
    password: u.password ? decodeURIComponent(u.password) : undefined,
    database: name,
  };
  return { url: u.toString(), config };
}

/**
 * Claims a fresh database. Returns { name, url, config, connect(), release(), keep(for) }; with
 * `await using`, it is released at the end of the block.
 */
export async function claimTestDb(options = {}) {
  const url = applianceUrl(options.url);
  const { rows } = await query(url, 'SELECT claim_test_db($1) AS name', [options.template ?? 'default']);
  const name = rows[0].name;
  const { url: cloneUrl, config } = cloneSettings(url, name);
  const opened = new Set();
  let done = false;
  const closeOpened = async () => {
    await Promise.allSettled([...opened].map((c) => c.end()));
    opened.clear();
  };
  const handle = {
    name,
    url: cloneUrl,
    config,
    /** A pg.Client on the clone, closed by release()/keep(). */
    async connect() {
      const c = new pg.Client({ ...config, application_name: 'pgtestpool test' });
      await c.connect();
      opened.add(c);
      c.on('end', () => opened.delete(c));
      return c;
    },
    /** Closes what connect() opened, then hands the database back (it is dropped). Idempotent. */
    async release() {
      if (done) return;
      done = true;
      await closeOpened();
      await query(url, 'SELECT release_test_db($1)', [name]);
    },
    /** Keeps the database to look at (a failed test's) for `keepFor` (default 1 hour); prints where. */
    async keep(keepFor = '1 hour') {
      if (done) return;
      done = true;
      await closeOpened();
      await query(url, 'SELECT keep_test_db($1, $2::interval)', [name, keepFor]);
      const shown = new URL(cloneUrl);
      if (shown.password) shown.password = '***';
      process.stderr.write(`pgtestpool: kept ${name} for ${keepFor} (the test failed): psql "${shown}"\n`);
    },
  };
  if (typeof Symbol.asyncDispose === 'symbol') handle[Symbol.asyncDispose] = () => handle.release();
  return handle;
}

/**
 * Wraps a test function: a database is claimed before it runs and released after it, or kept
 * when it throws and keeping is on (options.keepOnFailure: an interval such as '1 hour', or
 * PGTESTPOOL_KEEP_ON_FAILURE). Works with node:test, Vitest, Jest and Mocha alike.
 */
export function withTestDb(fn, options = {}) {
  return async (...args) => {
    const db = await claimTestDb(options);
    let failed = true;
    try {
      const result = await fn(db, ...args);
      failed = false;
      return result;
    } finally {
      const keepFor = options.keepOnFailure ?? process.env.PGTESTPOOL_KEEP_ON_FAILURE;
      if (failed && keepFor) await db.keep(keepFor === '1' || keepFor === 'true' ? '1 hour' : keepFor);
      else await db.release();
    }
  };
}

/** Closes the control connections (their claims end with them): for a runner's global teardown. */
export async function closeControlConnections() {
  const all = [...controls.values()];
  controls.clear();
  await Promise.allSettled(all.map((e) => e.ready.then((c) => c.end())));
}
