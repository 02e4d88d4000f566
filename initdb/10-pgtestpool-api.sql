-- pgtestpool SQL API: control tables in schema pgtestpool, user functions in public.
-- Idempotent: the image runs it once at initdb, and the sidecar runs it again at every start,
-- so it must only ever create or replace, never destroy state.
BEGIN;

-- Two installers at once (initdb script + sidecar) would race on CREATE ... IF NOT EXISTS.
SELECT pg_advisory_xact_lock(7203551409);

CREATE SCHEMA IF NOT EXISTS pgtestpool;
REVOKE ALL ON SCHEMA pgtestpool FROM PUBLIC;
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

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

-- Readable, identifier-safe fragment of a template name for database names.
CREATE OR REPLACE FUNCTION pgtestpool.slug(template text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(nullif(left(trim(BOTH '_' FROM regexp_replace(lower(template), '[^a-z0-9]+', '_', 'g')), 20), ''), 't')
$$;

-- One line describing a template's pool, for error messages.
CREATE OR REPLACE FUNCTION pgtestpool.pool_summary(tpl text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT format('ready %s, creating %s, claimed %s, dropping %s; all templates: %s of max_databases %s in use; sidecar last seen %s',
           count(*) FILTER (WHERE d.template = tpl AND d.state = 'ready'),
           count(*) FILTER (WHERE d.template = tpl AND d.state = 'creating'),
           count(*) FILTER (WHERE d.template = tpl AND d.state = 'claimed'),
           count(*) FILTER (WHERE d.template = tpl AND d.state = 'dropping'),
           count(*) FILTER (WHERE d.state IN ('ready', 'creating', 'claimed')),
           (SELECT value FROM pgtestpool.settings WHERE key = 'max_databases'),
           coalesce((SELECT round(extract(epoch FROM clock_timestamp() - value::timestamptz))::text || ' s ago'
                       FROM pgtestpool.settings WHERE key = 'sidecar_seen'), 'never (is the sidecar running?)'))
  FROM pgtestpool.databases d
$$;

-- ---------------------------------------------------------------------------------------------
-- The user API (public, so no schema prefix is needed)
-- ---------------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.claim_test_db(template text DEFAULT 'default') RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  tpl      pgtestpool.templates%ROWTYPE;
  claimed  text;
  owner    text;
  deadline timestamptz;
  waiting_for bigint;
  waited   timestamptz;
  caller_lock_timeout text;
  nap      float8 := 0.002;
BEGIN
  LOOP
    -- The fast path is this one statement; the template is only looked at when it finds nothing.
    -- SKIP LOCKED: concurrent claimers each take a different row instead of queueing on one.
    UPDATE pgtestpool.databases d
       SET state = 'claimed',
           claimed_at = clock_timestamp(),
           claimed_pid = pg_backend_pid(),
           claimed_backend_start = (SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a),
           claimed_role = session_user,
           claimed_application = current_setting('application_name'),
           claimed_addr = inet_client_addr()
     WHERE d.id = (SELECT c.id FROM pgtestpool.databases c
                    WHERE c.template = claim_test_db.template AND c.state = 'ready'
                      -- only clones of the version being served, never of a replaced one
                      AND c.source = (SELECT t.database FROM pgtestpool.templates t WHERE t.name = claim_test_db.template)
                    ORDER BY c.id LIMIT 1
                      FOR UPDATE SKIP LOCKED)
    RETURNING d.name, (SELECT t.owner FROM pgtestpool.templates t WHERE t.name = d.template) INTO claimed, owner;

    IF claimed IS NOT NULL THEN
      -- Clones are created without PUBLIC connect rights: only the claimer (and superusers) get in.
      IF NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user), false) THEN
        EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', claimed, session_user);
      END IF;
      -- The template's owner: role owns its objects; the claimed clone becomes its own only now,
      -- so that role never reaches ready clones (a database's owner may always connect to it).
      IF owner IS NOT NULL THEN
        EXECUTE format('ALTER DATABASE %I OWNER TO %I', claimed, owner);
      END IF;
      PERFORM pg_notify('pgtestpool', json_build_object('event', 'claim', 'template', claim_test_db.template, 'database', claimed,
                                                        'pid', pg_backend_pid(), 'role', session_user,
                                                        'application', current_setting('application_name'))::text);
      RETURN claimed;
    END IF;

    -- Nothing ready: say why at once when waiting cannot help, else wait for the refill.
    SELECT * INTO tpl FROM pgtestpool.templates t WHERE t.name = claim_test_db.template;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'pgtestpool: unknown template %', coalesce(quote_literal(claim_test_db.template), 'NULL')
        USING ERRCODE = 'undefined_object',
              HINT = 'known templates: ' || coalesce((SELECT string_agg(quote_literal(t.name), ', ' ORDER BY t.name) FROM pgtestpool.templates t),
                                                     'none yet (is the pgtestpool sidecar running?)');
    END IF;
    IF tpl.database IS NULL AND tpl.state = 'failed' THEN
      RAISE EXCEPTION 'pgtestpool: template % failed to build', quote_literal(tpl.name)
        USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = tpl.error,
              HINT = 'fix the template''s files; the sidecar log and test_db_status() show the error';
    END IF;
    -- Under REPEATABLE READ or SERIALIZABLE the snapshot never shows new clones: waiting is futile.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
      RAISE EXCEPTION 'pgtestpool: no ready database for template % and this transaction cannot see new ones', quote_literal(tpl.name)
        USING ERRCODE = 'lock_not_available', DETAIL = 'transaction isolation is ' || current_setting('transaction_isolation'),
              HINT = 'call claim_test_db() outside the transaction, or in a READ COMMITTED one';
    END IF;
    IF deadline IS NULL THEN
      deadline := clock_timestamp() + (SELECT value::interval FROM pgtestpool.settings WHERE key = 'claim_timeout');
    END IF;
    IF clock_timestamp() >= deadline THEN
      RAISE EXCEPTION 'pgtestpool: no ready database for template % within %', quote_literal(tpl.name),
                      (SELECT value FROM pgtestpool.settings WHERE key = 'claim_timeout')
        USING ERRCODE = 'lock_not_available', DETAIL = 'pool: ' || pgtestpool.pool_summary(tpl.name),
              HINT = 'release databases with release_test_db(name) or close the claiming sessions, raise min_ready or pool.max_databases, or check the sidecar log';
    END IF;
    -- A clone is being made: the sidecar holds its row lock until the clone is ready, so wait on
    -- that lock and wake the moment it commits. The lock is taken in a subtransaction that is then
    -- rolled back, which lets it go at once: holding it would stall the sidecar.
    SELECT c.id INTO waiting_for FROM pgtestpool.databases c
     WHERE c.template = tpl.name AND c.state = 'creating' AND c.source = tpl.database
     ORDER BY c.id LIMIT 1;
    IF FOUND THEN
      waited := clock_timestamp();
      caller_lock_timeout := current_setting('lock_timeout');
      BEGIN
        PERFORM set_config('lock_timeout', greatest(1, ceil(extract(epoch FROM deadline - clock_timestamp()) * 1000))::bigint || 'ms', true);
        PERFORM 1 FROM pgtestpool.databases c WHERE c.id = waiting_for FOR UPDATE;
        RAISE EXCEPTION USING ERRCODE = 'PT001';  -- not an error: releases the lock
      EXCEPTION WHEN lock_not_available OR SQLSTATE 'PT001' THEN NULL;
      END;
      PERFORM set_config('lock_timeout', caller_lock_timeout, true);
      -- Waited: a clone was just made, claim again. Not held yet (the sidecar is about to): nap below.
      CONTINUE WHEN clock_timestamp() - waited > interval '200 microseconds';
    END IF;
    -- The sidecar refills on the claims' NOTIFY (and polls); this nap covers a pool with nothing in the making.
    PERFORM pg_sleep(nap);
    nap := least(nap * 2, 0.02);
  END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION public.release_test_db(name text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  db pgtestpool.databases%ROWTYPE;
BEGIN
  SELECT * INTO db FROM pgtestpool.databases d WHERE d.name = release_test_db.name FOR UPDATE;
  IF NOT FOUND THEN
    SELECT g.name, 'dropped' AS state, g.drop_reason INTO db.name, db.state, db.drop_reason
      FROM pgtestpool.dropped g WHERE g.name = release_test_db.name ORDER BY g.id DESC LIMIT 1;
  END IF;
  IF db.name IS NULL THEN
    RAISE EXCEPTION 'pgtestpool: % is not a database handed out by claim_test_db()', coalesce(quote_literal(release_test_db.name), 'NULL')
      USING ERRCODE = 'undefined_object',
            HINT = 'pass the exact name claim_test_db() returned (names of databases dropped more than ten minutes ago are forgotten)';
  END IF;
  IF db.state IN ('dropping', 'dropped') THEN
    RAISE EXCEPTION 'pgtestpool: database % was already released or reclaimed', quote_literal(db.name)
      USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('%s: %s', CASE db.state WHEN 'dropped' THEN 'dropped' ELSE 'being dropped' END, db.drop_reason),
            HINT = 'a database is released once; names are never reused';
  END IF;
  IF db.state <> 'claimed' THEN
    RAISE EXCEPTION 'pgtestpool: database % is not claimed (it is %)', quote_literal(db.name), db.state
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'only a database returned by claim_test_db() can be released';
  END IF;
  IF db.claimed_role IS DISTINCT FROM session_user
     AND NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user), false) THEN
    RAISE EXCEPTION 'pgtestpool: permission denied to release database %', quote_literal(db.name)
      USING ERRCODE = 'insufficient_privilege',
            DETAIL = format('it was claimed by role %s; you are %s', quote_ident(db.claimed_role), quote_ident(session_user)),
            HINT = 'release it as the role that claimed it, or as a superuser';
  END IF;
  UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = 'released', idle_since = NULL WHERE d.id = db.id;
  PERFORM pg_notify('pgtestpool', json_build_object('event', 'release', 'template', db.template, 'database', db.name,
                                                    'pid', pg_backend_pid())::text);
END
$fn$;

CREATE OR REPLACE FUNCTION public.test_db_status()
RETURNS TABLE (template text, build_state text, ready bigint, claimed bigint, creating bigint, dropping bigint,
               failed bigint, min_ready integer, template_database text, built_at timestamptz, error text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT t.name, t.state,
         count(d.id) FILTER (WHERE d.state = 'ready' AND d.source = t.database),
         count(d.id) FILTER (WHERE d.state = 'claimed'),
         count(d.id) FILTER (WHERE d.state = 'creating'),
         count(d.id) FILTER (WHERE d.state = 'dropping' OR (d.state = 'ready' AND d.source IS DISTINCT FROM t.database)),
         count(d.id) FILTER (WHERE d.state = 'failed'),
         t.min_ready, t.database, t.built_at, t.error
    FROM pgtestpool.templates t
    LEFT JOIN pgtestpool.databases d ON d.template = t.name
   GROUP BY t.name
   ORDER BY t.name
$$;

-- Who holds what: one row per database the pool manages.
CREATE OR REPLACE VIEW public.test_dbs AS
  SELECT name, template, state, claimed_pid, claimed_role, claimed_application, claimed_addr,
         claimed_at, claimed_for, idle_since, drop_reason, dropped_at, error, created_at
    FROM (SELECT d.id, d.name, d.template, d.state, d.claimed_pid, d.claimed_role, d.claimed_application, d.claimed_addr,
                 d.claimed_at, clock_timestamp() - d.claimed_at AS claimed_for, d.idle_since, d.drop_reason, d.dropped_at,
                 d.error, d.created_at
            FROM pgtestpool.databases d
          UNION ALL
          SELECT g.id, g.name, g.template, 'dropped', g.claimed_pid, g.claimed_role, g.claimed_application, g.claimed_addr,
                 g.claimed_at, NULL::interval, NULL::timestamptz, g.drop_reason, g.dropped_at,
                 NULL::text, g.created_at
            FROM pgtestpool.dropped g) x
   ORDER BY id;

REVOKE ALL ON FUNCTION public.claim_test_db(text), public.release_test_db(text), public.test_db_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.claim_test_db(text), public.release_test_db(text), public.test_db_status() TO PUBLIC;
GRANT SELECT ON public.test_dbs TO PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Sidecar-only functions (not granted to PUBLIC)
-- ---------------------------------------------------------------------------------------------

-- Registers a clone about to be created. The row goes in first and commits, so a sidecar that
-- dies mid-CREATE leaves a 'creating' row that the next start drops: nothing leaks.
CREATE OR REPLACE FUNCTION pgtestpool.new_clone(tpl text) RETURNS TABLE (name text, source text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO pgtestpool.databases (id, name, template, source, state)
  SELECT n.id, format('pgtp_%s_%s_%s', pgtestpool.slug(t.name), s.value, n.id), t.name, t.database, 'creating'
    FROM pgtestpool.templates t,
         (SELECT nextval('pgtestpool.clone_seq') AS id) n,
         pgtestpool.settings s
   WHERE t.name = tpl AND t.database IS NOT NULL AND s.key = 'instance'
  RETURNING databases.name, databases.source
$$;

-- Marks clones abandoned: the claiming session ended and nobody has been connected to the clone
-- for idle_timeout, or the claim is older than max_duration. Returns what it marked for dropping.
CREATE OR REPLACE FUNCTION pgtestpool.reclaim(idle_timeout interval, max_duration interval)
RETURNS TABLE (name text, template text, claimed_pid integer, reason text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
  WITH activity AS (
    SELECT d.id,
           EXISTS (SELECT 1 FROM pg_stat_activity a
                    WHERE (a.pid = d.claimed_pid AND a.backend_start = d.claimed_backend_start)
                       OR a.datname = d.name) AS active
      FROM pgtestpool.databases d
     WHERE d.state = 'claimed'
  )
  UPDATE pgtestpool.databases d
     SET idle_since = CASE WHEN a.active THEN NULL ELSE clock_timestamp() END
    FROM activity a
   WHERE d.id = a.id AND d.state = 'claimed' AND (d.idle_since IS NULL) = NOT a.active;

  RETURN QUERY
  UPDATE pgtestpool.databases d
     SET state = 'dropping',
         drop_reason = CASE
           WHEN d.claimed_at <= clock_timestamp() - max_duration
             THEN format('claimed for more than max_duration (%s)', max_duration)
           ELSE format('claiming session (pid %s) ended and no connections for %s', d.claimed_pid, idle_timeout)
         END
   WHERE d.state = 'claimed'
     AND (d.idle_since <= clock_timestamp() - idle_timeout OR d.claimed_at <= clock_timestamp() - max_duration)
  RETURNING d.name, d.template, d.claimed_pid, d.drop_reason;
END
$fn$;

-- Template database names carry the content hash, so a rebuilt template never shares a name.
CREATE OR REPLACE FUNCTION pgtestpool.template_db_name(template text, hash text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT format('pgtp_tpl_%s_%s_%s', pgtestpool.slug(template),
                (SELECT value FROM pgtestpool.settings WHERE key = 'instance'), left(hash, 12))
$$;

-- 'creating' rows with no CREATE in flight (a worker connection died mid-job): their database,
-- if any, must go.
CREATE OR REPLACE FUNCTION pgtestpool.abandon_creating(in_flight text[]) RETURNS TABLE (name text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = 'creation interrupted'
   WHERE d.state = 'creating' AND NOT (d.name = ANY(in_flight))
  RETURNING d.name
$$;

-- Rows whose database was dropped behind our back (by hand): never hand out a name that does not exist.
CREATE OR REPLACE FUNCTION pgtestpool.forget_vanished() RETURNS TABLE (name text, was text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH gone AS (
    SELECT d.id, d.state FROM pgtestpool.databases d
     WHERE d.state IN ('ready', 'claimed') AND NOT EXISTS (SELECT 1 FROM pg_database db WHERE db.datname = d.name)
       FOR UPDATE
  )
  UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = 'its database was dropped outside pgtestpool'
    FROM gone WHERE d.id = gone.id
  RETURNING d.name, gone.state
$$;

-- Databases this installation made (prefix and instance tag: another pool on the same server,
-- with its own control database, is left alone) that no row accounts for (left by a crash).
CREATE OR REPLACE FUNCTION pgtestpool.orphans() RETURNS TABLE (name text, is_template boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT db.datname::text, db.datistemplate
    FROM pg_database db
   WHERE db.datname LIKE 'pgtp\_%\_' || (SELECT value FROM pgtestpool.settings WHERE key = 'instance') || '\_%'
     AND NOT EXISTS (SELECT 1 FROM pgtestpool.databases d WHERE d.name = db.datname)
     AND NOT EXISTS (SELECT 1 FROM pgtestpool.templates t WHERE t.database = db.datname)
$$;

-- Per template: what the pool holds, for the sidecar's refill plan. (Dropped first: its result
-- columns grew, which CREATE OR REPLACE cannot do.)
DROP FUNCTION IF EXISTS pgtestpool.pool_state();
CREATE OR REPLACE FUNCTION pgtestpool.pool_state()
RETURNS TABLE (template text, database text, min_ready integer, ready bigint, creating bigint, total_in_use bigint,
               last_claimed_at timestamptz, claimed bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT t.name, t.database, t.min_ready,
         count(d.id) FILTER (WHERE d.state = 'ready' AND d.source = t.database),
         count(d.id) FILTER (WHERE d.state = 'creating'),
         -- what counts against pool.max_databases, over all templates (also ones removed from the config
         -- whose claims are still out): every clone that exists or is being made, including those
         -- waiting to be dropped, so memory stays bounded when drops are deferred under demand
         (SELECT count(*) FROM pgtestpool.databases a WHERE a.state IN ('ready', 'creating', 'claimed', 'dropping')),
         greatest(max(d.claimed_at), t.last_claimed_at),
         count(d.id) FILTER (WHERE d.state = 'claimed')
    FROM pgtestpool.templates t
    LEFT JOIN pgtestpool.databases d ON d.template = t.name
   GROUP BY t.name
$$;

-- Ready clones beyond a template's min_ready (min_ready was lowered, or a template was dropped
-- from the config): marked for dropping, newest first, so memory follows the config.
CREATE OR REPLACE FUNCTION pgtestpool.trim_surplus() RETURNS TABLE (name text, template text, reason text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d
     SET state = 'dropping', drop_reason = format('surplus: more ready than min_ready (%s)', s.min_ready)
    FROM (SELECT r.id, t.min_ready, row_number() OVER (PARTITION BY r.template ORDER BY r.id) AS n
            FROM pgtestpool.databases r JOIN pgtestpool.templates t ON t.name = r.template
           WHERE r.state = 'ready') s
   -- d.state again: a claim that committed meanwhile must not be dropped under its test.
   WHERE d.id = s.id AND s.n > s.min_ready AND d.state = 'ready'
  RETURNING d.name, d.template, d.drop_reason
$$;

-- Sidecar heartbeat and housekeeping: failed rows and tombstones are kept ten minutes.
CREATE OR REPLACE FUNCTION pgtestpool.heartbeat() RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO pgtestpool.settings (key, value) VALUES ('sidecar_seen', clock_timestamp()::text)
  ON CONFLICT (key) DO UPDATE SET value = excluded.value;
  -- The first moment, since the sidecar started, that every template is built and every pool full.
  INSERT INTO pgtestpool.settings (key, value)
  SELECT 'filled_at', clock_timestamp()::text
   WHERE EXISTS (SELECT 1 FROM pgtestpool.templates)
     AND NOT EXISTS (SELECT 1 FROM pgtestpool.pool_state() p JOIN pgtestpool.templates t ON t.name = p.template
                      WHERE t.state <> 'ready' OR p.ready < p.min_ready)
  ON CONFLICT (key) DO NOTHING;
  DELETE FROM pgtestpool.databases WHERE state = 'failed' AND created_at < now() - interval '10 minutes';
  DELETE FROM pgtestpool.dropped WHERE dropped_at < now() - interval '10 minutes';
$$;

-- A drop finished: the row becomes a tombstone.
CREATE OR REPLACE FUNCTION pgtestpool.mark_dropped(db_name text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH gone AS (
    DELETE FROM pgtestpool.databases d WHERE d.name = db_name AND d.state = 'dropping'
    RETURNING d.id, d.name, d.template, d.created_at, d.claimed_at, d.claimed_pid, d.claimed_role,
              d.claimed_application, d.claimed_addr, d.drop_reason, clock_timestamp() AS dropped_at
  ), tomb AS (
    INSERT INTO pgtestpool.dropped SELECT * FROM gone
  )
  UPDATE pgtestpool.templates t SET last_claimed_at = gone.claimed_at
    FROM gone
   WHERE t.name = gone.template AND gone.claimed_at > coalesce(t.last_claimed_at, '-infinity');
$$;

-- For the image's HEALTHCHECK: 'ok', or why not.
CREATE OR REPLACE FUNCTION pgtestpool.health() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE
    WHEN seen IS NULL THEN 'the sidecar has not started yet'
    WHEN seen < clock_timestamp() - interval '15 seconds'
      THEN format('the sidecar was last seen %s s ago', round(extract(epoch FROM clock_timestamp() - seen)))
    WHEN failed IS NOT NULL THEN 'template build failed: ' || failed
    WHEN building IS NOT NULL THEN 'building templates: ' || building
    WHEN filled IS NULL THEN 'filling pools: ' || coalesce(filling, 'starting')
    ELSE 'ok'
  END
  FROM (SELECT (SELECT value::timestamptz FROM pgtestpool.settings WHERE key = 'sidecar_seen') AS seen,
               (SELECT value FROM pgtestpool.settings WHERE key = 'filled_at') AS filled,
               (SELECT string_agg(format('%s: %s', name, error), '; ') FROM pgtestpool.templates WHERE state = 'failed') AS failed,
               (SELECT string_agg(name, ', ') FROM pgtestpool.templates WHERE state = 'building') AS building,
               (SELECT string_agg(format('%s %s/%s ready', template, ready, min_ready), ', ') FROM pgtestpool.pool_state()) AS filling) x
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgtestpool FROM PUBLIC;

COMMIT;
