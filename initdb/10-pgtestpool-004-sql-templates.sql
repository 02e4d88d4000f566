-- pgtestpool control schema, migration 4: templates built from the test side, through SQL.
-- A migration tool that runs beside the tests (in Docker it is not in the image) builds a
-- template with CALL begin_template(name, hash) ... CALL finish_template(name). Such a template
-- has no entry in config.yaml: its row says where it came from, and who is building it.
BEGIN;
SELECT pg_advisory_xact_lock(7203551409);

-- config: from config.yaml (forgotten when removed from it); sql: built through begin_template.
ALTER TABLE pgtestpool.templates ADD COLUMN origin text NOT NULL DEFAULT 'config' CHECK (origin IN ('config', 'sql'));
-- A version being built through SQL, beside the one serving (if any):
--   requested: a builder asked; the sidecar creates pending_database for it;
--   building:  pending_database exists, the builder migrates it;
--   sealing:   the builder finished; the sidecar freezes it and makes it the serving version.
ALTER TABLE pgtestpool.templates ADD COLUMN pending_state text CHECK (pending_state IN ('requested', 'building', 'sealing'));
ALTER TABLE pgtestpool.templates ADD COLUMN pending_hash text;
ALTER TABLE pgtestpool.templates ADD COLUMN pending_database text;
-- The building session: its pid, and a time after its start (a later backend with that pid is another session).
ALTER TABLE pgtestpool.templates ADD COLUMN builder_pid integer;
ALTER TABLE pgtestpool.templates ADD COLUMN builder_since timestamptz;
ALTER TABLE pgtestpool.templates ADD COLUMN builder_role text;

INSERT INTO pgtestpool.migrations (version, name) VALUES (4, 'sql templates');

COMMIT;
