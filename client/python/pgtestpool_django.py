"""Django test runner: the test databases are clones handed out by a pgtestpool appliance.

    # settings.py (the one glue line)
    TEST_RUNNER = "pgtestpool_django.Runner"

then `manage.py test [--parallel N]` as usual. Django 3.2, PostgreSQL backend (psycopg2).

Instead of creating and migrating test_<NAME> (and cloning it per --parallel worker), the runner:
  1. builds the template through the appliance's SQL handshake, once per version of the migrations:
     CALL begin_template(name, <sha256 of every app's migration files>) hands back a database to
     migrate (then `migrate` runs there and CALL finish_template(name) seals it) or NULL when that
     version serves already (no migrate at all). Concurrent runs wait for the one that builds.
  2. claims a clone of it for each database alias (claim_test_db(name)), and one more per
     --parallel worker, in the worker's initializer (ParallelSuite.init_worker replaces Django's
     _init_worker, which would point the worker at test_<NAME>_<n>): each process has its own
     autocommit control connection and releases its clones when it ends (worker) or at
     teardown_databases (the main process), after closing Django's connections.
  3. with PGTESTPOOL_KEEP_ON_FAILURE=1h, a failed test's database is kept as the test saw it:
     TestCase rolls a test's rows back and TransactionTestCase flushes them, so at the failure (before
     that happens) its tables are copied, from inside its transaction, into a fresh clone, which is
     kept and named on stderr (the test's own database goes on with the next tests, untouched).

Settings (an environment variable wins over the setting of the same name):
  PGTESTPOOL_URL              the appliance's postgres database (default postgresql://postgres:postgres@127.0.0.1:5432/postgres)
  PGTESTPOOL_TEMPLATE         the template's name (default "django"; alias "other" uses "django_other")
  PGTESTPOOL_KEEP_ON_FAILURE  keep failed tests' databases this long ("1h"; "1"/"true" mean 1 hour)
  PGTESTPOOL_MIN_READY        clones the appliance keeps ready for a version built here (default max(8, parallel + 1))
Workers are forked (Django 3.2's --parallel needs the fork start method anyway). Without tblib a
failure in a worker is sent to the main process with its traceback as text (Django 3.2 would stop
the run). --keepdb has nothing to do: the template is kept between runs anyway.
"""
import hashlib
import io
import multiprocessing.util
import os
import sys
import time
import unittest
import urllib.parse

import django
import psycopg2
import psycopg2.extensions
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test import runner as django_runner
from django.test.utils import get_unique_databases_and_mirrors

DEFAULT_URL = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
_KEYS = ("NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")


class PgTestPoolError(Exception):
    pass


# A forked worker's copies of its parent's connections: never used, and never closed or
# garbage-collected either (that would end the parent's session).
_inherited = []


class _State:
    """This process's side of the run (a forked worker starts from a copy of its parent's)."""

    def __init__(self):
        self.url = DEFAULT_URL
        self.conninfo = {}
        self.control = None     # the autocommit control connection every claim of this process goes through
        self.control_pid = None
        self.databases = []     # [(template, [aliases sharing one database])], set up by the main process
        self.mirrors = {}       # alias -> alias it mirrors (TEST: MIRROR)
        self.templates = {}     # alias -> template its database is a clone of
        self.claims = {}        # first alias of a group -> the clone this process claimed for it
        self.saved = {}         # alias -> its settings before the run
        self.verbosity = 1
        self.worker_error = None


_s = _State()


def _setting(name, default=None):
    value = os.environ.get(name)
    if value in (None, ""):
        value = getattr(settings, name, None)
    return default if value in (None, "") else value


def _log(message):
    if _s.verbosity >= 1:
        sys.stderr.write("pgtestpool: %s\n" % message)


def _shown(url):
    """The URL without its password, for the terminal."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@", 1))
    return urllib.parse.urlunsplit(parts)


def _clone_url(name):
    parts = urllib.parse.urlsplit(_s.url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


def _control():
    """This process's control connection: autocommit (a claim must commit on its own), opened again if lost."""
    if _s.control is not None and _s.control_pid != os.getpid():
        _inherited.append(_s.control)  # forked: that session is the parent's
        _s.control = None
    if _s.control is None or _s.control.closed:
        try:
            _s.control = psycopg2.connect(_s.url)
        except psycopg2.OperationalError as e:
            raise PgTestPoolError(
                "cannot connect to the pgtestpool appliance at %s: %s\n  Is it running (npm start, or its Docker image)? "
                "Set PGTESTPOOL_URL (or settings.PGTESTPOOL_URL) to its postgres database."
                % (_shown(_s.url), str(e).strip())) from None
        _s.control.autocommit = True
        _s.control_pid = os.getpid()
    return _s.control


def _query(sql, params=()):
    for attempt in (1, 2):
        conn = _control()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchone() if cur.description else None
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if not conn.closed or attempt == 2:
                raise  # an answer of the appliance's, or lost twice


def _claim(template):
    started = time.perf_counter()
    (name,) = _query("SELECT claim_test_db(%s)", (template,))
    return name, (time.perf_counter() - started) * 1000


def _point(alias, name):
    """Points `alias` at database `name` on the appliance (in place: Django's connections share these dicts)."""
    conn = connections[alias]
    conn.close()
    if alias not in _s.saved:
        _s.saved[alias] = {k: conn.settings_dict.get(k) for k in _KEYS}
    info = dict(_s.conninfo)
    info.pop("dbname", None)
    new = {"NAME": name, "USER": info.pop("user", ""), "PASSWORD": info.pop("password", ""),
           "HOST": info.pop("host", ""), "PORT": info.pop("port", "")}
    new["OPTIONS"] = {**(_s.saved[alias]["OPTIONS"] or {}), **info}  # e.g. sslmode from the URL
    for d in (conn.settings_dict, settings.DATABASES[alias]):  # create_test_db sets both, too
        d.update(new)


def _restore():
    for alias, old in _s.saved.items():
        connections[alias].close()
        for d in (connections[alias].settings_dict, settings.DATABASES[alias]):
            d.update(old)
    _s.saved = {}


def migrations_version(alias="default"):
    """sha256 of what `migrate` builds the schema from: every app's migration files (and the models
    of apps without migrations), by module name and content, so any checkout gives the same version."""
    from django.db.migrations.loader import MigrationLoader

    files = {}
    if connections[alias].settings_dict["TEST"].get("MIGRATE", True) is not False:
        loader = MigrationLoader(None, ignore_no_migrations=True)
        for (label, name), migration in loader.disk_migrations.items():
            files["%s.%s" % (label, name)] = sys.modules[migration.__module__].__file__
        unmigrated = loader.unmigrated_apps
    else:
        unmigrated = {a.label for a in apps.get_app_configs()}  # syncdb from the models, as Django does then
    for label in unmigrated:
        models = apps.get_app_config(label).models_module
        if models is None:
            continue
        if hasattr(models, "__path__"):  # a models package
            for root, _, names in os.walk(models.__path__[0]):
                for n in names:
                    if n.endswith(".py"):
                        path = os.path.join(root, n)
                        files["%s:%s" % (models.__name__, os.path.relpath(path, models.__path__[0]))] = path
        else:
            files[models.__name__] = models.__file__
    h = hashlib.sha256(("django %s\n" % django.get_version()).encode())
    for key in sorted(files):
        with open(files[key], "rb") as f:
            h.update(b"%s %d\n" % (key.encode(), os.path.getsize(files[key])) + f.read())
    return h.hexdigest()


def _migrate(alias):
    """What create_test_db() does to a new test database, done once into the template."""
    conn = connections[alias]
    no_migrations = conn.settings_dict["TEST"].get("MIGRATE", True) is False
    old = settings.MIGRATION_MODULES
    if no_migrations:
        settings.MIGRATION_MODULES = {app.label: None for app in apps.get_app_configs()}
    try:
        call_command("migrate", verbosity=max(_s.verbosity - 1, 0), interactive=False, database=alias, run_syncdb=True)
    finally:
        if no_migrations:
            settings.MIGRATION_MODULES = old
    call_command("createcachetable", database=alias)


def _ensure_template(alias, template, min_ready):
    """The template at the migrations' version: built here (migrate), or already serving."""
    version = migrations_version(alias)
    (db,) = _query("CALL begin_template(%s, %s, NULL, %s)", (template, version, min_ready))
    if db is None:
        _log("template %r version %s serves already: no migrate" % (template, version[:12]))
        return
    started = time.perf_counter()
    _point(alias, db)
    try:
        _migrate(alias)
    except BaseException:
        sys.stderr.write("pgtestpool: migrate failed in %s: the build of template %r is rolled back\n" % (db, template))
        raise
    connections.close_all()  # finish_template refuses while connections to it are open
    _query("CALL finish_template(%s)", (template,))
    _log("template %r version %s built in %s (migrate and seal %.0f ms)" % (template, version[:12], db, (time.perf_counter() - started) * 1000))


def _release_all():
    """Closes Django's connections (they go first), then releases this process's clones."""
    connections.close_all()
    for name in _s.claims.values():
        try:
            _query("SELECT release_test_db(%s)", (name,))
        except psycopg2.Error as e:
            sys.stderr.write("pgtestpool: could not release %s: %s\n" % (name, str(e).strip()))
    _s.claims = {}
    if _s.control is not None and _s.control_pid == os.getpid():
        _s.control.close()
    _s.control = None


def _keep_interval():
    value = str(_setting("PGTESTPOOL_KEEP_ON_FAILURE", "")).strip()
    if value.lower() in ("", "0", "false", "no"):
        return None
    return "1 hour" if value.lower() in ("1", "true", "yes") else value


# ---- keep on failure: a copy of what the failed test saw ------------------------------------------

_TABLES = """SELECT format('%I.%I', n.nspname, c.relname), c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'S') AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' ORDER BY 1"""


def _snapshot(alias):
    """The rows of every table as the test's own connection sees them (inside its transaction)."""
    raw = connections[alias].connection
    if raw is None:
        return None  # the test did not use this database
    status = raw.get_transaction_status()
    if status == psycopg2.extensions.TRANSACTION_STATUS_INERROR:
        raise PgTestPoolError("its transaction was aborted by an SQL error, so its rows cannot be read any more")
    in_tx = status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    tables, sequences = [], []
    with raw.cursor() as cur:
        if in_tx:
            cur.execute("SAVEPOINT pgtestpool_keep")  # whatever happens here, the test's transaction stays as it was
        try:
            cur.execute(_TABLES)
            for rel, kind in cur.fetchall():
                if kind == "S":
                    cur.execute("SELECT last_value, is_called FROM %s" % rel)
                    sequences.append((rel,) + cur.fetchone())
                else:
                    buf = io.BytesIO()
                    cur.copy_expert("COPY %s TO STDOUT" % rel, buf)
                    tables.append((rel, buf))
        finally:
            if in_tx:
                cur.execute("ROLLBACK TO SAVEPOINT pgtestpool_keep; RELEASE SAVEPOINT pgtestpool_keep")
            elif not raw.autocommit:
                raw.rollback()  # psycopg2 began one for the reads above
    return tables, sequences


def _load(name, tables, sequences):
    """Replaces the rows of a fresh clone (same template, same tables) with the snapshot's."""
    conn = psycopg2.connect(_clone_url(name))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SAVEPOINT s")
            try:  # superusers skip FK triggers while loading; others rely on Django's deferrable FKs
                cur.execute("SET LOCAL session_replication_role = replica")
            except psycopg2.Error:
                cur.execute("ROLLBACK TO SAVEPOINT s")
            cur.execute("SET CONSTRAINTS ALL DEFERRED")
            if tables:
                cur.execute("TRUNCATE " + ", ".join(rel for rel, _ in tables))
            for rel, buf in tables:
                buf.seek(0)
                cur.copy_expert("COPY %s FROM STDIN" % rel, buf)
            for rel, last, called in sequences:
                cur.execute("SELECT setval(%s, %s, %s)", (rel, last, called))
    finally:
        conn.close()


def _keep_failed(test):
    keep = _keep_interval()
    if not keep or not _s.claims:
        return
    databases = getattr(test, "databases", None) or ()  # none for a setUpClass error's placeholder
    if databases == "__all__":
        databases = list(connections)
    done = set()
    for alias in sorted(databases, key=lambda a: (a != "default", a)):
        template, source = _s.templates.get(alias), connections[alias].settings_dict["NAME"]
        if template is None or source in done:
            continue
        done.add(source)
        try:
            snap = _snapshot(alias)
            if snap is None:
                continue
            name, _ = _claim(template)
            try:
                _load(name, *snap)
                _query("SELECT keep_test_db(%s, %s::interval)", (name, keep))
            except BaseException:
                _query("SELECT release_test_db(%s)", (name,))
                raise
        except Exception as e:
            sys.stderr.write("\npgtestpool: could not keep %s's database %s (alias %s): %s\n" % (test.id(), source, alias, str(e).strip()))
            continue
        sys.stderr.write('\npgtestpool: kept %s for %s (%s failed): psql "%s"\n' % (name, keep, test.id(), _shown(_clone_url(name))))


class KeepOnFailureResult:
    """Mixed into the result classes: keeps a failed test's database before Django rolls it back."""

    def addError(self, test, err):
        _keep_failed(test)
        super().addError(test, err)

    def addFailure(self, test, err):
        _keep_failed(test)
        super().addFailure(test, err)

    def addSubTest(self, test, subtest, err):
        if err is not None:
            _keep_failed(test)
        super().addSubTest(test, subtest, err)


# ---- --parallel workers ---------------------------------------------------------------------------

def _init_worker(counter):
    """Instead of Django's _init_worker: this worker claims its own clones, on its own control connection."""
    with counter.get_lock():
        counter.value += 1
        worker = counter.value
    django_runner._worker_id = worker
    for alias in connections:  # closed before the fork by Runner.run_suite; never close a copy
        conn = connections[alias]
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None
    _s.claims = {}
    multiprocessing.util.Finalize(None, _release_all, exitpriority=100)  # runs when the pool ends the worker
    try:
        started = time.perf_counter()
        _control()  # this worker's own session
        shown = ["connected in %.1f ms" % ((time.perf_counter() - started) * 1000)]
        for template, group in _s.databases:
            name, ms = _claim(template)
            _s.claims[group[0]] = name
            for alias in group:
                _point(alias, name)
            shown.append("%s on %s (claimed in %.1f ms)" % ("/".join(group), name, ms))
        for alias, target in _s.mirrors.items():
            if target in _s.templates:
                _point(alias, connections[target].settings_dict["NAME"])
        _log("worker %d: %s" % (worker, ", ".join(shown)))
    except Exception as e:  # raising here would make multiprocessing start workers over and over
        _s.worker_error = "worker %d: %s" % (worker, e)


def _run_subsuite(args):
    if _s.worker_error:
        raise PgTestPoolError(_s.worker_error)
    return django_runner._run_subsuite(args)


class WorkerTraceback(Exception):
    """A worker's failure as text: without tblib a traceback cannot be pickled to the main process."""


def _picklable(test, err):
    if django_runner.tblib is not None or err is None:
        return err
    text = unittest.TestResult()._exc_info_to_string(err, test)  # as the main process would show it
    return err[0], WorkerTraceback(text.rstrip()), None


class RemoteResult(KeepOnFailureResult, django_runner.RemoteTestResult):
    """Also shows a failure in a worker without tblib (where Django 3.2 would stop the whole run)."""

    def addError(self, test, err):
        super().addError(test, _picklable(test, err))

    def addFailure(self, test, err):
        super().addFailure(test, _picklable(test, err))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, _picklable(test, err))


class RemoteRunner(django_runner.RemoteTestRunner):
    resultclass = RemoteResult


class ParallelSuite(django_runner.ParallelTestSuite):
    init_worker = _init_worker
    run_subsuite = _run_subsuite
    runner_class = RemoteRunner


def _tests(suite):
    for test in suite:
        if isinstance(test, unittest.TestCase):
            yield test
        else:
            yield from _tests(test)


class Runner(django_runner.DiscoverRunner):
    """DiscoverRunner whose test databases are pgtestpool clones (see the module's docstring)."""

    parallel_test_suite = ParallelSuite

    def get_resultclass(self):
        base = super().get_resultclass() or unittest.TextTestResult
        return type("PgTestPool" + base.__name__, (KeepOnFailureResult, base), {})

    def get_databases(self, suite):
        databases = super().get_databases(suite)
        # Django 3.2 serializes every test database for TransactionTestCase.serialized_rollback;
        # only the ones a test rolls back that way are, here.
        self._serialized = set()
        for test in _tests(suite):
            if getattr(test, "serialized_rollback", False):
                self._serialized.update(connections if test.databases == "__all__" else test.databases)
        return databases

    def setup_databases(self, aliases=None, **kwargs):
        global _s
        started = time.perf_counter()
        _s = _State()
        _s.verbosity = self.verbosity
        _s.url = _setting("PGTESTPOOL_URL", DEFAULT_URL)
        try:
            _s.conninfo = psycopg2.extensions.parse_dsn(_s.url)
        except psycopg2.ProgrammingError as e:
            raise PgTestPoolError("PGTESTPOOL_URL is not a postgresql:// URL (%s): %s" % (_shown(_s.url), e)) from None
        base = _setting("PGTESTPOOL_TEMPLATE", "django")
        min_ready = int(_setting("PGTESTPOOL_MIN_READY", max(8, self.parallel + 1)))
        test_databases, mirrors = get_unique_databases_and_mirrors(aliases)
        shown = []
        try:
            for _, group in test_databases.values():
                first = group[0]
                if connections[first].vendor != "postgresql":
                    raise PgTestPoolError("database alias %r uses %s: pgtestpool serves PostgreSQL only" % (first, connections[first].settings_dict["ENGINE"]))
                template = base if first == "default" else "%s_%s" % (base, first)
                with self.time_keeper.timed("  Template %r" % template):
                    _ensure_template(first, template, min_ready)
                with self.time_keeper.timed("  Claiming '%s'" % first):
                    name, ms = _claim(template)
                _s.claims[first] = name
                for alias in group:
                    _point(alias, name)
                    _s.templates[alias] = template
                _s.databases.append((template, group))
                shown.append("%s on %s (claimed in %.1f ms)" % ("/".join(group), name, ms))
            for alias, target in mirrors.items():
                if target in _s.templates:
                    _point(alias, connections[target].settings_dict["NAME"])
                    _s.templates[alias] = _s.templates[target]
            _s.mirrors = mirrors
            for template, group in _s.databases:
                conn = connections[group[0]]
                if group[0] in getattr(self, "_serialized", ()) and conn.settings_dict["TEST"].get("SERIALIZE", True):
                    with self.time_keeper.timed("  Serializing '%s'" % group[0]):
                        conn._test_serialized_contents = conn.creation.serialize_db_to_string()
        except BaseException:
            _release_all()  # also rolls back a build cut short: its session ends
            _restore()
            raise
        if self.debug_sql:
            for alias in connections:
                connections[alias].force_debug_cursor = True
        _log("setup_databases %.0f ms: %s%s" % ((time.perf_counter() - started) * 1000, ", ".join(shown),
                                                "; each of up to %d workers claims its own" % self.parallel if self.parallel > 1 else ""))
        return list(_s.claims.items())

    def run_suite(self, suite, **kwargs):
        if isinstance(suite, django_runner.ParallelTestSuite):
            connections.close_all()  # the workers are forked: none may inherit a session of ours
        return super().run_suite(suite, **kwargs)

    def teardown_databases(self, old_config, **kwargs):
        _release_all()
        _restore()
