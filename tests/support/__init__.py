"""Helpers shared by the tests, imported as `support.<module>`: tests/ has no __init__.py, so pytest's default
("prepend") import mode puts tests/ on sys.path, as it does for `from conftest import ...`."""
