-- pgtestpool control schema, migration 1: the control tables as of 0.1.
-- Migrations are applied once each, in order, and recorded in pgtestpool.migrations: the image
-- runs this folder at initdb, the sidecar applies what is missing at start (src/schema.ts).
-- Written with IF NOT EXISTS so that an installation from before migrations were recorded
-- (which ran the whole API file at every start) upgrades in place.
BEGIN;

-- Two installers at once (initdb script + sidecar) would race on CREATE ... IF NOT EXISTS.
SELECT pg_advisory_xact_lock(7203551409);

CREATE SCHEMA IF NOT EXISTS pgtestpool;
REVOKE ALL ON SCHEMA pgtestpool FROM PUBLIC;

CREATE TABLE IF NOT EXISTS pgtestpool.migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON SCHEMA pgtestpool IS 'pgtestpool control tables; use claim_test_db(), release_test_db(), test_db_status() and the test_dbs view';

CREATE TABLE IF NOT EXISTS pgtestpool.settings (
  key   text PRIMARY KEY,
  value text NOT NULL
);
-- A random tag in every clone name: a server re-created from scratch restarts the sequence,
-- and a stale connection string from an earlier run must not reach a new database.
INSERT INTO pgtestpool.settings (key, value)
VALUES ('instance', substr(md5(random()::text || clock_timestamp()::text), 1, 6)),
       ('claim_timeout', '30 seconds'),
       ('max_databases', '64')
ON CONFLICT (key) DO NOTHING;

CREATE TABLE IF NOT EXISTS pgtestpool.templates (
  name       text PRIMARY KEY,
  -- building: being built, claims wait; ready: serving `database`;
  -- failed: the build failed with `error`; claims fail at once while no version serves (`database` NULL).
  state      text NOT NULL CHECK (state IN ('building', 'ready', 'failed')),
  database   text,          -- the template database clones are made from (NULL until one is built)
  hash       text,          -- content hash of what `database` was built from
  min_ready  integer NOT NULL DEFAULT 0,
  error      text,
  build_ms   integer,
  built_at   timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Columns added after the first release (CREATE TABLE IF NOT EXISTS leaves an existing table alone).
ALTER TABLE pgtestpool.templates ADD COLUMN IF NOT EXISTS owner text;  -- `owner:` role a claimed clone is given

CREATE SEQUENCE IF NOT EXISTS pgtestpool.clone_seq;

CREATE TABLE IF NOT EXISTS pgtestpool.databases (
  id                    bigint PRIMARY KEY,
  name                  text NOT NULL UNIQUE,
  template              text NOT NULL,
  source                text NOT NULL,   -- the template database it is cloned from
  -- creating -> ready -> claimed -> dropping -> dropped (a tombstone, so release_test_db() can say
  -- what became of a name; deleted after ten minutes). failed: CREATE DATABASE failed (kept as long).
  state                 text NOT NULL CHECK (state IN ('creating', 'ready', 'claimed', 'dropping', 'dropped', 'failed')),
  created_at            timestamptz NOT NULL DEFAULT now(),
  ready_at              timestamptz,
  claimed_at            timestamptz,
  claimed_pid           integer,
  claimed_backend_start timestamptz,  -- with the pid, identifies the claiming session (pids are reused)
  claimed_role          text,
  claimed_application   text,
  claimed_addr          inet,
  idle_since            timestamptz,  -- claimer gone and no connections to the clone since then
  drop_reason           text,
  dropped_at            timestamptz,
  error                 text
);
-- The claim's index. No other: the table stays small (a dropped database's row moves to
-- pgtestpool.dropped), and every extra index is written on each claim.
CREATE INDEX IF NOT EXISTS databases_ready_idx ON pgtestpool.databases (template, id) WHERE state = 'ready';
-- Every claim and drop leaves a dead row version: vacuum after a few hundred, not after 20 %.
ALTER TABLE pgtestpool.databases SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 500,
                                      autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 500);

-- Tombstones: what became of a dropped database, so release_test_db() can say so; kept ten minutes.
-- A table of their own: the pool's table, scanned on every refill plan, holds only live rows.
CREATE TABLE IF NOT EXISTS pgtestpool.dropped (
  id                    bigint PRIMARY KEY,
  name                  text NOT NULL,
  template              text NOT NULL,
  created_at            timestamptz NOT NULL,
  claimed_at            timestamptz,
  claimed_pid           integer,
  claimed_role          text,
  claimed_application   text,
  claimed_addr          inet,
  drop_reason           text,
  dropped_at            timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dropped_name_idx ON pgtestpool.dropped (name);
-- The heartbeat expires tombstones every poll: without this it would scan them all each time.
CREATE INDEX IF NOT EXISTS dropped_at_idx ON pgtestpool.dropped (dropped_at);
-- Installations from before the move kept tombstones in databases.
WITH moved AS (
  DELETE FROM pgtestpool.databases d WHERE d.state = 'dropped'
  RETURNING d.id, d.name, d.template, d.created_at, d.claimed_at, d.claimed_pid, d.claimed_role,
            d.claimed_application, d.claimed_addr, d.drop_reason, coalesce(d.dropped_at, now()) AS dropped_at
)
INSERT INTO pgtestpool.dropped SELECT * FROM moved ON CONFLICT (id) DO NOTHING;
-- The time of the last claim of each template whose clones are all gone (for lending).
ALTER TABLE pgtestpool.templates ADD COLUMN IF NOT EXISTS last_claimed_at timestamptz;

REVOKE ALL ON ALL TABLES IN SCHEMA pgtestpool FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgtestpool FROM PUBLIC;

INSERT INTO pgtestpool.migrations (version, name) VALUES (1, 'control tables');

COMMIT;
