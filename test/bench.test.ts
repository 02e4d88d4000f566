// `npm run bench` end to end in its smallest form: every strategy runs its tests against a fresh
// clone of the template (the workload checks it found exactly the template's rows) and the JSON
// carries every figure. Speed is not asserted here: that is what the benchmark itself reports.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ROOT } from './harness.ts';

test('npm run bench --quick: all strategies run without errors and the JSON holds every figure', () => {
  const out = mkdtempSync(path.join(os.tmpdir(), 'pgtestpool-bench-test-'));
  try {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--quick', '--tests', '8', '--rounds', '1',
      '--templates', 'example', '--concurrency', '2', '--skip-appliance', '--out', out], { cwd: ROOT, encoding: 'utf8', timeout: 300_000 });
    assert.equal(r.status, 0, `bench failed:\n${r.stdout}\n${r.stderr}`);
    const file = readdirSync(out).find((f) => f.endsWith('.json'));
    assert.ok(file, 'a JSON result is written');
    const json = JSON.parse(readFileSync(path.join(out, file), 'utf8'));
    assert.ok(json.runs.length >= 1, 'one run per PostgreSQL major');
    for (const run of json.runs) {
      const strategies = run.cells[0].strategies as { id: string; done: number; errors: string[]; suiteMs: number; settleMs: number; cpuPerTest: { total: number }; setup: { p50: number } }[];
      assert.deepEqual(strategies.map((s) => s.id).sort(),
        ['clone-file_copy', 'clone-wal_log', 'fresh-schema', 'pglite', 'pgtestpool', 'pgtestpool-tuned', 'rollback', 'truncate']);
      for (const s of strategies) {
        assert.deepEqual(s.errors, [], `${s.id} had failing tests`);
        assert.ok(s.done >= 2 && s.suiteMs > 0 && s.setup.p50 > 0, `${s.id} ran and was timed: ${JSON.stringify(s)}`);
        assert.ok(s.settleMs >= 0 && s.cpuPerTest.total > 0, `${s.id} has its settle time and CPU per test: ${JSON.stringify(s)}`);
      }
      assert.ok(run.targets.some((t: { target: string }) => /defaults within 10% of hand-tuned/.test(t.target)), 'the tuned comparison is a target');
    }
    assert.match(r.stdout, /suite wall time ahead of every same-isolation strategy \(example, concurrency 2\)/);
    assert.match(r.stdout, /suite\+settle s/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('npm run bench rejects bad options, naming each and what it expects', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--tests', 'many', '--strategies', 'pgtestpool,magic'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--tests: expected an integer >= 1, got "many"/);
  assert.match(r.stderr, /--strategies: unknown "magic"/);
});
