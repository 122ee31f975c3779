"""--workers N on this machine: N spawned processes, each with its own loaded pipeline and cores/N threads.

A worker that dies (killed, out of memory) breaks the pool: the jobs that were in hand and did not finish run
again, one at a time, in a new pool; a job that takes a worker down MAX_ATTEMPTS times on its own is recorded
as failed. Only the driver writes (engine/batch/runner.py).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from sdcpu.engine.batch.batch_job import BatchJob, LoadOptions
from sdcpu.engine.batch.worker import BatchWorker, Outcome
from sdcpu.engine.errors import UserError

MAX_ATTEMPTS = 3
IN_FLIGHT_PER_WORKER = 2
PARENT_POLL_SECONDS = 0.5
_worker: BatchWorker | None = None
_load_error = ""


class WorkerLoadError(Exception):
    """The model did not load in a worker: the batch stops with that one line."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, usable_cores() // workers)


def _exit_with_the_driver(driver: int) -> None:
    """A worker outlives a SIGKILLed driver otherwise (it only waits for its next job): it leaves within a second."""
    while os.getppid() == driver:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(0)


def _start_worker(options: LoadOptions, expected: dict) -> None:
    global _worker, _load_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    threading.Thread(target=_exit_with_the_driver, args=(os.getppid(),), daemon=True).start()
    try:
        _worker = BatchWorker(options, expected)
    except UserError as exc:
        _load_error = str(exc)


def _run_job(job: BatchJob) -> Outcome:
    if _worker is None:
        raise WorkerLoadError(_load_error or "the worker has no model")
    return _worker.run(job)


class LocalPool:
    def __init__(self, options: LoadOptions, expected: dict, workers: int, log: Callable[[str], None]):
        self.options, self.expected, self.workers, self.log = options, expected, workers, log

    def _executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self.options, self.expected))

    def run(self, jobs: list[BatchJob], on_outcome: Callable[[Outcome], None]) -> None:
        queue = _JobQueue(deque(jobs))
        while queue.left():
            executor = self._executor()
            in_flight: dict[Future, BatchJob] = {}
            try:
                self._drain(executor, queue, in_flight, on_outcome)
            except BrokenProcessPool:
                self.log("a worker process died; the jobs it had go back in the queue")
                queue.salvage(in_flight, on_outcome)
            except BaseException:
                _stop(executor)
                raise
            finally:
                executor.shutdown(wait=False, cancel_futures=True)

    def _drain(self, executor, queue: "_JobQueue", in_flight: dict, on_outcome) -> None:
        window = IN_FLIGHT_PER_WORKER * self.workers
        while queue.left() or in_flight:
            while (source := queue.source(in_flight, window)) is not None:
                future = executor.submit(_run_job, source[0])  # a broken pool raises here, before the job leaves
                in_flight[future] = source.popleft()
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    outcome = future.result()
                except WorkerLoadError as exc:
                    raise UserError(f"the model did not load in a worker: {exc}") from None
                del in_flight[future]
                on_outcome(outcome)


class _JobQueue:
    """Jobs to hand out. Jobs that were in flight when a worker died are suspects: each then runs alone, so a
    death while it runs is its own, and only a job that takes down MAX_ATTEMPTS workers alone is failed."""

    def __init__(self, pending: deque):
        self.pending, self.suspects, self.blamed = pending, deque(), Counter()

    def left(self) -> bool:
        return bool(self.pending or self.suspects)

    def source(self, in_flight: dict, window: int) -> deque | None:
        """Where the next job comes from, or None when nothing more may go out now."""
        if self.suspects:
            return self.suspects if not in_flight else None
        return self.pending if self.pending and len(in_flight) < window else None

    def salvage(self, in_flight: dict, on_outcome) -> None:
        """Keep what finished before the break; the rest become suspects, or fail after MAX_ATTEMPTS alone."""
        alone = len(in_flight) == 1
        for future, job in in_flight.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                on_outcome(future.result())
                continue
            self.blamed[job.id] += alone
            if self.blamed[job.id] >= MAX_ATTEMPTS:
                on_outcome(Outcome(job.id, "", error=f"a worker process died running it alone {MAX_ATTEMPTS} times"))
            else:
                self.suspects.append(job)


def _stop(executor: ProcessPoolExecutor) -> None:
    """Ctrl-C or an error in the driver: the workers stop now, not after their current image."""
    for process in list(getattr(executor, "_processes", {}).values()):
        process.terminate()
