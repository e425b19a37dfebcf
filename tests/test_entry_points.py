"""Plugins installed through entry points: a broken one is reported and skipped, never fatal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import amorsize
from amorsize import cli
from amorsize.plugins import registry as plugins

ROOT = Path(__file__).resolve().parents[1]
MISSING = ("broken", "no_such_module_xyz:plugin")

_COUNTING_PLUGIN = """
    import amorsize

    finished = []

    @amorsize.hookimpl
    def amorsize_run_finished(report):
        finished.append(report.n_items)
"""


@pytest.fixture
def entry_points(monkeypatch, tmp_path):
    """Installs a distribution with the given entry points (name, value) in ``tmp_path``, on
    ``sys.path``, for a fresh load of the plugins (the manager is global): afterwards whatever
    the load registered is unregistered and the loaded state restored, so later tests see the
    built-ins and nothing else."""
    plugins.load_plugins()
    registered_before = {name for name, _ in plugins.pm.list_name_plugin()}
    broken_before = dict(plugins._broken)
    modules_before = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(*eps: tuple[str, str]) -> None:
        info = tmp_path / "ep_test_dist-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-test-dist\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            f"[{plugins.ENTRY_POINT_GROUP}]\n" + "".join(f"{n} = {v}\n" for n, v in eps))
        monkeypatch.setattr(plugins, "_loaded", False)
        plugins._broken.clear()

    yield install
    for name, plugin in plugins.pm.list_name_plugin():
        if name not in registered_before and plugin is not None:
            plugins.pm.unregister(name=name)
    plugins._broken.clear()
    plugins._broken.update(broken_before)
    for name in set(sys.modules) - modules_before:
        if name.startswith("ep_test_"):
            del sys.modules[name]
    assert all(plugins.pm.get_plugin(name) is not None for name in plugins.BUILTIN_NAMES)


def _module(tmp_path: Path, name: str, source: str) -> tuple[str, str]:
    """A module in ``tmp_path`` (on ``sys.path``) and an entry point naming it."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return name, name


def test_a_missing_module_is_warned_about_once_and_skipped_and_the_rest_loads(entry_points, tmp_path):
    good = _module(tmp_path, "ep_test_good", _COUNTING_PLUGIN)
    entry_points(MISSING, good)
    with pytest.warns(amorsize.PluginWarning) as caught:
        assert amorsize.map(abs, [-1, -2, -3]) == [1, 2, 3]
        assert amorsize.map(abs, [-4]) == [4]
    [warning] = [w for w in caught if issubclass(w.category, amorsize.PluginWarning)]
    message = str(warning.message)
    for part in ("'broken'", "no_such_module_xyz:plugin", "ModuleNotFoundError",
                 "AMORSIZE_DISABLE_PLUGINS=broken"):
        assert part in message
    assert plugins.pm.get_plugin("broken") is None
    assert plugins.pm.get_plugin("ep_test_good") is not None
    assert sys.modules["ep_test_good"].finished, "the good entry point's observer saw no run"
    assert plugins.broken_entry_points() == [
        ("broken", "no_such_module_xyz:plugin",
         "ModuleNotFoundError: No module named 'no_such_module_xyz'")]


def test_a_module_raising_on_import_and_a_refused_plugin_are_both_broken(entry_points, tmp_path):
    raising = _module(tmp_path, "ep_test_raising", "raise ImportError('needs libfoo')")
    misspelt = _module(tmp_path, "ep_test_misspelt", """
        import amorsize

        @amorsize.hookimpl
        def amorsize_adjust_plans(plan):
            return None
    """)
    entry_points(raising, misspelt)
    with pytest.warns(amorsize.PluginWarning):
        broken = {name: error for name, _, error in plugins.broken_entry_points()}
    assert broken["ep_test_raising"] == "ImportError: needs libfoo"
    assert broken["ep_test_misspelt"].startswith("PluginValidationError:")
    assert "did you mean 'amorsize_adjust_plan'" in broken["ep_test_misspelt"]
    assert plugins.pm.get_plugin("ep_test_misspelt") is None
    assert amorsize.optimize(abs, range(10)).n_jobs >= 1


def test_loading_again_does_not_warn_again(entry_points, monkeypatch):
    entry_points(MISSING)
    with pytest.warns(amorsize.PluginWarning):
        plugins.load_plugins()
    monkeypatch.setattr(plugins, "_loaded", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", amorsize.PluginWarning)
        plugins.load_plugins()
    assert [name for name, _, _ in plugins.broken_entry_points()] == ["broken"]


def test_a_disabled_broken_entry_point_is_neither_loaded_nor_reported(entry_points, monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, "broken")
    entry_points(MISSING)
    with warnings.catch_warnings():
        warnings.simplefilter("error", amorsize.PluginWarning)
        assert plugins.broken_entry_points() == []


def test_the_plugins_command_lists_a_broken_entry_point_and_exits_0(entry_points, capsys):
    entry_points(MISSING)
    with warnings.catch_warnings():
        warnings.simplefilter("error", amorsize.PluginWarning)
        assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert ("broken (no_such_module_xyz:plugin): BROKEN — ModuleNotFoundError: "
            "No module named 'no_such_module_xyz'\n"
            "    skipped; fix or uninstall it, or set AMORSIZE_DISABLE_PLUGINS=broken") in out
    assert "amorsize.plugins.default_optimizer\n    amorsize_make_plan" in out


def _installed_broken_plugin(tmp_path: Path) -> dict[str, str]:
    """An installed distribution whose entry point raises on import; the environment of a
    process that sees it."""
    (tmp_path / "bad_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    info = tmp_path / "bad_plugin_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[amorsize]\nbad_plugin = bad_plugin\n")
    env = {k: v for k, v in os.environ.items() if k != plugins.DISABLE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return env


def _run_python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_an_installed_broken_plugin_warns_and_runs_go_on(tmp_path):
    env = _installed_broken_plugin(tmp_path)
    out = _run_python(env, "-c", "import amorsize; print(amorsize.map(abs, [-1, -2]))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2]"
    assert out.stderr.count("PluginWarning") == 1
    assert "'bad_plugin' (bad_plugin) failed to load and is skipped: ImportError: needs libfoo" \
        in out.stderr
    env[plugins.DISABLE_ENV] = "bad_plugin"
    out = _run_python(env, "-c", "import amorsize; print(amorsize.map(abs, [-1, -2]))")
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_amorsize_plugins_lists_an_installed_broken_plugin_without_a_traceback(tmp_path):
    out = _run_python(_installed_broken_plugin(tmp_path), "-m", "amorsize", "plugins")
    assert out.returncode == 0, out.stderr
    assert "bad_plugin (bad_plugin): BROKEN — ImportError: needs libfoo" in out.stdout
    assert "amorsize.plugins.default_optimizer" in out.stdout
    assert "Traceback" not in out.stderr
