"""The one hypothesis profile of the property-based tests (tests/test_fuzz_*.py).

derandomize: the examples come from a fixed seed, so a run today tries what a run tomorrow
tries (no flake from a new random draw; a failure reproduces). deadline=None: a busy machine
(several test runs on two cores) slows an example without making it wrong. No example
database: nothing is written next to the tests. max_examples is set per test, modest, so the
whole set stays within about a minute; PEFTLAB_FUZZ_EXAMPLES=N multiplies it for a deeper
search by hand (e.g. 10).

    from hypothesis_profile import examples     # registers and loads the profile
    @settings(max_examples=examples(40))
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "peftlab", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("peftlab")

SCALE = max(1, int(os.environ.get("PEFTLAB_FUZZ_EXAMPLES", "1")))


def examples(n: int) -> int:
    """max_examples for a test: n, times PEFTLAB_FUZZ_EXAMPLES when set."""
    return n * SCALE
