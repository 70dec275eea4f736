"""Helpers shared by the test suites (integration, end-to-end, browser) and benchmarks:
import as ``helpers.<module>`` from a test (``tests/`` is on ``sys.path``), or
``tests.helpers.<module>`` from the repository root."""
