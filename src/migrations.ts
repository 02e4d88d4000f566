// Reads a template's migration folder in the layout of the user's migration tool and returns the "up"
// steps in the order the tool would apply them. Nothing here touches a database: the template builder
// runs each step with runSqlText (src/sqlscript.ts), so a step's SQL keeps the real file's line numbers.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, relative, resolve } from 'node:path';

export type MigrationFormat = 'flyway' | 'golang-migrate' | 'dbmate' | 'prisma' | 'goose' | 'drizzle' | 'sqitch' | 'liquibase' | 'numbered';
export const MIGRATION_FORMATS: readonly MigrationFormat[] = ['flyway', 'golang-migrate', 'dbmate', 'prisma', 'goose', 'drizzle', 'sqitch', 'liquibase', 'numbered'];

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
  goose: '<version>_<name>.sql with a "-- +goose Up" line',
  drizzle: 'meta/_journal.json and the <NNNN>_<name>.sql files it lists (drizzle-kit generate\'s output folder)',
  sqitch: 'sqitch.plan and deploy/<change>.sql (the sqitch project folder)',
  liquibase: '*.sql files starting with "--liquibase formatted sql" and holding "--changeset author:id" lines',
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

  // goose: <version>_<name>.sql, the section after "-- +goose Up" (until "-- +goose Down"), in a
  // transaction unless the file says "-- +goose NO TRANSACTION". Go migrations cannot run here.
  goose(root) {
    const found: Found[] = [];
    const goFiles: string[] = [];
    for (const { path: file, name: base } of list(root).filter((e) => e.isFile)) {
      const m = /^(\d+)_(.*)\.(sql|go)$/.exec(base);
      if (!m) continue;
      if (m[3] === 'go') goFiles.push(file);
      else found.push({ file, version: m[1]!, name: m[2]! });
    }
    if (goFiles.length) {
      fail(root, `${preview(goFiles.map((f) => rel(root, f)))}: goose Go migrations are compiled into your program and cannot be run by pgtestpool: build the template with command: (e.g. "go run ./cmd/migrate up") instead`);
    }
    return inVersionOrder(root, found).map((f) => gooseUp(root, f));
  },

  // drizzle-kit applies what meta/_journal.json lists, in its order; statements are separated by
  // "--> statement-breakpoint" comments, which are plain SQL comments here.
  drizzle(root) {
    const journalFile = resolve(root, 'meta', '_journal.json');
    let journal: { entries?: { idx?: number; tag?: string }[] };
    try {
      journal = JSON.parse(readFileSync(journalFile, 'utf8'));
    } catch (err) {
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
      if (missing && list(root).length === 0) return [];
      fail(root, missing ? 'no meta/_journal.json: point dir at the folder drizzle-kit generate writes (its "out" setting)' : `meta/_journal.json cannot be read: ${errorText(err)}`);
    }
    const entries = Array.isArray(journal.entries) ? journal.entries : fail(root, 'meta/_journal.json has no "entries" list');
    const listed = new Set<string>();
    const steps = [...entries].sort((a, b) => (a.idx ?? 0) - (b.idx ?? 0)).map((e, i) => {
      if (typeof e.tag !== 'string' || !e.tag) fail(root, `meta/_journal.json: entry ${i} has no "tag"`);
      const file = resolve(root, `${e.tag}.sql`);
      if (!statSync(file, { throwIfNoEntry: false })?.isFile()) fail(root, `meta/_journal.json lists ${e.tag}, but ${e.tag}.sql is missing: restore it or regenerate with drizzle-kit`);
      listed.add(file);
      // drizzle-kit's migrator runs pending migrations in one transaction; one per file is as safe.
      return { file, version: String(e.idx ?? i), name: e.tag, sql: readSql(file), transaction: true };
    });
    const unlisted = list(root).filter((e) => e.isFile && e.name.endsWith('.sql') && !listed.has(e.path)).map((e) => e.name);
    if (unlisted.length) fail(root, `${preview(unlisted)} ${unlisted.length === 1 ? 'is' : 'are'} not in meta/_journal.json, so drizzle-kit would not apply ${unlisted.length === 1 ? 'it' : 'them'}: regenerate the migrations or remove the file`);
    return steps;
  },

  // sqitch: the changes of sqitch.plan in plan order, each deploy/<change>.sql. A change reworked
  // after a tag deploys its earlier version from deploy/<change>@<tag>.sql, as sqitch does.
  sqitch(root) {
    const planFile = resolve(root, 'sqitch.plan');
    let text: string;
    try {
      text = readFileSync(planFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && list(root).length === 0) return [];
      return fail(root, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no sqitch.plan: point dir at the sqitch project folder (the one holding sqitch.plan and deploy/)' : `sqitch.plan cannot be read: ${errorText(err)}`);
    }
    const changes: { name: string; line: number; tagAfter: string | null }[] = [];
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/\r$/, '').trim();
      if (!line || line.startsWith('#') || line.startsWith('%')) return;
      if (line.startsWith('@')) {
        const tag = line.slice(1).split(/\s/)[0]!;
        for (const c of changes) if (c.tagAfter === null) c.tagAfter = tag;
        return;
      }
      if (line.startsWith('-')) fail(root, `sqitch.plan:${i + 1}: "${line.split(/\s/)[0]}" reverts a change, which pgtestpool does not replay: remove the line (or build with command: sqitch deploy)`);
      const name = line.replace(/^\+/, '').split(/\s/)[0]!;
      changes.push({ name, line: i + 1, tagAfter: null });
    });
    const last = new Map(changes.map((c, i) => [c.name, i]));
    return changes.map((c, i) => {
      // An earlier version of a reworked change: the script sqitch copied to name@tag.
      const script = last.get(c.name) !== i ? `${c.name}@${c.tagAfter}` : c.name;
      const file = resolve(root, 'deploy', `${script}.sql`);
      if (!statSync(file, { throwIfNoEntry: false })?.isFile()) fail(root, `sqitch.plan:${c.line}: change ${c.name} has no deploy script deploy/${script}.sql: add it (sqitch add creates it) or fix the plan`);
      // Deploy scripts bring their own BEGIN/COMMIT (sqitch add writes them so).
      return { file, version: String(i + 1), name: c.name, sql: readSql(file), transaction: false };
    });
  },

  // Liquibase formatted SQL: every *.sql below the folder (in path order, as includeAll does) that
  // starts with "--liquibase formatted sql"; each "--changeset author:id" runs up to the next one,
  // in a transaction unless runInTransaction:false, skipped when its dbms: excludes postgresql.
  liquibase(root) {
    const files = filesUnder(root).filter((f) => f.endsWith('.sql')).sort();
    const steps: MigrationStep[] = [];
    const ids = new Map<string, string>();
    for (const file of files) {
      const lines = readSql(file).split('\n');
      if (!/^--\s*liquibase formatted sql/i.test(lines.find((l) => l.trim() !== '')?.trim() ?? '')) continue;
      const starts = lines.flatMap((l, i) => (/^--\s*changeset\s/i.test(l) ? [i] : []));
      if (starts.length === 0) fail(root, `${rel(root, file)} is formatted SQL but has no "--changeset author:id" line: add one before its statements`);
      starts.forEach((start, k) => {
        const header = lines[start]!.replace(/^--\s*changeset\s+/i, '').trim();
        const id = header.split(/\s+/)[0]!;
        if (!/^[^:\s]+:\S+$/.test(id)) fail(root, `${rel(root, file)}:${start + 1}: expected "--changeset author:id", got "${lines[start]!.trim()}"`);
        const seen = ids.get(id);
        if (seen) fail(root, `changeset ${id} appears twice (${seen} and ${rel(root, file)}:${start + 1}): each changeset needs its own author:id`);
        ids.set(id, `${rel(root, file)}:${start + 1}`);
        const attrs = Object.fromEntries(header.split(/\s+/).slice(1).map((a) => [a.split(':')[0]!.toLowerCase(), a.slice(a.indexOf(':') + 1).toLowerCase()]));
        if (attrs.dbms && !forPostgres(attrs.dbms)) return;
        const end = starts[k + 1] ?? lines.length;
        steps.push({
          file,
          version: String(steps.length + 1),
          name: id,
          // Rollback lines are comments already; other changesets' lines are blanked (line numbers stay true).
          sql: lines.map((l, i) => (i > start && i < end ? l : '')).join('\n'),
          transaction: attrs.runintransaction !== 'false',
        });
      });
    }
    return steps;
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

// goose: the lines after "-- +goose Up" until "-- +goose Down"; every other line blanked.
function gooseUp(root: string, f: Found): MigrationStep {
  const lines = readSql(f.file).split('\n');
  const up = lines.findIndex((l) => /^--\s*\+goose\s+up\b/i.test(l.trim()));
  if (up < 0) fail(root, `${rel(root, f.file)} has no "-- +goose Up" line: goose needs one before the up statements`);
  const down = lines.findIndex((l, i) => i > up && /^--\s*\+goose\s+down\b/i.test(l.trim()));
  const end = down < 0 ? lines.length : down;
  return {
    file: f.file,
    version: f.version,
    name: f.name,
    sql: lines.map((l, i) => (i > up && i < end ? l : '')).join('\n'),
    transaction: !lines.some((l) => /^--\s*\+goose\s+no\s+transaction\b/i.test(l.trim())),
  };
}

/** Liquibase's dbms: attribute (postgresql, all, none, !oracle, a comma list) includes PostgreSQL. */
function forPostgres(dbms: string): boolean {
  const items = dbms.split(',').map((d) => d.trim()).filter(Boolean);
  if (items.includes('!postgresql') || items.includes('none')) return false;
  const wanted = items.filter((d) => !d.startsWith('!'));
  return wanted.length === 0 || wanted.includes('postgresql') || wanted.includes('all');
}

const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err));

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
