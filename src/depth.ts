// How many ready clones to keep for a template: min_ready is the floor, not the whole story.
// Parallel test workers drain a fixed-depth pool faster than it refills, and then every claim
// waits for a CREATE. So the depth grows while claims find the pool empty, and falls back to
// min_ready once the extra clones have gone unused for a while. The caller bounds it by what
// max_databases and the data directory's free space allow.

export const DEPTH_TIMING = {
  /** Grow at most this often: the refill needs a moment to show whether the last step was enough. */
  growEveryMs: 500,
  /** Shrink only after this long without a reason to grow, one step per shrinkEveryMs. */
  calmMs: 30_000,
  shrinkEveryMs: 10_000,
  /** A claim this recent means tests are running: an empty pool now makes the next claim wait. */
  recentClaimMs: 2_000,
};
// (An object, not constants, so a test can shorten the calm it would otherwise wait out.)

/** Claims are finding the pool empty: nothing ready while tests are claiming. */
export function starved(ready: number, lastClaimAt: number, now: number): boolean {
  return ready === 0 && now - lastClaimAt < DEPTH_TIMING.recentClaimMs;
}

export interface DepthInput {
  floor: number;
  ready: number;
  /** When a clone of this template was last claimed (ms since the epoch), or 0. */
  lastClaimAt: number;
  /** The most the depth may be: the budget under max_databases and the free space. */
  cap: number;
}

export class Depth {
  private target: number | null = null;
  private lastGrow = 0;
  private lastShrink = 0;

  /** The ready depth to aim for now. Called on every refill plan. */
  update(input: DepthInput, now: number): number {
    const floor = input.floor;
    let target = Math.max(this.target ?? floor, floor);
    if (starved(input.ready, input.lastClaimAt, now) && now - this.lastGrow >= DEPTH_TIMING.growEveryMs) {
      // Half again, at least 2: a few steps reach the depth of a busy suite.
      target += Math.max(2, Math.ceil(target / 2));
      this.lastGrow = now;
    } else if (target > floor && now - this.lastGrow >= DEPTH_TIMING.calmMs && now - this.lastShrink >= DEPTH_TIMING.shrinkEveryMs) {
      target = Math.max(floor, Math.floor(target * 0.75));
      this.lastShrink = now;
    }
    // Above the cap the depth could not be kept anyway; the floor is kept whatever the cap says
    // (max_databases is validated against the sum of the floors).
    this.target = Math.max(floor, Math.min(target, input.cap));
    return this.target;
  }

  get current(): number | null {
    return this.target;
  }
}
