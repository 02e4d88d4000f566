// config.yaml: read and validated once at start. Every problem is collected (not just the
// first) and reported with its key and what was expected, so one edit fixes them all.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { MIGRATION_FORMATS, type MigrationFormat } from './migrations.ts';
import { resolveSources, type BuildStep, type MigrationSpec } from './sources.ts';

export type Strategy = 'file_copy' | 'wal_log';

export interface TemplateConfig {
  name: string;
  /** Created in the template first, before any SQL runs. */
  extensions: string[];
  /** Patterns as written in config.yaml (resolved again when `watch` looks for changes). */
  schema: string[];
  migrations: MigrationSpec[];
  /** A shell command run against the template being built (the user's own migration tool), or null. */
  command: string | null;
  /** Globs of what the command reads: with the command, their contents key the content hash. */
  inputs: string[];
  /** A command still running after this long fails the build. */
  commandTimeoutMs: number;
  seed: string[];
  /** What they resolved to at start, in the order they are applied. */
  steps: BuildStep[];
  /** Applied to every clone: ALTER DATABASE <clone> SET name = value (CREATE DATABASE does not copy them). */
  settings: Record<string, string>;
  /** Applied to every clone: GRANT <privileges> ON DATABASE <clone> TO <role>. */
  grants: Record<string, string[]>;
  /** Role that owns the template's objects and, once claimed, the clone. */
  owner: string | null;
  minReady: number;
  watch: boolean;
}

export interface Config {
  file: string;
  dir: string;
  templates: TemplateConfig[];
  pool: {
    maxDatabases: number;
    /** keep_test_db(): databases kept for debugging at most, apart from max_databases (0: off). */
    maxKept: number;
    /** null: FILE_COPY where the server supports it (fastest on tmpfs), else the server's only way. */
    strategy: Strategy | null;
    concurrency: number;
    pollIntervalMs: number;
    /** A template unclaimed this long lends its ready clones to one that needs them when the budget is spent. */
    lendAfterMs: number;
  };
  /** releaseGraceMs: how long a released clone's connections may take to close before the drop forces them. */
  lease: { idleTimeoutMs: number; maxDurationMs: number; releaseGraceMs: number };
  claim: { timeoutMs: number };
}

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(
      `${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'} in the configuration:\n` +
        problems.map((p) => `  - ${p}`).join('\n'),
    );
    this.name = 'ConfigError';
  }
}

export const DEFAULT_CONFIG_FILE = 'config.yaml';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "30s", "1h30m", "250ms" -> milliseconds; null when malformed. A bare number is refused: the unit is ambiguous. */
export function parseDuration(value: unknown): number | null {
  if (typeof value !== 'string') return null;
  const text = value.trim();
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(text)) return null;
  let total = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) total += Number(m[1]) * UNITS[m[2]!]!;
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

class Checker {
  problems: string[] = [];
  problem(key: string, msg: string): void {
    this.problems.push(`${key}: ${msg}`);
  }
  section(parent: Obj, key: string, fullKey: string, allowed: string[]): Obj {
    const v = parent[key];
    if (v === undefined || v === null) return {};
    if (!isObj(v)) {
      this.problem(fullKey, `expected a mapping with keys ${allowed.join(', ')}, got ${describe(v)}`);
      return {};
    }
    this.unknownKeys(v, fullKey, allowed);
    return v;
  }
  unknownKeys(obj: Obj, where: string, allowed: string[]): void {
    for (const k of Object.keys(obj)) {
      if (!allowed.includes(k)) this.problem(where ? `${where}.${k}` : k, `unknown key (expected one of: ${allowed.join(', ')})`);
    }
  }
  int(obj: Obj, key: string, fullKey: string, def: number, min: number, max: number): number {
    const v = obj[key];
    if (v === undefined || v === null) return def;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      this.problem(fullKey, `expected a whole number from ${min} to ${max}, got ${describe(v)}`);
      return def;
    }
    return v;
  }
  duration(obj: Obj, key: string, fullKey: string, def: number, minMs: number): number {
    const v = obj[key];
    if (v === undefined || v === null) return def;
    const ms = parseDuration(v);
    if (ms === null) {
      this.problem(fullKey, `expected a duration with a unit such as 500ms, 30s, 5m or 1h, got ${describe(v)}`);
      return def;
    }
    if (ms < minMs) {
      this.problem(fullKey, `expected at least ${formatDuration(minMs)}, got ${describe(v)}`);
      return def;
    }
    return ms;
  }
}

function describe(v: unknown): string {
  if (v === null) return 'nothing';
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return `${typeof v} ${String(v)}`;
}

const TEMPLATE_KEYS = ['extensions', 'schema', 'migrations', 'command', 'inputs', 'command_timeout', 'seed', 'settings', 'grants', 'owner', 'min_ready', 'watch'];
const DATABASE_PRIVILEGES = ['CONNECT', 'TEMPORARY', 'TEMP', 'CREATE', 'ALL'];

function stringList(c: Checker, raw: Obj, key: string, fullKey: string, what: string): string[] {
  const v = raw[key];
  if (v === undefined || v === null) return [];
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
  c.problem(fullKey, `expected ${what}, got ${describe(v)}`);
  return [];
}

function checkMigrations(c: Checker, raw: unknown, key: string): MigrationSpec[] {
  if (raw === undefined || raw === null) return [];
  const list = Array.isArray(raw) ? raw : [raw];
  const out: MigrationSpec[] = [];
  list.forEach((m, i) => {
    const k = Array.isArray(raw) ? `${key}[${i}]` : key;
    if (!isObj(m)) {
      c.problem(k, `expected {dir: <folder>, format: <${MIGRATION_FORMATS.join('|')}>}, got ${describe(m)}`);
      return;
    }
    c.unknownKeys(m, k, ['dir', 'format']);
    if (typeof m.dir !== 'string' || !m.dir) c.problem(`${k}.dir`, `expected the migrations folder, relative to config.yaml, got ${describe(m.dir)}`);
    if (!MIGRATION_FORMATS.includes(m.format as MigrationFormat)) {
      c.problem(`${k}.format`, `expected one of ${MIGRATION_FORMATS.join(', ')}, got ${describe(m.format)}`);
    }
    if (typeof m.dir === 'string' && m.dir && MIGRATION_FORMATS.includes(m.format as MigrationFormat)) {
      out.push({ dir: m.dir, format: m.format as MigrationFormat });
    }
  });
  return out;
}

/** `command:` with its `inputs:` (required: without them a changed migration would never rebuild the template) and `command_timeout:`. */
function checkCommand(c: Checker, raw: Obj, key: string, dir: string): { command: string | null; inputs: string[]; commandTimeoutMs: number } {
  let command: string | null = null;
  if (raw.command !== undefined && raw.command !== null) {
    if (typeof raw.command !== 'string' || !raw.command.trim()) {
      c.problem(`${key}.command`, `expected a shell command run in ${dir} against the template being built (e.g. "npx knex migrate:latest"), got ${describe(raw.command)}`);
    } else command = raw.command;
  }
  const inputs = stringList(c, raw, 'inputs', `${key}.inputs`, `a list of files or globs relative to ${dir} that the command reads (e.g. [migrations/**])`);
  if (command !== null && inputs.length === 0 && raw.inputs === undefined) {
    c.problem(`${key}.inputs`, 'expected the files or globs the command reads (e.g. [migrations/**, knexfile.js]): their contents decide when the template is rebuilt, and without them a changed migration would never be applied');
  }
  if (command === null && raw.inputs !== undefined && raw.inputs !== null && raw.command === undefined) {
    c.problem(`${key}.inputs`, 'expected only with command: (the files the command reads); schema, migrations and seed files are inputs already');
  }
  const commandTimeoutMs = c.duration(raw, 'command_timeout', `${key}.command_timeout`, 10 * 60_000, 1000);
  if (command === null && raw.command_timeout !== undefined && raw.command === undefined) {
    c.problem(`${key}.command_timeout`, 'expected only with command:');
  }
  return { command, inputs, commandTimeoutMs };
}

function checkTemplate(c: Checker, name: string, raw: unknown, dir: string, watchDefault: boolean): TemplateConfig | null {
  const key = `templates.${name}`;
  if (Buffer.byteLength(name) > 40 || name.length === 0) {
    c.problem(key, 'expected a template name of 1 to 40 bytes');
  }
  if (!isObj(raw)) {
    c.problem(key, `expected a mapping with keys ${TEMPLATE_KEYS.join(', ')}, got ${describe(raw)}`);
    return null;
  }
  c.unknownKeys(raw, key, TEMPLATE_KEYS);
  const minReady = c.int(raw, 'min_ready', `${key}.min_ready`, 8, 0, 1000);
  const extensions = stringList(c, raw, 'extensions', `${key}.extensions`, 'a list of extension names, e.g. [citext, pgcrypto]');
  extensions.forEach((e, i) => {
    if (!/^[A-Za-z0-9_-]{1,63}$/.test(e)) c.problem(`${key}.extensions[${i}]`, `expected an extension name (letters, digits, _ and -), got ${describe(e)}`);
  });
  const schema = stringList(c, raw, 'schema', `${key}.schema`, `a list of SQL files or globs relative to ${dir} (e.g. [schema/*.sql])`);
  const seed = stringList(c, raw, 'seed', `${key}.seed`, `a list of SQL files or globs relative to ${dir} (e.g. [seed/*.sql])`);
  const migrations = checkMigrations(c, raw.migrations, `${key}.migrations`);
  const { command, inputs, commandTimeoutMs } = checkCommand(c, raw, key, dir);
  const { steps, problems } = resolveSources({ schema, migrations, command, inputs, seed }, dir);
  for (const p of problems) c.problem(`${key}.${p.key}`, p.message);

  const settings: Record<string, string> = {};
  if (raw.settings !== undefined && raw.settings !== null) {
    if (!isObj(raw.settings)) c.problem(`${key}.settings`, `expected a mapping of setting names to values (e.g. {timezone: UTC}), got ${describe(raw.settings)}`);
    else {
      for (const [k, v] of Object.entries(raw.settings)) {
        if (!/^[A-Za-z_][A-Za-z0-9_.]*$/.test(k)) c.problem(`${key}.settings.${k}`, 'expected a PostgreSQL setting name');
        else if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') c.problem(`${key}.settings.${k}`, `expected a string, number or boolean, got ${describe(v)}`);
        else settings[k] = typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
      }
    }
  }
  const grants: Record<string, string[]> = {};
  if (raw.grants !== undefined && raw.grants !== null) {
    if (!isObj(raw.grants)) c.problem(`${key}.grants`, `expected a mapping of role names to database privileges (e.g. {app_reader: [CONNECT]}), got ${describe(raw.grants)}`);
    else {
      for (const [role, privs] of Object.entries(raw.grants)) {
        const list = typeof privs === 'string' ? [privs] : privs;
        if (!Array.isArray(list) || !list.every((p) => typeof p === 'string' && DATABASE_PRIVILEGES.includes(p.toUpperCase()))) {
          c.problem(`${key}.grants.${role}`, `expected a list of database privileges among ${DATABASE_PRIVILEGES.join(', ')}, got ${describe(privs)}`);
        } else grants[role] = list.map((p: string) => p.toUpperCase());
      }
    }
  }
  let owner: string | null = null;
  if (raw.owner !== undefined && raw.owner !== null) {
    if (typeof raw.owner !== 'string' || !raw.owner || Buffer.byteLength(raw.owner) > 63) c.problem(`${key}.owner`, `expected a role name, got ${describe(raw.owner)}`);
    else owner = raw.owner;
  }
  let watch = watchDefault;
  if (raw.watch !== undefined && raw.watch !== null) {
    if (typeof raw.watch !== 'boolean') c.problem(`${key}.watch`, `expected true or false, got ${describe(raw.watch)}`);
    else watch = raw.watch;
  }
  return { name, extensions, schema, migrations, command, inputs, commandTimeoutMs, seed, steps, settings, grants, owner, minReady, watch };
}

/** Parses and validates config text; `file` is where it came from (relative paths resolve against its folder). */
export function parseConfig(text: string, file: string): Config {
  const dir = path.dirname(path.resolve(file));
  const c = new Checker();
  let doc: unknown;
  try {
    const parsed = YAML.parseDocument(text, { uniqueKeys: true });
    if (parsed.errors.length > 0) {
      throw new ConfigError(file, parsed.errors.map((e) => `YAML: ${e.message.split('\n')[0]}`));
    }
    doc = parsed.toJS();
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(file, [`YAML: ${(err as Error).message.split('\n')[0]}`]);
  }
  if (doc === null || doc === undefined) doc = {};
  if (!isObj(doc)) throw new ConfigError(file, [`expected a YAML mapping at the top level, got ${describe(doc)}`]);
  c.unknownKeys(doc, '', ['templates', 'pool', 'lease', 'claim', 'watch']);
  let watchDefault = false;
  if (doc.watch !== undefined && doc.watch !== null) {
    if (typeof doc.watch !== 'boolean') c.problem('watch', `expected true or false, got ${describe(doc.watch)}`);
    else watchDefault = doc.watch;
  }

  const templates: TemplateConfig[] = [];
  const rawTemplates = doc.templates;
  if (!isObj(rawTemplates) || Object.keys(rawTemplates).length === 0) {
    c.problem('templates', `expected a mapping of template names to {schema, migrations, min_ready, ...}, got ${describe(rawTemplates)}`);
  } else {
    for (const [name, raw] of Object.entries(rawTemplates)) {
      const t = checkTemplate(c, name, raw, dir, watchDefault);
      if (t) templates.push(t);
    }
  }

  const pool = c.section(doc, 'pool', 'pool', ['max_databases', 'max_kept', 'strategy', 'concurrency', 'poll_interval', 'lend_after']);
  const maxDatabases = c.int(pool, 'max_databases', 'pool.max_databases', 64, 1, 10_000);
  const maxKept = c.int(pool, 'max_kept', 'pool.max_kept', 10, 0, 1000);
  let strategy: Strategy | null = null;
  if (pool.strategy !== undefined && pool.strategy !== null && pool.strategy !== 'auto') {
    const s = typeof pool.strategy === 'string' ? pool.strategy.toLowerCase() : pool.strategy;
    if (s === 'file_copy' || s === 'wal_log') strategy = s;
    else c.problem('pool.strategy', `expected file_copy, wal_log or auto, got ${describe(pool.strategy)}`);
  }
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  const concurrency = c.int(pool, 'concurrency', 'pool.concurrency', Math.max(1, Math.min(cores, 8)), 1, 64);
  const pollIntervalMs = c.duration(pool, 'poll_interval', 'pool.poll_interval', 1000, 50);
  const lendAfterMs = c.duration(pool, 'lend_after', 'pool.lend_after', 60_000, 0);

  const lease = c.section(doc, 'lease', 'lease', ['idle_timeout', 'max_duration', 'release_grace']);
  const idleTimeoutMs = c.duration(lease, 'idle_timeout', 'lease.idle_timeout', 30_000, 0);
  const maxDurationMs = c.duration(lease, 'max_duration', 'lease.max_duration', 3_600_000, 1000);
  const releaseGraceMs = c.duration(lease, 'release_grace', 'lease.release_grace', 2_000, 0);

  const claim = c.section(doc, 'claim', 'claim', ['timeout']);
  const timeoutMs = c.duration(claim, 'timeout', 'claim.timeout', 30_000, 0);

  const wanted = templates.reduce((sum, t) => sum + t.minReady, 0);
  if (wanted > maxDatabases) {
    c.problem('pool.max_databases', `expected at least the sum of every template's min_ready (${wanted}), got ${maxDatabases}`);
  }

  if (c.problems.length > 0) throw new ConfigError(file, c.problems);
  return {
    file: path.resolve(file),
    dir,
    templates,
    pool: { maxDatabases, maxKept, strategy, concurrency, pollIntervalMs, lendAfterMs },
    lease: { idleTimeoutMs, maxDurationMs, releaseGraceMs },
    claim: { timeoutMs },
  };
}

/** Reads the config from PGTESTPOOL_CONFIG, else ./config.yaml. */
export function loadConfig(file = process.env.PGTESTPOOL_CONFIG || DEFAULT_CONFIG_FILE): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(file, [
      code === 'ENOENT'
        ? `no such file (set PGTESTPOOL_CONFIG to the path of your config.yaml)`
        : `cannot read it: ${(err as Error).message}`,
    ]);
  }
  return parseConfig(text, file);
}
