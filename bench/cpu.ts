// CPU time from /proc, for the benchmark's "CPU ms per test": a process and its descendants.
// A descendant's time counts while it lives (its own utime + stime) and, once its parent has
// reaped it, in the parent's cutime + cstime; so two readings of the same tree subtract cleanly.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

const TICK_MS = 1000 / (Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100);

interface Stat {
  ppid: number;
  /** utime + stime + cutime + cstime, in clock ticks. */
  ticks: number;
}

function readStat(pid: number): Stat | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm (field 2) may hold spaces and parentheses: the fields after the last ')' are plain.
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    return { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]) };
  } catch {
    return null; // exited meanwhile
  }
}

/** CPU milliseconds of each root's whole process tree (0 for a root that is gone). */
export function treeCpuMs(roots: number[]): number[] {
  const stats = new Map<number, Stat>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const s = readStat(Number(e));
    if (s) stats.set(Number(e), s);
  }
  const children = new Map<number, number[]>();
  for (const [pid, s] of stats) children.set(s.ppid, [...(children.get(s.ppid) ?? []), pid]);
  return roots.map((root) => {
    let ticks = 0;
    const stack = stats.has(root) ? [root] : [];
    while (stack.length) {
      const pid = stack.pop()!;
      ticks += stats.get(pid)!.ticks;
      stack.push(...(children.get(pid) ?? []));
    }
    return ticks * TICK_MS;
  });
}

/** This process's own CPU milliseconds (all its threads: PGlite's workers included). */
export function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** The postmaster's pid, from the first line of its data directory's postmaster.pid. */
export function postmasterPid(dataDir: string): number {
  return Number(readFileSync(`${dataDir}/postmaster.pid`, 'utf8').split('\n')[0]);
}
