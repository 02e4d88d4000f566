// `npm start`: the sidecar, attached to the server named by DATABASE_URL / PGHOST (the image does
// this), or else to an embedded, throwaway PostgreSQL on tmpfs. SIGINT/SIGTERM stop both cleanly.
import { ConfigError, loadConfig, type Config } from './config.ts';
import { connFromEnv, describeConn, isConnectionError, postgresUrl, startMode, type ConnConfig } from './db.ts';
import { startEmbedded, type EmbeddedServer } from './embedded.ts';
import { errorMessage, log } from './log.ts';
import { Sidecar } from './sidecar.ts';

let sidecar: Sidecar | null = null;
/** A promise, so a Ctrl-C during initdb still stops (and removes) the server once it is up. */
let server: Promise<EmbeddedServer> | null = null;
let shuttingDown: Promise<void> | null = null;
let firstSignalAt = 0;
/** Graceful stop waits for CREATE/DROP in flight; past this, something is stuck. */
const SHUTDOWN_LIMIT_MS = 30_000;

function shutdown(code: number): Promise<void> {
  shuttingDown ??= (async () => {
    await sidecar?.stop().catch((err) => log.error(`stopping the sidecar: ${errorMessage(err)}`));
    // (A server that failed to start has cleaned up after itself and reported why.)
    await server?.then(
      (s) => s.stop().catch((err) => log.error(`stopping PostgreSQL: ${errorMessage(err)}`)),
      () => {},
    );
    log.info('stopped');
    process.exit(code);
  })();
  return shuttingDown;
}

function onSignal(signal: NodeJS.Signals): void {
  if (shuttingDown) {
    // One Ctrl-C can arrive twice (the terminal signals the process group, and npm relays it too);
    // only a deliberate second one, a moment later, cuts the graceful stop short.
    if (Date.now() - firstSignalAt < 1500) return;
    log.warn(`${signal} again: exiting now`);
    process.exit(130);
  }
  firstSignalAt = Date.now();
  log.info(`${signal}: shutting down`);
  setTimeout(() => {
    log.error(`graceful shutdown took more than ${SHUTDOWN_LIMIT_MS / 1000} s: exiting`);
    process.exit(1);
  }, SHUTDOWN_LIMIT_MS).unref();
  void shutdown(0);
}

/**
 * npm killed (even with kill -9) would leave us running with nobody to stop us: a changed parent
 * pid means ours is gone, so stop as on SIGTERM.
 */
function watchParent(): void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    if (shuttingDown) return;
    log.warn(`parent process ${parent} is gone`);
    onSignal('SIGTERM');
  }, 500);
  timer.unref();
}

async function main(): Promise<void> {
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  watchParent();
  const started = performance.now();

  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`pgtestpool: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }

  let conn: ConnConfig;
  let embedded: EmbeddedServer | null = null;
  let mode: ReturnType<typeof startMode>;
  try {
    mode = startMode();
  } catch (err) {
    process.stderr.write(`pgtestpool: ${errorMessage(err)}\n`);
    process.exit(2);
  }
  if (mode.mode === 'attach') {
    conn = connFromEnv();
    log.info(`attaching to ${describeConn(conn)} (${mode.why}; PGTESTPOOL_MODE=embedded runs an embedded server instead)`);
  } else {
    server = startEmbedded({
      port: process.env.PGPORT ? Number(process.env.PGPORT) : 5432,
      password: process.env.POSTGRES_PASSWORD || 'postgres',
    });
    embedded = await server;
    if (shuttingDown) return; // a signal during start-up: shutdown() stops the server, start nothing more
    conn = embedded.clientConfig('postgres');
    log.info(`embedded PostgreSQL ${embedded.install.version} on ${embedded.host}:${embedded.port}, data in ${embedded.dataDir} (${mode.why})`);
  }

  sidecar = new Sidecar(config, conn, embedded?.install.source === 'npm' ? 'npm' : undefined);
  try {
    await sidecar.start();
  } catch (err) {
    if (mode.mode === 'attach' && isConnectionError(err)) {
      throw new Error(`cannot reach the server to attach to, ${describeConn(conn)} (${mode.why}): ${errorMessage(err)}. ` +
        'Start that server, or run the embedded one: unset PGHOST and DATABASE_URL, or set PGTESTPOOL_MODE=embedded', { cause: err });
    }
    throw err;
  }
  // Not filled within a minute is no failure (tests' claims may hold the whole max_databases):
  // say so, and serve what there is.
  const { filled, status } = await sidecar.whenFilled(60_000);
  if (!filled) {
    log.warn(`the pool is not full yet: ${status.map((s) => `${s.template} ${s.ready}/${s.min_ready} ready, ${s.claimed} claimed`).join('; ')}`);
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  const failed = status.filter((s) => s.build_state === 'failed').map((s) => s.template);
  process.stdout.write(
    `pgtestpool ready in ${seconds} s${failed.length ? ` (templates that failed to build: ${failed.join(', ')})` : ''}: ` +
      `${claimCommand(conn, embedded)}\n`,
  );
}

/**
 * A psql line that runs as printed, without a password prompt, and without the password in it
 * unless it is the well-known default: a password the user chose is referred to by its variable.
 */
function claimCommand(conn: ConnConfig, embedded: EmbeddedServer | null): string {
  const sql = '-XAtc "SELECT claim_test_db()"';
  if (!embedded && process.env.DATABASE_URL) return `psql "$DATABASE_URL" ${sql}`;
  const url = postgresUrl(embedded ?? conn, conn.user ?? 'postgres', conn.database ?? 'postgres');
  const password = embedded
    ? (process.env.POSTGRES_PASSWORD ? 'PGPASSWORD="$POSTGRES_PASSWORD" ' : 'PGPASSWORD=postgres ')
    : ''; // attached: psql reads the PGPASSWORD (or ~/.pgpass) this shell already has
  return `${password}psql "${url}" ${sql}`;
}

main().catch((err) => {
  log.error(errorMessage(err));
  void shutdown(1);
});
