// The pool table's SQL on its own (no sidecar): a claim on an empty pool waits on the row lock of
// the clone being made, and wakes when it commits; what counts against max_databases; tombstones.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import type pg from 'pg';
import { installSchema } from '../src/schema.ts';
import type { EmbeddedServer } from '../src/embedded.ts';
import { client, startServer, testInstalls, waitFor } from './harness.ts';

for (const install of await testInstalls()) {
  describe(`pool table (PostgreSQL ${install.major})`, () => {
    let server: EmbeddedServer;
    let admin: pg.Client;
    before(async () => {
      server = await startServer(install);
      admin = await client(server);
      await installSchema(admin);
    });
    after(async () => {
      await admin?.end();
      await server?.stop();
    });
    beforeEach(async () => {
      await admin.query('DELETE FROM pgtestpool.databases; DELETE FROM pgtestpool.dropped; DELETE FROM pgtestpool.templates');
      for (const { datname } of (await admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'db\\_%'")).rows) {
        await admin.query(`DROP DATABASE "${datname}"`);
      }
      await admin.query(`INSERT INTO pgtestpool.templates (name, state, database, min_ready) VALUES ('t', 'ready', 'tpl_v1', 1)`);
      await admin.query(`UPDATE pgtestpool.settings SET value = '10 seconds' WHERE key = 'claim_timeout'`);
    });

    /** A row and a real (empty, closed) database behind it: the claim opens the one it takes. */
    const addRow = async (id: number, state: string) => {
      await admin.query(`CREATE DATABASE db_${id} ALLOW_CONNECTIONS false`);
      await admin.query(`INSERT INTO pgtestpool.databases (id, name, template, source, state) VALUES ($1::bigint, 'db_' || $1::text, 't', 'tpl_v1', $2)`, [id, state]);
    };

    test('a claim on an empty pool waits on the lock of the clone being made and gets it when it commits', async () => {
      await addRow(1, 'creating');
      // The sidecar's side: the row lock is held from before CREATE until the clone is ready.
      const holder = await client(server);
      const claimer = await client(server);
      try {
        await holder.query(`BEGIN; SELECT 1 FROM pgtestpool.databases WHERE id = 1 FOR UPDATE`);
        const pid = (await claimer.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
        const claim = claimer.query<{ name: string }>(`SELECT claim_test_db('t') AS name`);
        // Waiting on the lock (not napping in pg_sleep, not spinning).
        await waitFor('the claim waiting on the row lock', async () => {
          const { rows } = await admin.query('SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1', [pid]);
          return rows[0]?.wait_event_type === 'Lock';
        });
        // The claimer's wait does not hold the lock: the sidecar can finish the clone.
        await holder.query(`UPDATE pgtestpool.databases SET state = 'ready', ready_at = now() WHERE id = 1; COMMIT`);
        assert.equal((await claim).rows[0]!.name, 'db_1');
        const { rows } = await admin.query(`SELECT state, claimed_pid FROM pgtestpool.databases WHERE id = 1`);
        assert.deepEqual(rows[0], { state: 'claimed', claimed_pid: pid });
      } finally {
        await holder.end();
        await claimer.end();
      }
    });

    test('a claim that waits in vain still fails at claim.timeout, naming the pool', async () => {
      await addRow(2, 'creating');
      await admin.query(`UPDATE pgtestpool.settings SET value = '300 milliseconds' WHERE key = 'claim_timeout'`);
      const holder = await client(server);
      try {
        await holder.query(`BEGIN; SELECT 1 FROM pgtestpool.databases WHERE id = 2 FOR UPDATE`);
        await assert.rejects(admin.query(`SELECT claim_test_db('t')`), (err: Error & { detail?: string }) => {
          assert.match(err.message, /no ready database for template 't' within 300 milliseconds/);
          assert.match(err.detail ?? '', /creating 1/);
          return true;
        });
        const { rows } = await admin.query(`SELECT current_setting('lock_timeout') AS v`);
        assert.equal(rows[0].v, '0', "the caller's lock_timeout is left as it was");
      } finally {
        await holder.query('ROLLBACK');
        await holder.end();
      }
    });

    test('max_databases counts clones waiting to be dropped; a finished drop leaves a tombstone elsewhere', async () => {
      await addRow(3, 'ready');
      await addRow(4, 'claimed');
      await addRow(5, 'dropping');
      await addRow(6, 'creating');
      const inUse = async () => Number((await admin.query(`SELECT in_use FROM pgtestpool.pool_state() WHERE template = 't'`)).rows[0].in_use);
      assert.equal(await inUse(), 4);
      await admin.query(`UPDATE pgtestpool.databases SET drop_reason = 'released', claimed_at = now() WHERE id = 5`);
      // A tombstone only once the database is really gone (mark_dropped checks).
      await admin.query(`SELECT pgtestpool.mark_dropped('db_5')`);
      assert.equal(await inUse(), 4, 'still there: not marked dropped');
      await admin.query('DROP DATABASE db_5');
      await admin.query(`SELECT pgtestpool.mark_dropped('db_5')`);
      assert.equal(await inUse(), 3);
      assert.equal((await admin.query('SELECT 1 FROM pgtestpool.databases WHERE id = 5')).rowCount, 0, 'gone from the pool table');
      const { rows } = await admin.query(`SELECT state, drop_reason FROM test_dbs WHERE name = 'db_5'`);
      assert.deepEqual(rows, [{ state: 'dropped', drop_reason: 'released' }]);
      await assert.rejects(admin.query(`SELECT release_test_db('db_5')`), (err: Error & { detail?: string }) => {
        assert.match(err.message, /already released or reclaimed/);
        assert.equal(err.detail, 'dropped: released');
        return true;
      });
      const { rows: tpl } = await admin.query(`SELECT last_claimed_at IS NOT NULL AS kept FROM pgtestpool.templates WHERE name = 't'`);
      assert.equal(tpl[0].kept, true, 'the last claim time survives the row (lending needs it)');
    });
  });
}
