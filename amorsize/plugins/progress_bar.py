"""Built-in plugin: a tqdm bar for each run that asked for progress (``tqdm.auto``, so a
notebook gets its widget). Another ``amorsize_run_progress`` plugin -- a log line, rich, a web
page -- stands beside it; unregister this one to replace it."""

from __future__ import annotations

import threading
from typing import Any

from amorsize.plugins import registry
from amorsize.plugins.hookspecs import hookimpl

# what a run counts, by its source: joblib and Dask both call their work "tasks"
UNITS = {"joblib": "task", "dask": "task"}

_bars: dict[int, Any] = {}
_lock = threading.Lock()
_warned = False


@hookimpl(trylast=True)
def amorsize_run_progress(progress: Any) -> None:
    with _lock:
        if progress.state == "started":
            bar = _new_bar(progress)
            if bar is not None:
                _bars[progress.run_id] = bar
            return
        bar = _bars.get(progress.run_id)
        if bar is None:
            return
        if progress.state == "advanced":
            if progress.n_total is not None and bar.total is not None \
                    and progress.n_done > bar.total:
                bar.total = None
            bar.update(progress.n_done - bar.n)
            return
        del _bars[progress.run_id]
    if progress.state == "finished":
        bar.total = progress.n_done
        bar.update(progress.n_done - bar.n)
    bar.close()


def _new_bar(progress: Any) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        _warn_once()
        return None
    return tqdm(total=progress.n_total, initial=progress.n_done,
                unit=UNITS.get(progress.source, "item"),
                desc=progress.description or progress.source, dynamic_ncols=True)


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        registry.warn_at_caller("progress=True shows a bar with tqdm, which is not installed: "
                                "pip install 'amorsize[progress]' (or register another "
                                "amorsize_run_progress plugin)", RuntimeWarning)
