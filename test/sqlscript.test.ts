import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { PAGILA_DIR, startServer, testInstalls } from './harness.ts';
import { runSqlFile, runSqlText, splitSql, SqlScriptError } from '../src/sqlscript.ts';

const sqls = (text: string) => splitSql(text, 't.sql').map((s) => s.sql);
const splitError = (text: string): SqlScriptError => {
  try {
    splitSql(text, 't.sql');
  } catch (err) {
    assert.ok(err instanceof SqlScriptError);
    return err;
  }
  assert.fail('expected splitSql to throw');
};

describe('splitSql', () => {
  test('splits on top-level semicolons, skips empty statements, keeps a final unterminated one', () => {
    assert.deepEqual(sqls('SELECT 1; ;; SELECT 2;\n-- only a comment\n;\nSELECT 3'), ['SELECT 1;', 'SELECT 2;', 'SELECT 3']);
  });

  test('comments: -- to end of line, nested /* */; leading comments are not part of the statement', () => {
    assert.deepEqual(sqls('-- a; b\n/* x; /* y; */ z; */ SELECT 1 /* ; */ -- ;\n;'), ['SELECT 1 /* ; */ -- ;\n;']);
  });

  test('strings: plain with doubled quotes, E/e with backslash escapes, U&, B/X', () => {
    assert.deepEqual(sqls(`SELECT 'a;''b';SELECT E'c\\';d';SELECT e'\\\\';SELECT U&'\\0041;''';SELECT B'1', X'F;';`), [
      `SELECT 'a;''b';`,
      `SELECT E'c\\';d';`,
      `SELECT e'\\\\';`,
      `SELECT U&'\\0041;''';`,
      `SELECT B'1', X'F;';`,
    ]);
    // a word ending in e is not an E string prefix: the backslash is literal there
    assert.deepEqual(sqls(`SELECT 'x\\';SELECT 2;`), [`SELECT 'x\\';`, 'SELECT 2;']);
  });

  test('quoted identifiers with doubled quotes, U&"..."', () => {
    assert.deepEqual(sqls('SELECT 1 AS "a;""b"; SELECT 1 AS U&"c;"; SELECT 2;'), [
      'SELECT 1 AS "a;""b";',
      'SELECT 1 AS U&"c;";',
      'SELECT 2;',
    ]);
  });

  test('dollar quotes: $$, $tag$ (other tags inside), not $1 or a$b', () => {
    const fn = 'CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN $$;$$::text; END; $body$ LANGUAGE plpgsql;';
    assert.deepEqual(sqls(fn + ' SELECT $$a;b$$;'), [fn, 'SELECT $$a;b$$;']);
    assert.deepEqual(sqls('PREPARE p AS SELECT $1; SELECT 1 AS a$b; SELECT 2 AS x$$; SELECT 3;'), [
      'PREPARE p AS SELECT $1;',
      'SELECT 1 AS a$b;',
      'SELECT 2 AS x$$;',
      'SELECT 3;',
    ]);
  });

  test('semicolons inside parentheses (rule actions) and BEGIN ATOMIC bodies do not split', () => {
    const rule = 'CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2));';
    const atomic =
      'CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN x > 0 THEN 1 END; SELECT x; END;';
    assert.deepEqual(sqls(`${rule}\n${atomic}\nSELECT 1;`), [rule, atomic, 'SELECT 1;']);
  });

  test('line numbers point at the first token, with non-ASCII text and CRLF', () => {
    const text = '\uFEFF-- header\r\n\r\nCREATE TABLE "ünïcödé 😀" (x text DEFAULT \'é\n;\');\r\n  /* c\n */ SELECT\n1;\nSELECT 2;';
    assert.deepEqual(
      splitSql(text).map((s) => s.line),
      [3, 6, 8],
    );
  });

  test('meta-commands: \\restrict, \\unrestrict, \\echo, \\set ON_ERROR_STOP are ignored', () => {
    const text = '\\restrict abc123\n\\set ON_ERROR_STOP on\nSELECT 1;\n\\echo hi; there\nSELECT\n\\echo mid\n2;\n\\unrestrict abc123\n';
    const st = splitSql(text);
    assert.deepEqual(
      st.map((s) => [s.line, s.sql]),
      [
        [3, 'SELECT 1;'],
        [5, 'SELECT\n\n2;'], // the meta line is cut but its newline kept, so positions still map to lines
      ],
    );
  });

  test('other meta-commands are rejected with file:line', () => {
    for (const [text, cmd, line] of [
      ['SELECT 1;\n\\connect pagila\n', '\\connect', 2],
      ['\\i other.sql', '\\i', 1],
      ['\n\nSELECT 1\n\\gexec\n', '\\gexec', 4],
      ['\\copy t from x.csv', '\\copy', 1],
      ['\\set FOO bar', '\\set', 1],
    ] as const) {
      const err = splitError(text);
      assert.equal(err.line, line);
      assert.equal(err.file, 't.sql');
      assert.match(err.message, new RegExp(`^t\\.sql:${line}: psql meta-command \\${cmd} is not supported.*plain SQL`));
    }
    // a backslash inside quotes or comments is just text
    assert.equal(sqls("SELECT '\\i x'; -- \\i y\n/* \\c */").length, 1);
  });

  test('COPY FROM stdin: data lines up to \\., including an empty block', () => {
    const text = [
      'COPY public.t (a, "b") FROM stdin;', // 1
      '1\tx;y',
      "2\t'é",
      '\\.',
      'copy t from STDIN with (format csv);', // 5
      '\\.',
      "COPY (SELECT 'from stdin') TO stdout;", // 7
      'SELECT 1;',
    ].join('\n');
    const st = splitSql(text);
    assert.deepEqual(
      st.map((s) => [s.line, s.sql, s.copyData?.toString('utf8'), s.copyDataLine]),
      [
        [1, 'COPY public.t (a, "b") FROM stdin;', "1\tx;y\n2\t'é\n", 2],
        [5, 'copy t from STDIN with (format csv);', '', 6],
        [7, "COPY (SELECT 'from stdin') TO stdout;", undefined, undefined],
        [8, 'SELECT 1;', undefined, undefined],
      ],
    );
    // CRLF data keeps its line endings; "\.\r" ends the block
    assert.equal(splitSql('COPY t FROM stdin;\r\n1\r\n\\.\r\nSELECT 1;')[0]!.copyData!.toString(), '1\r\n');
  });

  test('unterminated input is reported at the line where it starts', () => {
    for (const [text, what, line] of [
      ["SELECT 1;\nSELECT 'abc;\n", 'quoted string', 2],
      ['SELECT "abc', 'quoted identifier', 1],
      ["\nSELECT E'\\'", 'E string', 2],
      ['SELECT 1;\n/* a /* b */ SELECT 2;', '/\\* comment', 2],
      ['CREATE FUNCTION f() AS $fn$ SELECT 1; $$;', 'dollar-quoted string \\$fn\\$', 1],
      ['SELECT 1;\nCOPY t FROM stdin;\n1\n2\n', 'COPY data not terminated', 2],
    ] as const) {
      const err = splitError(text);
      assert.equal(err.line, line, text);
      assert.match(err.message, new RegExp(`^t\\.sql:${line}: .*${what}`));
    }
  });
});

// --- The integration tests run on a real server per installed major (see harness.ts). ---
let server: EmbeddedServer;

async function connect(database = 'postgres'): Promise<pg.Client> {
  const client = new pg.Client(server.clientConfig(database));
  await client.connect();
  return client;
}

let dbCount = 0;
async function freshDb(): Promise<pg.Client> {
  const name = `t${++dbCount}`;
  const admin = await connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  return connect(name);
}

const scriptError = async (p: Promise<unknown>): Promise<SqlScriptError> => {
  const err = await p.then(
    () => assert.fail('expected the script to fail'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof SqlScriptError, String(err));
  return err;
};

for (const install of await testInstalls()) describe(`runSqlFile against PostgreSQL ${install.major}`, () => {
  before(async () => {
    server = await startServer(install);
  });
  after(async () => {
    await server?.stop();
  });

  test('loads the pagila 2024 dump (schema, then data with COPY blocks)', async (t) => {
    const client = await freshDb();
    try {
      const fixtures = PAGILA_DIR;
      const schema = await runSqlFile(client, `${fixtures}/pagila-2024-schema.sql`);
      const data = await runSqlFile(client, `${fixtures}/pagila-2024-data.sql`);
      const msg = `pagila: schema ${schema.statements} statements in ${schema.ms.toFixed(0)} ms, data ${data.statements} statements in ${data.ms.toFixed(0)} ms`;
      t.diagnostic(msg);
      console.log(msg);
      // the loading session set search_path to '' (pg_dump does that), so qualify the names
      const { rows } = await client.query(
        'SELECT (SELECT count(*) FROM public.film_list)::int AS films, (SELECT count(*) FROM public.payment)::int AS payments',
      );
      assert.deepEqual(rows[0], { films: 2360, payments: 16049 });
    } finally {
      await client.end();
    }
  });

  test('stops at the first error and reports file:line, the message and the statement', async () => {
    const client = await freshDb();
    const dir = mkdtempSync(join(tmpdir(), 'sqlscript-test-'));
    const file = join(dir, 'bad.sql');
    writeFileSync(
      file,
      [
        'CREATE TABLE a (id int PRIMARY KEY);', // 1
        '-- comment; with a semicolon', // 2
        "INSERT INTO a VALUES (1); INSERT INTO a -- 'second'", // 3
        '  SELECT id', // 4
        '  FROM missing_table;', // 5: the error position
        'CREATE TABLE b (id int);', // 6: must not run
      ].join('\n'),
    );
    try {
      const err = await scriptError(runSqlFile(client, file, { displayName: 'schema/002_orders.sql' }));
      assert.equal(err.file, 'schema/002_orders.sql');
      assert.equal(err.line, 5);
      assert.equal(err.sqlstate, '42P01');
      assert.equal(err.pgMessage, 'relation "missing_table" does not exist');
      assert.equal(
        err.message,
        'schema/002_orders.sql:5: ERROR:  relation "missing_table" does not exist\n' +
          "STATEMENT (from line 3):  INSERT INTO a -- 'second'",
      );
      assert.match(err.statement!, /^INSERT INTO a -- 'second'\n  SELECT id\n  FROM missing_table;$/);
      // statements 1 and 2 ran (autocommit), statement 4 did not, and the client is still usable
      const { rows } = await client.query(`SELECT (SELECT count(*) FROM a)::int AS n, to_regclass('b') AS b`);
      assert.deepEqual(rows[0], { n: 1, b: null });
    } finally {
      rmSync(dir, { recursive: true, force: true });
      await client.end();
    }
  });

  test('DETAIL and HINT lines are included', async () => {
    const client = await freshDb();
    try {
      const err = await scriptError(
        runSqlText(client, 'CREATE TABLE u (id int UNIQUE);\nINSERT INTO u VALUES (1), (1);', 'u.sql'),
      );
      assert.equal(err.line, 2);
      assert.equal(err.sqlstate, '23505');
      assert.equal(err.detail, 'Key (id)=(1) already exists.');
      assert.match(err.message, /^u\.sql:2: ERROR: {2}duplicate key .*\nSTATEMENT: {2}INSERT INTO u .*\nDETAIL: {2}Key \(id\)=\(1\) already exists\.$/);
      const hinted = await scriptError(runSqlText(client, '\n\nSELECT lower(1);', 'h.sql'));
      assert.equal(hinted.line, 3);
      assert.match(hinted.message, /\nHINT: {2}No function matches/);
    } finally {
      await client.end();
    }
  });

  test('a COPY with a bad row reports the row line; nothing after it runs', async () => {
    const client = await freshDb();
    const text = [
      'CREATE TABLE t (id int, name text);', // 1
      'COPY t (id, name) FROM stdin;', // 2
      '1\tann', // 3
      'x\tbob', // 4: bad integer
      '\\.', // 5
      'CREATE TABLE after_copy (id int);', // 6
    ].join('\n');
    try {
      const err = await scriptError(runSqlText(client, text, 'copy.sql'));
      assert.equal(err.sqlstate, '22P02');
      assert.equal(err.line, 4);
      assert.match(err.message, /^copy\.sql:4: ERROR: {2}invalid input syntax for type integer: "x"\n.*\nCONTEXT: {2}COPY t, line 2/);
      const { rows } = await client.query(`SELECT (SELECT count(*) FROM t)::int AS n, to_regclass('after_copy') AS a`);
      assert.deepEqual(rows[0], { n: 0, a: null });
    } finally {
      await client.end();
    }
  });

  test('function bodies with semicolons, BEGIN ATOMIC, non-ASCII names, big and empty COPY', async () => {
    const client = await freshDb();
    const rows = Array.from({ length: 20000 }, (_, i) => `${i}\tzeilé ${i} 😀 ; '' $$`).join('\n');
    const text = [
      '\\restrict k3y',
      '\\set ON_ERROR_STOP on',
      'CREATE TABLE "bücher" (id int, "tïtle" text);',
      'CREATE FUNCTION add_one(x int) RETURNS int LANGUAGE plpgsql AS $$',
      'DECLARE y int;',
      'BEGIN y := x + 1; RAISE NOTICE $n$x; %$n$, y; RETURN y; END;',
      '$$;',
      'CREATE FUNCTION two() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;',
      'COPY "bücher" (id, "tïtle") FROM stdin;',
      rows,
      '\\.',
      'COPY "bücher" FROM stdin;',
      '\\.',
      'INSERT INTO "bücher" VALUES (-add_one(two()), E\'it\\\'s\');',
      '\\unrestrict k3y',
    ].join('\n');
    try {
      const res = await runSqlText(client, text, 'ok.sql');
      assert.equal(res.statements, 6);
      const { rows: r } = await client.query(
        `SELECT count(*)::int AS n, max(id) AS top, (SELECT "tïtle" FROM "bücher" WHERE id = -3) AS t3,
                (SELECT "tïtle" FROM "bücher" WHERE id = 19999) AS last FROM "bücher"`,
      );
      assert.deepEqual(r[0], { n: 20001, top: 19999, t3: "it's", last: "zeilé 19999 😀 ; '' $$" });
    } finally {
      await client.end();
    }
  });

  test('error positions count characters, not UTF-16 units or bytes', async () => {
    const client = await freshDb();
    try {
      const err = await scriptError(runSqlText(client, "SELECT '😀😀😀😀',\nnope;", 'pos.sql'));
      assert.equal(err.line, 2); // counting UTF-16 units would stop before the newline and say line 1
    } finally {
      await client.end();
    }
  });
});
