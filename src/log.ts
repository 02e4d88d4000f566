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

function write(level: Level, msg: string): void {
  if (quiet && level !== 'error') return;
  if (level === 'debug' && !debugOn) return;
  const tag = level === 'info' ? '' : `${level.toUpperCase()}: `;
  process.stderr.write(`${new Date().toISOString()} pgtestpool: ${tag}${redact(msg)}\n`);
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
