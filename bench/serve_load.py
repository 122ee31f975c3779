"""Load driver for `sdcpu serve`: N client threads, each sending M txt2img requests in a row.

As a script it starts its own server on the bundled model (tests/live_server.py) unless --url is given:

    python bench/serve_load.py --clients 8 --requests 50 [--steps 8] [--url URL [--pid PID]] [--json OUT]

As a module: `from bench.serve_load import run_load` (tests/test_server_load.py).

Client c sends requests j = 0..M-1, one after another on its own keep-alive connection: seed 1000*c + j, prompt
PROMPTS[c % len(PROMPTS)], the given steps, sampler, size and CFG unset (the model's defaults, as `sdcpu
generate`), batch 1. Every request's status, latency, returned seed and PNG are recorded; a request with no HTTP
answer at all (connection refused or reset, timeout) counts as lost, one answered with anything but a 200 and a
well-formed A1111 answer counts as failed. The server's resident memory (VmRSS of its pid) is read at the start,
after given numbers of answers (by default the first quarter) and at the end.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PROMPTS = (
    "two small yellow triangles on a white background",
    "a red circle on a black background",
    "three blue squares on a white background",
    "a green triangle and a yellow circle on a grey background",
)
SEED_STRIDE = 1000
"""Client c's seeds start at SEED_STRIDE * c (the brief's seed = 1000*c + j)."""
DEFAULT_STEPS = 8
REQUEST_TIMEOUT_S = 300.0
BUNDLED_ARGS: tuple[str, ...] = ()
"""`sdcpu serve` with no --model serves the bundled sdcpu-shapes first."""


def client_seed(client: int, index: int) -> int:
    return SEED_STRIDE * client + index


def client_prompt(client: int, prompts: Sequence[str] = PROMPTS) -> str:
    return prompts[client % len(prompts)]


def txt2img_body(client: int, index: int, steps: int, prompts: Sequence[str] = PROMPTS) -> dict:
    """Client c's request j: its own seed and prompt; everything else the model's default, one image."""
    return {"prompt": client_prompt(client, prompts), "seed": client_seed(client, index), "steps": steps,
            "batch_size": 1, "n_iter": 1}


@dataclass
class Outcome:
    client: int
    index: int
    seed: int
    prompt: str
    status: int | None = None
    """HTTP status; None: lost (no answer)."""
    latency_s: float = 0.0
    finished_s: float = 0.0
    """Seconds from the load's start to this answer (or loss)."""
    seed_returned: int | None = None
    png: bytes | None = field(default=None, repr=False)
    infotext: str = ""
    error: str = ""

    @property
    def lost(self) -> bool:
        return self.status is None

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.png is not None


@dataclass
class LoadReport:
    clients: int
    requests_per_client: int
    steps: int
    outcomes: list[Outcome]
    wall_s: float
    rss_bytes: dict[str, int]
    """'start', 'after N' (N answers in), 'end'; empty without a server pid."""
    cpu: dict

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.lost]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.lost and not o.ok]

    def latency(self, fraction: float) -> float:
        """The latency of answered-ok requests at this quantile (nearest rank); 0 with none."""
        values = sorted(o.latency_s for o in self.ok)
        if not values:
            return 0.0
        rank = max(1, min(len(values), math.ceil(fraction * len(values) - 1e-9)))
        return values[rank - 1]

    @property
    def images_per_s(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s > 0 else 0.0

    def precision(self) -> str:
        """The server's inference precision as its PNGs record it ('' if none says)."""
        for outcome in self.ok:
            found = re.search(r"Inference precision: ([\w-]+)", outcome.infotext)
            if found:
                return found.group(1)
        return ""

    def figures(self) -> dict:
        return {
            "clients": self.clients, "requests_per_client": self.requests_per_client, "steps": self.steps,
            "requests": len(self.outcomes), "ok": len(self.ok), "failed": len(self.failed), "lost": len(self.lost),
            "latency_s": {"p50": self.latency(0.50), "p95": self.latency(0.95),
                          "max": max((o.latency_s for o in self.ok), default=0.0)},
            "wall_s": self.wall_s, "images_per_s": self.images_per_s, "images_per_min": 60 * self.images_per_s,
            "rss_bytes": self.rss_bytes, "cpu": self.cpu, "inference_precision": self.precision(),
            "errors": [{"client": o.client, "index": o.index, "status": o.status, "error": o.error}
                       for o in self.outcomes if not o.ok][:20],
        }

    def markdown(self) -> str:
        f = self.figures()
        rss = ", ".join(f"{name} {value / 2**20:.1f} MiB" for name, value in self.rss_bytes.items()) or "n/a"
        rows = [
            ("clients x requests", (f"{self.clients} x {self.requests_per_client} ({f['requests']}), "
                                    f"{self.steps} steps, batch 1, the model's default sampler and size")),
            ("ok / failed / lost", f"{f['ok']} / {f['failed']} / {f['lost']}"),
            ("latency p50 / p95 / max", "{p50:.3f} / {p95:.3f} / {max:.3f} s".format(**f["latency_s"])),
            ("throughput", (f"{f['images_per_s']:.2f} images/s ({f['images_per_min']:.0f} images/min) "
                            f"over {f['wall_s']:.1f} s")),
            ("server RSS", rss),
            ("inference precision", f["inference_precision"] or "?"),
            ("CPU", (f"{self.cpu.get('model', '?')}, {self.cpu.get('cores', '?')} CPUs, amx: "
                     f"{' '.join(self.cpu.get('amx') or []) or 'no'}, avx512_bf16: "
                     f"{'yes' if self.cpu.get('avx512_bf16') else 'no'}")),
        ]
        lines = ["| figure | value |", "| --- | --- |"] + [f"| {name} | {value} |" for name, value in rows]
        return "\n".join(lines)


def cpu_info() -> dict:
    """lscpu's model name, the CPU count, and whether the flags have AMX or AVX512-BF16."""
    model, flags, count = "", set(), None
    try:
        text = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and not model:
                model = value.strip()
            elif key.strip() == "Flags":
                flags |= set(value.split())
            elif key.strip() == "CPU(s)" and count is None:
                count = int(value.strip()) if value.strip().isdigit() else None
    except (OSError, subprocess.SubprocessError):
        pass
    if not flags:  # lscpu missing: the kernel's list
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags |= set(value.split())
                elif key.strip() == "model name" and not model:
                    model = value.strip()
        except OSError:
            pass
    return {"model": model, "cores": count, "amx": sorted(f for f in flags if f.startswith("amx")),
            "avx512_bf16": "avx512_bf16" in flags}


def rss_of(pid: int) -> int:
    """VmRSS of a process, in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class _Client:
    """One keep-alive HTTP connection; reconnects after a broken one."""

    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self.connection.request("POST", self.prefix + path, json.dumps(body).encode(),
                                    {"content-type": "application/json"})
            answer = self.connection.getresponse()
            return answer.status, answer.read()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _read_answer(outcome: Outcome, status: int, payload: bytes) -> None:
    outcome.status = status
    try:
        answer = json.loads(payload)
    except ValueError:
        outcome.error = f"not JSON: {payload[:200]!r}"
        return
    if status != 200:
        outcome.error = str(answer.get("detail", answer) if isinstance(answer, dict) else answer)[:500]
        return
    try:
        images = answer["images"]
        info = json.loads(answer["info"])
        outcome.seed_returned = int(info["seed"])
        outcome.infotext = (info.get("infotexts") or [""])[0]
        if len(images) != 1:
            outcome.error = f"{len(images)} images in the answer, not 1"
            return
        outcome.png = base64.b64decode(images[0], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        outcome.error = f"malformed answer: {type(exc).__name__}: {exc}"


def run_load(url: str, clients: int = 8, requests: int = 50, steps: int = DEFAULT_STEPS,
             server_pid: int | None = None, rss_after: Sequence[int] | None = None,
             prompts: Sequence[str] = PROMPTS, timeout: float = REQUEST_TIMEOUT_S,
             on_answer: Callable[[Outcome], None] | None = None) -> LoadReport:
    """Run the load against `url`; `rss_after` (default: the first quarter) are answer counts at which the server's
    RSS is read (needs `server_pid`)."""
    total = clients * requests
    marks = sorted(set(rss_after if rss_after is not None else [max(1, total // 4)]))
    rss: dict[str, int] = {}
    lock = threading.Lock()
    done = [0]
    outcomes: list[list[Outcome]] = [[] for _ in range(clients)]
    if server_pid is not None:
        rss["start"] = rss_of(server_pid)
    start_gate = threading.Barrier(clients + 1)
    started = [0.0]

    def answered(outcome: Outcome) -> None:
        with lock:
            done[0] += 1
            if server_pid is not None and done[0] in marks:
                rss[f"after {done[0]}"] = rss_of(server_pid)
        if on_answer is not None:
            on_answer(outcome)

    def client(c: int) -> None:
        connection = _Client(url, timeout)
        start_gate.wait()
        try:
            for j in range(requests):
                body = txt2img_body(c, j, steps, prompts)
                outcome = Outcome(c, j, body["seed"], body["prompt"])
                sent = time.perf_counter()
                try:
                    status, payload = connection.post("/sdapi/v1/txt2img", body)
                except (OSError, http.client.HTTPException) as exc:
                    outcome.error = f"no answer: {type(exc).__name__}: {exc}"
                else:
                    _read_answer(outcome, status, payload)
                now = time.perf_counter()
                outcome.latency_s, outcome.finished_s = now - sent, now - started[0]
                outcomes[c].append(outcome)
                answered(outcome)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(c,), name=f"load-client-{c}", daemon=True)
               for c in range(clients)]
    for thread in threads:
        thread.start()
    started[0] = time.perf_counter()
    start_gate.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started[0]
    if server_pid is not None:
        rss["end"] = rss_of(server_pid)
    flat = [o for per_client in outcomes for o in per_client]
    return LoadReport(clients, requests, steps, flat, wall, rss, cpu_info())


@contextmanager
def own_server(*args: str, log_dir: Path | None = None) -> Iterator[tuple[str, int]]:
    """A `sdcpu serve` subprocess on the bundled model (tests/live_server.py): yields (url, pid)."""
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.live_server import live_server

    with tempfile.TemporaryDirectory(prefix="sdcpu-load-") as scratch, \
            live_server(log_dir or Path(scratch), *BUNDLED_ARGS, *args) as server:
        yield server.url, server.process.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="requests per client, sent one after another")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--url", help="a running server (default: start one on the bundled model)")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, to read its RSS")
    parser.add_argument("--inference-precision", help="for the server started here (default: its auto)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be at least 1")

    def run(url: str, pid: int | None) -> LoadReport:
        return run_load(url, args.clients, args.requests, args.steps, server_pid=pid)

    if args.url:
        report = run(args.url, args.pid)
    else:
        extra = ("--inference-precision", args.inference_precision) if args.inference_precision else ()
        with own_server(*extra) as (url, pid):
            report = run(url, pid)
    print(report.markdown())
    if args.json:
        args.json.write_text(json.dumps(report.figures(), indent=2) + "\n")
    return 0 if not report.failed and not report.lost else 1


if __name__ == "__main__":
    sys.exit(main())
