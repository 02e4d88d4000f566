// What a template is built from, resolved to an ordered list of SQL steps: schema files and
// globs, then migration folders, then seed files. Resolved at start (config validation reports
// what is missing) and again whenever `watch` looks for changes.
import { readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { globSync } from 'tinyglobby';
import { filesUnder, MigrationError, readMigrations, type MigrationFormat } from './migrations.ts';

export interface MigrationSpec {
  dir: string;
  format: MigrationFormat;
}

export interface TemplateSources {
  schema: string[];
  migrations: MigrationSpec[];
  seed: string[];
}

export interface BuildStep {
  kind: 'schema' | 'migration' | 'seed';
  /** Absolute path of the file. */
  file: string;
  /** The path relative to config.yaml, for messages. */
  display: string;
  /** The SQL to run when it is not the whole file (a dbmate up section). */
  sql?: string;
  /** Wrap in BEGIN/COMMIT, as the migration tool would. */
  transaction: boolean;
}

export interface SourceProblem {
  /** Relative to the template's key, e.g. `schema[0]`. */
  key: string;
  message: string;
}

function outsideHint(abs: string, dir: string): string {
  const rel = path.relative(dir, abs);
  return rel.startsWith('..') || path.isAbsolute(rel)
    ? `; it is outside the config's folder ${dir}: in a container only mounted folders exist, so mount it or move it under that folder`
    : '';
}

/** A pattern with *, ? or [...] is a glob; anything else names one file, taken literally. */
export function hasMagic(pattern: string): boolean {
  return /[*?[]/.test(pattern);
}

function realPath(file: string): string {
  try {
    return realpathSync(file);
  } catch {
    return file;
  }
}

function isFile(file: string): boolean {
  try {
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

const byPath = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Files matching `pattern` (relative to `base` unless absolute), as absolute paths sorted like a
 * shell expansion so the order of schema files is predictable. tinyglobby follows symlinked
 * folders but stops at a loop; a file reached by several paths (a link back to its own folder)
 * is kept once, under its shortest path (the one not going round a loop), in that path's place.
 */
export function glob(pattern: string, base: string): string[] {
  const absolute = path.resolve(base, pattern);
  if (!hasMagic(pattern)) return isFile(absolute) ? [absolute] : [];
  // Crawl from the pattern's literal folders (before its first magic segment): an absolute or ../
  // pattern then needs no special handling, and neither the config's folder nor those are read
  // as patterns (a [ in a folder name stays literal).
  const segments = pattern.split('/');
  const firstMagic = segments.findIndex(hasMagic);
  const cwd = path.resolve(base, segments.slice(0, firstMagic).join('/') || '.');
  const rest = segments.slice(firstMagic).join('/');
  const matched = globSync(rest, { cwd, absolute: true, onlyFiles: true, expandDirectories: false, dot: false });
  const byReal = new Map<string, string>();
  for (const f of matched.map((m) => path.resolve(m)).sort(byPath)) {
    const real = realPath(f);
    const kept = byReal.get(real);
    if (kept === undefined || f.split(path.sep).length < kept.split(path.sep).length) byReal.set(real, f);
  }
  return [...byReal.values()].sort(byPath);
}

function files(patterns: string[], kind: 'schema' | 'seed', dir: string, problems: SourceProblem[]): BuildStep[] {
  const out: BuildStep[] = [];
  const seen = new Set<string>(); // real paths: a file listed twice, or by two names, runs once
  patterns.forEach((pattern, i) => {
    const found = glob(pattern, dir);
    if (found.length === 0) {
      const where = path.resolve(dir, pattern);
      problems.push({
        key: `${kind}[${i}]`,
        message: (hasMagic(pattern)
          ? `${JSON.stringify(pattern)} matches no file (looked for ${where})`
          : `file ${JSON.stringify(pattern)} not found (looked for ${where})`) + outsideHint(where, dir),
      });
    }
    for (const f of found) {
      // Listed again (a file, then a glob that includes it): it runs once, at its first place.
      if (seen.has(realPath(f))) continue;
      seen.add(realPath(f));
      out.push({ kind, file: f, display: path.relative(dir, f) || f, transaction: false });
    }
  });
  return out;
}

/** The steps in the order they are applied, and every problem found on the way. */
export function resolveSources(src: TemplateSources, dir: string): { steps: BuildStep[]; problems: SourceProblem[] } {
  const problems: SourceProblem[] = [];
  const steps = files(src.schema, 'schema', dir, problems);
  src.migrations.forEach((m, i) => {
    const folder = path.resolve(dir, m.dir);
    try {
      for (const s of readMigrations(folder, m.format)) {
        steps.push({ kind: 'migration', file: s.file, display: path.relative(dir, s.file), sql: s.sql, transaction: s.transaction });
      }
    } catch (err) {
      if (!(err instanceof MigrationError)) throw err;
      problems.push({ key: `migrations[${i}]`, message: err.message + outsideHint(folder, dir) });
    }
  });
  steps.push(...files(src.seed, 'seed', dir, problems));
  return { steps, problems };
}

/** The SQL a step runs. */
export function stepSql(step: BuildStep): string {
  return step.sql ?? readFileSync(step.file, 'utf8');
}

/**
 * What `watch` compares on every poll: the paths, sizes and mtimes of every file that could be an
 * input (the schema and seed globs, every file under the migration folders), found by listing and
 * stat alone, never by reading them. Only when it changes are the inputs resolved and hashed.
 */
export function inputSignature(src: TemplateSources, dir: string): string {
  const statOf = (file: string) => {
    const st = statSync(file, { throwIfNoEntry: false });
    return st ? `${file}:${st.size}:${st.mtimeMs}` : `${file}:missing`;
  };
  const lines: string[] = [];
  for (const pattern of [...src.schema, ...src.seed]) lines.push(`glob ${pattern}`, ...glob(pattern, dir).map(statOf));
  for (const m of src.migrations) {
    const folder = path.resolve(dir, m.dir);
    lines.push(`migrations ${m.format} ${folder}`);
    try {
      lines.push(...filesUnder(folder).map(statOf));
    } catch (err) {
      lines.push(`unreadable: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }
  return lines.join('\n');
}
