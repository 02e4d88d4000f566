-- pgtestpool control schema, migration 3: a claim reads one table.
-- A new session's first statement on each relation it touches pays for loading that relation's
-- catalog entries (~0.6 ms each here); test fixtures that open a control connection per test pay
-- it on every test. So the claim's fast path reads only pgtestpool.databases.
BEGIN;
SELECT pg_advisory_xact_lock(7203551409);

-- The role a claimed clone is given (the template's `owner:`), copied at creation: the owner is
-- part of the template's content hash, so a clone's owner never changes while it is unclaimed.
ALTER TABLE pgtestpool.databases ADD COLUMN owner text;
UPDATE pgtestpool.databases d SET owner = t.owner
  FROM pgtestpool.templates t
 WHERE t.name = d.template AND d.state IN ('creating', 'ready');

-- claimed_backend_start is no longer written: the claiming session is the backend with the
-- claimed pid that started before claimed_at (one that started later reused the pid). The
-- column stays, so an API of an earlier version still running during an upgrade keeps working.
COMMENT ON COLUMN pgtestpool.databases.claimed_backend_start IS 'unused since migration 3';

INSERT INTO pgtestpool.migrations (version, name) VALUES (3, 'one-table claim');

COMMIT;
