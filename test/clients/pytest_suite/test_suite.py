# A user's suite on the pgtestpool pytest plugin: 60 tests, each writing to its own database and
# checking it sees only the template's rows. Run by test/python.test.ts (with -n 4 under xdist).
import os

import pytest


@pytest.mark.parametrize("i", range(60))
def test_isolated(pgtestpool_db, i):
    cur = pgtestpool_db.cursor()
    cur.execute("SELECT email FROM accounts ORDER BY email")
    assert [r[0] for r in cur.fetchall()] == ["a@example.com", "b@example.com"]
    cur.execute("INSERT INTO accounts (email) VALUES (%s)", ("test%d@example.com" % i,))
    pgtestpool_db.commit()
    cur.execute("SELECT count(*) FROM accounts")
    assert cur.fetchone()[0] == 3


def test_url_is_a_postgresql_url(pgtestpool_url):
    assert pgtestpool_url.startswith("postgresql://")
    assert "/pgtp_default_" in pgtestpool_url


@pytest.mark.skipif(not os.environ.get("PGTESTPOOL_DEMO_FAILURE"), reason="only when the keep-on-failure run asks for it")
def test_fails_on_purpose(pgtestpool_db):
    cur = pgtestpool_db.cursor()
    cur.execute("INSERT INTO accounts (email) VALUES ('the-bug@example.com')")
    pgtestpool_db.commit()
    assert 1 == 2, "fails on purpose"
