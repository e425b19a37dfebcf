"""Run the ```python examples of the Markdown docs (used by tests/test_docs_examples.py).

``python_blocks(path)`` extracts the fenced ``python`` blocks of one Markdown file. A block whose
fence is preceded (blank lines aside) by ``<!-- not run: <reason> -->`` is kept but marked to be
skipped: API listings and output samples are Python-looking text, not programs.

Run as a script, ``python tests/docs_helpers.py DOC RESULTS``, it executes the runnable blocks of
``DOC`` in order, in one namespace (later blocks of a page may use what earlier ones defined), as
the interactive interpreter would run them one after the other (a ``from __future__`` import
holds for the blocks after it). The namespace starts with concrete stand-ins for the placeholders
the docs use (``func``, ``items``, ``urls``, ...), only those a block of that page mentions. It
appends one JSON line per block to ``RESULTS`` (a "start" record before running it, then "ok"
or "error" with the traceback), and stops at the first error.
"""

from __future__ import annotations

import codeop
import json
import re
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --- stand-ins for the placeholders of the docs ---------------------------------------------------

def fetch(url: str) -> int:
    """Stands in for a network call: waits 2 ms, returns the "page size"."""
    time.sleep(0.002)
    return len(url)


def solve(puzzle: float) -> float:
    """A puzzle is the seconds it takes to solve."""
    time.sleep(puzzle)
    return puzzle


def _total() -> Any:
    import dask.bag

    return dask.bag.from_sequence(range(1000), npartitions=4).map(abs).sum()


PLACEHOLDERS: dict[str, Callable[[], Any]] = {
    "func": lambda: abs,
    "f": lambda: abs,
    "items": lambda: range(-50, 50),
    "data": lambda: range(-50, 50),
    "huge_generator": lambda: (i for i in range(-5000, 5000)),
    "datasets": lambda: [range(start, start + 50) for start in (0, 50, 100)],
    "urls": lambda: [f"https://example.com/page/{i}" for i in range(40)],
    "fetch": lambda: fetch,
    # Every puzzle takes 10 ms but the last, which runs past the documented ``timeout=1``.
    "puzzles": lambda: [0.01] * 20 + [4.0],
    "solve": lambda: solve,
    "total": _total,   # a small Dask collection
}


def placeholders_for(blocks: list[Block]) -> dict[str, Any]:
    """Stand-ins for the placeholder names that the given blocks mention."""
    text = "\n".join(block.code for block in blocks)
    return {name: make() for name, make in PLACEHOLDERS.items() if re.search(rf"\b{name}\b", text)}


def run_doc(doc: Path, results: Path) -> int:
    blocks = [block for block in python_blocks(doc) if block.not_run is None]
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    namespace.update(placeholders_for(blocks))
    compile_like_the_repl = codeop.Compile()
    with results.open("a", encoding="utf-8") as out:
        def record(**fields: Any) -> None:
            out.write(json.dumps(fields) + "\n")
            out.flush()

        for block in blocks:
            record(block=block.number, state="start")
            start = time.perf_counter()
            try:
                code = compile_like_the_repl(block.code, f"{block.doc} (block {block.number}, "
                                                         f"line {block.line})", "exec")
                exec(code, namespace)
            except BaseException:  # noqa: BLE001 - report whatever the block raised
                record(block=block.number, state="error", seconds=time.perf_counter() - start,
                       traceback=traceback.format_exc())
                return 1
            record(block=block.number, state="ok", seconds=time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(run_doc(Path(sys.argv[1]), Path(sys.argv[2])))
