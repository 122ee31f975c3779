"""The server's one state object (models, queue, settings, limits), handed to routes by dependency injection,
and the wait for a queued job that drops it when its client goes away."""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from fastapi import HTTPException, Request

from sdcpu.engine.server.a1111_requests import ServerLimits
from sdcpu.engine.server.job_queue import JobControl, JobQueue, QueueFull
from sdcpu.engine.server.served_models import ModelSlot, ServedModel
from sdcpu.engine.server.server_options import ServerOptions, with_settings

DISCONNECT_POLL_SECONDS = 0.25


@dataclass
class ServerState:
    slot: ModelSlot
    queue: JobQueue
    options: ServerOptions
    limits: ServerLimits = field(default_factory=ServerLimits)
    save_dir: Path | None = None
    log: Callable[[str], None] = lambda line: None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def current_model(self) -> ServedModel:
        return self.slot.find(self.options.sd_model_checkpoint)

    def set_options(self, changes: dict[str, Any]) -> ServerOptions:
        """The server-wide settings with `changes` applied (checked first; the model is switched by the caller)."""
        with self._lock:
            self.options = with_settings(self.options, changes)
            return self.options

    def refresh_models(self) -> None:
        with self._lock:
            self.slot.refresh()

    def switch_model(self, model: ServedModel) -> None:
        with self._lock:
            self.options = replace(self.options, sd_model_checkpoint=model.title)


def server_state(request: Request) -> ServerState:
    return request.app.state.sdcpu


def retry_after(state: ServerState) -> str:
    """Seconds until a queue slot is likely free: the running job's remaining steps at its pace, at least 1."""
    control = state.queue.running()
    if control is None or control.seconds_per_step is None:
        return "2"
    left = (control.steps - control.step) * control.seconds_per_step
    return str(max(1, math.ceil(left)))


async def run_queued(request: Request, state: ServerState, kind: str, work: Callable[[JobControl], Any],
                     iterations: int = 1) -> Any:
    """Queue `work`, wait for its answer; a client gone before the answer has its job dropped (or stopped)."""
    try:
        job = state.queue.submit(kind, work, iterations)
    except QueueFull as exc:
        raise HTTPException(503, f"the queue is full: {exc}; retry later",
                            headers={"Retry-After": retry_after(state)}) from None
    answer = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({answer}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return answer.result()
        if await request.is_disconnected():
            state.queue.drop(job)
            state.log(f"a client left; its {kind} job was dropped")
            raise HTTPException(499, "client closed the request")
