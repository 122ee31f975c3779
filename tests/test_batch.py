"""`sdcpu batch` on local worker processes, as a user runs it: 40 jobs against `sdcpu generate`, re-runs, a
SIGKILL of the batch and of a worker, a torn ledger, JSON Lines jobs (image-to-image too), bad input, the lock.

Everything runs the real command in a subprocess on the bundled 64x64 model at 6 steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.batch_helpers import (
    JOB_COUNT,
    PROMPTS,
    RUN_TIMEOUT,
    STEPS,
    batch_args,
    descendants,
    describe,
    done_by_id,
    fault_env,
    is_spawned_worker,
    kill_all,
    ledger,
    ledger_lines,
    local_reference_run,
    parameters,
    pixels,
    png_differences,
    run_sdcpu,
    sdcpu_command,
    start_sdcpu,
    stdout_of,
    stop,
    summary,
    wait_collecting,
    wait_for_lines,
    wait_for_text,
    wait_until_gone,
    write_prompt_file,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")

LEDGER_KEYS = {"id", "line", "seed", "params", "worker", "status", "file", "seconds", "infotext", "finished"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch")
    write_prompt_file(root / "jobs.txt")
    return root


@pytest.fixture(scope="module")
def reference(work):
    """The uninterrupted 40-job batch on 2 workers."""
    return local_reference_run(work, "reference", 2)


@pytest.fixture(scope="module")
def generated(work) -> Path:
    """`sdcpu generate --seed 1 --batch 10` per prompt (all four at once): OUT-SEED.png."""
    out = work / "generate"
    out.mkdir()
    procs = [subprocess.Popen(sdcpu_command("generate", prompt, "--seed", 1, "--batch", 10, "--steps", STEPS,
                                            "--output", out / f"p{index}.png"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for index, prompt in enumerate(PROMPTS)]
    for proc in procs:
        text, _ = proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, text
    return out


def test_40_jobs_on_2_workers_equal_generate(reference, generated):
    out, stdout, lines, pngs = reference.out, reference.stdout, reference.lines, reference.pngs
    entries = [json.loads(line) for line in lines]
    assert len(entries) == JOB_COUNT and {e["status"] for e in entries} == {"done"}
    ids = [e["id"] for e in entries]
    assert len(set(ids)) == JOB_COUNT, "an id twice in the ledger"
    assert sorted(pngs) == sorted(f"{job_id}.png" for job_id in ids)
    assert summary(stdout)["made"] == JOB_COUNT
    workers = Counter(e["worker"] for e in entries)
    assert len(workers) == 2, workers
    for worker, count in workers.items():
        assert f"  {worker}: {count} images" in stdout
    pairs = set()
    for entry in entries:
        assert LEDGER_KEYS <= set(entry), entry
        assert entry["file"] == f"{entry['id']}.png"
        assert entry["params"]["seed"] == entry["seed"] and entry["params"]["steps"] == int(STEPS)
        assert isinstance(entry["seconds"], dict) and entry["seconds"]["worker_total"] > 0
        png = out / entry["file"]
        assert parameters(png) == entry["infotext"]
        prompt = PROMPTS.index(entry["params"]["prompt"])
        pairs.add((prompt, entry["seed"]))
        twin = generated / f"p{prompt}-{entry['seed']}.png"
        np.testing.assert_array_equal(pixels(png), pixels(twin), err_msg=f"{entry['file']} vs {twin.name}")
        assert parameters(twin) == entry["infotext"], "batch describes the image otherwise than generate"
    assert pairs == {(p, s) for p in range(len(PROMPTS)) for s in range(1, 11)}


def test_rerun_makes_nothing(work, reference):
    out, lines, pngs = reference.out, reference.lines, reference.pngs
    result = run_sdcpu(*batch_args(work / "jobs.txt", out, "--workers", 2))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = summary(result.stdout)
    assert (figures["made"], figures["failed"], figures["already"]) == (0, 0, JOB_COUNT)
    assert ledger_lines(out) == lines
    assert not png_differences(out, pngs)


def test_sigkill_of_the_batch_then_rerun(work, reference, tmp_path):
    """Kill -9 the driver halfway; its workers must end with it; the re-run completes to the same bytes."""
    out = tmp_path / "killed"
    proc = start_sdcpu(*batch_args(work / "jobs.txt", out, "--workers", 2), log=tmp_path / "first.log")
    children = []
    try:
        wait_for_lines(out, 15, proc)
        children = descendants(proc.pid)
        assert sum(is_spawned_worker(pid) for pid, _ in children) == 2, describe(children)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        lingering = wait_until_gone(children, timeout=5)
        lingering_text = describe(lingering)
    finally:
        stop(proc)
        kill_all(children)  # whatever the batch left: the re-run must not share the CPUs with it
    recorded = {entry["id"] for entry in ledger(out) if entry["status"] == "done"}
    assert 15 <= len(recorded) < JOB_COUNT

    result = run_sdcpu(*batch_args(work / "jobs.txt", out, "--workers", 2))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = summary(result.stdout)
    assert (figures["made"], figures["already"]) == (JOB_COUNT - len(recorded), len(recorded))
    entries = ledger(out)
    assert len(entries) == JOB_COUNT and len({e["id"] for e in entries}) == JOB_COUNT
    assert {e["status"] for e in entries} == {"done"}
    assert not list(out.glob(".*.tmp")), list(out.glob(".*"))
    assert not png_differences(out, reference.pngs)
    assert not lingering, f"processes of the SIGKILLed batch still ran 5 s after it: {lingering_text}"


def test_a_killed_worker_loses_nothing(work, reference, tmp_path):
    out = tmp_path / "worker-killed"
    log = tmp_path / "batch.log"
    proc = start_sdcpu(*batch_args(work / "jobs.txt", out, "--workers", 2), log=log)
    children = []
    try:
        wait_for_lines(out, 10, proc)
        children = descendants(proc.pid)
        workers = [pid for pid, _ in children if is_spawned_worker(pid)]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        children += wait_collecting(proc, RUN_TIMEOUT)
        left = wait_until_gone(children, timeout=5)
        text = describe(left)
    finally:
        stop(proc)
        kill_all(children)
    stdout, stderr = stdout_of(log), log.read_text()
    assert proc.returncode == 0, stdout + stderr
    assert "a worker process died" in stderr
    entries = ledger(out)
    assert len(entries) == JOB_COUNT and len({e["id"] for e in entries}) == JOB_COUNT
    assert {e["status"] for e in entries} == {"done"}
    assert summary(stdout)["made"] == JOB_COUNT
    assert not png_differences(out, reference.pngs)
    assert not left, f"still running 5 s after the batch ended: {text}"


def test_a_job_that_kills_its_worker_fails_alone_and_loses_no_other_job(tmp_path):
    """Fault injection: the job "poison" kills its worker process every time; the ledger's disk is slow (50 ms a
    line). The poison job must end as one failed line after 3 tries, and every other job be done: none lost."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "poison", "seed": 1}) + "\n" + "".join(f"{p}\n" for p in PROMPTS[:3]))
    out = tmp_path / "out"
    env = fault_env(tmp_path / "faults", "poison", 0.05)
    result = run_sdcpu("batch", jobs, "--out", out, "--seeds", "1-3", "--steps", STEPS, "--workers", 2, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    assert "a worker process died" in result.stderr
    entries = ledger(out)
    poison = [e for e in entries if e["params"]["prompt"] == "poison"]
    assert len(poison) == 1 and poison[0]["status"] == "failed", poison
    assert "worker process died" in poison[0]["error"] and "3 times" in poison[0]["error"]
    done = sorted((e["params"]["prompt"], e["seed"]) for e in entries if e["status"] == "done")
    expected = sorted((prompt, seed) for prompt in PROMPTS[:3] for seed in (1, 2, 3))
    assert done == expected, f"jobs neither done nor failed: {sorted(set(expected) - set(done))}"
    assert len(entries) == 10 and len({e["id"] for e in entries}) == 10
    assert result.returncode == 1, result.stdout + result.stderr
    figures = summary(result.stdout)
    assert (figures["made"], figures["failed"]) == (9, 1), result.stdout


@pytest.mark.parametrize("tear", ["half a line appended", "last line cut in half"])
def test_torn_ledger_is_repaired(work, reference, tmp_path, tear):
    lines = reference.lines
    out = tmp_path / "torn"
    shutil.copytree(reference.out, out)
    path = out / "index.jsonl"
    if tear == "half a line appended":
        with open(path, "a", encoding="utf-8") as file:
            file.write(lines[20][:len(lines[20]) // 2])
        lost = 0
    else:  # a power loss while the last line was written: its PNG is there, its line is not
        text = "".join(line + "\n" for line in lines[:-1]) + lines[-1][:len(lines[-1]) // 2]
        path.write_text(text, encoding="utf-8")
        lost = 1
    result = run_sdcpu(*batch_args(work / "jobs.txt", out, "--workers", 2))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in result.stderr.lower() and "Traceback" not in result.stderr
    figures = summary(result.stdout)
    assert (figures["made"], figures["failed"], figures["already"]) == (lost, 0, JOB_COUNT - lost)
    repaired = ledger_lines(out)
    assert len(repaired) == JOB_COUNT and path.read_bytes().endswith(b"\n")
    assert repaired[:JOB_COUNT - lost] == lines[:JOB_COUNT - lost]
    assert {json.loads(line)["id"] for line in repaired} == {json.loads(line)["id"] for line in lines}
    assert not png_differences(out, reference.pngs)


def test_second_batch_on_the_same_folder_is_refused(work, tmp_path):
    """While one batch holds DIR, another says so in one line; SIGTERM then stops the first and its workers."""
    out = tmp_path / "locked"
    log = tmp_path / "first.log"
    args = batch_args(work / "jobs.txt", out, "--workers", 2)
    proc = start_sdcpu(*args, log=log)
    children = []
    try:
        wait_for_text(log, "to run (", proc)  # printed after the ledger (and its lock) is taken
        second = run_sdcpu(*args)
        assert proc.poll() is None, "the first batch ended before the second was tried"
        assert second.returncode == 2, second.stdout + second.stderr
        output = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
        assert len(output) == 1 and output[0].startswith("error: another sdcpu batch is writing into"), output
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, log.read_text()
        left = wait_until_gone(children, timeout=5)
        assert not left, f"still running 5 s after SIGTERM: {describe(left)}"
    finally:
        stop(proc)
        kill_all(children)
    assert "Traceback" not in log.read_text()


# --- JSON Lines jobs and bad input ---------------------------------------------------------------------------

INIT_STRENGTH = 0.5
JSON_JOBS = [
    {"prompt": PROMPTS[0], "seed": 7, "steps": 4},                              # line 1
    {"prompt": PROMPTS[1], "init_image": "init.png", "strength": INIT_STRENGTH},  # line 2
    '{"prompt": "broken", "seed": 3',                                           # line 3: malformed
    {"prompt": PROMPTS[2], "colour": "red"},                                    # line 4: unknown field
    {"prompt": PROMPTS[2], "width": 63},                                        # line 5: the model refuses
    {"prompt": PROMPTS[3], "scheduler": "nope"},                                # line 6: the model refuses
]


def _init_image(path: Path) -> None:
    """An input picture for image-to-image: bands and a square (drawn here, so nothing is hard-coded)."""
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([(x * 4) % 256, (y * 4) % 256, np.full_like(x, 200)], axis=-1).astype(np.uint8)
    rgb[20:44, 20:44] = (250, 240, 30)
    Image.fromarray(rgb).save(path)


@pytest.fixture(scope="module")
def json_batch(tmp_path_factory):
    """The JSON Lines batch, run from another folder than the JOBS file's (init.png is relative to that file)."""
    root = tmp_path_factory.mktemp("json-batch")
    (root / "jobs").mkdir()
    _init_image(root / "jobs" / "init.png")
    jobs = root / "jobs" / "jobs.jsonl"
    jobs.write_text("".join((job if isinstance(job, str) else json.dumps(job)) + "\n" for job in JSON_JOBS))
    out = root / "out"
    result = run_sdcpu("batch", jobs, "--out", out, "--steps", STEPS, cwd=root)
    return root, jobs, out, result, ledger(out)


def _by_line(entries: list[dict]) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    for entry in entries:
        found.setdefault(entry["line"], []).append(entry)
    return found


def test_json_jobs_equal_generate(json_batch):
    root, _, out, result, entries = json_batch
    by_line = _by_line(entries)
    assert sorted(by_line) == [1, 2, 5, 6], result.stderr
    (plain,), (img2img,) = by_line[1], by_line[2]
    assert plain["status"] == img2img["status"] == "done", result.stderr
    assert (plain["seed"], plain["params"]["steps"]) == (7, 4)
    assert img2img["params"]["strength"] == INIT_STRENGTH and "init_image_sha256" in img2img["params"]
    commands = [
        ("generate", PROMPTS[0], "--seed", 7, "--steps", 4, "--output", root / "plain.png"),
        ("generate", PROMPTS[1], "--seed", img2img["seed"], "--steps", STEPS, "--init-image",
         root / "jobs" / "init.png", "--strength", INIT_STRENGTH, "--output", root / "img2img.png"),
    ]
    procs = [subprocess.Popen(sdcpu_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for args in commands]
    for proc in procs:
        text, _ = proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, text
    for entry, twin in ((plain, root / "plain.png"), (img2img, root / "img2img.png")):
        png = out / entry["file"]
        assert parameters(png) == entry["infotext"] == parameters(twin)
        np.testing.assert_array_equal(pixels(png), pixels(twin))
    assert f"Denoising strength: {INIT_STRENGTH:g}" in img2img["infotext"]
    assert str((root / "jobs" / "init.png").resolve()) in img2img["infotext"]


def test_bad_lines_are_reported_and_the_rest_runs(json_batch):
    _, jobs, _, result, entries = json_batch
    assert "Traceback" not in result.stderr
    reported = [line for line in result.stderr.splitlines() if line.startswith(f"{jobs}: line ")]
    assert len(reported) == 2, result.stderr
    assert reported[0].startswith(f"{jobs}: line 3: malformed JSON") and reported[0].endswith("(skipped)")
    assert reported[1].startswith(f"{jobs}: line 4: unknown field 'colour'")
    assert summary(result.stdout)["bad"] == 2
    assert sorted(_by_line(entries)) == [1, 2, 5, 6]


def test_jobs_the_model_cannot_run_fail_in_the_ledger(json_batch):
    _, _, out, result, entries = json_batch
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    figures = summary(result.stdout)
    assert (figures["made"], figures["failed"]) == (2, 2)
    by_line = _by_line(entries)
    (width,), (scheduler,) = by_line[5], by_line[6]
    expected = {5: (width, "63"), 6: (scheduler, "unknown sampler 'nope'")}
    for line, (entry, words) in expected.items():
        assert entry["status"] == "failed" and "file" not in entry
        assert words in entry["error"] and "\n" not in entry["error"]
        assert not (out / f"{entry['id']}.png").exists()
        named = [text for text in result.stderr.splitlines() if text.startswith(f"  failed: line {line} ")]
        assert len(named) == 1 and entry["error"] in named[0], result.stderr
    assert "multiple of 8" in width["error"]


def test_retry_failed_reruns_only_the_failures(json_batch):
    root, jobs, out, _, entries = json_batch
    before = ledger_lines(out)
    skipped = run_sdcpu("batch", jobs, "--out", out, "--steps", STEPS, cwd=root)
    assert "Traceback" not in skipped.stderr
    assert ledger_lines(out) == before, "failed jobs re-ran without --retry-failed"
    assert "2 jobs failed in an earlier run; --retry-failed runs them again" in skipped.stderr
    assert summary(skipped.stdout)["made"] == 0

    retried = run_sdcpu("batch", jobs, "--out", out, "--steps", STEPS, "--retry-failed", cwd=root)
    assert retried.returncode == 1, retried.stdout + retried.stderr
    figures = summary(retried.stdout)
    assert (figures["made"], figures["failed"], figures["already"]) == (0, 2, 2)
    after = ledger_lines(out)
    assert after[:len(before)] == before
    new = [json.loads(line) for line in after[len(before):]]
    assert sorted(e["line"] for e in new) == [5, 6] and {e["status"] for e in new} == {"failed"}
    old_failed = {e["id"]: e["error"] for e in entries if e["status"] == "failed"}
    assert {e["id"]: e["error"] for e in new} == old_failed
    assert done_by_id(ledger(out)) == done_by_id(entries)


@pytest.mark.parametrize("args,expected", [
    (("batch", "missing.txt", "--out", "out"), "error: no such jobs file: missing.txt"),
    (("batch", "jobs.txt", "--out", "out", "--workers", 0), "error: --workers must be at least 1 (got 0)"),
    (("batch", "jobs.txt", "--out", "out", "--seeds", "5-1"), "error: --seeds: '5-1' is not a range"),
])
def test_refused_command_lines(work, tmp_path, args, expected):
    shutil.copy(work / "jobs.txt", tmp_path / "jobs.txt")
    result = run_sdcpu(*args, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    output = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(output) == 1 and output[0].startswith(expected), output
    assert not (tmp_path / "out").exists()
