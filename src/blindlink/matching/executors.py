"""Where matching tasks run: this process, a local process pool, or a Dask cluster.

Every executor ships the shared data (both parties' encodings) to each worker once, not once per
task: the pool through its initialiser, Dask by broadcasting it with `scatter`.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from blindlink.errors import BlindlinkError

TaskFunction = Callable[[Any, Any], Any]  # (task, shared) -> result

_shared_in_worker: Any = None
_stop_in_worker: Any = None  # the pool's event asking its running tasks to stop


class Executor(Protocol):
    def run(self, fn: TaskFunction, tasks: Sequence[Any], shared: Any) -> Iterator[Any]:
        """Results of fn(task, shared) for every task, in completion order; stops early (and
        cancels what is left) when the consumer stops iterating. While waiting for results it
        may yield None now and then, so that the consumer can stop (a stopping server) without
        waiting for the tasks running."""
        ...  # pragma: no cover - protocol

    def describe(self) -> str: ...  # pragma: no cover - protocol


class SerialExecutor:
    def run(self, fn: TaskFunction, tasks: Sequence[Any], shared: Any) -> Iterator[Any]:
        for task in tasks:
            yield fn(task, shared)

    def describe(self) -> str:
        return "this process"


# How often a pool worker checks that the process that started it is alive.
WATCH_PARENT_S = 1.0
# How often a pool waiting for results yields None to its consumer.
HEARTBEAT_S = 0.5


def _install(shared: Any, parent: int, stop: Any) -> None:
    global _shared_in_worker, _stop_in_worker
    _shared_in_worker = shared
    _stop_in_worker = stop
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def stop_requested() -> bool:
    """Whether the pool running this task no longer wants its result (its consumer stopped: a
    limit was reached, or the server is stopping); long tasks check between steps. Always
    False outside a pool worker."""
    return _stop_in_worker is not None and _stop_in_worker.is_set()


class TaskStopped(Exception):
    """A task ended early because its pool asked (`stop_requested`)."""


def _exit_with(parent: int) -> None:
    """End this worker once `parent` (the server) is gone: a killed server must not leave
    workers holding both parties' encodings (a forkserver worker is not the server's child,
    so the kernel would not end it)."""
    while True:
        time.sleep(WATCH_PARENT_S)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)


def _call_with_installed(fn: TaskFunction, task: Any) -> Any:
    return fn(task, _shared_in_worker)


class LocalPoolExecutor:
    """A process pool; by default one worker per core."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1

    def describe(self) -> str:
        return f"local pool of {self.workers} processes"

    def run(self, fn: TaskFunction, tasks: Sequence[Any], shared: Any) -> Iterator[Any]:
        # forkserver: forking a process that runs gRPC threads is unsafe.
        context = multiprocessing.get_context("forkserver")
        stop = context.Event()
        with ProcessPoolExecutor(
            self.workers,
            mp_context=context,
            initializer=_install,
            initargs=(shared, os.getpid(), stop),
        ) as pool:
            pending: set[Future[Any]] = set()
            queue = iter(tasks)
            try:
                # Keep every worker busy without queueing every task (and its result) at once.
                for task in queue:
                    pending.add(pool.submit(_call_with_installed, fn, task))
                    if len(pending) >= 2 * self.workers:
                        break
                while pending:
                    done, pending = wait(pending, HEARTBEAT_S, return_when=FIRST_COMPLETED)
                    if not done:
                        yield None
                    for future in done:
                        for task in queue:
                            pending.add(pool.submit(_call_with_installed, fn, task))
                            break
                        yield future.result()
            finally:
                for future in pending:
                    future.cancel()
                if pending:
                    # Stopped before the last result: the pool waits for the tasks running
                    # (each can take seconds) when it closes, so ask them to stop.
                    stop.set()


class DaskExecutor:
    """Tasks on a Dask distributed cluster at `address` (tcp://HOST:PORT)."""

    def __init__(self, address: str) -> None:
        try:
            from dask.distributed import Client
        except ImportError:
            raise BlindlinkError(
                "Dask is not installed; install blindlink with the 'dask' "
                "extra (pip install 'blindlink[dask]')"
            ) from None
        self.address = address
        self._client_class = Client

    def describe(self) -> str:
        return f"Dask cluster at {self.address}"

    def run(self, fn: TaskFunction, tasks: Sequence[Any], shared: Any) -> Iterator[Any]:
        from dask.distributed import as_completed

        with self._client_class(self.address, timeout="30s") as client:
            shared_future = client.scatter(shared, broadcast=True, hash=False)
            futures = [client.submit(fn, task, shared_future, pure=False) for task in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                client.cancel(futures)
