# A data migration: every test database starts with these two accounts.
from django.db import migrations


def seed(apps, schema_editor):
    Account = apps.get_model("shop", "Account")
    Account.objects.using(schema_editor.connection.alias).bulk_create([Account(email="a@example.com"), Account(email="b@example.com")])


class Migration(migrations.Migration):

    dependencies = [("shop", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
