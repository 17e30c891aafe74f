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

PRELOAD = ["lcmsquant.pipeline"]


def process_context():
    """The multiprocessing context workers are started with."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


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
