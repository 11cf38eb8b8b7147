"""Test support code shared by the tests and the benchmarks (not shipped in the wheel).

The benchmarks put ``tests/`` on ``sys.path`` and import from here, as the tests do.
"""
