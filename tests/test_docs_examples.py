"""Docs that cannot drift: every Python example of README.md, docs/*.md and examples/*.py runs.

The ```python blocks of each Markdown page run in order, in one fresh interpreter per page and
one namespace (see ``docs_helpers``: placeholders such as ``func`` or ``urls`` get small concrete
stand-ins). Each block is its own test case, named by page and block number. A block preceded by
``<!-- not run: <reason> -->`` is reported as skipped with that reason. The scripts of
``examples/`` run as ``python examples/<name>.py`` and must exit 0.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import docs_helpers
import pytest

ROOT = docs_helpers.ROOT
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
BLOCKS = [block for doc in DOCS for block in docs_helpers.python_blocks(doc)]
PAGE_SECONDS = 60      # one page's blocks, all together
SCRIPT_SECONDS = 60


@dataclass
class PageRun:
    """What happened when one page's blocks ran."""

    states: dict[int, dict] = field(default_factory=dict)   # block number -> last record
    output: str = ""
    timed_out: bool = False


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory):
    """Runs a page's blocks on first request; later blocks of the page reuse that run."""
    runs: dict[str, PageRun] = {}

    def run(doc: str) -> PageRun:
        if doc not in runs:
            results = tmp_path_factory.mktemp("docs") / "results.jsonl"
            command = [sys.executable, str(Path(docs_helpers.__file__)), str(ROOT / doc), str(results)]
            page = PageRun()
            returncode, page.output = _run(command, PAGE_SECONDS)
            page.timed_out = returncode is None
            if results.exists():
                for line in results.read_text().splitlines():
                    record = json.loads(line)
                    page.states[record["block"]] = record
            runs[doc] = page
        return runs[doc]

    return run


def _run(command: list[str], timeout: float) -> tuple[int | None, str]:
    """Exit code (None if it timed out) and output, stdout then stderr. In its own session, so
    that on a timeout the whole process group goes (pools and clusters it started included)."""
    with subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            return proc.returncode, stdout + stderr
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            return None, stdout + stderr


@pytest.mark.timeout(PAGE_SECONDS + 30)
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_block_runs(block, page_runs):
    if block.not_run is not None:
        pytest.skip(f"not run: {block.not_run}")
    page = page_runs(block.doc)
    state = page.states.get(block.number)
    if state is None:
        failed = [n for n, s in page.states.items() if s["state"] != "ok"]
        if failed:
            pytest.skip(f"not reached: block {failed[0]} of {block.doc} failed first")
        pytest.fail(f"{block.id} never ran; the page's interpreter said:\n{page.output[-4000:]}")
    where = f"{block.id}\n{block.code}"
    if state["state"] == "start":
        reason = f"did not finish within the page's {PAGE_SECONDS} s" if page.timed_out else "crashed"
        pytest.fail(f"{where}\n{reason}; output:\n{page.output[-4000:]}")
    assert state["state"] == "ok", f"{where}\n{state['traceback']}\noutput:\n{page.output[-4000:]}"


def test_every_page_with_python_examples_is_collected():
    pages = {block.doc for block in BLOCKS}
    assert "README.md" in pages and "docs/pools.md" in pages
    runnable = [block for block in BLOCKS if block.not_run is None]
    assert len(runnable) >= len(BLOCKS) // 2, "most examples should run, not be skipped"


@pytest.mark.parametrize("doc", DOCS, ids=[doc.relative_to(ROOT).as_posix() for doc in DOCS])
def test_not_run_comments_mark_a_python_block_and_give_a_reason(doc):
    marked = {block.line for block in docs_helpers.python_blocks(doc) if block.not_run is not None}
    for line, reason in docs_helpers.not_run_comments(doc):
        assert reason, f"{doc.name}:{line}: a <!-- not run: ... --> comment needs a reason"
        assert any(0 < fence - line <= 2 for fence in marked), (
            f"{doc.name}:{line}: a <!-- not run: ... --> comment must come just before a ```python fence")


# tests/test_plugins.py and tests/test_cli.py also run the two current scripts and check their
# output; they take under a second each, so running every script here too keeps the rule simple:
# a new example is covered the day it is added.
@pytest.mark.timeout(SCRIPT_SECONDS + 30)
@pytest.mark.parametrize("script", EXAMPLES, ids=[script.name for script in EXAMPLES])
def test_example_script_runs(script):
    returncode, output = _run([sys.executable, str(script)], SCRIPT_SECONDS)
    how = f"was killed after {SCRIPT_SECONDS} s" if returncode is None else f"exited {returncode}"
    assert returncode == 0, f"python examples/{script.name} {how}:\n{output}"


@pytest.mark.parametrize("package", ["amorsize", "amorsize_joblib", "amorsize_dask"])
def test_every_public_name_is_documented(package):
    module = importlib.import_module(package)
    listed = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in [*module.__all__, "__version__"]
               if hasattr(module, name) and f"`{name}" not in listed]
    assert missing == []
