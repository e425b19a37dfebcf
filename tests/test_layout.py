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
    """Every process worker loads ``pools.worker`` and ``pools.orphans``: they stay light."""
    for name in ("worker", "orphans"):
        imported = {m for m, _ in _imports(ROOT / "amorsize" / "pools" / f"{name}.py")}
        ours = {m for m in imported if m.split(".")[0] == "amorsize"}
        assert ours <= {"amorsize.pools", "amorsize.pools.orphans", "amorsize.errors"}, ours


# the layers below the run: each imports nothing of a layer above it. The decision is handed the
# pools and what was learned; only ``optimize()``, the optimizer's front door, asks the hooks.
_BELOW_THE_RUN = {"amorsize.optimizer.optimize": ("amorsize.run",),
                  "amorsize.optimizer": ("amorsize.run", "amorsize.plugins"),
                  "amorsize.pools": ("amorsize.run", "amorsize.optimizer", "amorsize.plugins")}


@pytest.mark.parametrize(("module", "path"),
                         [(m, p) for m, p in MODULES if m.startswith(tuple(_BELOW_THE_RUN))],
                         ids=[m for m, _ in MODULES if m.startswith(tuple(_BELOW_THE_RUN))])
def test_the_optimizer_and_the_pools_import_nothing_of_the_layers_above(module, path):
    """The run imports the optimizer and the pools; an import back would be a cycle."""
    above = next(v for k, v in _BELOW_THE_RUN.items() if module.startswith(k))
    for imported, _ in _imports(path):
        assert not imported.startswith(above), f"{module} imports {imported}, a layer above it"
