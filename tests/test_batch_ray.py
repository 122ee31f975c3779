"""`sdcpu batch --ray`: a real two-node local Ray cluster (one CPU each), the same 40 jobs as the local mode,
an actor SIGKILLed mid-run, an address nothing listens on; the cluster leaves nothing running."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

import pytest

from tests.batch_helpers import (
    JOB_COUNT,
    RUN_TIMEOUT,
    batch_args,
    cmdline,
    comparable,
    compute_rate,
    descendants,
    describe,
    kill_all,
    ledger,
    ledger_lines,
    local_reference_run,
    now_ticks,
    png_bytes,
    png_differences,
    run_sdcpu,
    start_sdcpu,
    started_since,
    stdout_of,
    stop,
    summary,
    wait_for_lines,
    wait_until_gone,
    write_prompt_file,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
RAY_WORDS = ("ray::", "/site-packages/ray/", "ray-dashboard", "raylet", "gcs_server")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-ray")
    write_prompt_file(root / "jobs.txt")
    return root


@pytest.fixture(scope="module")
def cluster(request):
    """Head and one more node, one CPU each; shut down at the end, and then no Ray process may be left."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    started = now_ticks()
    before = set(descendants(os.getpid()))
    ray_cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})

    def shut_down():
        ours = [p for p in descendants(os.getpid()) if p not in before]
        ours += [p for p in started_since(started, RAY_WORDS) if p not in ours]
        ray_cluster.shutdown()
        left = wait_until_gone(ours, timeout=20)
        text = describe(left)
        kill_all(left)
        assert not left, f"still running 20 s after cluster.shutdown(): {text}"

    request.addfinalizer(shut_down)
    ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    return ray_cluster


@pytest.fixture(scope="module")
def local_reference(work):
    """The 40 jobs on one local worker: what Ray must reproduce."""
    return local_reference_run(work, "local", 1)


def _assert_same_as_local(out, reference) -> None:
    entries = [json.loads(line) for line in reference.lines]
    got = ledger(out)
    assert len(got) == JOB_COUNT and len({e["id"] for e in got}) == JOB_COUNT, "an id twice in the ledger"
    assert {e["id"]: comparable(e) for e in got} == {e["id"]: comparable(e) for e in entries}
    assert not png_differences(out, reference.pngs)


@pytest.fixture(scope="module")
def ray_run(work, cluster):
    out = work / "ray"
    began = time.monotonic()
    result = run_sdcpu(*batch_args(work / "jobs.txt", out, "--ray", cluster.address))
    wall = time.monotonic() - began
    assert result.returncode == 0, result.stdout + result.stderr
    figures = summary(result.stdout)
    print(f"\n[images/min] Ray, 2 actors on 2 one-CPU nodes, 40 jobs: {figures['per_minute']} "
          f"({figures['seconds']} s, actor start-up and model loads included, ray.init and interpreter start "
          f"excluded; the whole command took {wall:.1f} s); compute only: {compute_rate(ledger(out)):.0f}")
    return out, result


def test_ray_two_nodes_equal_local_mode(ray_run, local_reference):
    out, result = ray_run
    assert "Ray: 2 actors, 1 thread(s) each, on 2 CPUs" in result.stderr
    figures = summary(result.stdout)
    assert (figures["made"], figures["failed"]) == (JOB_COUNT, 0)
    assert len({e["worker"] for e in ledger(out)}) == 2
    _assert_same_as_local(out, local_reference)


def test_ray_rerun_makes_nothing(work, cluster, ray_run):
    out, _ = ray_run
    lines, pngs = ledger_lines(out), png_bytes(out)
    result = run_sdcpu(*batch_args(work / "jobs.txt", out, "--ray", cluster.address))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = summary(result.stdout)
    assert (figures["made"], figures["failed"], figures["already"]) == (0, 0, JOB_COUNT)
    assert ledger_lines(out) == lines
    assert not png_differences(out, pngs)


def test_sigkill_of_the_ray_driver_then_resume(work, cluster, local_reference, tmp_path):
    """The actors of a SIGKILLed driver go with it (Ray's owner rule); the re-run completes to the same bytes."""
    out = tmp_path / "driver-killed"
    ticks = now_ticks()
    proc = start_sdcpu(*batch_args(work / "jobs.txt", out, "--ray", cluster.address), log=tmp_path / "batch.log")
    actors = []
    try:
        wait_for_lines(out, 15, proc)
        actors = started_since(ticks, ("BatchWorker",))
        assert len(actors) == 2, describe(actors)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        left = wait_until_gone(actors, timeout=10)
        text = describe(left)
    finally:
        stop(proc)
        kill_all(actors)
    recorded = len({e["id"] for e in ledger(out)})
    result = run_sdcpu(*batch_args(work / "jobs.txt", out, "--ray", cluster.address))
    assert result.returncode == 0, result.stdout + result.stderr
    figures = summary(result.stdout)
    assert (figures["made"], figures["already"]) == (JOB_COUNT - recorded, recorded)
    assert not list(out.glob(".*.tmp"))
    _assert_same_as_local(out, local_reference)
    assert not left, f"actors still running 10 s after their driver was SIGKILLed: {text}"


def _actors_since(ticks: int) -> list[int]:
    return [pid for pid, _ in started_since(ticks, ("BatchWorker",)) if cmdline(pid).startswith("ray::")]


def test_a_killed_actor_loses_nothing(work, cluster, local_reference, tmp_path):
    out = tmp_path / "actor-killed"
    log = tmp_path / "batch.log"
    ticks = now_ticks()
    proc = start_sdcpu(*batch_args(work / "jobs.txt", out, "--ray", cluster.address), log=log)
    try:
        wait_for_lines(out, 10, proc)
        actors = _actors_since(ticks)
        assert len(actors) == 2, [cmdline(pid) for pid in actors]
        os.kill(actors[0], signal.SIGKILL)
        proc.wait(timeout=RUN_TIMEOUT)
    finally:
        stop(proc)
    stdout, stderr = stdout_of(log), log.read_text()
    assert proc.returncode == 0, stdout + stderr
    assert "a Ray actor died" in stderr
    assert summary(stdout)["made"] == JOB_COUNT
    assert {e["status"] for e in ledger(out)} == {"done"}
    _assert_same_as_local(out, local_reference)


def test_ray_address_nobody_listens_on(work, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    began = time.monotonic()
    result = run_sdcpu(*batch_args(work / "jobs.txt", tmp_path / "out", "--ray", f"127.0.0.1:{port}"), timeout=60)
    seconds = time.monotonic() - began
    assert result.returncode == 2, result.stdout + result.stderr
    output = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(output) == 1 and output[0].startswith(f"error: cannot reach a Ray cluster at 127.0.0.1:{port}"), output
    assert seconds < 10, f"took {seconds:.1f} s"
    assert not (tmp_path / "out").exists()

