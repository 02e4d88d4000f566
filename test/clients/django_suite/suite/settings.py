# A minimal Django project whose tests run on pgtestpool (test/django.test.ts runs it).
SECRET_KEY = "django-suite-not-secret"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shop"]
# The database the project uses outside tests; under `manage.py test` the runner points it at a
# clone on the appliance (PGTESTPOOL_URL).
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "shop"}}

TEST_RUNNER = "pgtestpool_django.Runner"  # the glue line
