// Applies SQL files through a pg.Client the way `psql -v ON_ERROR_STOP=1 -f file` would, so that
// schema files and pg_dump output load on machines without psql. The splitter mirrors psql's lexer
// (psqlscan.l) closely enough for real dumps: quoting, parenthesised rule actions, BEGIN ATOMIC
// bodies, COPY ... FROM stdin data blocks and the few meta-commands pg_dump writes.
import { readFile } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';

export interface Statement {
  sql: string;
  /** 1-based line in the file where the statement starts. */
  line: number;
  /** For COPY ... FROM stdin: the data lines up to (not including) the `\.` line, each ending in \n. */
  copyData?: Buffer;
  /** 1-based line of the first data row (for mapping COPY "line N" errors back to the file). */
  copyDataLine?: number;
}

export class SqlScriptError extends Error {
  file?: string;
  line?: number;
  statement?: string;
  pgMessage?: string;
  detail?: string;
  hint?: string;
  sqlstate?: string;
  constructor(message: string, fields: Partial<SqlScriptError> & { cause?: unknown } = {}) {
    const { cause, ...rest } = fields;
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'SqlScriptError';
    Object.assign(this, rest);
  }
}

// Meta-commands that are safe to drop: pg_dump 17.6+ wraps dumps in \restrict/\unrestrict, and we
// always behave as ON_ERROR_STOP=1 anyway.
function ignorableMeta(name: string, args: string): boolean {
  return ['restrict', 'unrestrict', 'echo'].includes(name) || (name === 'set' && /^ON_ERROR_STOP\b/.test(args));
}

const isSpace = (c: string) => c === ' ' || c === '\n' || c === '\t' || c === '\r' || c === '\f' || c === '\v';
// PostgreSQL treats every non-ASCII character as an identifier character.
const isWordStart = (c: string) => /[A-Za-z_]/.test(c) || c >= '\u0080';
const isWordChar = (c: string) => /[A-Za-z0-9_$]/.test(c) || c >= '\u0080';
const DOLLAR_TAG = /\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y;

/** Splits a script into statements; throws SqlScriptError on unterminated input or unsupported meta-commands. */
export function splitSql(text: string, file = '<sql>'): Statement[] {
  if (text.startsWith('\uFEFF')) text = text.slice(1); // BOM: not a line, so line numbers stay right
  const n = text.length;
  const newlines: number[] = [];
  for (let p = text.indexOf('\n'); p >= 0; p = text.indexOf('\n', p + 1)) newlines.push(p);
  const lineOf = (pos: number) => {
    let lo = 0, hi = newlines.length; // count of newlines before pos
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (newlines[mid]! < pos) lo = mid + 1;
      else hi = mid;
    }
    return lo + 1;
  };
  const fail = (msg: string, pos: number): never => {
    const line = lineOf(pos);
    throw new SqlScriptError(`${file}:${line}: ${msg}`, { file, line });
  };
  const eol = (pos: number) => {
    const e = text.indexOf('\n', pos);
    return e < 0 ? n : e;
  };

  const skipQuoted = (open: number, q: string, backslashes: boolean, what: string): number => {
    for (let j = open + 1; j < n; j++) {
      const c = text[j];
      if (backslashes && c === '\\') j++;
      else if (c === q) {
        if (text[j + 1] !== q) return j + 1;
        j++; // doubled quote is an escaped quote
      }
    }
    return fail(`unterminated ${what}`, open);
  };
  const skipBlockComment = (open: number): number => {
    let depth = 0;
    for (let j = open; j < n; ) {
      if (text[j] === '/' && text[j + 1] === '*') (depth++, (j += 2));
      else if (text[j] === '*' && text[j + 1] === '/') {
        j += 2;
        if (--depth === 0) return j;
      } else j++;
    }
    return fail('unterminated /* comment', open);
  };

  const out: Statement[] = [];
  // Per-statement state. `start` is the first token (leading comments are not part of the statement);
  // `kept` + text[segStart..] is the statement text with ignorable meta-command lines cut out.
  let start = -1, segStart = 0, kept = '';
  let parens = 0, beginDepth = 0, wordCount = 0, heads = ['', '', '', ''];
  let tokens = 0, first = '', second = '', last = '', copyIn = false;
  const reset = () => {
    start = -1, kept = '', parens = 0, beginDepth = 0, wordCount = 0, heads = ['', '', '', ''];
    tokens = 0, first = '', second = '', last = '', copyIn = false;
  };
  const token = (t: string, pos: number) => {
    if (start < 0) {
      start = pos;
      segStart = pos;
    }
    tokens++;
    if (tokens === 1) first = t;
    else if (tokens === 2) second = t;
    last = t;
  };
  const word = (w: string, pos: number) => {
    // COPY <table> ... FROM STDIN (not COPY (query) TO ...): its data follows the statement.
    if (w === 'stdin' && last === 'from' && first === 'copy' && second !== '(' && parens === 0) copyIn = true;
    token(w, pos);
    // psql's heuristic: in CREATE [OR REPLACE] FUNCTION|PROCEDURE, semicolons between BEGIN (ATOMIC)
    // and its END do not end the statement; CASE...END nests inside.
    if (wordCount < 4 && ['create', 'or', 'replace', 'function', 'procedure'].includes(w)) heads[wordCount] = w[0]!;
    wordCount++;
    const [h0, h1, h2, h3] = heads;
    const routine = h0 === 'c' && (h1 === 'f' || h1 === 'p' || (h1 === 'o' && h2 === 'r' && (h3 === 'f' || h3 === 'p')));
    if (routine && parens === 0) {
      if (w === 'begin') beginDepth++;
      else if (w === 'case' && beginDepth > 0) beginDepth++;
      else if (w === 'end' && beginDepth > 0) beginDepth--;
    }
  };

  let i = 0;
  while (i < n) {
    const c = text[i]!;
    if (isSpace(c)) i++;
    else if (c === '-' && text[i + 1] === '-') i = eol(i);
    else if (c === '/' && text[i + 1] === '*') i = skipBlockComment(i);
    else if (c === '\\') {
      // A backslash outside quotes is never SQL: psql treats it as a meta-command up to end of line.
      const e = eol(i);
      const [, name = '', args = ''] = /^\\(\S*)\s*(.*?)\s*$/.exec(text.slice(i, e))!;
      if (!ignorableMeta(name, args)) {
        const why = name === 'connect' || name === 'c' ? ' (pg_dump writes it with --create; dump without -C)' : '';
        fail(`psql meta-command \\${name} is not supported${why}; the file should be plain SQL`, i);
      }
      if (start >= 0) {
        // inside a statement: cut the line out but keep its newline, so error positions still map to lines
        kept += text.slice(segStart, i);
        segStart = e;
      }
      i = e;
    } else if (c === "'") {
      token("'", i);
      i = skipQuoted(i, "'", false, 'quoted string');
    } else if (c === '"') {
      token('"', i);
      i = skipQuoted(i, '"', false, 'quoted identifier');
    } else if (c === '$' && ((DOLLAR_TAG.lastIndex = i), DOLLAR_TAG.test(text))) {
      const tag = text.slice(i, DOLLAR_TAG.lastIndex);
      const close = text.indexOf(tag, DOLLAR_TAG.lastIndex);
      if (close < 0) fail(`unterminated dollar-quoted string ${tag}`, i);
      token('$', i);
      i = close + tag.length;
    } else if (isWordStart(c)) {
      let j = i + 1;
      while (j < n && isWordChar(text[j]!)) j++;
      const w = text.slice(i, j).toLowerCase();
      if (w === 'e' && text[j] === "'") {
        token("'", i);
        i = skipQuoted(j, "'", true, 'E string');
      } else if (w === 'u' && text[j] === '&' && (text[j + 1] === "'" || text[j + 1] === '"')) {
        token(text[j + 1]!, i);
        i = skipQuoted(j + 1, text[j + 1]!, false, 'U& string');
      } else {
        word(w, i);
        i = j;
      }
    } else if (c === ';' && parens === 0 && beginDepth === 0) {
      if (start >= 0) {
        const stmt: Statement = { sql: kept + text.slice(segStart, i + 1), line: lineOf(start) };
        if (copyIn) {
          // psql reads the data from the following lines, up to a line that is exactly "\.".
          const lineEnd = eol(i + 1);
          if (text.slice(i + 1, lineEnd).trim()) fail('COPY ... FROM stdin must end its line; data starts on the next line', i);
          const dataStart = lineEnd + 1;
          let p = dataStart;
          for (;;) {
            if (p >= n) fail('COPY data not terminated by a line containing only \\.', start);
            const e = eol(p);
            const ln = text.slice(p, e);
            if (ln === '\\.' || ln === '\\.\r') break;
            p = e + 1;
          }
          stmt.copyData = Buffer.from(text.slice(dataStart, p), 'utf8');
          stmt.copyDataLine = lineOf(dataStart);
          i = eol(p);
        } else i++;
        out.push(stmt);
      } else i++;
      reset();
    } else {
      if (c === '(') parens++;
      else if (c === ')' && parens > 0) parens--;
      token(c, i);
      i++;
    }
  }
  if (start >= 0) {
    // psql runs an unterminated last statement at end of file, so do we.
    out.push({ sql: (kept + text.slice(segStart)).trimEnd(), line: lineOf(start) });
  }
  return out;
}

// The parts of pg's (untyped) Connection that a submittable uses; see pg/lib/connection.js.
interface WireConnection {
  query(text: string): void;
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
  sendCopyFail(message: string): void;
}

const COPY_CHUNK = 64 * 1024;

/**
 * One simple-protocol query that can feed COPY FROM STDIN, passed to client.query(obj). pg calls the
 * handle* methods below from lib/client.js; rows are dropped (a script has no use for them). After an
 * ErrorResponse pg calls handleError and then never handleReadyForQuery, so either one settles us.
 */
class ScriptQuery {
  private settled = false;
  readonly done: Promise<void>;
  private resolve!: () => void;
  private reject!: (err: unknown) => void;

  constructor(
    private readonly text: string,
    private readonly copyData: Buffer | undefined,
  ) {
    this.done = new Promise((res, rej) => ((this.resolve = res), (this.reject = rej)));
  }

  submit(connection: unknown): null {
    (connection as WireConnection).query(this.text);
    return null;
  }

  handleCopyInResponse(connection: unknown): void {
    const con = connection as WireConnection;
    // The splitter did not see FROM STDIN (unusual spelling): fail the COPY rather than hang.
    if (!this.copyData) return con.sendCopyFail('pgtestpool: no COPY data follows this statement in the file');
    for (let off = 0; off < this.copyData.length; off += COPY_CHUNK) {
      con.sendCopyFromChunk(this.copyData.subarray(off, off + COPY_CHUNK));
    }
    con.endCopyFrom();
  }

  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleCopyData(): void {} // COPY ... TO STDOUT output: discarded, as with psql -o /dev/null
  handleCommandComplete(): void {}
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {} // only for extended-protocol portals; never sent for a simple query

  handleError(err: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.reject(err);
  }

  handleReadyForQuery(): void {
    if (this.settled) return;
    this.settled = true;
    this.resolve();
  }
}

// PostgreSQL positions count characters (code points) from 1; JS strings index UTF-16 units.
function linesBefore(sql: string, position: number): number {
  let k = 0, lines = 0;
  for (const ch of sql) {
    if (++k >= position) break;
    if (ch === '\n') lines++;
  }
  return lines;
}

interface PgErrorFields {
  message: string;
  severity?: string;
  code?: string;
  detail?: string;
  hint?: string;
  position?: string;
  where?: string;
}

function toScriptError(err: unknown, stmt: Statement, file: string): SqlScriptError {
  const e = (err ?? {}) as PgErrorFields;
  const isPg = typeof e.severity === 'string'; // a DatabaseError from the server, not a socket error
  let line = stmt.line;
  const pos = Number(e.position);
  if (pos > 0) line += linesBefore(stmt.sql, pos);
  else if (stmt.copyDataLine && /^COPY\b/.test(e.where ?? '')) {
    // "COPY payment, line 3, column amount: ..." -> the data row's line in the file
    const m = /, line (\d+)/.exec(e.where!);
    if (m) line = stmt.copyDataLine + Number(m[1]) - 1;
  }
  let firstLine = stmt.sql.split('\n', 1)[0]!.trimEnd();
  if (firstLine.length > 120) firstLine = firstLine.slice(0, 117) + '...';
  const msg = [
    isPg ? `${file}:${line}: ${e.severity}:  ${e.message}` : `${file}:${line}: ${String(e.message ?? err)}`,
    `STATEMENT${line !== stmt.line ? ` (from line ${stmt.line})` : ''}:  ${firstLine}`,
  ];
  if (e.detail) msg.push(`DETAIL:  ${e.detail}`);
  if (e.hint) msg.push(`HINT:  ${e.hint}`);
  if (isPg && e.where) msg.push(`CONTEXT:  ${e.where}`);
  return new SqlScriptError(msg.join('\n'), {
    file,
    line,
    statement: stmt.sql,
    pgMessage: e.message,
    detail: e.detail,
    hint: e.hint,
    sqlstate: isPg ? e.code : undefined,
    cause: err,
  });
}

/** Runs each statement as its own simple query (psql autocommit), stopping at the first error. */
export async function runSqlText(
  client: pg.Client,
  text: string,
  file = '<sql>',
): Promise<{ statements: number; ms: number }> {
  const t0 = performance.now();
  const statements = splitSql(text, file); // split everything first: a syntax slip at the end fails before any change
  for (const stmt of statements) {
    const q = new ScriptQuery(stmt.sql, stmt.copyData);
    client.query(q);
    try {
      await q.done;
    } catch (err) {
      throw toScriptError(err, stmt, file);
    }
  }
  return { statements: statements.length, ms: performance.now() - t0 };
}

/** Reads a UTF-8 file (BOM allowed) and runs it; displayName is what error messages call the file. */
export async function runSqlFile(
  client: pg.Client,
  file: string,
  opts: { displayName?: string } = {},
): Promise<{ statements: number; ms: number }> {
  const text = await readFile(file, 'utf8');
  return runSqlText(client, text, opts.displayName ?? file);
}
