"""psycopg2 with its defaults against pgtestpool (run by test/isolation.test.ts).

psycopg2 opens a transaction implicitly on the first statement, so `SELECT claim_test_db()` runs
in a transaction that is never committed: nobody may enter that clone (it is not claimed until the
claim commits), and close() rolls the claim back. With autocommit the claim commits at once and the
clone is the claimer's. Connection settings come from the PG* environment variables.

Prints one JSON object on stdout.
"""
import json
import sys

import psycopg2


def main():
    out = {"psycopg2": psycopg2.__version__}

    # 1. The defaults: an implicit transaction around the claim.
    conn = psycopg2.connect("", connect_timeout=10)
    cur = conn.cursor()
    cur.execute("SELECT claim_test_db()")
    name = cur.fetchone()[0]
    first = {
        "name": name,
        "autocommit": conn.autocommit,
        "in_transaction": conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS,
    }
    try:
        other = psycopg2.connect(dbname=name, connect_timeout=10)
        try:
            ocur = other.cursor()
            ocur.execute("SELECT count(*) FROM accounts")
            first["rows_seen"] = ocur.fetchone()[0]
            other.rollback()
        finally:
            other.close()
        first["entered"] = True
    except psycopg2.OperationalError as e:
        first["entered"] = False
        first["error"] = str(e).strip()
    conn.close()  # never committed: rolled back
    out["implicit_transaction"] = first

    # 2. autocommit: the claim commits at once, the clone is enterable and pristine.
    conn = psycopg2.connect("", connect_timeout=10)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT claim_test_db()")
    name2 = cur.fetchone()[0]
    second = {"name": name2}
    db = psycopg2.connect(dbname=name2, connect_timeout=10)
    try:
        dcur = db.cursor()
        dcur.execute("SELECT count(*) FROM accounts")
        second["accounts"] = dcur.fetchone()[0]
        dcur.execute("SELECT count(*) FROM notes")
        second["notes"] = dcur.fetchone()[0]
        dcur.execute("INSERT INTO notes (body) VALUES ('from psycopg2')")
        db.commit()
    finally:
        db.close()
    cur.execute("SELECT state FROM test_dbs WHERE name = %s", (name2,))
    second["state"] = cur.fetchone()[0]
    cur.execute("SELECT release_test_db(%s)", (name2,))
    conn.close()
    out["autocommit"] = second

    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
