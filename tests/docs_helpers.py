"""Run the ```python examples of the Markdown docs as a reader would: each block copied
verbatim into a file of its own and run with ``python`` (used by tests/test_docs_examples.py).

``python_blocks(path)`` extracts the fenced ``python`` blocks of one Markdown file. A block whose
fence is preceded (blank lines aside) by ``<!-- not run: <reason> -->`` is a fragment: kept but
marked to be skipped (API listings, output samples, a piece of a larger program). Every other
block must run alone, exactly as printed: nothing is filled in and no earlier block ran first.

Run as a script, ``python tests/docs_helpers.py [FOLDER]``, it writes each runnable block of
README.md and docs/*.md into FOLDER (a temporary one by default), runs them, and prints one line
per block; it exits 1 if any failed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[\w+-]*)")


@dataclass(frozen=True)
class Block:
    doc: str            # path relative to the repository root, e.g. "docs/pools.md"
    number: int         # 1-based, among the page's python blocks
    line: int           # line of the opening fence
    code: str
    not_run: str | None  # the reason given in a <!-- not run: ... --> comment, else None

    @property
    def id(self) -> str:
        return f"{self.doc}:block{self.number}:L{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The fenced python blocks of one Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    resolved = path.resolve()
    doc = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(path)
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        end = i + 1
        while end < len(lines) and not lines[end].lstrip().startswith(fence):
            end += 1
        if opening["info"].lower() in ("python", "py", "python3"):
            code = textwrap.dedent("\n".join(lines[i + 1:end]) + "\n")   # a fence inside a list item
            blocks.append(Block(doc, len(blocks) + 1, i + 1, code, _not_run_reason(lines, i)))
        i = end + 1
    return blocks


def not_run_comments(path: Path) -> list[tuple[int, str]]:
    """(line, reason) of every ``<!-- not run: ... -->`` comment in the file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(n, m["reason"]) for n, line in enumerate(lines, 1) if (m := NOT_RUN.match(line.strip()))]


def _not_run_reason(lines: list[str], fence_index: int) -> str | None:
    j = fence_index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    m = NOT_RUN.match(lines[j].strip()) if j >= 0 else None
    return m["reason"] if m else None


def documents() -> list[Path]:
    """README.md and every page of docs/, the pages whose examples must run."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def write_block(block: Block, folder: Path) -> Path:
    """The block's code, verbatim, in a file of its own in ``folder``."""
    name = block.doc.replace("/", "_").replace(".md", "") + f"_block{block.number}.py"
    path = folder / name
    path.write_text(block.code, encoding="utf-8")
    return path


def run_file(path: Path, timeout: float) -> tuple[int | None, str]:
    """``python path`` from the repository's root: its exit code (None if it ran past
    ``timeout`` seconds) and its output, stdout then stderr. In its own session, so that on a
    timeout the whole process group goes (pools and clusters it started included)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with subprocess.Popen([sys.executable, str(path)], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            return proc.returncode, stdout + stderr
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            return None, stdout + stderr


def run_blocks(blocks: list[Block], folder: Path, timeout: float,
               at_once: int = 2) -> dict[str, tuple[int | None, str]]:
    """Each block written to ``folder`` and run alone, ``at_once`` at a time: by block id, its
    exit code (None: timed out) and output."""
    def run(block: Block) -> tuple[str, tuple[int | None, str]]:
        return block.id, run_file(write_block(block, folder), timeout)

    with ThreadPoolExecutor(at_once) as threads:
        return dict(threads.map(run, blocks))


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="amorsize-docs-"))
    folder.mkdir(parents=True, exist_ok=True)
    blocks = [b for doc in documents() for b in python_blocks(doc) if b.not_run is None]
    failed = 0
    for block_id, (code, output) in run_blocks(blocks, folder, timeout=120).items():
        ok = code == 0
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {block_id}" + ("" if ok else f"\n{output[-3000:]}"))
    print(f"{len(blocks) - failed} of {len(blocks)} blocks ran as printed (files in {folder})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
