"""The worker processes that read and integrate injections in parallel.

A WorkerPool is a concurrent.futures.ProcessPoolExecutor that belongs to whoever creates it
(`with WorkerPool(jobs) as pool:` stops its workers at the end of the block): measure_batch makes
one per call unless it is given one, run_batches one for all its batches. Nothing is kept
between calls, so a notebook has nothing to release.

Workers are started with multiprocessing's "forkserver" method ("spawn" where there is none):
forking a process that has run pyopenms deadlocked, so workers are forked from a server process
that has imported only what measuring needs (PRELOAD). The server is multiprocessing's own: one
per process, started on first use or earlier by start_server (the command line starts it before
importing the rest of lcmsquant, so that both import at once on two cores), and it ends with the
process.

A worker that dies (the out-of-memory killer, a crash in C++ code) breaks the whole pool;
WorkerPool.map gives what it held once more to a process of its own and starts new workers for
the rest.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What the fork server imports before it forks any worker. "__main__" is multiprocessing's way of
# having the server import the main script once, instead of every worker as it starts; CPython
# honours it from 3.13.8 (python/cpython#126631), earlier versions skip it.
PRELOAD = ["__main__", "lcmsquant.measure", "lcmsquant._peak_kernels"]

# Fewest injections for which measure_batch(jobs=None) starts workers. Measured on 2 cores
# (benchmarks/scale.py --sizes, docs/benchmarks.md "Speed and scale"): a worker saves about 1.6 ms
# per injection (3.3 ms of reading and integrating, halved); at 48 injections two workers saved
# 0.3-0.4 s of 3 s but add about 120 MB, so batches below this size stay in this process.
PARALLEL_MIN_INJECTIONS = 64

MIN_MARKS = 4096  # items a pool's shared array can mark: longer calls get an array of their own


def process_context():
    """The multiprocessing context workers are started with."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def start_server(context=None) -> None:
    """Start multiprocessing's fork server now, without waiting for it: it imports PRELOAD while
    the caller goes on, and the workers of every pool are forked from it. Does nothing where
    workers are spawned, or when the server is running already."""
    context = context or process_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        # The server ignores Ctrl-C once it runs, but not while it imports PRELOAD: started with
        # SIGINT ignored (a disposition that survives exec) it never prints a traceback of its own;
        # a Ctrl-C in these few milliseconds of spawning is lost, the next one stops the run.
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            forkserver.ensure_running()  # in the module's __all__; what starting the first worker calls
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)


def worklist_length(folder: Path) -> int:
    """Injections a batch folder's worklist.csv lists, counted cheaply (0 if unreadable): enough
    to decide whether to start the fork server before anything else is imported."""
    try:
        lines = (Path(folder) / "worklist.csv").read_bytes().splitlines()
    except OSError:
        return 0
    return max(sum(1 for line in lines if line.strip()) - 1, 0)


# ---------------------------------------------------------------------------------------------
# In a worker


STARTED, FINISHED = 1, 2
_marks: Any = None  # in a worker: its pool's shared array of item states, by position (set by worker_started)


def worker_started(main_pid: int, marks=None) -> None:
    """Initialiser of every worker: Ctrl-C is the main process's to handle (it stops the pool),
    so workers print no tracebacks of their own; and a worker ends when the main process is
    gone (killed), instead of waiting for work forever. `marks`: the shared array in which it
    notes the items it starts and finishes (see WorkerPool.map)."""
    global _marks
    _marks = marks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(main_pid,), daemon=True, name="end-with-main").start()


def _end_with(main_pid: int, every_s: float = 1.0) -> None:
    while True:
        time.sleep(every_s)
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)  # a worker with nothing to hand in: ends at once, without cleaning up
        except PermissionError:  # alive, and someone else's: cannot happen for our parent, but harmless
            pass


def _run_chunk(task: Callable, chunk: list) -> list:
    results = []
    for position, item in chunk:
        _marks[position] = STARTED
        results.append((position, task(item)))
        _marks[position] = FINISHED
    return results


# ---------------------------------------------------------------------------------------------
# The pool


class WorkerError(RuntimeError):
    """The worker processes cannot run at all (not a problem of one item)."""


@dataclass(frozen=True)
class WorkerDeath:
    """The process an item was given to died before answering: how it ended."""

    exitcode: int | None  # negative: the signal that killed it

    def __str__(self) -> str:
        code = self.exitcode
        if code is None or code >= 0:
            return f"it ended with exit code {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name == "SIGKILL":
            return "it was killed by SIGKILL: out of memory, or stopped by someone"
        if name in ("SIGTERM", "SIGINT", "SIGHUP"):
            return f"it was stopped by {name}"
        return f"it crashed ({name})"


class WorkerPool:
    """`jobs` worker processes, started when work first comes and kept for the next map (the
    next batch of a run) until close() or the end of a `with` block. One map at a time.

        with WorkerPool(2) as pool:
            for position, result in pool.map(task, items, chunk_size=4):
                ...
    """

    def __init__(self, jobs: int, context=None):
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs!r}")
        self.jobs = jobs
        self.context = context or process_context()
        self._executor: ProcessPoolExecutor | None = None
        self._marks: Any = None  # multiprocessing RawArray of STARTED / FINISHED, by position

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Start the fork server now (see start_server): the workers are forked from it when the
        first map comes, while the caller prepares it."""
        start_server(self.context)

    def close(self) -> None:
        """Stop the worker processes and wait until they have exited (their queues closed). The
        pool may be used again: it then starts new ones."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _ready(self, n_items: int) -> ProcessPoolExecutor:
        """The running executor, or a new one if there is none or its array is too short."""
        if self._executor is not None and len(self._marks) < n_items:
            self.close()
        if self._executor is None:
            self._marks = self.context.RawArray("b", max(n_items, MIN_MARKS))
            self._executor = ProcessPoolExecutor(
                self.jobs,
                mp_context=self.context,
                initializer=worker_started,
                initargs=(os.getpid(), self._marks),
            )
        else:
            self._marks[:] = bytes(len(self._marks))
        return self._executor

    def map(self, task: Callable, items: Sequence, chunk_size: int = 1) -> Iterator[tuple[int, object]]:
        """(position, task(item)) of every item, computed by the workers in chunks, as they finish.

        When a worker dies the pool breaks and every unfinished item is lost; the items that
        workers were holding then are given once more each to a process of its own (so that one
        poisonous item can only kill itself), and new workers take the rest. An item whose own
        process dies too comes back as a WorkerDeath. Exceptions raised by `task` propagate as
        they are (and stop the workers, as an interruption does).
        """
        todo = list(enumerate(items))
        fruitless = 0
        while todo:
            done: set[int] = set()
            finished = False
            try:
                with interrupt_deferred():  # a worker cut off while it starts would print a traceback
                    executor = self._ready(len(items))
                    marks = self._marks
                futures = []
                try:
                    with interrupt_deferred():
                        for i in range(0, len(todo), chunk_size):  # a pool found broken raises here
                            futures.append(executor.submit(_run_chunk, task, todo[i : i + chunk_size]))
                    for future in as_completed(futures):
                        for position, result in future.result():
                            done.add(position)
                            yield position, result
                    finished = True
                    return
                except BrokenProcessPool:
                    pass
                for future in futures:  # chunks that came back before the pool broke still count
                    if future.done() and not future.cancelled() and future.exception() is None:
                        for position, result in future.result():
                            if position not in done:
                                done.add(position)
                                yield position, result
            finally:
                if not finished:  # broken, interrupted, an error or abandoned: no worker left behind
                    self.close()
            held = [(p, item) for p, item in todo if p not in done and marks[p] == STARTED]
            todo = [(p, item) for p, item in todo if p not in done and marks[p] != STARTED]
            fruitless = 0 if done or held else fruitless + 1
            if fruitless >= 3:
                raise WorkerError("worker processes stop as soon as they start; run with --jobs 1 (jobs=1)")
            for position, item in held:
                yield position, run_alone(task, item, self.context)


@contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block is done, then raise KeyboardInterrupt (in the main
    thread; elsewhere the block runs as it is). Submitting work starts workers; interrupted while
    the fork server forks one, the main process would leave it reading a queue whose semaphores
    it then removes (a FileNotFoundError traceback). An import cut off inside a C extension's
    initialisation becomes an ImportError ("initialization failed") instead of the interruption."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def run_alone(task: Callable, item, context=None):
    """task(item) in a fresh process of its own; a WorkerDeath if that process dies too."""
    context = context or process_context()
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_answer, args=(task, item, writer, os.getpid()), daemon=True)
    process.start()
    writer.close()
    try:
        try:
            ok, value = reader.recv()
        except EOFError:  # it died before answering
            process.join()
            return WorkerDeath(process.exitcode)
        process.join()
    finally:
        reader.close()
        if process.is_alive():  # interrupted while waiting
            process.terminate()
            process.join()
    if not ok:
        raise value
    return value


def _answer(task: Callable, item, conn, main_pid: int) -> None:
    worker_started(main_pid)
    try:
        answer = (True, task(item))
    except Exception as err:  # raised again in the main process, as the pool does
        answer = (False, err)
    conn.send(answer)
    conn.close()
