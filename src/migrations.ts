// Reads a template's migration folder in the layout of the user's migration tool and returns the "up"
// steps in the order the tool would apply them. Nothing here touches a database: the template builder
// runs each step with runSqlText (src/sqlscript.ts), so a step's SQL keeps the real file's line numbers.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, relative, resolve } from 'node:path';

export type MigrationFormat = 'flyway' | 'golang-migrate' | 'dbmate' | 'prisma' | 'numbered';
export const MIGRATION_FORMATS: readonly MigrationFormat[] = ['flyway', 'golang-migrate', 'dbmate', 'prisma', 'numbered'];

export interface MigrationStep {
  /** Absolute path of the file. */
  file: string;
  /** As written in the name ('10', '2.1', '20240101120000'; flyway's V1_1 is '1.1'); '' for flyway repeatable. */
  version: string;
  /** Description part, for logs. */
  name: string;
  /** The SQL to run: the whole file, or (dbmate) one up section with every other line blanked. */
  sql: string;
  /** False only where the format says so; the builder wraps `true` steps in BEGIN/COMMIT. */
  transaction: boolean;
}

export class MigrationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MigrationError';
  }
}

// What each format's migrations are called, for "none found" and "name doesn't parse" messages.
const EXPECTED: Record<MigrationFormat, string> = {
  flyway: 'V<version>__<description>.sql (and R__<description>.sql for repeatable migrations)',
  'golang-migrate': '<version>_<title>.up.sql (plus optional <version>_<title>.down.sql)',
  dbmate: '<version>_<name>.sql with a "-- migrate:up" line',
  prisma: '<timestamp>_<name>/migration.sql (one subfolder per migration)',
  numbered: '<number>_<name>.sql, e.g. 001_init.sql (separator _, -, . or space)',
};

/** The up steps of the migrations in `dir`, in apply order; throws MigrationError with a fix-it message. */
export function readMigrations(dir: string, format: MigrationFormat): MigrationStep[] {
  if (!MIGRATION_FORMATS.includes(format)) {
    throw new MigrationError(`unknown migration format "${String(format)}": use one of ${MIGRATION_FORMATS.join(', ')}`);
  }
  const root = resolve(dir);
  let isDir: boolean;
  try {
    isDir = statSync(root).isDirectory();
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    throw new MigrationError(`migrations folder ${root} ${missing ? 'does not exist' : `cannot be read (${String(err)})`}: check the path`);
  }
  if (!isDir) throw new MigrationError(`${root} is not a folder: point it at the folder holding the ${format} migrations`);
  const steps = READERS[format](root);
  if (steps.length === 0) {
    const seen = list(root).map((e) => e.name);
    const contents = seen.length ? `it contains ${preview(seen)}` : 'it is empty';
    throw new MigrationError(
      `no ${format} migrations found in ${root} (${contents}): expected ${EXPECTED[format]}; check the path and the format`,
    );
  }
  return steps;
}

// ---- formats --------------------------------------------------------------------------------------

const READERS: Record<MigrationFormat, (root: string) => MigrationStep[]> = {
  // Flyway scans its locations recursively; undo (U) migrations and other files (callbacks such as
  // afterMigrate.sql, .conf files) are not up steps. Only names starting with V/R/U must parse.
  flyway(root) {
    const versioned: Found[] = [];
    const repeatable: Found[] = [];
    const bad: string[] = [];
    for (const file of filesUnder(root)) {
      const base = basename(file);
      if (!base.endsWith('.sql') || !/^[VRU][\d_]/i.test(base)) continue; // views.sql is not a typo'd migration
      let m: RegExpMatchArray | null;
      if ((m = /^V(\d+(?:[._]\d+)*)__(.*)\.sql$/.exec(base))) {
        versioned.push({ file, version: m[1]!.replaceAll('_', '.'), name: m[2]!.replaceAll('_', ' ') });
      } else if ((m = /^R__(.+)\.sql$/.exec(base))) {
        repeatable.push({ file, version: '', name: m[1]!.replaceAll('_', ' ') });
      } else if (!/^U\d+(?:[._]\d+)*__.*\.sql$/.test(base)) {
        bad.push(file);
      }
    }
    badNames(root, 'flyway', bad, 'the prefix is an uppercase V, R or U, the version digits separated by . or _, then two underscores');
    // Flyway applies repeatables after all versioned migrations, ordered by description.
    repeatable.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    repeatable.forEach((r, i) => {
      const prev = repeatable[i - 1];
      if (prev?.name === r.name) fail(root, `${rel(root, prev.file)} and ${rel(root, r.file)} are both repeatable migration "${r.name}": rename or remove one`);
    });
    return [...inVersionOrder(root, versioned), ...repeatable].map((f) => ({ ...step(f), transaction: flywayTransaction(f.file) }));
  },

  'golang-migrate'(root) {
    const ups: Found[] = [];
    const bad: string[] = [];
    for (const { path: file, name: base } of list(root).filter((e) => e.isFile && e.name.endsWith('.sql'))) {
      const m = /^(\d+)_(.*)\.(up|down)\.sql$/.exec(base);
      if (m?.[3] === 'up') ups.push({ file, version: m[1]!, name: m[2]! });
      else if (!m && (/^\d/.test(base) || /\.(up|down)\.sql$/.test(base))) bad.push(file);
    }
    badNames(root, 'golang-migrate', bad, 'the version is digits followed by _, and the name ends in .up.sql or .down.sql');
    return inVersionOrder(root, ups).map(step);
  },

  // dbmate takes every file whose name starts with digits; each up section (newer dbmate allows several
  // per file) becomes its own step because each may carry its own transaction option.
  dbmate(root) {
    const found: Found[] = [];
    for (const { path: file, name: base } of list(root).filter((e) => e.isFile)) {
      const m = /^(\d+)_?(.*)\.sql$/.exec(base);
      if (m) found.push({ file, version: m[1]!, name: m[2]! });
    }
    return inVersionOrder(root, found).flatMap((f) => dbmateSections(root, f));
  },

  // Prisma treats every subfolder as a migration; its migration_lock.toml and other top-level files are not.
  prisma(root) {
    const found: Found[] = [];
    const bad: string[] = [];
    for (const { path: folder, name, isDir } of list(root)) {
      if (!isDir) continue;
      const m = /^(\d+)(?:_(.*))?$/.exec(name);
      if (!m) bad.push(folder);
      else found.push({ file: resolve(folder, 'migration.sql'), version: m[1]!, name: m[2] ?? '' });
    }
    badNames(root, 'prisma', bad, 'each migration subfolder is named <digits>_<name>');
    for (const f of found) {
      if (!statSync(f.file, { throwIfNoEntry: false })?.isFile()) {
        fail(root, `migration folder ${rel(root, resolve(f.file, '..'))} has no migration.sql (prisma would refuse it too): add the file or remove the folder`);
      }
    }
    return inVersionOrder(root, found).map(step);
  },

  // Any .sql file that doesn't start with a number is an error, so nothing is silently skipped.
  numbered(root) {
    const found: Found[] = [];
    const bad: string[] = [];
    for (const { path: file, name: base } of list(root).filter((e) => e.isFile && e.name.endsWith('.sql'))) {
      const m = /^(\d+)(?:[_\-. ](.*))?\.sql$/.exec(base);
      if (!m) bad.push(file);
      else if (base.endsWith('.down.sql')) {
        fail(root, `${base} looks like a golang-migrate down migration, which must not run as an up step: use format golang-migrate, or remove the down files`);
      } else found.push({ file, version: m[1]!, name: m[2] ?? '' });
    }
    badNames(root, 'numbered', bad, 'every .sql file in the folder must start with its number');
    return inVersionOrder(root, found).map(step);
  },
};

// dbmate: `-- migrate:up [options]` starts an up section, which runs until `-- migrate:down` or the next
// up marker. Lines outside the section become empty, so statement line numbers match the real file.
const DBMATE_UP = /^--\s*migrate:up(\s*$|\s+\S+)/;
const DBMATE_DOWN = /^--\s*migrate:down(\s*$|\s+\S+)/;

function dbmateSections(root: string, f: Found): MigrationStep[] {
  const lines = readSql(f.file).split('\n');
  const ups = lines.flatMap((l, i) => (DBMATE_UP.test(l) ? [i] : []));
  const where = rel(root, f.file);
  if (ups.length === 0) fail(root, `${where} has no "-- migrate:up" line: dbmate needs one before the up statements`);
  lines.slice(0, ups[0]).forEach((l, i) => {
    if (DBMATE_DOWN.test(l)) fail(root, `${where}:${i + 1}: "-- migrate:down" comes before "-- migrate:up": put the up section first`);
    // The \s* after the comment: `.` stops at the \r of a CRLF line.
    if (!/^\s*(--.*)?\s*$/.test(l)) fail(root, `${where}:${i + 1}: statement before "-- migrate:up" (dbmate refuses these): move it into the up section`);
  });
  return ups.map((start, k) => {
    const next = ups[k + 1] ?? lines.length;
    const down = lines.findIndex((l, i) => i > start && i < next && DBMATE_DOWN.test(l));
    const end = down < 0 ? next : down;
    // Options are key:value words after the marker; dbmate only knows transaction:false.
    const options = lines[start]!.replace(/^--\s*migrate:up/, '').trim().split(/\s+/);
    return {
      file: f.file,
      version: f.version,
      name: ups.length > 1 ? `${f.name} (up section ${k + 1})` : f.name,
      sql: lines.map((l, i) => (i > start && i < end ? l : '')).join('\n'),
      transaction: !options.includes('transaction:false'),
    };
  });
}

// Flyway's per-script config (V1__x.sql.conf) can turn the transaction off.
function flywayTransaction(file: string): boolean {
  let conf: string;
  try {
    conf = readFileSync(`${file}.conf`, 'utf8');
  } catch {
    return true;
  }
  return !/^\s*executeInTransaction\s*=\s*false\s*$/m.test(conf);
}

// ---- shared ---------------------------------------------------------------------------------------

interface Found {
  file: string;
  version: string;
  name: string;
}

/** Compares dotted versions part by part as numbers of any length: 2 < 9 < 10, 1.2.9 < 1.2.10, 01 = 1 = 1.0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.');
  const pb = b.split('.');
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    // Strings, not Number(): 20-digit timestamps would lose precision.
    const x = (pa[i] ?? '').replace(/^0+/, '');
    const y = (pb[i] ?? '').replace(/^0+/, '');
    if (x.length !== y.length) return x.length - y.length;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

function inVersionOrder(root: string, found: Found[]): Found[] {
  const sorted = [...found].sort((a, b) => compareVersions(a.version, b.version) || (a.file < b.file ? -1 : 1));
  sorted.forEach((f, i) => {
    const prev = sorted[i - 1];
    if (prev && compareVersions(prev.version, f.version) === 0) {
      fail(root, `${rel(root, prev.file)} and ${rel(root, f.file)} have the same version ${f.version}: each migration needs its own version, renumber one of them`);
    }
  });
  return sorted;
}

function step(f: Found): MigrationStep {
  // Run as the file is, like psql: golang-migrate, Prisma and plain folders bring their own BEGIN/COMMIT where they want one.
  return { ...f, sql: readSql(f.file), transaction: false };
}

function readSql(file: string): string {
  const text = readFileSync(file, 'utf8');
  return text.startsWith('\uFEFF') ? text.slice(1) : text;
}

interface Entry {
  name: string;
  path: string;
  isFile: boolean;
  isDir: boolean;
}

// Visible entries of a folder (dot-files like .DS_Store or .gitkeep are never migrations), following symlinks.
function list(dir: string): Entry[] {
  return readdirSync(dir)
    .filter((name) => !name.startsWith('.'))
    .sort()
    .map((name) => {
      const path = resolve(dir, name);
      const st = statSync(path, { throwIfNoEntry: false }); // a dangling symlink is neither
      return { name, path, isFile: !!st?.isFile(), isDir: !!st?.isDirectory() };
    });
}

/** Every visible file below `dir` (symlinks followed; a loop is the caller's problem, as for the readers). */
export function filesUnder(dir: string): string[] {
  return list(dir).flatMap((e) => (e.isDir ? filesUnder(e.path) : e.isFile ? [e.path] : []));
}

function badNames(root: string, format: MigrationFormat, files: string[], rule: string): void {
  if (files.length === 0) return;
  const one = files.length === 1;
  fail(
    root,
    `${preview(files.map((f) => rel(root, f)))} ${one ? 'looks like a' : 'look like'} ${format} migration${one ? '' : 's'} ` +
      `but ${one ? 'its name does' : 'their names do'} not parse (${rule}): expected ${EXPECTED[format]}; rename or move ${one ? 'it' : 'them'}`,
  );
}

function fail(root: string, problem: string): never {
  throw new MigrationError(`migrations folder ${root}: ${problem}`);
}

const rel = (root: string, file: string) => relative(root, file);
const preview = (names: string[]) => (names.length > 10 ? [...names.slice(0, 10), `... (${names.length} in all)`] : names).join(', ');
