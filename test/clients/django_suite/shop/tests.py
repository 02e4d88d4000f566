# A user's suite on pgtestpool_django.Runner: 55 tests (TestCase and TransactionTestCase) that each
# write to their database and check they see only what the migrations made (the data migration's
# accounts) plus their own rows. Run by test/django.test.ts with --parallel 4.
import os
import time
import unittest

from django.db import connection
from django.test import TestCase, TransactionTestCase

from .models import Account, Note

SEEDED = ["a@example.com", "b@example.com"]  # shop/migrations/0002_seed.py


class Timed:
    """Records each test's setup: from its start (before Django's per-test transaction or flush
    bookkeeping) to a first query answered by its database. Written to DJANGO_SUITE_TIMINGS."""

    def __call__(self, result=None):
        self._started = time.perf_counter()
        return super().__call__(result)

    def setUp(self):
        super().setUp()
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
        path = os.environ.get("DJANGO_SUITE_TIMINGS")
        if path:
            with open(path, "a") as f:
                f.write("%.3f\n" % ((time.perf_counter() - self._started) * 1000))

    def emails(self):
        return sorted(Account.objects.values_list("email", flat=True))


def isolated(i):
    def test(self):
        self.assertEqual(self.emails(), SEEDED)  # nothing left by any other test
        account = Account.objects.create(email="new@example.com")  # the same in every test: unique
        Note.objects.create(account=account, body="test %d" % i)
        self.assertEqual(Account.objects.count(), 3)
        self.assertEqual(Note.objects.count(), 1)
        self.assertEqual(Note.objects.get().body, "test %d" % i)
    return test


# 4 TestCase classes of 10 tests (--parallel hands out whole classes, one per worker at a time).
for c in range(4):
    name = "Isolation%d" % c
    globals()[name] = type(name, (Timed, TestCase), {"test_%02d" % j: isolated(c * 10 + j) for j in range(10)})


class ClassData(Timed, TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.c = Account.objects.create(email="c@example.com")

    def test_sees_class_data(self):
        self.assertEqual(self.emails(), SEEDED + ["c@example.com"])

    def test_deletes_class_data(self):
        Account.objects.filter(email="c@example.com").delete()
        self.assertEqual(self.emails(), SEEDED)

    def test_deletes_seeded(self):
        Account.objects.filter(email__in=SEEDED).delete()
        self.assertEqual(self.emails(), ["c@example.com"])

    def test_adds_note(self):
        Note.objects.create(account=self.c, body="class data")
        self.assertEqual(self.c.notes.count(), 1)

    def test_no_notes_left(self):
        self.assertEqual(Note.objects.count(), 0)


class OnTheAppliance(Timed, TestCase):
    def test_database_is_a_pgtestpool_clone(self):
        name = connection.settings_dict["NAME"]
        self.assertTrue(name.startswith("pgtp_django_"), name)
        with connection.cursor() as cur:
            cur.execute("SELECT current_database()")
            self.assertEqual(cur.fetchone()[0], name)

    def test_migrate_ran_in_the_template(self):
        from django.contrib.contenttypes.models import ContentType
        self.assertTrue(ContentType.objects.filter(app_label="shop", model="account").exists())  # post_migrate's
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM django_migrations WHERE app = 'shop'")
            self.assertGreaterEqual(cur.fetchone()[0], 2)


class Committed(Timed, TransactionTestCase):
    """Commits for real; Django flushes the tables after each test."""

    def check(self, i):
        self.assertEqual(Account.objects.exclude(email__in=SEEDED).count(), 0)  # no other test's rows
        Account.objects.create(email="ttc@example.com")
        Note.objects.create(account=Account.objects.get(email="ttc@example.com"), body="ttc %d" % i)
        self.assertEqual(list(Note.objects.values_list("body", flat=True)), ["ttc %d" % i])

    def test_1(self):
        self.check(1)

    def test_2(self):
        self.check(2)

    def test_3(self):
        self.check(3)

    def test_4(self):
        self.check(4)


class CommittedSerialized(Timed, TransactionTestCase):
    """serialized_rollback: the data migration's rows come back after every flush."""

    serialized_rollback = True

    def check(self, i):
        self.assertEqual(self.emails(), SEEDED)
        Account.objects.create(email="ttc-%d@example.com" % i)
        self.assertEqual(self.emails(), SEEDED + ["ttc-%d@example.com" % i])

    def test_1(self):
        self.check(1)

    def test_2(self):
        self.check(2)

    def test_3(self):
        self.check(3)

    def test_4(self):
        self.check(4)


@unittest.skipUnless(os.environ.get("PGTESTPOOL_DEMO_FAILURE"), "only when the keep-on-failure run asks for it")
class DemoFailure(TestCase):
    def test_fails_on_purpose(self):
        Account.objects.create(email="the-bug@example.com")
        self.assertEqual(1, 2, "fails on purpose")
