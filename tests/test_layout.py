"""The direction of imports that docs/architecture.md draws, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("amorsize", "amorsize_joblib", "amorsize_dask")
# what an adapter reaches only through the hook relay (amorsize.plugins)
BEHIND_THE_RELAY = ("amorsize.optimizer.decision", "amorsize.pools.manager", "amorsize.pools.pool",
                    "amorsize.pools.threads", "amorsize.pools.processes",
                    "amorsize.plugins.default_optimizer", "amorsize.plugins.default_pools",
                    "amorsize.plugins.progress_bar")
# private modules of the frameworks with no public name for what is used from them
PRIVATE_ALLOWED = {("dask._task_spec", "convert_legacy_graph")}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every import in the file, nested ones included."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(node.module, alias.name) for alias in node.names]
    return out


MODULES = _modules()


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_the_architecture(module, path):
    for imported, name in _imports(path):
        full = imported if name is None else f"{imported}.{name}"
        top = imported.split(".")[0]
        if module.startswith("amorsize.") or module == "amorsize":
            assert top not in ("joblib", "dask", "distributed", "amorsize_joblib", "amorsize_dask"), (
                f"{module} imports {imported}: the core never imports a framework or an adapter")
        else:
            assert not any(full == inner or full.startswith(inner + ".") or imported == inner
                           for inner in BEHIND_THE_RELAY), (
                f"{module} imports {full}: adapters reach it through amorsize.plugins")
        if top in PACKAGES and name is not None and imported != module:
            assert not name.startswith("_") or name.startswith("__"), (
                f"{module} imports the private name {name} from {imported}")
        if top in ("joblib", "dask", "distributed") and any(p.startswith("_")
                                                             for p in imported.split(".")[1:]):
            assert (imported, name) in PRIVATE_ALLOWED, (
                f"{module} imports {full} from a private module; use the public name")


def test_the_worker_side_imports_nothing_of_the_caller_side():
    """Every process worker loads these modules: they stay light."""
    worker_side = ("worker", "payloads", "board", "environment", "orphans")
    for name in worker_side:
        imported = {m for m, _ in _imports(ROOT / "amorsize" / "pools" / f"{name}.py")}
        ours = {m for m in imported if m.split(".")[0] == "amorsize"}
        allowed = {"amorsize.pools", "amorsize.errors", "amorsize.pools.shipping"}
        allowed |= {f"amorsize.pools.{other}" for other in worker_side}
        assert ours <= allowed, ours
