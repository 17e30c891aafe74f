"""The worker processes that read and integrate injections in parallel.

Forking a process that has run pyopenms deadlocked, so workers are forked from a server process
that has only imported what measuring needs: lcmsquant.measure and the compiled peak finder
(multiprocessing's "forkserver"; "spawn" where there is none), and the main script, once
(lcmsquant._fork_main). That import costs about 1 s of CPU once per run; `start_early` lets the
command line begin it while it is still importing itself, on another core.

A worker that dies (the out-of-memory killer, a crash in C++ code) breaks the whole pool;
`map_in_workers` gives what it held once more to a process of its own and starts the pool again
for the rest.
"""

from __future__ import annotations

import json
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

PRELOAD = ["lcmsquant._fork_main", "lcmsquant.measure", "lcmsquant._peak_kernels"]
_START_LOCK = threading.Lock()
_releasing: threading.Thread | None = None  # release_server's thread, joined by wait_released

# Fewest injections for which measure_batch(jobs=None) starts workers. Measured on 2 cores with
# the fork server started early (benchmarks/scale.py --sizes, README "Speed and scale"): the
# server's imports run beside the command's own, and a worker saves about 1.6 ms per injection
# (3.3 ms of reading and integrating, halved). At 31, 36 and 64 injections the two ways were
# within noise (0.3 s) of each other, at 48, 96 and 192 workers were 0.4-0.9 s faster; workers
# also add about 120 MB, so small batches stay in this process.
PARALLEL_MIN_INJECTIONS = 64


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
    start_server(process_context())


def start_server(context) -> None:
    """Start the fork server, if it is not running, with the main script's path for
    lcmsquant._fork_main (the server imports the script once, instead of every worker)."""
    if context.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver, spawn

    from lcmsquant._fork_main import MAIN_SCRIPT_VARIABLE

    data = spawn.get_preparation_data("server")
    with _START_LOCK:  # the variable is this process's for as long as the server takes to start
        saved = os.environ.get(MAIN_SCRIPT_VARIABLE)
        if data.get("init_main_from_path"):
            os.environ[MAIN_SCRIPT_VARIABLE] = json.dumps([data["init_main_from_path"], data["sys_argv"]])
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                os.environ.pop(MAIN_SCRIPT_VARIABLE, None)
            else:
                os.environ[MAIN_SCRIPT_VARIABLE] = saved


def release_server() -> None:
    """Stop the kept workers and the fork server, in the background, once no more workers will
    be needed (the last batch of a run is measured): they hold pyopenms and the compiled peak
    finder, about 200 MB that quantifying and drawing the report do not use. Asked for workers
    again, multiprocessing starts a new server. See wait_released."""
    global _releasing
    thread = threading.Thread(target=_release, daemon=True, name="release-workers")
    thread.start()
    _releasing = thread


def _release() -> None:
    from multiprocessing import forkserver

    release_workers(wait=True)
    server = forkserver._forkserver
    stop = getattr(server, "_stop", None)  # CPython's own (its tests use it); elsewhere it stays
    if stop is not None and getattr(server, "_forkserver_pid", None) is not None:
        stop()


def wait_released() -> None:
    """Stop the kept workers and wait until they, and any release under way, are done: before
    leaving with os._exit, which would skip closing their queues (multiprocessing's resource
    tracker then warns of leaked semaphores)."""
    release_workers(wait=True)
    if _releasing is not None:
        _releasing.join()


def worker_started(main_pid: int, marks=None) -> None:
    """Initialiser of every worker: Ctrl-C is the main process's to handle (it stops the pool),
    so workers print no tracebacks of their own; and a worker ends when the main process is
    gone (killed), instead of waiting for work forever. `marks`: the shared array in which it
    notes the items it starts and finishes (see map_in_workers)."""
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
            os._exit(1)
        except PermissionError:  # alive, and someone else's: cannot happen for our parent, but harmless
            pass


# ---------------------------------------------------------------------------------------------
# Surviving a worker's death

STARTED, FINISHED = 1, 2
_marks = None  # in a worker: the pool's shared array of item states, by position


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


def map_in_workers(
    task: Callable, items: Sequence, jobs: int, chunk_size: int, context=None
) -> Iterator[tuple[int, object]]:
    """(position, task(item)) of every item, computed by `jobs` worker processes, as they finish.

    The workers are kept for the next call (the next batch of a run), which saves starting and
    stopping them (about 0.2 s a batch); release_server ends them.

    When a worker dies the pool breaks and every unfinished item is lost; the items that workers
    were holding then are given once more each to a process of its own (so that one poisonous
    item can only kill itself), and a fresh pool takes the rest. An item whose own process dies
    too comes back as a WorkerDeath. Exceptions raised by `task` propagate as they are.
    """
    context = context or process_context()
    start_server(context)
    todo = list(enumerate(items))
    fruitless = 0
    while todo:
        with _interrupt_deferred():  # a worker cut off while it starts would print a traceback
            pool = _take_pool(context, jobs, len(items))
        done: set[int] = set()
        futures = []
        finished = False
        try:
            try:
                with _interrupt_deferred():
                    for i in range(0, len(todo), chunk_size):  # a kept pool found broken raises here
                        futures.append(pool.executor.submit(_run_chunk, task, todo[i:i + chunk_size]))
                for future in as_completed(futures):
                    for position, result in future.result():
                        done.add(position)
                        yield position, result
                finished = True
                return
            except BrokenProcessPool:
                pass
            for future in futures:  # chunks that came back before the pool broke still count
                if future.done() and future.exception() is None:
                    for position, result in future.result():
                        if position not in done:
                            done.add(position)
                            yield position, result
        finally:
            _give_back(pool, keep=finished)
        held = [(p, item) for p, item in todo if p not in done and pool.marks[p] == STARTED]
        todo = [(p, item) for p, item in todo if p not in done and pool.marks[p] != STARTED]
        fruitless = 0 if done or held else fruitless + 1
        if fruitless >= 3:
            raise WorkerError("worker processes stop as soon as they start; run with --jobs 1 (jobs=1)")
        for position, item in held:
            yield position, run_alone(task, item, context)


@contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block is done, then raise KeyboardInterrupt. Submitting
    work starts workers; interrupted while the fork server forks one, the main process would
    leave it reading a queue whose semaphores it then removes (a FileNotFoundError traceback)."""
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


@dataclass
class _Pool:
    """Worker processes and the shared array in which they mark the items they start and finish."""

    executor: ProcessPoolExecutor
    jobs: int
    start_method: str
    marks: object  # multiprocessing RawArray of STARTED / FINISHED, by position


_kept: _Pool | None = None  # the pool the last map_in_workers finished with, for the next
_KEPT_LOCK = threading.Lock()
MIN_MARKS = 4096  # positions a new pool can mark: batches up to this long reuse it


def _take_pool(context, jobs: int, n_items: int) -> _Pool:
    """The kept pool if it fits (same start method and size, enough marks), else a new one; it
    is this caller's until _give_back (another thread meanwhile gets a pool of its own)."""
    global _kept
    with _KEPT_LOCK:
        pool, _kept = _kept, None
    method = context.get_start_method()
    if pool is not None and (pool.jobs, pool.start_method) == (jobs, method) and len(pool.marks) >= n_items:
        pool.marks[:] = bytes(len(pool.marks))
        return pool
    if pool is not None:  # idle, and of another size: closed now, so no queue outlives it
        pool.executor.shutdown(wait=True, cancel_futures=True)
    marks = context.RawArray("b", max(n_items, MIN_MARKS))
    executor = ProcessPoolExecutor(jobs, mp_context=context, initializer=worker_started, initargs=(os.getpid(), marks))
    return _Pool(executor, jobs, method, marks)


def _give_back(pool: _Pool, keep: bool) -> None:
    """Keep a pool that finished its work for the next call; stop one that broke or was left
    with work undone (an error, Ctrl-C), or that another pool was kept before."""
    global _kept
    if keep:
        with _KEPT_LOCK:
            if _kept is None:
                _kept = pool
                return
    pool.executor.shutdown(wait=True, cancel_futures=True)


def release_workers(wait: bool = False) -> None:
    """Stop the kept worker processes: in the background, or (wait) until they have exited and
    their queues are closed, as a program that leaves with os._exit must."""
    global _kept
    with _KEPT_LOCK:
        pool, _kept = _kept, None
    if pool is not None:
        pool.executor.shutdown(wait=wait, cancel_futures=True)


def _run_chunk(task: Callable, chunk: list) -> list:
    results = []
    for position, item in chunk:
        _marks[position] = STARTED
        results.append((position, task(item)))
        _marks[position] = FINISHED
    return results


def run_alone(task: Callable, item, context=None):
    """task(item) in a fresh process of its own; a WorkerDeath if that process dies too."""
    context = context or process_context()
    start_server(context)
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
