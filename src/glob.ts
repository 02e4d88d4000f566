// A small glob (*, ?, [...], **) for config.yaml's file lists: Node 20 has no fs.glob,
// and the runtime dependency list is kept short on purpose.
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

function segmentToRegExp(segment: string): RegExp {
  let re = '';
  for (let i = 0; i < segment.length; i++) {
    const c = segment[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = segment.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        let body = segment.slice(i + 1, end);
        if (body.startsWith('!')) body = '^' + body.slice(1);
        re += `[${body.replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

export function hasMagic(pattern: string): boolean {
  return /[*?[]/.test(pattern);
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function walk(dir: string, segments: string[], out: string[]): void {
  if (segments.length === 0) {
    out.push(dir);
    return;
  }
  const [head, ...rest] = segments as [string, ...string[]];
  if (head === '**') {
    walk(dir, rest, out); // ** matches zero directories too
    for (const entry of safeReaddir(dir)) {
      if (!entry.startsWith('.') && isDir(path.join(dir, entry))) walk(path.join(dir, entry), segments, out);
    }
    return;
  }
  if (!hasMagic(head)) {
    const next = path.join(dir, head);
    if (rest.length === 0 ? exists(next) : isDir(next)) walk(next, rest, out);
    return;
  }
  const re = segmentToRegExp(head);
  for (const entry of safeReaddir(dir)) {
    if (entry.startsWith('.') && !head.startsWith('.')) continue;
    if (re.test(entry)) walk(path.join(dir, entry), rest, out);
  }
}

function exists(p: string): boolean {
  try {
    statSync(p);
    return true;
  } catch {
    return false;
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/**
 * Files matching `pattern` (relative to `base` unless absolute), sorted by path like a shell
 * expansion, so the order of schema files is predictable. Directories are not returned.
 */
export function glob(pattern: string, base: string): string[] {
  const absolute = path.resolve(base, pattern);
  const root = path.parse(absolute).root;
  const segments = absolute.slice(root.length).split(path.sep).filter(Boolean);
  const out: string[] = [];
  walk(root, segments, out);
  return [...new Set(out)].filter((p) => !isDir(p)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}
