-- pgtestpool SQL API: user functions in public, the sidecar's state functions in pgtestpool.
-- Only CREATE OR REPLACE (no table DDL: that lives in the numbered migrations beside this file),
-- so replacing it takes no lock that a waiting claim holds or waits for. The sidecar replaces it
-- only when its text changed (the hash is kept in pgtestpool.settings, key api_hash).
--
-- Every change of a clone's or a template's state is one of the functions below, and nothing else
-- writes pgtestpool.databases.state or pgtestpool.templates.state:
--   clone:    new_clone -> creating; clone_ready: creating -> ready; claim_test_db (claim_wait when
--             nothing is ready): ready -> claimed;
--             release_test_db, reclaim: claimed -> dropping; clone_failed, abandon_creating,
--             reconcile_creating, retire_clones, retire_stale, trim_surplus, trim_ready, lend_clone,
--             retire_entered, forget_vanished, release_all_claims: (creating | ready | claimed)
--             -> dropping; mark_dropped: dropping -> tombstone.
--   template: template_building, template_rebuilding -> building; template_built, template_reused,
--             template_serving_again -> ready; template_failed -> failed; templates_removed.
-- Locks: a function that changes both tables takes the clone rows first, then the template row;
-- none waits on a clone row another transaction holds (SKIP LOCKED): the sidecar holds a creating
-- clone's row for its whole CREATE, and an uncommitted claim holds its row for as long as it likes.
BEGIN;
-- "function ... does not exist, skipping" (DROP ... IF EXISTS on a fresh install) is no news.
SET LOCAL client_min_messages = warning;
SELECT pg_advisory_xact_lock(7203551409);

-- The sidecar's own functions are created anew each time, so a changed signature or result type
-- needs no special case. (Nothing locks a function while it runs; the public ones below are
-- replaced in place, keeping their grants.)
DO $drop$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'pgtestpool'::regnamespace LOOP
    EXECUTE format('DROP FUNCTION %s', f);
  END LOOP;
END
$drop$;

-- ---------------------------------------------------------------------------------------------
-- Definitions used everywhere (one each)
-- ---------------------------------------------------------------------------------------------

-- Readable, identifier-safe fragment of a template name for database names.
CREATE OR REPLACE FUNCTION pgtestpool.slug(template text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(nullif(left(trim(BOTH '_' FROM regexp_replace(lower(template), '[^a-z0-9]+', '_', 'g')), 20), ''), 't')
$$;

-- "In use": what counts against pool.max_databases. Every live row: clones being created, ready,
-- claimed, and waiting to be dropped (deferred drops still hold memory). Tombstones are elsewhere;
-- kept databases have a cap of their own (pool.max_kept).
CREATE OR REPLACE FUNCTION pgtestpool.in_use() RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT count(*) FROM pgtestpool.databases WHERE state <> 'kept'
$$;

-- Per template: what its pool holds. "Filled": the template serves a version and holds at least
-- min_ready ready clones of it. The refill plan, the heartbeat, health() and test_db_status() use it.
-- PL/pgSQL, like every function the sidecar calls per plan or per clone: it keeps its statements'
-- plans for the session, where a SQL function with a SET clause is planned again on every call
-- (that planning was most of the sidecar's own server time under load).
CREATE OR REPLACE FUNCTION pgtestpool.pool_state()
RETURNS TABLE (template text, database text, min_ready integer, ready bigint, creating bigint, claimed bigint,
               dropping bigint, in_use bigint, last_claimed_at timestamptz, filled boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  SELECT t.name, t.database, t.min_ready,
         count(d.id) FILTER (WHERE d.state = 'ready' AND d.source = t.database),
         count(d.id) FILTER (WHERE d.state = 'creating'),
         count(d.id) FILTER (WHERE d.state = 'claimed'),
         count(d.id) FILTER (WHERE d.state = 'dropping' OR (d.state = 'ready' AND d.source IS DISTINCT FROM t.database)),
         (SELECT count(*) FROM pgtestpool.databases WHERE state <> 'kept'),  -- pgtestpool.in_use()
         greatest(max(d.claimed_at), t.last_claimed_at),
         t.database IS NOT NULL AND count(d.id) FILTER (WHERE d.state = 'ready' AND d.source = t.database) >= t.min_ready
    FROM pgtestpool.templates t
    LEFT JOIN pgtestpool.databases d ON d.template = t.name
   GROUP BY t.name;
END
$$;

-- One line describing a template's pool, for error messages.
CREATE OR REPLACE FUNCTION pgtestpool.pool_summary(tpl text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT format('ready %s, creating %s, claimed %s, dropping %s; all templates: %s of max_databases %s in use; sidecar last seen %s',
           coalesce(p.ready, 0), coalesce(p.creating, 0), coalesce(p.claimed, 0), coalesce(p.dropping, 0), pgtestpool.in_use(),
           (SELECT value FROM pgtestpool.settings WHERE key = 'max_databases'),
           coalesce((SELECT round(extract(epoch FROM clock_timestamp() - value::timestamptz))::text || ' s ago'
                       FROM pgtestpool.settings WHERE key = 'sidecar_seen'), 'never (is the sidecar running?)'))
    FROM (SELECT 1) one LEFT JOIN pgtestpool.pool_state() p ON p.template = tpl
$$;

-- ---------------------------------------------------------------------------------------------
-- The user API (public, so no schema prefix is needed)
-- ---------------------------------------------------------------------------------------------

-- The claim line of one template (see claim_test_db), advisory lock (761100468, hash of its
-- name): is this session at its head?
CREATE OR REPLACE FUNCTION pgtestpool.in_claim_queue(queue integer) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT EXISTS (SELECT 1 FROM pg_locks l
                  WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted
                    AND l.classid = 761100468::oid AND l.objid = queue::oid AND l.objsubid = 2)
$$;

-- Leaves the claim line if this session holds its head; safe to call when it does not.
CREATE OR REPLACE FUNCTION pgtestpool.leave_claim_queue(queue integer) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT pg_advisory_unlock(761100468, queue) WHERE pgtestpool.in_claim_queue(queue)
$$;

-- claim_test_db's slow path: nothing was ready. Waits in line for a clone of `template` and
-- claims it (the same UPDATE as the fast path), or raises why it cannot.
CREATE OR REPLACE FUNCTION pgtestpool.claim_wait(template text, OUT claimed text, OUT owner text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
  tpl      pgtestpool.templates%ROWTYPE;
  deadline timestamptz;
  waiting_for bigint;
  waited   timestamptz;
  caller_lock_timeout text;
  nap      float8 := 0.002;
  queue    integer := hashtext(template) & 2147483647;
  queued   boolean := false;
BEGIN
  -- Nothing ready: claims wait in line, first come first served. The line is a session-level
  -- advisory lock per template (PostgreSQL grants a lock's waiters in arrival order); only the
  -- claim at its head waits for a clone, and lets go once it has one. Session-level, because a
  -- claim inside a long transaction must not hold the line until it commits; so every way out of
  -- this block lets go of it (an error, a timeout, a cancel), and a session that dies does too.
  BEGIN
    LOOP
      -- Nothing ready: say why at once when waiting cannot help, else wait for the refill.
      SELECT * INTO tpl FROM pgtestpool.templates t WHERE t.name = claim_wait.template;
      IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtestpool: unknown template %', coalesce(quote_literal(claim_wait.template), 'NULL')
          USING ERRCODE = 'undefined_object',
                HINT = 'known templates: ' || coalesce((SELECT string_agg(quote_literal(t.name), ', ' ORDER BY t.name) FROM pgtestpool.templates t),
                                                       'none yet (is the pgtestpool sidecar running?)');
      END IF;
      IF tpl.database IS NULL AND tpl.state = 'failed' THEN
        RAISE EXCEPTION 'pgtestpool: template % failed to build', quote_literal(tpl.name)
          USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = tpl.error,
                HINT = coalesce(tpl.hint, 'fix the template''s files; the sidecar log and test_db_status() show the error');
      END IF;
      -- Under REPEATABLE READ or SERIALIZABLE the snapshot never shows new clones: waiting is futile.
      IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgtestpool: no ready database for template % and this transaction cannot see new ones', quote_literal(tpl.name)
          USING ERRCODE = 'lock_not_available', DETAIL = 'transaction isolation is ' || current_setting('transaction_isolation'),
                HINT = 'call claim_test_db() outside any transaction (autocommit)';
      END IF;
      IF deadline IS NULL THEN
        deadline := clock_timestamp() + (SELECT value::interval FROM pgtestpool.settings WHERE key = 'claim_timeout');
      END IF;
      IF clock_timestamp() >= deadline THEN
        RAISE EXCEPTION USING
                MESSAGE = format('pgtestpool: no ready database for template %s within %s%s', quote_literal(tpl.name),
                                 (SELECT value FROM pgtestpool.settings WHERE key = 'claim_timeout'),
                                 ': creating clones fails: ' || tpl.clone_error),
                ERRCODE = 'lock_not_available', DETAIL = 'pool: ' || pgtestpool.pool_summary(tpl.name),
                HINT = CASE WHEN tpl.clone_error IS NOT NULL
                            THEN 'the server cannot create clones (see the error); free space or memory, or lower min_ready and pool.max_databases'
                            ELSE 'release databases with release_test_db(name) or close the claiming sessions, raise min_ready or pool.max_databases, or check the sidecar log' END;
      END IF;
      IF NOT queued THEN
        caller_lock_timeout := current_setting('lock_timeout');
        BEGIN
          PERFORM set_config('lock_timeout', greatest(1, ceil(extract(epoch FROM deadline - clock_timestamp()) * 1000))::bigint || 'ms', true);
          PERFORM pg_advisory_lock(761100468, queue);
          queued := true;  -- at the head of the line: claim at once (one may have come meanwhile)
        EXCEPTION WHEN lock_not_available THEN NULL;  -- the deadline passed in line: said above, next round
        END;
        PERFORM set_config('lock_timeout', caller_lock_timeout, true);
      ELSE
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
        END IF;
        -- Waited: a clone was just made, claim again at once. Else (nothing in the making, or its
        -- lock not held yet: the sidecar is about to) nap; the sidecar refills on the claims'
        -- NOTIFY, and polls.
        IF waiting_for IS NULL OR clock_timestamp() - waited <= interval '200 microseconds' THEN
          PERFORM pg_sleep(nap);
          nap := least(nap * 2, 0.02);
        END IF;
      END IF;
      -- The same statement as the fast path (each keeps its own cached plan).
      UPDATE pgtestpool.databases d
         SET state = 'claimed',
             claimed_at = clock_timestamp(),
             claimed_pid = pg_backend_pid(),
             claimed_role = session_user,
             claimed_application = current_setting('application_name'),
             claimed_addr = inet_client_addr()
       WHERE d.id = (SELECT c.id FROM pgtestpool.databases c
                      WHERE c.template = claim_wait.template AND c.state = 'ready'
                      ORDER BY c.id LIMIT 1
                        FOR UPDATE SKIP LOCKED)
      RETURNING d.name, d.owner INTO claimed, owner;
      EXIT WHEN claimed IS NOT NULL;
    END LOOP;
  EXCEPTION WHEN OTHERS OR query_canceled THEN
    -- (By pg_locks, not `queued`: a cancel may land between the lock and the assignment.)
    PERFORM pgtestpool.leave_claim_queue(queue);
    RAISE;
  END;
  IF queued THEN
    PERFORM pg_advisory_unlock(761100468, queue);
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION public.claim_test_db(template text DEFAULT 'default') RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- One plan per statement per session: custom plans (the default for a session's first five
-- calls) would plan the claim again on each of them.
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
  claimed  text;
  owner    text;
BEGIN
  -- The fast path is this one statement; the template is only looked at when it finds nothing.
  -- SKIP LOCKED: concurrent claimers each take a different row instead of queueing on one.
  -- It reads pgtestpool.databases alone (a new session pays ~0.6 ms per relation it first
  -- touches). Every ready row is of the version being served: a rebuild retires the old
  -- version's clones in the transaction that switches the template (template_built), and
  -- clone_ready() refuses a clone of a replaced version.
  UPDATE pgtestpool.databases d
     SET state = 'claimed',
         claimed_at = clock_timestamp(),
         claimed_pid = pg_backend_pid(),
         claimed_role = session_user,
         claimed_application = current_setting('application_name'),
         claimed_addr = inet_client_addr()
   WHERE d.id = (SELECT c.id FROM pgtestpool.databases c
                  WHERE c.template = claim_test_db.template AND c.state = 'ready'
                  ORDER BY c.id LIMIT 1
                    FOR UPDATE SKIP LOCKED)
  RETURNING d.name, d.owner INTO claimed, owner;

  IF claimed IS NULL THEN
    -- Nothing ready: wait in line (a function of its own, so a session's first claim compiles
    -- only this fast path).
    SELECT w.claimed, w.owner INTO claimed, owner FROM pgtestpool.claim_wait(claim_test_db.template) w;
  END IF;

  -- Clones are created without PUBLIC connect rights: only the claimer (and superusers) get in.
  -- (The privilege check rather than the pg_roles view: no view to expand on a session's first claim.)
  IF NOT (has_database_privilege(session_user, claimed, 'CONNECT') AND has_database_privilege(session_user, claimed, 'TEMPORARY')) THEN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', claimed, session_user);
  END IF;
  -- Ready clones accept no connections, not even a superuser's. Opening it is part of this
  -- transaction: until the claim commits nobody can enter, and a claim rolled back leaves the
  -- clone as it was, closed and unentered. (Before the owner changes: then we no longer own it.)
  EXECUTE format('ALTER DATABASE %I ALLOW_CONNECTIONS true', claimed);
  -- The template's owner: role owns its objects; the claimed clone becomes its own only now,
  -- so that role never reaches ready clones (a database's owner may always connect to it).
  IF owner IS NOT NULL THEN
    EXECUTE format('ALTER DATABASE %I OWNER TO %I', claimed, owner);
  END IF;
  -- A wake-up for the sidecar, nothing more: it reads what changed from the table.
  PERFORM pg_notify('pgtestpool', 'claim');
  -- The appliance runs with synchronous_commit off: a commit returns before its WAL leaves
  -- PostgreSQL's memory, and a server crash (kill -9, restart -m immediate) would forget this
  -- claim and hand its clone, in use, to the next test. This transaction's commit waits for
  -- its WAL (with fsync off, a write to the OS: microseconds). Not in the function's SET
  -- clause, so it lasts until the caller's commit.
  PERFORM set_config('synchronous_commit', 'on', true);
  RETURN claimed;
END
$fn$;

CREATE OR REPLACE FUNCTION public.release_test_db(name text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- One plan per statement per session: custom plans (the default for a session's first five
-- calls) would plan the claim again on each of them.
SET plan_cache_mode = force_generic_plan
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
  IF db.state NOT IN ('claimed', 'kept') THEN
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
  UPDATE pgtestpool.databases d
     SET state = 'dropping', drop_reason = 'released', dropping_since = clock_timestamp(), idle_since = NULL
   WHERE d.id = db.id;
  PERFORM pg_notify('pgtestpool', 'release');
END
$fn$;

CREATE OR REPLACE FUNCTION public.keep_test_db(name text, keep_for interval DEFAULT '1 hour') RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  db pgtestpool.databases%ROWTYPE;
  max_kept integer := coalesce((SELECT value::integer FROM pgtestpool.settings WHERE key = 'max_kept'), 10);
  evicted text;
BEGIN
  IF max_kept <= 0 THEN
    RAISE EXCEPTION 'pgtestpool: keeping databases is off (pool.max_kept is 0)' USING ERRCODE = 'feature_not_supported',
      HINT = 'set pool.max_kept in config.yaml to how many failed tests'' databases to keep';
  END IF;
  IF keep_for IS NULL OR keep_for <= interval '0' OR keep_for > interval '7 days' THEN
    RAISE EXCEPTION 'pgtestpool: keep_for from a second to 7 days, got %', coalesce(keep_for::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO db FROM pgtestpool.databases d WHERE d.name = keep_test_db.name FOR UPDATE;
  IF NOT FOUND OR db.state NOT IN ('claimed', 'kept') THEN
    RAISE EXCEPTION 'pgtestpool: % is not a claimed database', coalesce(quote_literal(keep_test_db.name), 'NULL')
      USING ERRCODE = 'undefined_object', DETAIL = coalesce('it is ' || db.state, 'no database of that name is handed out'),
            HINT = 'keep the database claim_test_db() returned, before releasing it';
  END IF;
  IF db.claimed_role IS DISTINCT FROM session_user
     AND NOT coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user), false) THEN
    RAISE EXCEPTION 'pgtestpool: permission denied to keep database %', quote_literal(db.name)
      USING ERRCODE = 'insufficient_privilege', DETAIL = format('it was claimed by role %s', quote_ident(db.claimed_role));
  END IF;
  -- Room under pool.max_kept: the oldest kept database goes (the newest failure is the one to look at).
  IF db.state = 'claimed' THEN
    FOR evicted IN
      UPDATE pgtestpool.databases d
         SET state = 'dropping', dropping_since = clock_timestamp(),
             drop_reason = format('kept, then dropped to make room for %s (pool.max_kept is %s)', db.name, max_kept)
       WHERE d.id IN (SELECT k.id FROM pgtestpool.databases k WHERE k.state = 'kept'
                       ORDER BY k.kept_until, k.id
                       LIMIT greatest(0, (SELECT count(*) FROM pgtestpool.databases c WHERE c.state = 'kept') - max_kept + 1)
                         FOR UPDATE SKIP LOCKED)
      RETURNING d.name
    LOOP
      RAISE NOTICE 'pgtestpool: % is dropped to make room (pool.max_kept is %)', evicted, max_kept;
    END LOOP;
  END IF;
  UPDATE pgtestpool.databases d
     SET state = 'kept', kept_until = clock_timestamp() + keep_for, idle_since = NULL, kept_logged = false
   WHERE d.id = db.id;
  PERFORM pg_notify('pgtestpool', 'keep');
  RETURN db.name;
END
$fn$;

DROP FUNCTION IF EXISTS public.test_db_status();  -- its result columns grew (filled)
CREATE FUNCTION public.test_db_status()
RETURNS TABLE (template text, build_state text, ready bigint, claimed bigint, creating bigint, dropping bigint,
               failed bigint, min_ready integer, template_database text, built_at timestamptz, error text, filled boolean)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT t.name, t.state, p.ready, p.claimed, p.creating, p.dropping,
         -- clone creations that failed in the last ten minutes (dropped or still being dropped)
         (SELECT count(*) FROM pgtestpool.databases d WHERE d.template = t.name AND d.state = 'dropping' AND d.drop_reason LIKE 'creation failed%')
           + (SELECT count(*) FROM pgtestpool.dropped g WHERE g.template = t.name AND g.drop_reason LIKE 'creation failed%'),
         t.min_ready, t.database, t.built_at,
         coalesce(t.error, 'creating clones fails: ' || t.clone_error),
         p.filled
    FROM pgtestpool.templates t
    JOIN pgtestpool.pool_state() p ON p.template = t.name
   ORDER BY t.name
$$;

-- Who holds what: one row per database the pool manages.
CREATE OR REPLACE VIEW public.test_dbs AS
  SELECT name, template, state, claimed_pid, claimed_role, claimed_application, claimed_addr,
         claimed_at, claimed_for, idle_since, drop_reason, dropped_at, error, created_at, kept_until, url
    FROM (SELECT d.id, d.name, d.template, d.state, d.claimed_pid, d.claimed_role, d.claimed_application, d.claimed_addr,
                 d.claimed_at, clock_timestamp() - d.claimed_at AS claimed_for, d.idle_since, d.drop_reason, d.dropped_at,
                 d.error, d.created_at, d.kept_until,
                 -- As this session reached the server (behind a port mapping, the host side differs).
                 CASE WHEN d.state IN ('claimed', 'kept')
                      THEN format('postgresql://%s@%s:%s/%s', d.claimed_role, coalesce(host(inet_server_addr()), 'localhost'), current_setting('port'), d.name) END AS url
            FROM pgtestpool.databases d
          UNION ALL
          SELECT g.id, g.name, g.template, 'dropped', g.claimed_pid, g.claimed_role, g.claimed_application, g.claimed_addr,
                 g.claimed_at, NULL::interval, NULL::timestamptz, g.drop_reason, g.dropped_at,
                 NULL::text, g.created_at, NULL::timestamptz, NULL::text
            FROM pgtestpool.dropped g) x
   ORDER BY id;

REVOKE ALL ON FUNCTION public.claim_test_db(text), public.release_test_db(text), public.keep_test_db(text, interval), public.test_db_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.claim_test_db(text), public.release_test_db(text), public.keep_test_db(text, interval), public.test_db_status() TO PUBLIC;
GRANT SELECT ON public.test_dbs TO PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Clone state functions (sidecar only)
-- ---------------------------------------------------------------------------------------------

-- -> creating. The row goes in first and commits, so a sidecar that dies mid-CREATE leaves a
-- 'creating' row that the next start drops: nothing leaks.
CREATE OR REPLACE FUNCTION pgtestpool.new_clone(tpl text) RETURNS TABLE (name text, source text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  INSERT INTO pgtestpool.databases (id, name, template, source, owner, state)
  SELECT n.id, format('pgtp_%s_%s_%s', pgtestpool.slug(t.name), s.value, n.id), t.name, t.database, t.owner, 'creating'
    FROM pgtestpool.templates t,
         (SELECT nextval('pgtestpool.clone_seq') AS id) n,
         pgtestpool.settings s
   WHERE t.name = tpl AND t.database IS NOT NULL AND s.key = 'instance'
  RETURNING databases.name, databases.source;
END
$$;

-- creating -> ready. False: the row was retired meanwhile, or its template was rebuilt (then
-- retire_stale() takes it). A success clears the template's last clone error.
CREATE OR REPLACE FUNCTION pgtestpool.clone_ready(clone text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  became_ready boolean;
BEGIN
  WITH ready AS (
    UPDATE pgtestpool.databases d
       SET state = 'ready', ready_at = clock_timestamp(),
           db_oid = (SELECT db.oid FROM pg_database db WHERE db.datname = d.name)
     WHERE d.name = clone AND d.state = 'creating'
       -- its template was rebuilt meanwhile: retire_stale() drops it instead
       AND d.source = (SELECT t.database FROM pgtestpool.templates t WHERE t.name = d.template)
    RETURNING d.template
  ), cleared AS (
    UPDATE pgtestpool.templates t SET clone_error = NULL, clone_error_at = NULL
      FROM ready WHERE t.name = ready.template AND t.clone_error IS NOT NULL
  )
  SELECT EXISTS (SELECT 1 FROM ready) INTO became_ready;
  RETURN became_ready;
END
$$;

-- creating -> dropping: CREATE DATABASE failed. Whatever exists of it is dropped like any other
-- clone; the template keeps the error for claims, test_db_status() and health().
CREATE OR REPLACE FUNCTION pgtestpool.clone_failed(clone text, message text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH failed AS (
    UPDATE pgtestpool.databases d
       SET state = 'dropping', drop_reason = 'creation failed: ' || message, error = message, dropping_since = clock_timestamp()
     WHERE d.name = clone AND d.state IN ('creating', 'dropping')
    RETURNING d.template
  )
  UPDATE pgtestpool.templates t SET clone_error = message, clone_error_at = clock_timestamp()
    FROM failed WHERE t.name = failed.template
$$;

-- claimed -> dropping: the claiming session ended and nobody has been connected to the clone
-- for idle_timeout, or the claim is older than max_duration. Sooner, after starved_idle, when the
-- template has no ready clone and claims are waiting: a suite whose tests "just disconnect" must
-- not wait idle_timeout per test for a clone nobody will come back to. Returns what it marked.
CREATE OR REPLACE FUNCTION pgtestpool.reclaim(idle_timeout interval, max_duration interval, starved_idle interval)
RETURNS TABLE (name text, template text, claimed_pid integer, reason text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  starved text[];
BEGIN
  WITH activity AS (
    SELECT d.id,
           EXISTS (SELECT 1 FROM pg_stat_activity a
                    -- the claiming session: a backend with that pid started after the claim reused the pid
                    WHERE (a.pid = d.claimed_pid AND a.backend_start <= d.claimed_at)
                       OR a.datname = d.name) AS active
      FROM pgtestpool.databases d
     WHERE d.state = 'claimed'
  )
  UPDATE pgtestpool.databases d
     SET idle_since = CASE WHEN a.active THEN NULL ELSE clock_timestamp() END
    FROM activity a
   WHERE d.id = a.id AND d.state = 'claimed' AND (d.idle_since IS NULL) = NOT a.active;

  -- Templates with nothing ready while some claim waits (on a clone being made, or napping).
  -- Which template a waiting claim wants is not visible, so every empty one counts.
  IF EXISTS (SELECT 1 FROM pg_stat_activity a
              WHERE a.state = 'active' AND a.wait_event IS NOT NULL AND a.pid <> pg_backend_pid()
                AND a.query ILIKE '%claim_test_db%') THEN
    SELECT array_agg(t.name) INTO starved FROM pgtestpool.templates t
     WHERE NOT EXISTS (SELECT 1 FROM pgtestpool.databases r WHERE r.template = t.name AND r.state = 'ready');
  END IF;

  RETURN QUERY
  UPDATE pgtestpool.databases d
     SET state = 'dropping', dropping_since = clock_timestamp(),
         drop_reason = CASE
           WHEN d.state = 'kept' THEN format('kept until %s (keep_test_db): time is up', d.kept_until)
           WHEN d.claimed_at <= clock_timestamp() - max_duration
             THEN format('claimed for more than max_duration (%s)', max_duration)
           WHEN d.idle_since <= clock_timestamp() - idle_timeout
             THEN format('claiming session (pid %s) ended and no connections for %s', d.claimed_pid, idle_timeout)
           ELSE format('claiming session (pid %s) ended, no connections for %s, and claims were waiting for the template', d.claimed_pid, starved_idle)
         END
   WHERE (d.state = 'claimed'
          AND (d.idle_since <= clock_timestamp() - idle_timeout OR d.claimed_at <= clock_timestamp() - max_duration
               OR (d.idle_since <= clock_timestamp() - starved_idle AND d.template = ANY(starved))))
      -- a kept database outlives its claimer and max_duration: only its own time counts
      OR (d.state = 'kept' AND d.kept_until <= clock_timestamp())
  RETURNING d.name, d.template, d.claimed_pid, d.drop_reason;
END
$fn$;

-- (creating | ready) -> dropping: a template's clones retired (rebuilt, removed from the config).
-- `only_source`: only clones of that template database (NULL: all).
CREATE OR REPLACE FUNCTION pgtestpool.retire_clones(tpl text, only_source text, reason text) RETURNS SETOF text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = reason, dropping_since = clock_timestamp()
   WHERE d.id IN (SELECT r.id FROM pgtestpool.databases r
                   WHERE r.template = tpl AND r.state IN ('ready', 'creating') AND (only_source IS NULL OR r.source = only_source)
                     FOR UPDATE SKIP LOCKED)
     AND d.state IN ('ready', 'creating')
  RETURNING d.name
$$;

-- (creating | ready) -> dropping: clones of a template database no longer served, that
-- retire_clones() skipped because they were locked then (being created, or in a claim that was
-- later rolled back). Every poll; a claim never takes them (it matches the served source).
CREATE OR REPLACE FUNCTION pgtestpool.retire_stale() RETURNS SETOF text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = 'template rebuilt', dropping_since = clock_timestamp()
   WHERE d.id IN (SELECT r.id FROM pgtestpool.databases r LEFT JOIN pgtestpool.templates t ON t.name = r.template
                   WHERE r.state = 'ready' AND r.source IS DISTINCT FROM t.database
                     FOR UPDATE OF r SKIP LOCKED)
     AND d.state = 'ready'
  RETURNING d.name
$$;

-- (claimed | kept) -> dropping, every claim at once (tests and benchmarks that start from a clean pool).
CREATE OR REPLACE FUNCTION pgtestpool.release_all_claims(reason text) RETURNS SETOF text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = reason, dropping_since = clock_timestamp(), idle_since = NULL
   WHERE d.state IN ('claimed', 'kept')
  RETURNING d.name
$$;

-- ready -> dropping: ready clones beyond a template's min_ready (min_ready was lowered, or a
-- template was dropped from the config), newest first, so memory follows the config.
CREATE OR REPLACE FUNCTION pgtestpool.trim_surplus() RETURNS TABLE (name text, template text, reason text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d
     SET state = 'dropping', dropping_since = clock_timestamp(),
         drop_reason = format('surplus: more ready than min_ready (%s)', s.min_ready)
    FROM (SELECT r.id, t.min_ready, row_number() OVER (PARTITION BY r.template ORDER BY r.id) AS n
            FROM pgtestpool.databases r JOIN pgtestpool.templates t ON t.name = r.template
           WHERE r.state = 'ready') s
   -- d.state again: a claim that committed meanwhile must not be dropped under its test; and a
   -- row a claim holds right now is left alone (no waiting on it).
   WHERE d.id = s.id AND s.n > s.min_ready AND d.state = 'ready'
     AND d.id IN (SELECT l.id FROM pgtestpool.databases l WHERE l.state = 'ready' FOR UPDATE SKIP LOCKED)
  RETURNING d.name, d.template, d.drop_reason
$$;

-- ready -> dropping: one clone of an unclaimed template gives its place under max_databases to a
-- busy one. Not one made in the last second: a waiting claim of the lender may be about to take it.
-- ready -> dropping: a template's ready clones beyond `keep`, newest first (claims take the oldest),
-- when its ready depth falls back after a busy spell: memory follows demand. Rows a claim holds
-- right now are left alone.
CREATE OR REPLACE FUNCTION pgtestpool.trim_ready(tpl text, keep integer, reason text) RETURNS SETOF text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d
     SET state = 'dropping', dropping_since = clock_timestamp(), drop_reason = reason
   WHERE d.id IN (SELECT r.id FROM pgtestpool.databases r
                   WHERE r.template = tpl AND r.state = 'ready'
                   ORDER BY r.id OFFSET greatest(keep, 0)
                     FOR UPDATE SKIP LOCKED)
     AND d.state = 'ready'
  RETURNING d.name
$$;

CREATE OR REPLACE FUNCTION pgtestpool.lend_clone(lender text, reason text) RETURNS SETOF text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = reason, dropping_since = clock_timestamp()
   WHERE d.id = (SELECT r.id FROM pgtestpool.databases r
                  WHERE r.template = lender AND r.state = 'ready'
                    AND r.source = (SELECT t.database FROM pgtestpool.templates t WHERE t.name = lender)
                    AND r.ready_at < clock_timestamp() - interval '1 second'
                  ORDER BY r.id DESC LIMIT 1 FOR UPDATE SKIP LOCKED)
  RETURNING d.name
$$;

-- creating -> dropping: rows with no CREATE in flight (a worker connection died mid-job).
CREATE OR REPLACE FUNCTION pgtestpool.abandon_creating(in_flight text[]) RETURNS SETOF text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = 'creation interrupted', dropping_since = clock_timestamp()
   WHERE d.state = 'creating' AND NOT (d.name = ANY(in_flight))
  RETURNING d.name
$$;

-- creating -> dropping at start: the leader lock is ours, so no other sidecar has a CREATE in flight.
CREATE OR REPLACE FUNCTION pgtestpool.reconcile_creating() RETURNS SETOF text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d
     SET state = 'dropping', drop_reason = 'half-created (the sidecar stopped during CREATE)', dropping_since = clock_timestamp()
   WHERE d.state = 'creating'
  RETURNING d.name
$$;

-- ready -> dropping: someone is connected to a ready clone (a superuser reopened it by hand):
-- it is no longer pristine, so it is never handed out. SKIP LOCKED: a claim in progress holds it.
CREATE OR REPLACE FUNCTION pgtestpool.retire_entered() RETURNS TABLE (name text, entered_by text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH entered AS (
    SELECT d.id, (SELECT string_agg(format('pid %s role %s', a.pid, a.usename), ', ') FROM pg_stat_activity a WHERE a.datname = d.name) AS who
      FROM pgtestpool.databases d
     WHERE d.state = 'ready' AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.name)
       FOR UPDATE SKIP LOCKED
  )
  UPDATE pgtestpool.databases d
     SET state = 'dropping', drop_reason = 'entered while ready (' || e.who || ')', dropping_since = clock_timestamp()
    FROM entered e WHERE d.id = e.id AND d.state = 'ready'
  RETURNING d.name, e.who
$$;

-- (ready | claimed) -> dropping: the database was dropped behind our back (by hand): never hand
-- out a name that does not exist.
CREATE OR REPLACE FUNCTION pgtestpool.forget_vanished() RETURNS TABLE (name text, was text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH gone AS (
    SELECT d.id, d.state FROM pgtestpool.databases d
     WHERE d.state IN ('ready', 'claimed')
       AND NOT EXISTS (SELECT 1 FROM pg_database db WHERE db.datname = d.name OR db.oid = d.db_oid)
       FOR UPDATE SKIP LOCKED
  )
  UPDATE pgtestpool.databases d
     SET state = 'dropping', drop_reason = 'its database was dropped outside pgtestpool', dropping_since = clock_timestamp()
    FROM gone WHERE d.id = gone.id
  RETURNING d.name, gone.state
$$;

-- What the drop job needs: dropping rows not in flight, the name the clone has now (a test may
-- have renamed it), its connections, and whether a released clone is still in its grace period.
CREATE OR REPLACE FUNCTION pgtestpool.drops_due(in_flight text[], grace interval, max_rows integer)
RETURNS TABLE (name text, current_name text, reason text, connections bigint, in_grace boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
  -- Connections are counted only for a clone still within its grace (NULL: not counted; past
  -- its grace the drop forces them anyway), and by a count per database: a row per session of
  -- the server (pg_stat_activity) was this function's main cost under load.
  RETURN QUERY
  SELECT due.name, coalesce((SELECT db.datname::text FROM pg_database db WHERE db.oid = due.oid), due.name), due.drop_reason,
         due.n, coalesce(due.n, 0) > 0
    FROM (SELECT d.id, d.name, d.drop_reason, o.oid,
                 CASE WHEN coalesce(d.dropping_since, '-infinity') > clock_timestamp() - grace
                      THEN pg_stat_get_db_numbackends(o.oid)::bigint END AS n
            FROM pgtestpool.databases d
            CROSS JOIN LATERAL (SELECT coalesce(d.db_oid, (SELECT db.oid FROM pg_database db WHERE db.datname = d.name)) AS oid) o
           WHERE d.state = 'dropping' AND NOT (d.name = ANY(in_flight))
           ORDER BY d.id
           LIMIT max_rows) due
   ORDER BY due.id;
END
$$;

-- dropping -> tombstone: the drop finished. Returns who had claimed it, for the log; no row when
-- the database still exists (renamed meanwhile: the next plan drops it under its new name).
CREATE OR REPLACE FUNCTION pgtestpool.mark_dropped(db_name text)
RETURNS TABLE (claimed_pid integer, claimed_role text, claimed_application text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH gone AS (
    DELETE FROM pgtestpool.databases d
     WHERE d.name = db_name AND d.state = 'dropping'
       -- still there under another name (a test renamed it just before the drop): not dropped yet
       AND NOT EXISTS (SELECT 1 FROM pg_database db WHERE db.oid = d.db_oid OR db.datname = d.name)
    RETURNING d.id, d.name, d.template, d.created_at, d.claimed_at, d.claimed_pid, d.claimed_role,
              d.claimed_application, d.claimed_addr, d.drop_reason, clock_timestamp() AS dropped_at
  ), tomb AS (
    INSERT INTO pgtestpool.dropped SELECT * FROM gone
  ), last_claim AS (
    UPDATE pgtestpool.templates t SET last_claimed_at = gone.claimed_at
      FROM gone
     WHERE t.name = gone.template AND gone.claimed_at > coalesce(t.last_claimed_at, '-infinity')
  )
  SELECT gone.claimed_pid, gone.claimed_role, gone.claimed_application FROM gone;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Template state functions (sidecar only)
-- ---------------------------------------------------------------------------------------------

-- Template database names carry the content hash, so a rebuilt template never shares a name.
CREATE OR REPLACE FUNCTION pgtestpool.template_db_name(template text, hash text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT format('pgtp_tpl_%s_%s_%s', pgtestpool.slug(template),
                (SELECT value FROM pgtestpool.settings WHERE key = 'instance'), left(hash, 12))
$$;

-- -> building, serving nothing: a new or stale version is not served while its replacement builds
-- (tests right after a restart with edited files must get the new schema). Returns the database
-- that served before, if any, for the caller to drop once its clones are retired.
CREATE OR REPLACE FUNCTION pgtestpool.template_building(tpl text, min_ready integer, owner text) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH old AS (SELECT t.database FROM pgtestpool.templates t WHERE t.name = tpl),
  upsert AS (
    INSERT INTO pgtestpool.templates (name, state, min_ready, owner) VALUES (tpl, 'building', min_ready, owner)
    ON CONFLICT (name) DO UPDATE SET state = 'building', database = NULL, hash = NULL, error = NULL, hint = NULL,
                                     min_ready = excluded.min_ready, owner = excluded.owner, updated_at = now(),
                                     -- a template of that name built through SQL gives way to config.yaml
                                     origin = 'config', pending_state = NULL, pending_hash = NULL, pending_database = NULL, builder_pid = NULL
  )
  SELECT database FROM old
$$;

-- ready -> building, still serving the current version (watch saw an edit).
CREATE OR REPLACE FUNCTION pgtestpool.template_rebuilding(tpl text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.templates SET state = 'building', updated_at = now() WHERE name = tpl
$$;

-- building -> ready: the new version serves. Ready clones of the one it replaces are retired
-- (claimed ones stay with their tests). Returns the replaced template database, if any.
CREATE OR REPLACE FUNCTION pgtestpool.template_built(tpl text, db text, content_hash text, ms integer, owner text) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  old text;
BEGIN
  SELECT t.database INTO old FROM pgtestpool.templates t WHERE t.name = tpl FOR UPDATE;
  UPDATE pgtestpool.templates t
     SET state = 'ready', database = db, hash = content_hash, error = NULL, hint = NULL, owner = template_built.owner,
         build_ms = ms, built_at = now(), updated_at = now()
   WHERE t.name = tpl;
  IF old IS NOT NULL AND old <> db THEN
    PERFORM pgtestpool.retire_clones(tpl, old, 'template rebuilt');
    RETURN old;
  END IF;
  RETURN NULL;
END
$fn$;

-- (building | failed | ready) -> ready: the version that serves is the one the inputs describe
-- (reused at start; a broken edit reverted while the sidecar was away).
CREATE OR REPLACE FUNCTION pgtestpool.template_reused(tpl text, min_ready integer, owner text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.templates t
     SET state = 'ready', error = NULL, hint = NULL, min_ready = template_reused.min_ready, owner = template_reused.owner, updated_at = now()
   WHERE t.name = tpl
$$;

-- failed -> ready: the inputs are back to the serving version (an edit undone).
CREATE OR REPLACE FUNCTION pgtestpool.template_serving_again(tpl text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.templates SET state = 'ready', error = NULL, hint = NULL, updated_at = now() WHERE name = tpl
$$;

-- -> failed, with the error and (apart) a hint. A version that served keeps serving.
CREATE OR REPLACE FUNCTION pgtestpool.template_failed(tpl text, message text, hint text) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.templates t SET state = 'failed', error = message, hint = template_failed.hint, updated_at = now()
   WHERE t.name = tpl
$$;

-- Templates no longer in the config: forgotten, their ready clones retired. Returns their databases.
CREATE OR REPLACE FUNCTION pgtestpool.templates_removed(configured text[]) RETURNS TABLE (name text, database text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH gone AS (DELETE FROM pgtestpool.templates t WHERE NOT (t.name = ANY(configured)) AND t.origin = 'config' RETURNING t.name, t.database),
  retired AS (
    UPDATE pgtestpool.databases d SET state = 'dropping', drop_reason = 'template removed from config', dropping_since = clock_timestamp()
      FROM gone WHERE d.template = gone.name AND d.state IN ('ready', 'creating')
  )
  SELECT gone.name, gone.database FROM gone
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
     AND NOT EXISTS (SELECT 1 FROM pgtestpool.databases d WHERE d.name = db.datname OR d.db_oid = db.oid)
     AND NOT EXISTS (SELECT 1 FROM pgtestpool.templates t WHERE t.database = db.datname OR t.pending_database = db.datname)
$$;

-- Kept databases not yet announced in the sidecar's log: marked announced as they are returned.
CREATE OR REPLACE FUNCTION pgtestpool.kept_to_announce()
RETURNS TABLE (name text, template text, claimed_role text, claimed_application text, kept_until timestamptz)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  UPDATE pgtestpool.databases d SET kept_logged = true
   WHERE d.state = 'kept' AND NOT d.kept_logged
  RETURNING d.name, d.template, d.claimed_role, d.claimed_application, d.kept_until
$$;

-- ---------------------------------------------------------------------------------------------
-- Heartbeat and health (sidecar only; health() for the image's HEALTHCHECK)
-- ---------------------------------------------------------------------------------------------

-- Sidecar heartbeat and housekeeping: tombstones are kept ten minutes.
CREATE OR REPLACE FUNCTION pgtestpool.heartbeat() RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  INSERT INTO pgtestpool.settings (key, value) VALUES ('sidecar_seen', clock_timestamp()::text)
  ON CONFLICT (key) DO UPDATE SET value = excluded.value;
  -- The first moment, since the sidecar started, that every template of config.yaml is built and
  -- every pool filled. (Templates built through SQL are their builders' business: one still to
  -- come, or rolled back, does not make the appliance unready.)
  INSERT INTO pgtestpool.settings (key, value)
  SELECT 'filled_at', clock_timestamp()::text
   WHERE EXISTS (SELECT 1 FROM pgtestpool.templates WHERE origin = 'config')
     AND NOT EXISTS (SELECT 1 FROM pgtestpool.pool_state() p JOIN pgtestpool.templates t ON t.name = p.template
                      WHERE t.origin = 'config' AND (t.state <> 'ready' OR NOT p.filled))
  ON CONFLICT (key) DO NOTHING;
  DELETE FROM pgtestpool.dropped WHERE dropped_at < now() - interval '10 minutes';
$$;

-- 'ok', or why not.
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
    -- Not "tests drained the pool" (which never flips health): the server cannot make clones.
    WHEN clones_failing IS NOT NULL THEN 'creating clones fails: ' || clones_failing
    WHEN filled IS NULL THEN 'filling pools: ' || coalesce(filling, 'starting')
    ELSE 'ok'
  END
  FROM (SELECT (SELECT value::timestamptz FROM pgtestpool.settings WHERE key = 'sidecar_seen') AS seen,
               (SELECT value FROM pgtestpool.settings WHERE key = 'filled_at') AS filled,
               -- (config.yaml's templates: see heartbeat())
               (SELECT string_agg(format('%s: %s', name, error), '; ') FROM pgtestpool.templates WHERE state = 'failed' AND origin = 'config') AS failed,
               (SELECT string_agg(name, ', ') FROM pgtestpool.templates WHERE state = 'building' AND origin = 'config') AS building,
               (SELECT string_agg(format('%s: %s', t.name, t.clone_error), '; ')
                  FROM pgtestpool.templates t JOIN pgtestpool.pool_state() p ON p.template = t.name
                 WHERE t.clone_error IS NOT NULL AND NOT p.filled) AS clones_failing,
               (SELECT string_agg(format('%s %s/%s ready', template, ready, min_ready), ', ') FROM pgtestpool.pool_state()) AS filling) x
$$;

-- ---------------------------------------------------------------------------------------------
-- Templates built through SQL: a migration tool on the test side builds one, from any language.
--   CALL begin_template('app', '<hash of the migrations>')  -> a database to migrate, or NULL when
--        that version serves already; concurrent callers wait for the one that builds;
--   (the tool migrates that database, then closes its connections to it)
--   CALL finish_template('app')  -> the sidecar freezes it; it serves once this returns.
-- A builder whose session ends before finish_template is rolled back (its database dropped).
-- The sidecar does the CREATE and the sealing (NOTIFY pgtestpool_templates, and every poll).
-- ---------------------------------------------------------------------------------------------

-- Is the session with this pid, started no later than `since`, still there?
CREATE OR REPLACE FUNCTION pgtestpool.builder_alive(pid integer, since timestamptz) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT pid IS NOT NULL AND EXISTS (SELECT 1 FROM pg_stat_get_activity(pid) a WHERE a.backend_start <= since)
$$;

-- begin_template's step, committed by the caller: what this session should do about version
-- `version_hash` of template `tpl`. 'ready': it serves; 'build:<database>': build it there;
-- 'wait': its database is being made, another session builds, or a build that was left is being
-- rolled back; 'failed:<error>': making this session's database failed.
CREATE OR REPLACE FUNCTION pgtestpool.template_request(tpl text, version_hash text, min_ready integer) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  t pgtestpool.templates%ROWTYPE;
  superuser boolean := coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user), false);
  failure text;
BEGIN
  IF tpl IS NULL OR octet_length(tpl) NOT BETWEEN 1 AND 40 THEN
    RAISE EXCEPTION 'pgtestpool: a template name of 1 to 40 bytes, got %', coalesce(quote_literal(tpl), 'NULL') USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF version_hash IS NULL OR length(version_hash) NOT BETWEEN 1 AND 200 THEN
    RAISE EXCEPTION 'pgtestpool: a version of 1 to 200 characters (a hash of your migrations), got %', coalesce(quote_literal(version_hash), 'NULL')
      USING ERRCODE = 'invalid_parameter_value', HINT = 'e.g. the sha256 of the migration files: the same files give the same version, and reuse the template';
  END IF;
  IF min_ready IS NULL OR min_ready NOT BETWEEN 0 AND 1000 THEN
    RAISE EXCEPTION 'pgtestpool: min_ready from 0 to 1000, got %', coalesce(min_ready::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
  END IF;
  INSERT INTO pgtestpool.templates (name, state, min_ready, origin, owner)
  VALUES (tpl, 'building', min_ready, 'sql', CASE WHEN superuser THEN NULL ELSE session_user END)
  ON CONFLICT (name) DO NOTHING;
  SELECT * INTO t FROM pgtestpool.templates WHERE name = tpl FOR UPDATE;
  IF t.origin <> 'sql' THEN
    RAISE EXCEPTION 'pgtestpool: template % is built from config.yaml', quote_literal(tpl)
      USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'give the template you build through SQL another name';
  END IF;
  IF NOT superuser AND t.owner IS DISTINCT FROM session_user THEN
    RAISE EXCEPTION 'pgtestpool: permission denied to build template %', quote_literal(tpl)
      USING ERRCODE = 'insufficient_privilege', DETAIL = format('it belongs to role %s', coalesce(quote_ident(t.owner), 'a superuser')),
            HINT = 'build it as that role or a superuser, or use another template name';
  END IF;
  -- This session's request failed (CREATE DATABASE): said once, then a new call starts afresh.
  IF t.pending_state IS NULL AND t.builder_pid = pg_backend_pid() AND t.error IS NOT NULL AND t.pending_hash = version_hash THEN
    failure := t.error;
    UPDATE pgtestpool.templates SET builder_pid = NULL, pending_hash = NULL WHERE name = tpl;
    RETURN 'failed:' || failure;
  END IF;
  IF t.hash = version_hash AND t.database IS NOT NULL THEN
    RETURN 'ready';
  END IF;
  IF t.pending_state IS NOT NULL THEN
    IF t.builder_pid = pg_backend_pid() AND t.pending_hash = version_hash THEN
      RETURN CASE WHEN t.pending_state = 'building' THEN 'build:' || t.pending_database ELSE 'wait' END;
    END IF;
    -- Another session builds (this version or another: one build at a time), or the sidecar is
    -- about to roll back a build whose session ended.
    RETURN 'wait';
  END IF;
  UPDATE pgtestpool.templates
     SET pending_state = 'requested', pending_hash = version_hash, pending_database = NULL,
         builder_pid = pg_backend_pid(), builder_since = clock_timestamp(), builder_role = session_user,
         min_ready = template_request.min_ready, error = NULL, hint = NULL, updated_at = now(),
         -- nothing serves yet: claims wait for this build (a rolled-back one had marked it failed)
         state = CASE WHEN database IS NULL THEN 'building' ELSE state END
   WHERE name = tpl;
  PERFORM pg_notify('pgtestpool_templates', 'request');
  RETURN 'wait';
END
$fn$;

-- finish_template's step: this session's build is done; the sidecar seals it ('wait'), or why not.
CREATE OR REPLACE FUNCTION pgtestpool.template_finish(tpl text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  t pgtestpool.templates%ROWTYPE;
  open_connections integer;
BEGIN
  SELECT * INTO t FROM pgtestpool.templates WHERE name = tpl AND origin = 'sql' FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pgtestpool: no template built through SQL is named %', coalesce(quote_literal(tpl), 'NULL')
      USING ERRCODE = 'undefined_object', HINT = 'CALL begin_template(name, version) first';
  END IF;
  IF t.builder_pid IS DISTINCT FROM pg_backend_pid() OR t.pending_state IS NULL THEN
    RAISE EXCEPTION 'pgtestpool: this session is not building template %', quote_literal(tpl)
      USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = CASE WHEN t.pending_state IS NOT NULL THEN format('session pid %s is building it', t.builder_pid) ELSE 'no build of it is in progress' END,
            HINT = 'call finish_template() on the connection that called begin_template() and got a database';
  END IF;
  IF t.pending_state = 'sealing' THEN
    RETURN 'wait';
  END IF;
  IF t.pending_state = 'requested' THEN
    RAISE EXCEPTION 'pgtestpool: template %''s database is not made yet', quote_literal(tpl)
      USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'begin_template() returns it once it exists: migrate that, then call finish_template()';
  END IF;
  open_connections := pg_stat_get_db_numbackends((SELECT db.oid FROM pg_database db WHERE db.datname = t.pending_database));
  IF open_connections > 0 THEN
    RAISE EXCEPTION 'pgtestpool: % connection(s) to % are still open', open_connections, t.pending_database
      USING ERRCODE = 'object_in_use', HINT = 'close your migration tool''s connections to it (pool.end(), engine.dispose()), then call finish_template() again';
  END IF;
  UPDATE pgtestpool.templates SET pending_state = 'sealing', updated_at = now() WHERE name = tpl;
  PERFORM pg_notify('pgtestpool_templates', 'finish');
  RETURN 'wait';
END
$fn$;

-- While finish_template waits: 'wait' (sealing), 'done' (it serves), 'failed:<error>'.
CREATE OR REPLACE FUNCTION pgtestpool.template_finish_state(tpl text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE WHEN t.pending_state = 'sealing' AND t.builder_pid = pg_backend_pid() THEN 'wait'
              WHEN t.pending_state IS NULL AND t.builder_pid = pg_backend_pid() AND t.error IS NULL AND t.database IS NOT NULL THEN 'done'
              ELSE 'failed:' || coalesce(t.error, 'the build was rolled back') END
    FROM pgtestpool.templates t WHERE t.name = tpl
$$;

CREATE OR REPLACE PROCEDURE public.begin_template(name text, version text, INOUT database text DEFAULT NULL,
                                                  min_ready integer DEFAULT 8, wait interval DEFAULT '10 minutes')
LANGUAGE plpgsql
-- No SECURITY DEFINER and no SET clause: a procedure with either cannot COMMIT, and it must, so
-- the sidecar sees the request while this waits. It runs with the caller's rights; the steps it
-- calls are the SECURITY DEFINER functions above, named in full.
AS $proc$
DECLARE
  status text;
  deadline timestamptz := pg_catalog.clock_timestamp() + wait;
BEGIN
  -- First, before anything is done: called inside a transaction (psycopg's default), this fails
  -- at once with PostgreSQL's "invalid transaction termination" and leaves nothing behind. (No
  -- message of our own: a procedure cannot tell that it runs inside one before trying.)
  COMMIT;
  LOOP
    status := pgtestpool.template_request(begin_template.name, begin_template.version, begin_template.min_ready);
    COMMIT;
    IF status OPERATOR(pg_catalog.=) 'ready' THEN
      database := NULL;
      RETURN;
    ELSIF pg_catalog.left(status, 6) OPERATOR(pg_catalog.=) 'build:' THEN
      database := pg_catalog.substr(status, 7);
      RETURN;
    ELSIF pg_catalog.left(status, 7) OPERATOR(pg_catalog.=) 'failed:' THEN
      RAISE EXCEPTION 'pgtestpool: template % could not be started: %', pg_catalog.quote_literal(begin_template.name), pg_catalog.substr(status, 8)
        USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
      RAISE EXCEPTION 'pgtestpool: template % was not ready within %', pg_catalog.quote_literal(begin_template.name), wait
        USING ERRCODE = 'lock_not_available', HINT = 'another session is building it, or the sidecar is not running: see test_db_status() and the sidecar log';
    END IF;
    PERFORM pg_catalog.pg_sleep(0.02);
  END LOOP;
END
$proc$;

CREATE OR REPLACE PROCEDURE public.finish_template(name text, wait interval DEFAULT '10 minutes')
LANGUAGE plpgsql
AS $proc$
DECLARE
  status text;
  deadline timestamptz := pg_catalog.clock_timestamp() + wait;
BEGIN
  COMMIT;  -- as in begin_template: inside a transaction it cannot work, and fails here at once
  PERFORM pgtestpool.template_finish(finish_template.name);
  COMMIT;
  LOOP
    status := pgtestpool.template_finish_state(finish_template.name);
    EXIT WHEN status OPERATOR(pg_catalog.=) 'done';
    IF pg_catalog.left(status, 7) OPERATOR(pg_catalog.=) 'failed:' THEN
      RAISE EXCEPTION 'pgtestpool: template % could not be sealed: %', pg_catalog.quote_literal(finish_template.name), pg_catalog.substr(status, 8)
        USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF pg_catalog.clock_timestamp() OPERATOR(pg_catalog.>) deadline THEN
      RAISE EXCEPTION 'pgtestpool: template % was not sealed within %', pg_catalog.quote_literal(finish_template.name), wait
        USING ERRCODE = 'lock_not_available', HINT = 'is the sidecar running? see its log';
    END IF;
    PERFORM pg_catalog.pg_sleep(0.01);
  END LOOP;
END
$proc$;

-- The sidecar's side. What to do: 'create' (a request), 'seal' (finished), 'abandon' (the
-- building session ended before finish_template).
CREATE OR REPLACE FUNCTION pgtestpool.sql_template_work()
RETURNS TABLE (template text, action text, hash text, database text, builder_pid integer, builder_role text, builder_superuser boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT t.name,
         CASE WHEN t.pending_state = 'sealing' THEN 'seal'
              WHEN NOT pgtestpool.builder_alive(t.builder_pid, t.builder_since) THEN 'abandon'
              WHEN t.pending_state = 'requested' THEN 'create' END,
         t.pending_hash, t.pending_database, t.builder_pid, t.builder_role,
         coalesce((SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = t.builder_role), false)
    FROM pgtestpool.templates t
   WHERE t.origin = 'sql' AND t.pending_state IS NOT NULL
     AND (t.pending_state IN ('sealing', 'requested') OR NOT pgtestpool.builder_alive(t.builder_pid, t.builder_since))
   ORDER BY t.name
$$;

-- The name of a new SQL-built version's database (a sequence number: a build rolled back and
-- started again never reuses a name still being dropped).
CREATE OR REPLACE FUNCTION pgtestpool.sql_template_db_name(tpl text, version_hash text) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT format('pgtp_tpl_%s_%s_%s_%s', pgtestpool.slug(tpl), (SELECT value FROM pgtestpool.settings WHERE key = 'instance'),
                left(md5(version_hash), 12), nextval('pgtestpool.clone_seq'))
$$;

-- requested -> building: the database exists. False: the request is gone (the builder left, or
-- another took over): the caller drops the database.
CREATE OR REPLACE FUNCTION pgtestpool.sql_template_created(tpl text, pid integer, db text) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH done AS (
    UPDATE pgtestpool.templates t SET pending_state = 'building', pending_database = db, updated_at = now()
     WHERE t.name = tpl AND t.builder_pid = pid AND t.pending_state = 'requested'
    RETURNING 1
  )
  SELECT EXISTS (SELECT 1 FROM done)
$$;

-- sealing -> serving: the version built through SQL is the template now. Returns the version it
-- replaced, for the caller to drop (its ready clones are retired).
CREATE OR REPLACE FUNCTION pgtestpool.sql_template_sealed(tpl text, pid integer, ms integer) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  t pgtestpool.templates%ROWTYPE;
BEGIN
  SELECT * INTO t FROM pgtestpool.templates WHERE name = tpl AND builder_pid = pid AND pending_state = 'sealing' FOR UPDATE;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  UPDATE pgtestpool.templates SET pending_state = NULL, pending_database = NULL WHERE name = tpl;
  RETURN pgtestpool.template_built(tpl, t.pending_database, t.pending_hash, ms, t.owner);
END
$fn$;

-- A request or a seal failed: the error is kept for the builder (begin/finish_template raise it)
-- and, while no version serves, for claims. Returns the pending database to drop.
CREATE OR REPLACE FUNCTION pgtestpool.sql_template_failed(tpl text, pid integer, message text) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH old AS (SELECT t.pending_database FROM pgtestpool.templates t WHERE t.name = tpl AND t.builder_pid = pid FOR UPDATE),
  upd AS (
    UPDATE pgtestpool.templates t
       SET pending_state = NULL, pending_database = NULL, error = message, updated_at = now(),
           state = CASE WHEN t.database IS NULL THEN 'failed' ELSE t.state END
     WHERE t.name = tpl AND t.builder_pid = pid
  )
  SELECT pending_database FROM old
$$;

-- The building session ended before finish_template: its version is rolled back. Returns its
-- database, for the caller to drop.
CREATE OR REPLACE FUNCTION pgtestpool.sql_template_abandoned(tpl text, pid integer) RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH old AS (SELECT t.pending_database FROM pgtestpool.templates t
                WHERE t.name = tpl AND t.builder_pid = pid AND t.pending_state IN ('requested', 'building') FOR UPDATE),
  upd AS (
    UPDATE pgtestpool.templates t
       SET pending_state = NULL, pending_database = NULL, pending_hash = NULL, builder_pid = NULL, updated_at = now(),
           error = CASE WHEN t.database IS NULL THEN format('the session building it (pid %s) ended before finish_template(): nothing was kept; CALL begin_template() again', pid) END,
           state = CASE WHEN t.database IS NULL THEN 'failed' ELSE t.state END
     WHERE t.name = tpl AND t.builder_pid = pid AND t.pending_state IN ('requested', 'building')
  )
  SELECT pending_database FROM old
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgtestpool FROM PUBLIC;
-- The steps begin_template() and finish_template() take with the caller's rights (USAGE only: the
-- tables stay revoked).
GRANT USAGE ON SCHEMA pgtestpool TO PUBLIC;
GRANT EXECUTE ON FUNCTION pgtestpool.template_request(text, text, integer), pgtestpool.template_finish(text), pgtestpool.template_finish_state(text) TO PUBLIC;
REVOKE ALL ON PROCEDURE public.begin_template(text, text, text, integer, interval), public.finish_template(text, interval) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE public.begin_template(text, text, text, integer, interval), public.finish_template(text, interval) TO PUBLIC;

COMMIT;
