"""The worker processes that read and integrate injections in parallel.

Forking a process that has run pyopenms deadlocked, so workers are forked from a server process
that has only imported lcmsquant (multiprocessing's "forkserver"; "spawn" where there is none).
That import costs about 1.5 s of CPU once per run; `start_early` lets the command line begin it
while it is still importing itself, on another core.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

PRELOAD = ["lcmsquant.pipeline", "lcmsquant._peak_kernels"]

# Fewest injections for which measure_batch(jobs=None) starts workers. Measured on 2 cores with
# the fork server started early (benchmarks/scale.py and README "Speed and scale"): workers cost
# about 0.8 s once (the server's import slows the command's own, the first fork) and save about
# 8 ms per injection (17 ms of reading and integrating, halved).
PARALLEL_MIN_INJECTIONS = 96


def process_context():
    """The multiprocessing context workers are started with."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def worklist_length(folder: Path) -> int:
    """Injections a batch folder's worklist.csv lists, counted cheaply (0 if unreadable): enough
    to decide whether to start the fork server before anything is imported."""
    try:
        lines = (Path(folder) / "worklist.csv").read_bytes().splitlines()
    except OSError:
        return 0
    return max(sum(1 for line in lines if line.strip()) - 1, 0)


def start_early() -> None:
    """Start the fork server now (it imports lcmsquant in the background) so that the first
    worker is ready when the batch is; does nothing where workers are spawned."""
    context = process_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def worker_started(main_pid: int) -> None:
    """Initialiser of every worker: Ctrl-C is the main process's to handle (it stops the pool),
    so workers print no tracebacks of their own; and a worker ends when the main process is
    gone (killed), instead of waiting for work forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(main_pid,), daemon=True, name="end-with-main").start()


def _end_with(main_pid: int, every_s: float = 1.0) -> None:
    while True:
        time.sleep(every_s)
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, and someone else's: cannot happen for our parent, but harmless
            pass
