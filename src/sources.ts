// What a template is built from, resolved to an ordered list of SQL steps: schema files and
// globs, then migration folders, then seed files. Resolved at start (config validation reports
// what is missing) and again whenever `watch` looks for changes.
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { glob, hasMagic } from './glob.ts';
import { MigrationError, readMigrations, type MigrationFormat } from './migrations.ts';

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

function files(patterns: string[], kind: 'schema' | 'seed', dir: string, problems: SourceProblem[]): BuildStep[] {
  const out: BuildStep[] = [];
  const seen = new Set<string>();
  patterns.forEach((pattern, i) => {
    const matched = glob(pattern, dir).filter((f) => !seen.has(f));
    if (matched.length === 0) {
      const where = path.resolve(dir, pattern);
      problems.push({
        key: `${kind}[${i}]`,
        message: (hasMagic(pattern)
          ? `${JSON.stringify(pattern)} matches no file (looked for ${where})`
          : `file ${JSON.stringify(pattern)} not found (looked for ${where})`) + outsideHint(where, dir),
      });
    }
    for (const f of matched) {
      seen.add(f);
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

/** Cheap fingerprint of the steps' files (paths, sizes, mtimes): when it changes, hash again. */
export function statSignature(steps: BuildStep[]): string {
  return steps
    .map((s) => {
      try {
        const st = statSync(s.file);
        return `${s.file}:${st.size}:${st.mtimeMs}`;
      } catch {
        return `${s.file}:missing`;
      }
    })
    .join('\n');
}
