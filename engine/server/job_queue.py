"""One worker thread, one bounded FIFO: jobs run one at a time (a 2-core machine runs one UNet well, not two).

A job is a function of its `JobControl`: it reports steps through it and stops when told (interrupt: stop at
the next step, A1111's /interrupt; skip: stop the current batch and go on). A full queue refuses at once
(QueueFull -> 503 with Retry-After); a job whose client left before it started is dropped, one whose client
leaves while it runs is interrupted. Model switches go through the same queue, so they wait for the running job.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class QueueFull(Exception):
    """No room for another job; the caller answers 503."""


class Stopped(Exception):
    """Raised inside a job's step callback when it is interrupted or skipped."""


@dataclass
class JobControl:
    """What the worker and the progress endpoint share about the running job."""

    kind: str
    iterations: int = 1
    iteration: int = 0
    step: int = 0
    steps: int = 0
    started: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))
    step_started: float | None = None
    step_seconds: list[float] = field(default_factory=list)
    interrupted: bool = False
    skipped: bool = False
    preview_wanted_until: float = 0.0
    preview: np.ndarray | None = None
    preview_step: int = 0
    text: str = ""

    def begin(self, iteration: int, steps: int) -> None:
        self.iteration, self.step, self.steps, self.skipped = iteration, 0, steps, False
        self.step_started = time.monotonic()
        if self.interrupted:
            raise Stopped("interrupted")

    def on_step(self, i: int, n: int) -> None:
        now = time.monotonic()
        if self.step_started is not None:
            self.step_seconds.append(now - self.step_started)
        self.step, self.steps, self.step_started = i + 1, n, now
        if self.interrupted or self.skipped:
            raise Stopped("interrupted" if self.interrupted else "skipped")

    @property
    def seconds_per_step(self) -> float | None:
        recent = self.step_seconds[-8:]
        return float(np.median(recent)) if recent else None

    @property
    def fraction(self) -> float:
        """A1111's progress: finished batches plus the running batch's share of steps."""
        done = self.iteration + (self.step / self.steps if self.steps else 0.0)
        return min(done / max(self.iterations, 1), 1.0)

    @property
    def wants_preview(self) -> bool:
        return time.monotonic() < self.preview_wanted_until


@dataclass
class Job:
    control: JobControl
    work: Callable[[JobControl], Any]
    future: Future = field(default_factory=Future)
    dropped: bool = False


class JobQueue:
    def __init__(self, size: int):
        self.size = size
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="sdcpu-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, work: Callable[[JobControl], Any], iterations: int = 1) -> Job:
        job = Job(JobControl(kind, iterations), work)
        with self._lock:
            if len(self._waiting) >= self.size:
                raise QueueFull(f"{len(self._waiting)} waiting (--queue-size {self.size})")
            self._waiting.append(job)
            self._lock.notify()
        return job

    def drop(self, job: Job) -> None:
        """The client left: a waiting job is removed, a running one stops at its next step."""
        with self._lock:
            job.dropped = True
            if job in self._waiting:
                self._waiting.remove(job)
                job.future.cancel()
            elif job is self._running:
                job.control.interrupted = True

    def interrupt(self) -> None:
        with self._lock:
            if self._running is not None:
                self._running.control.interrupted = True

    def skip(self) -> None:
        with self._lock:
            if self._running is not None:
                self._running.control.skipped = True

    def running(self) -> JobControl | None:
        job = self._running
        return job.control if job is not None else None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()

    def _next(self) -> Job | None:
        with self._lock:
            while not self._waiting and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            try:
                if job.future.set_running_or_notify_cancel():
                    job.control.started = time.monotonic()
                    job.future.set_result(job.work(job.control))
            except BaseException as exc:  # the job's error goes to its request, never kills the worker
                job.future.set_exception(exc)
            finally:
                with self._lock:
                    self._running = None
