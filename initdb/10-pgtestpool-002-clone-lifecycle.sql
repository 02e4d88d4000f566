-- pgtestpool control schema, migration 2: the clone lifecycle every state function writes.
BEGIN;
SELECT pg_advisory_xact_lock(7203551409);

-- A clone whose CREATE failed is dropped like any other (its database may exist in part), so no
-- row stays 'failed' while its database may remain; the error is kept on its template instead.
UPDATE pgtestpool.databases
   SET state = 'dropping', drop_reason = 'creation failed: ' || coalesce(error, 'unknown error')
 WHERE state IN ('failed', 'dropped');
ALTER TABLE pgtestpool.databases DROP CONSTRAINT IF EXISTS databases_state_check;
ALTER TABLE pgtestpool.databases ADD CONSTRAINT databases_state_check
  CHECK (state IN ('creating', 'ready', 'claimed', 'dropping'));

-- Ready clones made before this migration accept connections (now a ready clone is closed to
-- all until its claim commits): they are dropped and made again.
UPDATE pgtestpool.databases
   SET state = 'dropping', drop_reason = 'made by an earlier version (open to connections while ready)'
 WHERE state = 'ready';

-- When the row entered 'dropping': a released clone's connections get a grace to close before
-- DROP ... WITH (FORCE) terminates them (lease.release_grace).
ALTER TABLE pgtestpool.databases ADD COLUMN dropping_since timestamptz;
UPDATE pgtestpool.databases SET dropping_since = now() WHERE state = 'dropping';
-- The clone's pg_database oid, so a clone a test renamed is still found and dropped.
ALTER TABLE pgtestpool.databases ADD COLUMN db_oid oid;

-- A failed build's hint apart from its error (a claim shows it as its one HINT), and the last
-- clone creation failure (disk full, ...), shown by claims, test_db_status() and health().
ALTER TABLE pgtestpool.templates ADD COLUMN hint text;
ALTER TABLE pgtestpool.templates ADD COLUMN clone_error text;
ALTER TABLE pgtestpool.templates ADD COLUMN clone_error_at timestamptz;

-- The sidecar vacuums these itself (every claim and drop leaves a dead row version, and
-- autovacuum may not come round for minutes); autovacuum stays as a second line.
ALTER TABLE pgtestpool.databases SET (autovacuum_vacuum_threshold = 50, autovacuum_analyze_threshold = 50);

INSERT INTO pgtestpool.migrations (version, name) VALUES (2, 'clone lifecycle');

COMMIT;
