"""Argument fixes: joblib-style negative n_jobs, start methods checked up front, and the
LocalCluster amorsize_dask starts listening on loopback only."""

from __future__ import annotations

import types

import pytest
from core_helpers import square

import amorsize
import amorsize_dask
from amorsize import system
from amorsize.errors import check_start_method, resolve_n_jobs

ENTRIES = [amorsize.map, amorsize.optimize, amorsize.imap]


# --- 1. n_jobs: negative values as in joblib ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (1, 1), (3, 3), (100, 100), (-1, 8), (-2, 7), (-8, 1), (-9, 1), (-100, 1)],
)
def test_resolve_n_jobs_counts_negative_values_back_from_all_cpus(value, expected):
    assert resolve_n_jobs("n_jobs", value, 8) == expected


def test_resolve_n_jobs_on_one_cpu_never_goes_below_one():
    assert resolve_n_jobs("n_jobs", -1, 1) == 1
    assert resolve_n_jobs("n_jobs", -2, 1) == 1


def test_resolve_n_jobs_rejects_zero_naming_the_argument_and_the_allowed_values():
    with pytest.raises(amorsize.InvalidArgumentError, match=r"n_jobs must be an int >= 1.*-1 = all"):
        resolve_n_jobs("n_jobs", 0, 8)


@pytest.mark.parametrize("value", ["2", 2.0, True, False, [1]])
def test_resolve_n_jobs_rejects_non_ints_naming_the_argument(value):
    with pytest.raises(amorsize.InvalidArgumentTypeError, match=r"n_jobs must be an int >= 1"):
        resolve_n_jobs("n_jobs", value, 8)


@pytest.mark.parametrize("entry", ENTRIES)
def test_n_jobs_zero_is_rejected_by_every_entry_point_saying_what_is_allowed(entry):
    with pytest.raises(amorsize.InvalidArgumentError, match=r"n_jobs.*got 0") as info:
        entry(square, [1, 2, 3], n_jobs=0)
    assert "-1 = all usable CPUs" in str(info.value)


@pytest.mark.parametrize("entry", ENTRIES)
def test_n_jobs_of_a_wrong_type_is_rejected_by_every_entry_point(entry):
    with pytest.raises(amorsize.InvalidArgumentTypeError, match=r"n_jobs.*str '2'"):
        entry(square, [1, 2, 3], n_jobs="2")


@pytest.mark.parametrize(("n_jobs", "expected"), [(-1, 4), (-2, 3), (-4, 1), (-5, 1), (2, 2)])
def test_optimize_resolves_negative_n_jobs_to_a_positive_cap(monkeypatch, n_jobs, expected):
    monkeypatch.setattr(system, "usable_cpus", lambda: 4)
    plan = amorsize.optimize(square, list(range(50)), n_jobs=n_jobs, executor="serial")
    assert plan.workload.max_workers == expected


def test_optimize_with_minus_one_caps_at_the_usable_cpus():
    plan = amorsize.optimize(square, list(range(50)), n_jobs=-1, executor="serial")
    assert plan.workload.max_workers == system.usable_cpus()
    assert plan.n_jobs >= 1


@pytest.mark.parametrize("entry", [amorsize.map, amorsize.imap])
def test_map_and_imap_accept_negative_n_jobs(entry):
    assert list(entry(square, list(range(30)), n_jobs=-1, executor="serial")) == [
        x * x for x in range(30)]
    assert list(entry(square, list(range(30)), n_jobs=-1000, executor="serial")) == [
        x * x for x in range(30)]


# --- 2. start_method and AMORSIZE_START_METHOD checked up front ---------------------------------


def _available() -> list[str]:
    import multiprocessing

    return [m for m in ("fork", "forkserver", "spawn")
            if m in multiprocessing.get_all_start_methods()]


def test_check_start_method_accepts_the_methods_available_here():
    for method in _available():
        check_start_method("start_method", method)
    check_start_method("start_method", None, allow_none=True)


@pytest.mark.parametrize("value", ["vfork", "", "SPAWN", 5, None])
def test_check_start_method_rejects_anything_else_listing_the_allowed(value):
    with pytest.raises(amorsize.InvalidArgumentError, match=r"start_method must be one of") as info:
        check_start_method("start_method", value)
    assert all(repr(m) in str(info.value) for m in _available())
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_bad_start_method_is_rejected_before_the_function_runs(entry):
    calls = []

    def func(x):
        calls.append(x)
        return x

    with pytest.raises(amorsize.InvalidArgumentError, match=r"start_method.*'vfork'"):
        entry(func, list(range(10)), start_method="vfork")
    assert calls == []


def test_a_bad_environment_start_method_names_the_variable_its_value_and_the_allowed(monkeypatch):
    monkeypatch.setenv(system.START_METHOD_ENV, "teleport")
    with pytest.raises(amorsize.InvalidArgumentError,
                       match=r"AMORSIZE_START_METHOD must be one of .*'teleport'") as info:
        system.default_start_method()
    assert all(repr(m) in str(info.value) for m in _available())


def test_a_good_environment_start_method_is_used(monkeypatch):
    monkeypatch.setenv(system.START_METHOD_ENV, "spawn")
    assert system.default_start_method() == "spawn"


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_bad_environment_start_method_is_rejected_before_the_function_runs(entry, monkeypatch):
    monkeypatch.setenv(system.START_METHOD_ENV, "teleport")
    calls = []

    def func(x):
        calls.append(x)
        return x

    with pytest.raises(amorsize.InvalidArgumentError, match=r"AMORSIZE_START_METHOD.*'teleport'"):
        entry(func, list(range(10)))
    assert calls == []


# --- 3. amorsize_dask's own LocalCluster: loopback only, no dashboard ---------------------------


class _FakeFuture:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _FakeClient:
    """Runs everything at once in this thread; records how it was made."""

    made: list = []

    def __init__(self, cluster, **kwargs):
        self.cluster = cluster
        self.kwargs = kwargs
        self.status = "running"
        _FakeClient.made.append(self)

    def nthreads(self):
        return {"worker": 2}

    def submit(self, fn, *args, pure=True):
        return _FakeFuture(fn(*args))

    def map(self, fn, seq, pure=True):
        return [_FakeFuture(fn(x)) for x in seq]

    def gather(self, futures):
        return [f.result() for f in futures]

    def cancel(self, futures):
        pass

    def close(self):
        self.status = "closed"


class _FakeCluster:
    made: list = []

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        _FakeCluster.made.append(self)

    def close(self):
        pass


@pytest.fixture
def fake_cluster(monkeypatch):
    import distributed

    module = amorsize_dask.cluster_client
    _FakeClient.made, _FakeCluster.made = [], []
    monkeypatch.setattr(distributed, "LocalCluster", _FakeCluster)
    monkeypatch.setattr(distributed, "Client", _FakeClient)
    monkeypatch.setattr(module, "current_client", lambda: None)
    monkeypatch.setattr(module, "_local", {})
    monkeypatch.setattr(module, "atexit", types.SimpleNamespace(register=lambda f: f))
    return _FakeCluster.made


def test_the_local_cluster_listens_on_loopback_and_starts_no_dashboard(fake_cluster):
    client = amorsize_dask.distributed.default_client()
    assert len(fake_cluster) == 1
    kwargs = fake_cluster[0].kwargs
    assert kwargs.get("host") == "127.0.0.1"
    assert kwargs.get("dashboard_address", ":8787") is None
    assert client.kwargs == {"set_as_default": False}
    assert amorsize_dask.distributed.default_client() is client
    assert len(fake_cluster) == 1


def test_map_without_a_client_starts_that_cluster(fake_cluster, monkeypatch):
    class Planned(Exception):
        """Raised where map plans for the client it got (the fake one cannot run batches)."""

    def planning(client, *args):
        raise Planned(client)

    monkeypatch.setattr(amorsize_dask.distributed, "_plan", planning)
    with pytest.raises(Planned) as planned:
        amorsize_dask.map(square, range(40))
    assert planned.value.args[0] is _FakeClient.made[0]
    assert len(fake_cluster) == 1
    assert fake_cluster[0].kwargs.get("host") == "127.0.0.1"
    assert fake_cluster[0].kwargs.get("dashboard_address", ":8787") is None


def test_installed_local_cluster_accepts_no_dashboard():
    import inspect

    from distributed import LocalCluster

    params = inspect.signature(LocalCluster).parameters
    assert "host" in params and "dashboard_address" in params


# --- 4. keyword options: one typed declaration for every entry point ------------------------------


@pytest.mark.parametrize("entry", [amorsize.map, amorsize.imap, amorsize.imap_unordered,
                                   amorsize.starmap, amorsize.istarmap, amorsize.optimize])
def test_a_misspelt_option_is_refused_naming_the_nearest_one(entry):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'njobs'; did you mean 'n_jobs'"):
        entry(square, [(1,), (2,)], njobs=2)


def test_optimize_refuses_the_options_that_only_running_takes():
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="'timeout'"):
        amorsize.optimize(square, range(4), timeout=1.0)


def test_every_option_has_a_default_and_map_takes_exactly_those():
    from amorsize.options import DEFAULTS, DecideOptions, MapOptions

    assert set(DEFAULTS) == MapOptions.__optional_keys__ > DecideOptions.__optional_keys__
    assert amorsize.map(square, [1, 2, 3], **DEFAULTS) == [1, 4, 9]


def test_a_type_checker_sees_every_option_with_its_type(tmp_path):
    """The options are a TypedDict unpacked into ``**options``: mypy flags a misspelt keyword
    and a wrong type at the call, as it would for spelt-out parameters."""
    import subprocess
    import sys

    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "import amorsize\n\n\ndef square(x: int) -> int:\n    return x * x\n\n\n"
        "amorsize.map(square, range(9), n_jobs=2, timeout=1.0, progress=True)\n"
        "amorsize.imap(square, range(9), njobs=2)\n"
        "amorsize.optimize(square, range(9), chunksize='4')\n")
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
                          "--no-error-summary", str(snippet)], capture_output=True, text=True,
                         timeout=120)
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, out.stdout
    assert 'snippet.py:9: error: Unexpected keyword argument "njobs"' in errors[0]
    assert "snippet.py:10: error:" in errors[1] and '"chunksize"' in errors[1]


def test_a_call_with_every_option_at_its_default_still_checks_the_environment(monkeypatch):
    """Defaults skip the option checks (a call in a loop pays for none); the start method
    from the environment is checked all the same."""
    amorsize.map(abs, [1, -2])
    monkeypatch.setenv(system.START_METHOD_ENV, "teleport")
    with pytest.raises(amorsize.InvalidArgumentError, match="AMORSIZE_START_METHOD"):
        amorsize.map(abs, [1, -2])
    monkeypatch.delenv(system.START_METHOD_ENV)
    with pytest.raises(amorsize.InvalidArgumentError, match="sample_size"):
        amorsize.map(abs, [1, -2], sample_size=0)
