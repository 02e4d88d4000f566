-- pgtestpool control schema, migration 3: commits in the control database survive a server crash.
-- The appliance runs with synchronous_commit off (and fsync off): a commit returns before its WAL
-- leaves PostgreSQL's memory, so a crash (kill -9, restart -m immediate) forgets the last claims,
-- and their clones, already in use, would be ready again. In this database only, commits write
-- their WAL before returning; with fsync off that is a write to the OS, not to the disk (µs).
BEGIN;
SELECT pg_advisory_xact_lock(7203551409);

DO $durable$
BEGIN
  EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on', current_database());
END
$durable$;

INSERT INTO pgtestpool.migrations (version, name) VALUES (3, 'durable claims');

COMMIT;
