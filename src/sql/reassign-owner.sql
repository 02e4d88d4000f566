-- Run in a freshly built template, as a superuser, after its SQL: gives every object the user's
-- files created to the template's `owner:` role (read from the setting pgtestpool.owner), so a
-- test connected as that role owns its clone's tables, sequences, views, functions, types and
-- schemas. Objects that belong to an extension stay with the extension; rarer kinds (operators,
-- collations, text search objects, statistics, foreign servers) stay with the builder.
DO $reassign$
DECLARE
  owner_role text := current_setting('pgtestpool.owner');
  r record;
BEGIN
  FOR r IN
    SELECT format('ALTER SCHEMA %I OWNER TO %I', n.nspname, owner_role) AS stmt
      FROM pg_namespace n
     WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
       -- public belongs to pg_database_owner (PostgreSQL 15+): the clone's owner has it anyway.
       AND n.nspowner <> 'pg_database_owner'::regrole
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
    UNION ALL
    -- Tables (partitioned ones and every partition too), views, materialized views, sequences,
    -- foreign tables. Indexes and TOAST follow their table, and so do sequences owned by a column
    -- (serial, identity), which is why those are left out here.
    SELECT format('ALTER %s %I.%I OWNER TO %I',
                  CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                                 WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                  n.nspname, c.relname, owner_role)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i') AND d.refclassid = 'pg_class'::regclass)))
    UNION ALL
    SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, owner_role)
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    UNION ALL
    -- Enums, domains, ranges (their multirange follows), standalone composite types (a table's
    -- row type follows the table).
    SELECT format('ALTER TYPE %s OWNER TO %I', t.oid::regtype, owner_role)
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.typtype IN ('e', 'd', 'r', 'c')
       AND (t.typtype <> 'c' OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
  LOOP
    EXECUTE r.stmt;
  END LOOP;
END
$reassign$;
