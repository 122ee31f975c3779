"""A batch from start to end: read the jobs, skip what the ledger has, run the rest on a pool (local processes
or Ray actors), and write each result as its one writer: the PNG atomically, then its ledger line."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from sdcpu.engine.atomic import atomic_write
from sdcpu.engine.batch.batch_job import BatchJob, expand_jobs
from sdcpu.engine.batch.job_file import LineError, read_job_file
from sdcpu.engine.batch.ledger import DONE, FAILED, Ledger
from sdcpu.engine.batch.worker import Outcome


class Pool(Protocol):
    def run(self, jobs: list[BatchJob], on_outcome: Callable[[Outcome], None]) -> None: ...


@dataclass
class BatchPlan:
    out_dir: Path
    ledger: Ledger
    todo: list[BatchJob]
    total: int
    already_done: int
    failed_before: int
    """Failed in an earlier run and not re-run (no --retry-failed)."""
    line_errors: list[LineError]


@dataclass
class BatchSummary:
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    per_worker: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.done / self.seconds if self.seconds > 0 else 0.0


def plan_batch(jobs_file: Path, out_dir: Path, identity: dict, defaults: dict, seeds: list[int] | None,
               retry_failed: bool) -> BatchPlan:
    """Every job of the file and --seeds; those the ledger has done (or failed, without --retry-failed) left out.
    `identity`: LoadOptions.identity of the model, part of every job's id."""
    lines, line_errors = read_job_file(jobs_file)
    jobs, image_errors = expand_jobs(lines, defaults, seeds, identity)
    ledger = Ledger(out_dir)
    entries = ledger.open()
    done = {job_id for job_id, status in entries.items() if status == DONE}
    failed = {job_id for job_id, status in entries.items() if status == FAILED}
    skip = done | (set() if retry_failed else failed)
    todo = [job for job in jobs if job.id not in skip]
    return BatchPlan(out_dir, ledger, todo, len(jobs), sum(job.id in done for job in jobs),
                     sum(job.id in failed for job in jobs) if not retry_failed else 0,
                     sorted(line_errors + image_errors, key=lambda e: e.line))


def ledger_entry(job: BatchJob, outcome: Outcome) -> dict:
    entry = {"id": job.id, "line": job.line, "seed": job.fields["seed"], "params": job.recorded_fields,
             "worker": outcome.worker}
    if outcome.png is None:
        return entry | {"status": FAILED, "error": outcome.error}
    return entry | {"status": DONE, "file": job.file_name, "seconds": outcome.seconds, "infotext": outcome.infotext}


def run_batch(plan: BatchPlan, pool: Pool, on_result: Callable[[BatchSummary, Outcome], None] | None = None
              ) -> BatchSummary:
    """Run plan.todo on `pool`; each outcome is written before the next is taken (one writer)."""
    by_id = {job.id: job for job in plan.todo}
    summary = BatchSummary()
    started = time.monotonic()
    recorded: set[str] = set()

    def write(outcome: Outcome) -> None:
        if outcome.job_id in recorded:  # a job re-run after a worker's death that had in fact finished
            return
        job = by_id[outcome.job_id]
        if outcome.png is not None:
            atomic_write(plan.out_dir / job.file_name, lambda file: file.write(outcome.png))
        plan.ledger.record(ledger_entry(job, outcome))
        recorded.add(outcome.job_id)
        if outcome.png is not None:
            summary.done += 1
            summary.per_worker[outcome.worker] += 1
        else:
            summary.failed += 1
            summary.errors.append(f"line {job.line} (seed {job.fields['seed']}): {outcome.error}")
        summary.seconds = time.monotonic() - started
        if on_result:
            on_result(summary, outcome)

    try:
        if plan.todo:
            pool.run(plan.todo, write)
    finally:
        summary.seconds = time.monotonic() - started
        plan.ledger.close()
    return summary
