"""The amorsize command, run as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import amorsize
from amorsize.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amorsize", *args], capture_output=True,
                          text=True, timeout=240)


def test_info_prints_the_detected_machine():
    out = run("info")
    assert out.returncode == 0, out.stderr
    for word in ("usable_cpus", "start_method", "available_memory_gb", "defaults until measured"):
        assert word in out.stdout


def test_info_measure_reports_measured_pool_overheads():
    out = run("info", "--measure")
    assert out.returncode == 0, out.stderr
    assert "overheads: measured" in out.stdout
    assert "process_busy_per_chunk: " in out.stdout


def test_info_measures_processes_on_a_worker_per_core(monkeypatch, capsys):
    """The figure for chunks on busy cores is only measured with every core computing."""
    from amorsize import cli, plugins, system
    from amorsize.optimizer import overheads

    asked = []
    real = plugins.get_pool
    monkeypatch.setattr(plugins, "get_pool", lambda n, kind, **kw: asked.append((n, kind))
                        or real(n, kind, **kw))
    monkeypatch.setattr(system, "usable_cpus", lambda: 3)
    monkeypatch.setattr(overheads, "measure_processes", lambda pool, method: None)
    monkeypatch.setattr(overheads, "measure_threads", lambda pool, method: None)
    assert cli.show_info(measure=True) == 0
    assert (3, "process") in asked
    assert "process_busy_per_chunk: " in capsys.readouterr().out


@pytest.mark.timeout(300)
def test_demo_runs_every_workload_and_matches_the_loop():
    out = run("demo", "--repeat", "2")
    assert out.returncode == 0, out.stderr
    for name in ("trivial", "io-2ms", "cpu-2ms", "repeated"):
        assert name in out.stdout
    assert "identical to the loop: yes" in out.stdout


def test_unknown_command_fails_with_usage():
    out = run("fly")
    assert out.returncode != 0
    assert "usage" in out.stderr


@pytest.mark.parametrize("argv", [[], ["-h"]])
def test_no_command_prints_the_help_and_exits_0(argv):
    out = run(*argv)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: amorsize")
    for command in ("demo", "info", "plugins", "--version"):
        assert command in out.stdout


def test_the_console_script_without_a_command_prints_the_help(capsys):
    assert main([]) == 0    # what the ``amorsize`` script (amorsize.cli:main) runs
    assert capsys.readouterr().out.startswith("usage: amorsize")


def test_version_prints_the_package_version():
    out = run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"amorsize {amorsize.__version__}\n"


def test_the_cap_workers_example_shows_the_cap_binding():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "cap_workers.py")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    free = re.search(r"^without the cap: thread x(\d+)", out.stdout, re.M)
    assert free and int(free[1]) > 2, out.stdout
    assert (f"with the cap:    thread x2  (adjusted by plugin 'cap-workers': n_jobs {free[1]} -> 2)"
            in out.stdout)
    assert "100 results, identical to the loop" in out.stdout
