// What a template is built from, resolved to an ordered list of steps: schema files and globs,
// then migration folders, then the user's own command (its `inputs` key the hash), then seed files. Resolved at start (config validation reports
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
  /** A shell command that builds (part of) the template with the user's own tool, or null. */
  command: string | null;
  /** Globs of the files the command reads: their names and contents key the hash and drive `watch`. */
  inputs: string[];
  seed: string[];
}

export interface BuildStep {
  kind: 'schema' | 'migration' | 'command' | 'seed';
  /** Absolute path of the file (a command step: the folder it runs in). */
  file: string;
  /** The path relative to config.yaml, for messages. */
  display: string;
  /** The SQL to run when it is not the whole file (a dbmate up section). */
  sql?: string;
  /** Wrap in BEGIN/COMMIT, as the migration tool would. */
  transaction: boolean;
  /** A command step: the command, and the input files (absolute, in order) it was resolved with. */
  command?: string;
  inputs?: string[];
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

function files(patterns: string[], kind: 'schema' | 'seed' | 'inputs', dir: string, problems: SourceProblem[]): { file: string; display: string }[] {
  const out: { file: string; display: string }[] = [];
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
      out.push({ file: f, display: path.relative(dir, f) || f });
    }
  });
  return out;
}

/** The steps in the order they are applied, and every problem found on the way. */
export function resolveSources(src: TemplateSources, dir: string): { steps: BuildStep[]; problems: SourceProblem[] } {
  const problems: SourceProblem[] = [];
  const sqlFiles = (kind: 'schema' | 'seed', patterns: string[]): BuildStep[] =>
    files(patterns, kind, dir, problems).map((f) => ({ kind, ...f, transaction: false }));
  const steps = sqlFiles('schema', src.schema);
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
  if (src.command !== null) {
    const inputs = files(src.inputs, 'inputs', dir, problems).map((f) => f.file);
    steps.push({ kind: 'command', file: dir, display: 'command', command: src.command, inputs, transaction: false });
  }
  steps.push(...sqlFiles('seed', src.seed));
  return { steps, problems };
}

/** The SQL a step runs (a command step runs no SQL of its own). */
export function stepSql(step: BuildStep): string {
  if (step.kind === 'command') return '';
  return step.sql ?? readFileSync(step.file, 'utf8');
}

/**
 * What of a step goes into the template's content hash: its SQL, or for a command the command
 * and every input file's name and contents (a file that cannot be read counts as changed).
 */
export function stepHashParts(step: BuildStep): (string | Buffer)[] {
  if (step.kind !== 'command') return [stepSql(step)];
  const parts: (string | Buffer)[] = [`command ${step.command}\0`];
  for (const f of step.inputs ?? []) {
    parts.push(`\0${path.relative(step.file, f)}\0`);
    try {
      parts.push(readFileSync(f));
    } catch (err) {
      parts.push(`unreadable: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }
  return parts;
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
  if (src.command !== null) {
    lines.push(`command ${src.command}`);
    for (const pattern of src.inputs) lines.push(`input ${pattern}`, ...glob(pattern, dir).map(statOf));
  }
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
