// The states of the two state machines, as the SQL API's state functions write them
// (initdb/10-pgtestpool-api.sql lists which function makes each transition).

/** A clone's row in pgtestpool.databases; a dropped clone's row moves to pgtestpool.dropped. */
export type CloneState = 'creating' | 'ready' | 'claimed' | 'dropping';

/** A template's row in pgtestpool.templates. 'failed' may still serve an earlier version. */
export type TemplateState = 'building' | 'ready' | 'failed';

/** One row of pgtestpool.pool_state(): the single definition of "in use" and "filled". */
export interface PoolStateRow {
  template: string;
  /** The template database being served; null while none is built. */
  database: string | null;
  min_ready: number;
  ready: string;
  creating: string;
  claimed: string;
  dropping: string;
  /** Clones counting against pool.max_databases, over all templates. */
  in_use: string;
  last_claimed_at: Date | null;
  filled: boolean;
}

/** One row of test_db_status(). */
export interface StatusRow {
  template: string;
  build_state: TemplateState;
  ready: number;
  claimed: number;
  creating: number;
  dropping: number;
  failed: number;
  min_ready: number;
  error: string | null;
  filled: boolean;
}
