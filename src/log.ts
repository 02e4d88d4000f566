// One readable line per event, on stderr so stdout stays free for the "ready" line.
// Anything that might carry a connection string goes through redact() first.

export type Level = 'info' | 'warn' | 'error' | 'debug';

let quiet = process.env.PGTESTPOOL_LOG === 'silent';
const debugOn = process.env.PGTESTPOOL_LOG === 'debug';

export function setQuiet(value: boolean): void {
  quiet = value;
}

/** Removes passwords from URLs (postgres://u:secret@h) and key=value strings (password=secret). */
export function redact(text: string): string {
  return text
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:)[^@\s]*@/gi, '$1***@')
    .replace(/(password\s*=\s*)('[^']*'|\S+)/gi, '$1***');
}

/**
 * Every entry starts with a timestamp; continuation lines are indented and control characters
 * escaped, so text that came from a client (an error message, a role name) cannot forge an entry.
 */
export function formatEntry(level: Level, msg: string, at = new Date()): string {
  const tag = level === 'info' ? '' : `${level.toUpperCase()}: `;
  const body = redact(msg)
    .replace(/\r\n?/g, '\n')
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
    .split('\n')
    .join('\n    ');
  return `${at.toISOString()} pgtestpool: ${tag}${body}\n`;
}

function write(level: Level, msg: string): void {
  if (quiet && level !== 'error') return;
  if (level === 'debug' && !debugOn) return;
  process.stderr.write(formatEntry(level, msg));
}

export const log = {
  info: (msg: string) => write('info', msg),
  warn: (msg: string) => write('warn', msg),
  error: (msg: string) => write('error', msg),
  debug: (msg: string) => write('debug', msg),
};

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
