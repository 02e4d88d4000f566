-- pgtestpool control schema, migration 5: a failed test's database kept for debugging.
-- keep_test_db(name, for) moves a claimed clone to 'kept': it stays, open to its claimer, until
-- kept_until, outside max_databases but within pool.max_kept (so kept ones cannot starve the pool).
BEGIN;
SELECT pg_advisory_xact_lock(7203551409);

ALTER TABLE pgtestpool.databases DROP CONSTRAINT IF EXISTS databases_state_check;
ALTER TABLE pgtestpool.databases ADD CONSTRAINT databases_state_check
  CHECK (state IN ('creating', 'ready', 'claimed', 'kept', 'dropping'));
ALTER TABLE pgtestpool.databases ADD COLUMN kept_until timestamptz;
-- When the sidecar logged it (so each kept database is announced once, with its URL).
ALTER TABLE pgtestpool.databases ADD COLUMN kept_logged boolean NOT NULL DEFAULT false;

INSERT INTO pgtestpool.settings (key, value) VALUES ('max_kept', '10') ON CONFLICT (key) DO NOTHING;

INSERT INTO pgtestpool.migrations (version, name) VALUES (5, 'kept databases');

COMMIT;
