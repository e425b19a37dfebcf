"""Docs that cannot drift: every Python example of README.md, docs/*.md and examples/*.py runs.

Each ```python block of a Markdown page is copied verbatim into a file of its own and run with
``python``, as a reader who copies it would (see ``docs_helpers``): nothing is filled in, and
no earlier block runs first. Each block is its own test case, named by page and block number. A
block preceded by ``<!-- not run: <reason> -->`` is a fragment, reported as skipped with that
reason. The scripts of ``examples/`` run as ``python examples/<name>.py`` and must exit 0.
"""

from __future__ import annotations

import importlib

import docs_helpers
import pytest

ROOT = docs_helpers.ROOT
DOCS = docs_helpers.documents()
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
BLOCKS = [block for doc in DOCS for block in docs_helpers.python_blocks(doc)]
BLOCK_SECONDS = 90     # one block, alone
SCRIPT_SECONDS = 60


@pytest.fixture(scope="module")
def block_runs(tmp_path_factory):
    """Every runnable block, run on first request (two at a time); later tests read the outcome."""
    runs: dict[str, tuple[int | None, str]] = {}

    def outcome(block: docs_helpers.Block) -> tuple[int | None, str]:
        if not runs:
            runnable = [b for b in BLOCKS if b.not_run is None]
            runs.update(docs_helpers.run_blocks(runnable, tmp_path_factory.mktemp("docs"),
                                                BLOCK_SECONDS))
        return runs[block.id]

    return outcome


@pytest.mark.timeout(BLOCK_SECONDS * len(BLOCKS) + 60)
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_block_runs_as_printed(block, block_runs):
    if block.not_run is not None:
        pytest.skip(f"not run: {block.not_run}")
    returncode, output = block_runs(block)
    how = f"ran past {BLOCK_SECONDS} s" if returncode is None else f"exited {returncode}"
    assert returncode == 0, f"{block.id} {how}\n{block.code}\noutput:\n{output[-4000:]}"


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
    returncode, output = docs_helpers.run_file(script, SCRIPT_SECONDS)
    how = f"was killed after {SCRIPT_SECONDS} s" if returncode is None else f"exited {returncode}"
    assert returncode == 0, f"python examples/{script.name} {how}:\n{output}"


@pytest.mark.parametrize("package", ["amorsize", "amorsize_joblib", "amorsize_dask"])
def test_every_public_name_is_documented(package):
    module = importlib.import_module(package)
    listed = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in [*module.__all__, "__version__"]
               if hasattr(module, name) and f"`{name}" not in listed]
    assert missing == []
