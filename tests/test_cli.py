"""The amorsize command, run as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest


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
