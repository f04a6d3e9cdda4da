"""The chaos suite: batchyard broken on purpose over real processes, one invariant after each.

`python -m tests.chaos --profile full` (`make chaos`) runs every scenario and writes the
report; `tests/chaos/test_chaos.py` runs the profile named by CHAOS_PROFILE (short by
default) under pytest.
"""
