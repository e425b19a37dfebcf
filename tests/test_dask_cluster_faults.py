"""The cluster path under faults and signals, each in a new interpreter with a hard timeout:
a worker killed mid-run, Ctrl-C, a script without a ``__main__`` guard."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from control_helpers import ROOT

pytestmark = pytest.mark.timeout(240)

ENV = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PYTHONUNBUFFERED": "1"}


def start(script: str, tmp_path) -> subprocess.Popen:
    import os

    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen([sys.executable, str(path)], env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_worker_killed_mid_run_reruns_at_most_two_batches_of_items(tmp_path):
    # each execution of an item appends its index to a file, whichever process runs it: the
    # lines past one per item are the items the cluster ran again
    proc = start(f"""
        import os, signal, time
        import amorsize, amorsize_dask
        from dask_helpers import nap

        def logged_nap(x):
            with open({str(tmp_path / "runs.txt")!r}, "a") as f:
                f.write(f"{{x}}\\n")
            time.sleep(0.01)
            return x

        if __name__ == "__main__":
            assert amorsize_dask.map(nap, range(10)) == list(range(10))  # starts the cluster
            client = amorsize_dask.distributed.default_client()
            victim = sorted(client.run(os.getpid).values())[0]
            out = []
            for x in amorsize_dask.imap(logged_nap, range(400)):
                out.append(x)
                if len(out) == 60:
                    os.kill(victim, signal.SIGKILL)
            print("in order", out == list(range(400)))
            print("largest batch", amorsize.last_plan().chunksize)
            amorsize_dask.close_local_cluster()
    """, tmp_path)
    out, err = proc.communicate(timeout=200)
    assert "in order True" in out, err[-3000:]
    largest = int(out.split("largest batch ")[1].split()[0])
    runs = (tmp_path / "runs.txt").read_text().split()
    assert sorted(set(runs), key=int) == [str(i) for i in range(400)]
    assert len(runs) - 400 <= 2 * largest, (len(runs) - 400, largest)


def test_ctrl_c_cancels_the_batches_and_prints_nothing_more(tmp_path):
    proc = start("""
        import time
        from functools import partial
        import amorsize, amorsize_dask
        from distributed import Client, LocalCluster
        from dask_helpers import nap

        class Started:
            @amorsize.hookimpl
            def amorsize_run_progress(self, progress):
                if progress.state == "advanced":
                    print("advanced", flush=True)

        if __name__ == "__main__":
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                              protocol="tcp://", host="127.0.0.1", dashboard_address=None,
                              scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \\
                    Client(cluster, set_as_default=False) as client:
                amorsize.register_plugin(Started())
                try:
                    amorsize_dask.map(partial(nap, seconds=0.05), range(400), client=client,
                                      progress=True)
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
                deadline = time.monotonic() + 10
                left = -1
                while time.monotonic() < deadline:
                    left = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
                    if not left:
                        break
                    time.sleep(0.05)
                print("tasks left", left, flush=True)
    """, tmp_path)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("advanced"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    assert "interrupted" in out and "tasks left 0" in out, (out, err[-3000:])
    # the in-process workers' own log may say that a running batch was cancelled (a WARNING)
    for noise in ("Traceback", "never retrieved", " - ERROR - "):
        assert noise not in err


def test_a_script_without_a_main_guard_is_told_the_fix(tmp_path):
    proc = start("""
        import amorsize_dask
        from dask_helpers import square

        print(amorsize_dask.map(square, range(3)))
    """, tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "MainGuardError" in err
    assert 'if __name__ == "__main__":' in err and "client=" in err
    assert "Nanny" not in err
