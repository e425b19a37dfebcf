"""Functions reach process workers even from modules the workers cannot import by name."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import cloudpickle
from core_helpers import square

import amorsize
from amorsize.pools import shipping

MODULE_SOURCE = '''
class Box:
    def __init__(self, value):
        self.value = value


def cube(x):
    return x * x * x


def boxed(x):
    return Box(x)
'''


def _load_from_file(tmp_path, monkeypatch, file_name: str, module_name: str):
    """What a plugin loader or a test does: a file imported under a name no search path has."""
    path = tmp_path / file_name
    path.write_text(MODULE_SOURCE)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module


def test_a_function_from_a_module_loaded_from_a_file_runs_on_processes(tmp_path, monkeypatch):
    module = _load_from_file(tmp_path, monkeypatch, "cubes.py", "loaded_by_path_cubes")
    assert amorsize.map(module.cube, range(20), executor="process", n_jobs=2) == [
        x ** 3 for x in range(20)]
    pool = amorsize.get_global_pool_manager().get_pool(2, "process")
    assert pool.submit(module.cube, 3).result() == 27


def test_a_class_from_such_a_module_comes_back_as_the_callers_class(tmp_path, monkeypatch):
    module = _load_from_file(tmp_path, monkeypatch, "boxes.py", "loaded_by_path_boxes")
    [box] = amorsize.map(module.boxed, [5], executor="process", n_jobs=2)
    assert type(box) is module.Box and box.value == 5


def test_a_module_on_a_path_added_after_the_workers_started_runs_on_them(tmp_path, monkeypatch):
    assert amorsize.map(square, range(4), executor="process", n_jobs=2) == [0, 1, 4, 9]
    (tmp_path / "added_later_cubes.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "added_later_cubes", raising=False)
    module = importlib.import_module("added_later_cubes")
    assert amorsize.map(module.cube, range(20), executor="process", n_jobs=2) == [
        x ** 3 for x in range(20)]


def test_a_function_the_workers_can_import_still_travels_by_reference():
    assert shipping.dumps(square) == cloudpickle.dumps(square)
    assert len(shipping.dumps(square)) < 100


def test_joblib_and_dask_run_such_a_function_on_processes_too(tmp_path, monkeypatch):
    import dask
    import joblib

    import amorsize_dask  # noqa: F401 - registers the scheduler
    from amorsize_joblib import AmorsizeBackend

    module = _load_from_file(tmp_path, monkeypatch, "cubes_elsewhere.py", "loaded_by_path_joblib")
    expected = [x ** 3 for x in range(12)]
    assert joblib.Parallel(n_jobs=2, backend=AmorsizeBackend(executor="process"))(
        joblib.delayed(module.cube)(x) for x in range(12)) == expected
    assert list(dask.compute(*[dask.delayed(module.cube)(x) for x in range(12)],
                             scheduler="amorsize", executor="process")) == expected
