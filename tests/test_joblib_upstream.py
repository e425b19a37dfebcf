"""joblib's own tests of aborting and generator behaviour (from the installed
``joblib/test/test_parallel.py``), run with backend "amorsize", which must pass each within a
few seconds."""

from __future__ import annotations

import pytest

import amorsize_joblib

# Import the module, never its ``test_*`` names: pytest would collect those for every backend.
jtp = pytest.importorskip("joblib.test.test_parallel")

BACKEND = amorsize_joblib.BACKEND_NAME
RETURN_AS = ["generator", "generator_unordered"]
N_JOBS = [1, 2, -2, -1]  # as joblib parametrizes these tests


@pytest.mark.timeout(30)
@pytest.mark.parametrize("upstream", ["test_multiple_generator_call_managed",
                                      "test_multiple_generator_call"])
@pytest.mark.parametrize("n_jobs", N_JOBS)
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_multiple_generator_calls(upstream, return_as, n_jobs):
    """joblib's own tests: a second call on a Parallel whose generator still runs is refused
    at once (managed by a ``with Parallel(...)`` block, or not), and dropping the generator
    does not hang."""
    getattr(jtp, upstream)(BACKEND, return_as, n_jobs)


@pytest.mark.timeout(30)
@jtp.with_multiprocessing
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_parallel_timeout_fail_with_generator(return_as):
    jtp.test_parallel_timeout_fail_with_generator(BACKEND, return_as)



@pytest.mark.timeout(30)
@jtp.with_multiprocessing
@pytest.mark.parametrize("n_jobs", [2, 4])
def test_parallel_unordered_generator_returns_fastest_first(n_jobs):
    jtp._test_parallel_unordered_generator_returns_fastest_first(BACKEND, n_jobs)
