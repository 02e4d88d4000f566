"""pytest plugin: a fresh pgtestpool database for every test that asks for one.

    # conftest.py (the one glue line)
    pytest_plugins = ["pgtestpool_pytest"]

    def test_signup(pgtestpool_db):          # a connection on a fresh clone of the template
        pgtestpool_db.cursor().execute("INSERT INTO accounts ...")

    def test_with_sqlalchemy(pgtestpool_url):  # postgresql://user:password@host:port/<clone>
        engine = sqlalchemy.create_engine(pgtestpool_url)

The appliance is PGTESTPOOL_URL (default: npm start's, postgresql://postgres:postgres@127.0.0.1:5432/postgres).
Claims run outside any transaction on one control connection per process (each xdist worker
has its own), the test's connection is closed before the release, and with
--pgtestpool-keep-on-failure=1h (or PGTESTPOOL_KEEP_ON_FAILURE) a failed test's database is kept
and its URL printed. The driver is psycopg (3) when installed, else psycopg2.
"""
import os
import sys
import urllib.parse

import pytest

DEFAULT_URL = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"

try:  # psycopg 3
    import psycopg as _driver

    def _connect(url):
        return _driver.connect(url)
except ImportError:  # psycopg2
    import psycopg2 as _driver

    def _connect(url):
        return _driver.connect(url)


_controls = {}


def _control(url):
    """One autocommit control connection per appliance URL and process (the claim must commit on its own)."""
    conn = _controls.get(url)
    if conn is None or conn.closed:
        conn = _connect(url)
        conn.autocommit = True
        _controls[url] = conn
    return conn


def _query(url, sql, params):
    with _control(url).cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone() if cur.description else None


def _clone_url(url, name):
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


def _shown(url):
    """The URL without its password, for the terminal."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts)


def pytest_addoption(parser):
    group = parser.getgroup("pgtestpool")
    group.addoption("--pgtestpool-template", default="default", help="template claim_test_db() clones (default: default)")
    group.addoption("--pgtestpool-keep-on-failure", default=None, metavar="INTERVAL",
                    help="keep a failed test's database this long (e.g. 1h) and print its URL; also PGTESTPOOL_KEEP_ON_FAILURE")


def pytest_configure(config):
    config.addinivalue_line("markers", "pgtestpool(template): the template this test's database is cloned from")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "_pgtestpool_" + report.when, report)


def pytest_unconfigure(config):
    for conn in _controls.values():
        conn.close()
    _controls.clear()


def _keep_interval(value):
    value = (value or "").strip()
    if value in ("", "0", "false", "no"):
        return None
    return "1 hour" if value in ("1", "true", "yes") else value


@pytest.fixture
def pgtestpool_url(request):
    """The URL of a database claimed for this test, released after it (or kept if it failed and keeping is on)."""
    appliance = os.environ.get("PGTESTPOOL_URL", DEFAULT_URL)
    marker = request.node.get_closest_marker("pgtestpool")
    template = (marker.kwargs.get("template") if marker else None) or request.config.getoption("--pgtestpool-template")
    (name,) = _query(appliance, "SELECT claim_test_db(%s)", (template,))
    url = _clone_url(appliance, name)
    yield url
    call = getattr(request.node, "_pgtestpool_call", None)
    keep = _keep_interval(request.config.getoption("--pgtestpool-keep-on-failure") or os.environ.get("PGTESTPOOL_KEEP_ON_FAILURE"))
    if call is not None and call.failed and keep:
        _query(appliance, "SELECT keep_test_db(%s, %s::interval)", (name, keep))
        sys.stderr.write('\npgtestpool: kept %s for %s (%s failed): psql "%s"\n' % (name, keep, request.node.nodeid, _shown(url)))
    else:
        _query(appliance, "SELECT release_test_db(%s)", (name,))


@pytest.fixture
def pgtestpool_db(pgtestpool_url):
    """A connection on this test's database (closed before the database is released)."""
    conn = _connect(pgtestpool_url)
    try:
        yield conn
    finally:
        conn.close()
