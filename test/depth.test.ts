// The ready-depth controller on its own, with a clock the test drives (the pool's use of it, with
// a real server, is in core.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Depth, DEPTH_TIMING } from '../src/depth.ts';

const { calmMs: CALM_MS, growEveryMs: GROW_EVERY_MS, recentClaimMs: RECENT_CLAIM_MS, shrinkEveryMs: SHRINK_EVERY_MS } = DEPTH_TIMING;

const busy = (now: number, ready: number, cap = 1000) => ({ floor: 8, ready, lastClaimAt: now - 10, cap });

test('starts at min_ready and stays there while the pool keeps up', () => {
  const d = new Depth();
  for (let t = 0; t < 60_000; t += 100) assert.equal(d.update(busy(t, 3), t), 8);
});

test('grows while claims find the pool empty, at most every GROW_EVERY_MS', () => {
  const d = new Depth();
  let t = 1_000_000;
  assert.equal(d.update(busy(t, 0), t), 12); // 8 + 4
  assert.equal(d.update(busy(t + 10, 0), t + 10), 12, 'not again at once');
  t += GROW_EVERY_MS;
  assert.equal(d.update(busy(t, 0), t), 18);
  t += GROW_EVERY_MS;
  assert.equal(d.update(busy(t, 0), t), 27);
});

test('an empty pool nobody is claiming from is no reason to grow', () => {
  const d = new Depth();
  const t = 1_000_000;
  assert.equal(d.update({ floor: 8, ready: 0, lastClaimAt: t - RECENT_CLAIM_MS - 1, cap: 1000 }, t), 8);
  assert.equal(d.update({ floor: 8, ready: 0, lastClaimAt: 0, cap: 1000 }, t), 8);
});

test('bounded by the cap (max_databases budget, free space), never below min_ready', () => {
  const d = new Depth();
  let t = 1_000_000;
  for (let i = 0; i < 10; i++, t += GROW_EVERY_MS) d.update(busy(t, 0, 20), t);
  assert.equal(d.current, 20);
  assert.equal(d.update(busy(t, 0, 3), t), 8, 'the floor holds even when the cap is lower');
});

test('falls back to min_ready step by step once the extra clones go unused', () => {
  const d = new Depth();
  let t = 1_000_000;
  for (let i = 0; i < 4; i++, t += GROW_EVERY_MS) d.update(busy(t, 0), t);
  const grown = d.current!;
  const lastGrow = t - GROW_EVERY_MS;
  assert.ok(grown > 20, `grown to ${grown}`);
  assert.equal(d.update(busy(lastGrow + CALM_MS - 1, 5), lastGrow + CALM_MS - 1), grown, 'not before CALM_MS');
  const seen: number[] = [];
  for (let at = lastGrow + CALM_MS; seen.at(-1) !== 8; at += SHRINK_EVERY_MS) seen.push(d.update(busy(at, 5), at));
  assert.deepEqual(seen, [...seen].sort((a, b) => b - a), 'only down');
  assert.ok(seen.length > 2, `in steps: ${seen.join(' ')}`);
  assert.equal(d.current, 8);
});
