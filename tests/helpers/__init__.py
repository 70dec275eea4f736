"""Helpers shared by the test suites (integration, end-to-end, browser) and benchmarks.
Import them as ``helpers.<module>``: pytest puts ``tests/`` on ``sys.path`` (through
``tests/conftest.py``); a script outside the tests inserts that folder itself (as
``benchmarks/results_api.py`` does). ``tests`` is no package: a ``tests`` package that
some dependency installs into site-packages would shadow it."""
