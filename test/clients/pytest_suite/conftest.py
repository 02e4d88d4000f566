pytest_plugins = ["pgtestpool_pytest"]
