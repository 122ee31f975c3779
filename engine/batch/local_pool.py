"""--workers N on this machine: N spawned processes, each with its own loaded pipeline and cores/N threads.

A worker that dies (killed, out of memory) breaks the pool: the jobs it and the others had in hand that did
not finish go back to the front of the queue, a new pool starts, and a job that has taken a worker down
MAX_ATTEMPTS times is recorded as failed. Only the driver writes (engine/batch/runner.py).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from sdcpu.engine.batch.batch_job import BatchJob, LoadOptions
from sdcpu.engine.batch.worker import BatchWorker, Outcome
from sdcpu.engine.errors import UserError

MAX_ATTEMPTS = 3
IN_FLIGHT_PER_WORKER = 2
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


def _start_worker(options: LoadOptions, expected: dict) -> None:
    global _worker, _load_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
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
        pending, attempts = deque(jobs), Counter()
        while pending:
            executor = self._executor()
            in_flight: dict[Future, BatchJob] = {}
            try:
                self._drain(executor, pending, in_flight, on_outcome)
            except BrokenProcessPool:
                self.log("a worker process died; the jobs it had go back in the queue")
                self._salvage(in_flight, pending, attempts, on_outcome)
            except BaseException:
                _stop(executor)
                raise
            finally:
                executor.shutdown(wait=False, cancel_futures=True)

    def _drain(self, executor, pending: deque, in_flight: dict, on_outcome) -> None:
        while pending or in_flight:
            while pending and len(in_flight) < IN_FLIGHT_PER_WORKER * self.workers:
                job = pending.popleft()
                in_flight[executor.submit(_run_job, job)] = job
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    outcome = future.result()
                except WorkerLoadError as exc:
                    raise UserError(f"the model did not load in a worker: {exc}") from None
                del in_flight[future]
                on_outcome(outcome)

    @staticmethod
    def _salvage(in_flight: dict, pending: deque, attempts: Counter, on_outcome) -> None:
        """Keep what finished before the break; put the rest back first in line, or fail it after MAX_ATTEMPTS."""
        for future, job in in_flight.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                on_outcome(future.result())
                continue
            attempts[job.id] += 1
            if attempts[job.id] >= MAX_ATTEMPTS:
                on_outcome(Outcome(job.id, "", error=f"a worker process died running it {MAX_ATTEMPTS} times"))
            else:
                pending.appendleft(job)


def _stop(executor: ProcessPoolExecutor) -> None:
    """Ctrl-C or an error in the driver: the workers stop now, not after their current image."""
    for process in list(getattr(executor, "_processes", {}).values()):
        process.terminate()
