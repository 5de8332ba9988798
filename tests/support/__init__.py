"""Helpers shared by the tests, imported as `support.<module>` (common, numerics, training, weights_server): tests/
has no __init__.py, so pytest's default ("prepend") import mode puts tests/ on sys.path. Fixtures stay in
tests/conftest.py; plain functions and classes live here, so that no test file imports another test file."""
