"""--ray ADDRESS: the same jobs on Ray Core actors, each one `BatchWorker` (one model load per actor).

Why actors and not Ray Data's map_batches: the unit here is one image with its own ledger line, and the driver
must know which job each result is to write it once; actors give that with a plain work queue (a job goes to
whichever actor is free), and a dead actor's jobs are put back in the queue by us, so nothing is lost and
nothing is written twice, without Ray Data's block-level retries and its pyarrow dependency.
The model folder must be at the same path on every node (a shared filesystem); each actor checks that its
copy is the driver's model before it loads.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import Counter, deque
from typing import Callable

from sdcpu.engine.batch.batch_job import BatchJob, LoadOptions
from sdcpu.engine.batch.local_pool import MAX_ATTEMPTS, usable_cores
from sdcpu.engine.batch.worker import BatchWorker, Outcome
from sdcpu.engine.errors import UserError

LOCAL = "local"
CONNECT_TIMEOUT_SECONDS = 3.0
IN_FLIGHT_PER_ACTOR = 2
GCS_WAIT_SECONDS = "5"
"""How long ray.init looks for a cluster's GCS behind a port that accepts connections (Ray's default: ~20 s)."""


def check_reachable(address: str) -> None:
    """One line at once for a cluster address nothing listens on (refused, unresolvable, timed out)."""
    if address in (LOCAL, "auto"):
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray {address!r}: give HOST:PORT of a running cluster, ray://HOST:PORT, auto or local")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from None


class RayPool:
    def __init__(self, options: LoadOptions, expected: dict, address: str, actors: int | None,
                 log: Callable[[str], None]):
        self.options, self.expected, self.address, self.actors, self.log = options, expected, address, actors, log

    def connect(self):
        """ray.init on the cluster (one line if none answers); run() then uses it."""
        try:
            import ray
        except ImportError:
            raise UserError("--ray needs Ray: pip install 'ray>=2.40'") from None
        check_reachable(self.address)
        local = self.address == LOCAL
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", GCS_WAIT_SECONDS)
        try:
            with _native_stderr_silenced():
                ray.init(address=None if local else self.address, num_cpus=usable_cores() if local else None,
                         include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise UserError(f"no Ray cluster answers at {self.address}: {_reason(exc)}") from None
        return ray

    def run(self, jobs: list[BatchJob], on_outcome: Callable[[Outcome], None]) -> None:
        import ray

        if not ray.is_initialized():
            self.connect()
        try:
            self._run(ray, jobs, on_outcome)
        finally:
            ray.shutdown()

    def _actor_count(self, ray) -> int:
        if self.actors:
            return self.actors
        return max(1, int(ray.cluster_resources().get("CPU", 1)) // (self.options.threads or 1))

    def _run(self, ray, jobs: list[BatchJob], on_outcome) -> None:
        actor_class = ray.remote(num_cpus=self.options.threads or 1, max_restarts=0)(BatchWorker)
        count = self._actor_count(ray)
        self.log(f"Ray: {count} actors, {self.options.threads or 1} thread(s) each, on "
                 f"{int(ray.cluster_resources().get('CPU', 0))} CPUs")
        actors = [actor_class.remote(self.options, self.expected) for _ in range(count)]
        free = deque(actor for actor in actors for _ in range(IN_FLIGHT_PER_ACTOR))  # one entry per call slot
        pending, attempts, replaced = deque(jobs), Counter(), 0
        in_flight: dict = {}
        while pending or in_flight:
            while pending and free:
                actor, job = free.popleft(), pending.popleft()
                in_flight[actor.run.remote(job)] = (actor, job)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor, job = in_flight.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                _refuse_if_it_never_loaded(exc)
                replaced += 1
                if replaced > MAX_ATTEMPTS * count:
                    raise UserError(f"Ray actors keep dying ({replaced} so far); last: {_reason(exc)}") from None
                self.log(f"a Ray actor died ({_reason(exc)}); its job goes back in the queue")
                attempts[job.id] += 1
                if attempts[job.id] >= MAX_ATTEMPTS:
                    on_outcome(Outcome(job.id, "", error=f"a Ray actor died running it {MAX_ATTEMPTS} times"))
                else:
                    pending.appendleft(job)
                free = deque(a for a in free if a is not actor)
                in_flight = self._requeue_dead(actor, in_flight, pending)
                fresh = actor_class.remote(self.options, self.expected)
                free.extend([fresh] * IN_FLIGHT_PER_ACTOR)
                continue
            on_outcome(outcome)
            free.append(actor)

    @staticmethod
    def _requeue_dead(actor, in_flight: dict, pending: deque) -> dict:
        """The dead actor's other queued call will fail too: its job goes back now."""
        for ref, (owner, job) in list(in_flight.items()):
            if owner is actor:
                pending.appendleft(job)
                del in_flight[ref]
        return in_flight


@contextlib.contextmanager
def _native_stderr_silenced():
    """Ray's C++ client logs each failed GCS retry on fd 2; the failure is ours to say, in one line."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _reason(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _refuse_if_it_never_loaded(exc: Exception) -> None:
    """An actor whose __init__ raised (the model is not on its node, say): the batch stops with that line."""
    text = str(exc)
    if "UserError" in text:
        cause = next((line for line in text.splitlines() if "UserError" in line), text)
        raise UserError(f"a Ray actor could not load the model: {cause.split('UserError:')[-1].strip()}") from None
