"""Shared by tests/test_batch.py and tests/test_batch_ray.py: `sdcpu batch` as a subprocess, its ledger, its
PNGs, and the processes it leaves (read from /proc, so no extra dependency)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sdcpu.engine.png_text import read_parameters

PROMPTS = (
    "two small yellow triangles on a white background",
    "one big red circle on a white background",
    "three blue squares on a white background",
    "a green triangle and a red square on a white background",
)
SEEDS = "1-10"
STEPS = "6"
JOB_COUNT = len(PROMPTS) * 10
SUMMARY = re.compile(r"^(\d+) made, (\d+) failed, (\d+) already done, (\d+) bad lines in ([\d.]+) s "
                     r"\(([\d.]+) images/min\); ledger: ", re.MULTILINE)
RUN_TIMEOUT = 240


def sdcpu_command(*args) -> list[str]:
    return [sys.executable, "-m", "sdcpu.engine.cli.app", *(str(a) for a in args)]


def batch_args(jobs: Path, out: Path, *extra) -> list:
    """The 40-job batch: 4 prompts x --seeds 1-10 at --steps 6 on the bundled model."""
    return ["batch", jobs, "--out", out, "--seeds", SEEDS, "--steps", STEPS, *extra]


def run_sdcpu(*args, cwd=None, timeout: float = RUN_TIMEOUT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(sdcpu_command(*args), check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=None if env is None else {**os.environ, **env})


def start_sdcpu(*args, log: Path, cwd=None) -> subprocess.Popen:
    """A batch in the background; stderr (progress, log lines) goes to `log`, stdout to `log` with .out for its
    suffix. Files, not pipes: a worker that outlives the batch would hold a pipe open and hang the reader."""
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        return subprocess.Popen(sdcpu_command(*args), stdout=out, stderr=err, text=True, cwd=cwd)


def stdout_of(log: Path) -> str:
    return log.with_suffix(".out").read_text()


def stop(proc: subprocess.Popen) -> None:
    """Make sure a background batch has ended (a test that failed halfway leaves none running)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def write_prompt_file(path: Path) -> Path:
    path.write_text("".join(f"{prompt}\n" for prompt in PROMPTS))
    return path


def summary(stdout: str) -> dict:
    match = SUMMARY.search(stdout)
    assert match, f"no summary line in:\n{stdout}"
    made, failed, already, bad = (int(match.group(i)) for i in range(1, 5))
    return {"made": made, "failed": failed, "already": already, "bad": bad, "seconds": float(match.group(5)),
            "per_minute": float(match.group(6))}


def ledger_lines(out: Path) -> list[str]:
    path = out / "index.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def ledger(out: Path) -> list[dict]:
    return [json.loads(line) for line in ledger_lines(out)]


def line_count(out: Path) -> int:
    try:
        return (out / "index.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_lines(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    """Poll the ledger until it has `count` lines; the process must still run (else the test cannot kill it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = line_count(out)
        if lines >= count:
            return lines
        assert proc.poll() is None, f"the batch ended (rc {proc.returncode}) with {lines} ledger lines"
        time.sleep(0.01)
    raise AssertionError(f"the ledger did not reach {count} lines in {timeout} s")


def wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"the batch ended (rc {proc.returncode}):\n{path.read_text()}"
        time.sleep(0.02)
    raise AssertionError(f"{text!r} did not appear in {path} in {timeout} s")


def png_bytes(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.png"))}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def parameters(path: Path) -> str | None:
    return read_parameters(path)


def done_by_id(entries: list[dict]) -> dict[str, dict]:
    return {entry["id"]: entry for entry in entries if entry["status"] == "done"}


def comparable(entry: dict) -> dict:
    """A ledger entry less what depends on who ran it and when."""
    return {key: value for key, value in entry.items() if key not in ("worker", "seconds", "finished")}


# --- processes, from /proc -------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every living process below `root`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in all_pids():
        stat = _stat(pid)
        if stat and stat[0] != "Z":
            children.setdefault(stat[1], []).append((pid, stat[2]))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def alive(processes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Those of `processes` still running (the same process: same pid and start time, not a zombie)."""
    living = []
    for pid, started in processes:
        stat = _stat(pid)
        if stat and stat[0] != "Z" and stat[2] == started:
            living.append((pid, started))
    return living


def wait_until_gone(processes: list[tuple[int, int]], timeout: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = alive(processes)
        if not left:
            return []
        time.sleep(0.1)
    return alive(processes)


def kill_all(processes: list[tuple[int, int]]) -> None:
    """Clean up what a test started and the code under test left behind (by pid, checked by start time)."""
    for pid, _ in alive(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until_gone(processes, 10)


def describe(processes: list[tuple[int, int]]) -> str:
    return "; ".join(f"{pid}: {cmdline(pid)[:120]}" for pid, _ in processes)


def is_spawned_worker(pid: int) -> bool:
    """A multiprocessing spawn child (a ProcessPoolExecutor worker), not its resource tracker."""
    return "spawn_main" in cmdline(pid)


def now_ticks() -> int:
    """The clock /proc/PID/stat's start times are in (ticks since boot)."""
    with open("/proc/uptime") as file:
        return int(float(file.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def started_since(ticks: int, words: tuple[str, ...]) -> list[tuple[int, int]]:
    """Living processes started at or after `ticks` (less a tick of slack) whose command line has one of `words`."""
    found = []
    for pid in all_pids():
        stat = _stat(pid)
        if stat and stat[0] != "Z" and stat[2] >= ticks - 1 and any(word in cmdline(pid) for word in words):
            found.append((pid, stat[2]))
    return found


def compute_rate(entries: list[dict]) -> float:
    """Images/min from the workers' own seconds per image (no start-up, no waiting): N x 60 / (busy s / workers)."""
    done = [e for e in entries if e["status"] == "done"]
    workers = len({e["worker"] for e in done})
    busy = sum(e["seconds"]["worker_total"] for e in done)
    return 60.0 * len(done) * workers / busy if busy else 0.0


def wait_collecting(proc: subprocess.Popen, timeout: float) -> list[tuple[int, int]]:
    """Wait for a background batch to end; every process seen below it meanwhile (pool restarts included)."""
    seen: dict[tuple[int, int], None] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"the batch did not end in {timeout} s")
        seen.update(dict.fromkeys(descendants(proc.pid)))
        time.sleep(0.1)
    return list(seen)


@dataclass(frozen=True)
class BatchRun:
    """A finished batch: its folder, output, ledger lines and PNG bytes (kept out of the repr)."""

    out: Path
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    lines: list[str] = field(repr=False)
    pngs: dict[str, bytes] = field(repr=False)

    @classmethod
    def of(cls, out: Path, result: subprocess.CompletedProcess) -> BatchRun:
        return cls(out, result.stdout, result.stderr, ledger_lines(out), png_bytes(out))


def png_differences(out: Path, expected: dict[str, bytes]) -> list[str]:
    """What differs between the PNGs in `out` and `expected` (names and bytes), as short lines."""
    got = png_bytes(out)
    lines = [f"missing {name}" for name in sorted(set(expected) - set(got))]
    lines += [f"extra {name}" for name in sorted(set(got) - set(expected))]
    lines += [f"other bytes {name}" for name in sorted(set(got) & set(expected)) if got[name] != expected[name]]
    return lines


FAULTS_SITECUSTOMIZE = """
# Written by tests/test_batch.py: fault injection for `sdcpu batch` and its spawned workers (this interpreter
# imports it at start because the test puts its folder first on PYTHONPATH).
import os

if os.environ.get("SDCPU_TEST_POISON"):
    import multiprocessing
    import time

    from sdcpu.engine.batch import ledger as _ledger
    from sdcpu.engine.batch import worker as _worker

    _run, _record = _worker.BatchWorker.run, _ledger.Ledger.record

    def run(self, job):
        # A job that takes its worker process down (a crash in a native library, the OOM killer).
        if job.fields["prompt"] == os.environ["SDCPU_TEST_POISON"] and multiprocessing.parent_process():
            os._exit(70)
        return _run(self, job)

    def record(self, entry):
        # A slow disk under the ledger (fsync on a network filesystem): the driver spends longer per result.
        time.sleep(float(os.environ.get("SDCPU_TEST_SLOW_LEDGER", "0")))
        return _record(self, entry)

    _worker.BatchWorker.run, _ledger.Ledger.record = run, record
"""


def fault_env(folder: Path, poison_prompt: str, slow_ledger_seconds: float) -> dict:
    """The environment that runs sdcpu with FAULTS_SITECUSTOMIZE (written into `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(FAULTS_SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SDCPU_TEST_POISON": poison_prompt, "SDCPU_TEST_SLOW_LEDGER": str(slow_ledger_seconds)}


def local_reference_run(work: Path, name: str, workers: int) -> "BatchRun":
    """The uninterrupted 40-job batch of `work`'s jobs on `workers` local workers, its images/min printed (-s)."""
    out = work / name
    result = run_sdcpu(*batch_args(work / "jobs.txt", out, "--workers", workers))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = summary(result.stdout)
    print(f"\n[images/min] local, {workers} worker(s), 40 jobs: {figures['per_minute']} ({figures['seconds']} s, "
          f"worker start-up and model loads included, interpreter start excluded); compute only: "
          f"{compute_rate(ledger(out)):.0f}")
    return BatchRun.of(out, result)
