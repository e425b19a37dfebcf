"""The direction of imports that docs/architecture.md draws, checked on the source."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("amorsize", "amorsize_joblib", "amorsize_dask")
# what an adapter reaches only through the hook relay (amorsize.plugins)
BEHIND_THE_RELAY = ("amorsize.optimizer.decision", "amorsize.pools.manager", "amorsize.pools.worker_pool",
                    "amorsize.pools.threads", "amorsize.pools.processes",
                    "amorsize.plugins.default_optimizer", "amorsize.plugins.default_pools",
                    "amorsize.plugins.progress_bar")
# private modules of the frameworks with no public name for what is used from them
PRIVATE_ALLOWED: set[tuple[str, str | None]] = set()
# libraries whose private parts only amorsize/pools/compat.py may touch
LIBRARIES = ("concurrent", "multiprocessing", "joblib", "dask", "distributed")
COMPAT = "amorsize.pools.compat"


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
    worker_side = ("worker", "payloads", "shared", "board", "environment", "orphans")
    for name in worker_side:
        imported = {m for m, _ in _imports(ROOT / "amorsize" / "pools" / f"{name}.py")}
        ours = {m for m in imported if m.split(".")[0] == "amorsize"}
        allowed = {"amorsize.pools", "amorsize.errors", "amorsize.pools.shipping"}
        allowed |= {f"amorsize.pools.{other}" for other in worker_side}
        assert ours <= allowed, ours


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _root(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _defined_private(paths: list[Path], own_attribute) -> set[str]:
    """The private names the files at ``paths`` define: functions, classes, module globals, and
    the attributes ``own_attribute(node)`` takes for the file's own."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and own_attribute(node):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {name for name in names if _private(name)}


def _stdlib_private_names() -> set[str]:
    """The private names ``concurrent.futures`` and ``multiprocessing`` define (their
    functions, classes, module globals and ``self._x`` attributes)."""
    paths: list[Path] = []
    for package in ("concurrent.futures", "multiprocessing"):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin is not None
        paths += Path(spec.origin).parent.rglob("*.py")
    return _defined_private(paths, lambda node: isinstance(node.value, ast.Name)
                            and node.value.id == "self")


def _own_private_names() -> set[str]:
    """The private names amorsize's packages define themselves (``self._lock`` and so on):
    an access to one of them on an object of unknown type is taken for ours."""
    return _defined_private([path for module, path in MODULES if module != COMPAT],
                            lambda node: isinstance(node.ctx, ast.Store)
                            and _root(node) in ("self", "cls"))


STDLIB_PRIVATE = _stdlib_private_names()
THEIRS_ONLY = STDLIB_PRIVATE - _own_private_names()


def _private_uses(path: Path) -> list[str]:
    """Where a module touches a private part of ``LIBRARIES``: a name reached from an import of
    one of them (``forkserver._forkserver``), ``getattr`` of a private name they define, a
    private method or attribute of theirs used (not set there) or overridden in a subclass of
    one of their classes, or an attribute only they define reached on any object."""
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names
                         if a.name.split(".")[0] in LIBRARIES}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level \
                and node.module.split(".")[0] in LIBRARIES:
            imported |= {a.asname or a.name for a in node.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id in imported or
                isinstance(b, ast.Attribute) and _root(b) in imported for b in node.bases):
            own = {a.attr for a in ast.walk(node) if isinstance(a, ast.Attribute)
                   and isinstance(a.ctx, ast.Store) and _root(a) == "self"}
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef) and inner.name in STDLIB_PRIVATE:
                    found.append(f"line {inner.lineno}: overrides {inner.name}")
                elif isinstance(inner, ast.Attribute) and _root(inner) == "self" \
                        and inner.attr in STDLIB_PRIVATE and inner.attr not in own:
                    found.append(f"line {inner.lineno}: self.{inner.attr}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and (
                _root(node) in imported or node.attr in THEIRS_ONLY):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr", "setattr", "delattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and _private(node.args[1].value) \
                and (node.args[1].value in STDLIB_PRIVATE or _root(node.args[0]) in imported):
            found.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_private_parts_of_the_libraries_are_touched_only_in_the_compat_module(module, path):
    """Each CPython or framework release can change them: one module holds them all, and says
    why each is there (``amorsize/pools/compat.py``)."""
    if module != COMPAT:
        assert _private_uses(path) == [], f"{module} touches private parts of {LIBRARIES}"


def test_the_check_finds_private_uses():
    assert _private_uses(ROOT / "amorsize" / "pools" / "compat.py")


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


def test_the_joblib_backend_reaches_a_cluster_through_one_module_and_only_when_asked():
    """``amorsize_joblib.cluster`` is the one adapter module that imports another adapter
    (``amorsize_dask``'s cluster plan), inside its functions: ``import amorsize_joblib`` loads no
    Dask, and ``amorsize_dask`` imports nothing of ``amorsize_joblib``."""
    for module, path in MODULES:
        tree = ast.parse(path.read_text())
        top_level = {alias.name if isinstance(node, ast.Import) else node.module
                     for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                     for alias in node.names}
        imported = {m.split(".")[0] for m, _ in _imports(path)}
        if module.startswith("amorsize_dask"):
            assert "amorsize_joblib" not in imported, module
        elif module.startswith("amorsize_joblib"):
            assert module == "amorsize_joblib.cluster" or "amorsize_dask" not in imported, module
            assert not {str(m).split(".")[0] for m in top_level} & {
                "amorsize_dask", "dask", "distributed"}, module
