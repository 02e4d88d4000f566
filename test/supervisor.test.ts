// The image's supervisor finds the server the way it really listens (postmaster.pid), whatever
// -c port=, -p, PGPORT or postgresql.conf said. The rest of the supervisor runs in the image test
// (test/image/run.sh), where the official entrypoint is.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import type { EmbeddedServer } from '../src/embedded.ts';
import { connectTarget, parsePostmasterPid } from '../src/supervisor.ts';
import { startServer, testInstalls } from './harness.ts';

describe('supervisor: where the server listens, from postmaster.pid', () => {
  let servers: EmbeddedServer[] = [];
  before(async () => {
    servers = await Promise.all((await testInstalls()).map((i) => startServer(i)));
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
  });

  test('a running server: its pid, port, socket directory, and ready', async () => {
    for (const s of servers) {
      const text = fs.readFileSync(path.join(s.dataDir, 'postmaster.pid'), 'utf8');
      const l = parsePostmasterPid(text);
      assert.ok(l, `unparsed: ${text}`);
      assert.equal(l.port, s.port);
      assert.equal(l.pid, Number(text.split('\n')[0]));
      assert.equal(l.socketDir, s.socketDir);
      assert.equal(l.ready, true);
      // The target it yields is one a client can use.
      const c = new pg.Client({ ...connectTarget(l), user: 'postgres', database: 'postgres' });
      await c.connect();
      try {
        assert.equal((await c.query('SHOW port')).rows[0].port, String(s.port));
      } finally {
        await c.end();
      }
    }
  });

  test('no unix socket: the first listen address, a wildcard meaning loopback', () => {
    const lines = (socket: string, address: string, status: string) => ['4242', '/data', '1700000000', '5433', socket, address, '  5433001    123', status, ''].join('\n');
    assert.deepEqual(connectTarget(parsePostmasterPid(lines('', '*', 'ready'))!), { host: '127.0.0.1', port: 5433 });
    assert.deepEqual(connectTarget(parsePostmasterPid(lines('', '10.0.0.7', 'ready'))!), { host: '10.0.0.7', port: 5433 });
    assert.deepEqual(connectTarget(parsePostmasterPid(lines('/run/pg', '*', 'ready'))!), { host: '/run/pg', port: 5433 });
    assert.equal(parsePostmasterPid(lines('/run/pg', '*', 'starting'))!.ready, false);
    // Half-written or empty: not a server yet.
    assert.equal(parsePostmasterPid(''), null);
    assert.equal(parsePostmasterPid('4242\n/data\n'), null);
  });
});
