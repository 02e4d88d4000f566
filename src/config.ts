// config.yaml: read and validated once at start. Every problem is collected (not just the
// first) and reported with its key and what was expected, so one edit fixes them all.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { glob, hasMagic } from './glob.ts';

export type Strategy = 'file_copy' | 'wal_log';

export interface TemplateConfig {
  name: string;
  /** Patterns as written in config.yaml. */
  schema: string[];
  /** Files the patterns matched, absolute, in the order they are applied. */
  files: string[];
  minReady: number;
}

export interface Config {
  file: string;
  dir: string;
  templates: TemplateConfig[];
  pool: {
    maxDatabases: number;
    /** null: FILE_COPY where the server supports it (fastest on tmpfs), else the server's only way. */
    strategy: Strategy | null;
    concurrency: number;
    pollIntervalMs: number;
  };
  lease: { idleTimeoutMs: number; maxDurationMs: number };
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

const TEMPLATE_KEYS = ['schema', 'min_ready'];

function checkTemplate(c: Checker, name: string, raw: unknown, dir: string): TemplateConfig | null {
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
  let patterns: string[] = [];
  const schema = raw.schema;
  if (typeof schema === 'string') patterns = [schema];
  else if (Array.isArray(schema) && schema.every((s) => typeof s === 'string')) patterns = schema as string[];
  else c.problem(`${key}.schema`, `expected a list of SQL files or globs relative to ${dir} (e.g. [schema/*.sql]), got ${describe(schema)}`);

  const files: string[] = [];
  patterns.forEach((pattern, i) => {
    const matched = glob(pattern, dir).filter((f) => !files.includes(f));
    if (matched.length === 0) {
      const where = path.resolve(dir, pattern);
      c.problem(`${key}.schema[${i}]`, hasMagic(pattern)
        ? `${JSON.stringify(pattern)} matches no file (looked for ${where})`
        : `file ${JSON.stringify(pattern)} not found (looked for ${where})`);
    }
    files.push(...matched);
  });
  return { name, schema: patterns, files, minReady };
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
  c.unknownKeys(doc, '', ['templates', 'pool', 'lease', 'claim']);

  const templates: TemplateConfig[] = [];
  const rawTemplates = doc.templates;
  if (!isObj(rawTemplates) || Object.keys(rawTemplates).length === 0) {
    c.problem('templates', `expected a mapping of template names to {schema, min_ready}, got ${describe(rawTemplates)}`);
  } else {
    for (const [name, raw] of Object.entries(rawTemplates)) {
      const t = checkTemplate(c, name, raw, dir);
      if (t) templates.push(t);
    }
  }

  const pool = c.section(doc, 'pool', 'pool', ['max_databases', 'strategy', 'concurrency', 'poll_interval']);
  const maxDatabases = c.int(pool, 'max_databases', 'pool.max_databases', 64, 1, 10_000);
  let strategy: Strategy | null = null;
  if (pool.strategy !== undefined && pool.strategy !== null && pool.strategy !== 'auto') {
    const s = typeof pool.strategy === 'string' ? pool.strategy.toLowerCase() : pool.strategy;
    if (s === 'file_copy' || s === 'wal_log') strategy = s;
    else c.problem('pool.strategy', `expected file_copy, wal_log or auto, got ${describe(pool.strategy)}`);
  }
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  const concurrency = c.int(pool, 'concurrency', 'pool.concurrency', Math.max(1, Math.min(cores, 8)), 1, 64);
  const pollIntervalMs = c.duration(pool, 'poll_interval', 'pool.poll_interval', 1000, 50);

  const lease = c.section(doc, 'lease', 'lease', ['idle_timeout', 'max_duration']);
  const idleTimeoutMs = c.duration(lease, 'idle_timeout', 'lease.idle_timeout', 30_000, 0);
  const maxDurationMs = c.duration(lease, 'max_duration', 'lease.max_duration', 3_600_000, 1000);

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
    pool: { maxDatabases, strategy, concurrency, pollIntervalMs },
    lease: { idleTimeoutMs, maxDurationMs },
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
