"""A real `sdcpu serve` process on a free loopback port, for the server's tests; it stops by itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LIFETIME_SECONDS = 900
"""--stop-after: a server a crashed test run leaves behind stops by itself."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """The server process's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def get(self, path: str, auth: str | None = None) -> tuple[int, dict | list | None]:
        return request(self.url + path, auth=auth)

    def post(self, path: str, body, auth: str | None = None, timeout: float = 120) -> tuple[int, dict | list | None]:
        return request(self.url + path, body, auth=auth, timeout=timeout)


def request(url: str, body=None, auth: str | None = None, timeout: float = 120, raw: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict | list | None]:
    """(status, JSON answer) of one request; `raw` sends those bytes as the body as they are."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    sent = {"content-type": "application/json"} | (headers or {})
    if auth:
        import base64

        sent["authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=data, headers=sent, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload)
        except ValueError:
            return exc.code, {"raw": payload.decode(errors="replace")}


@contextmanager
def live_server(tmp_path: Path, *args: str, env: dict | None = None, ready_timeout: float = 120):
    """Start `sdcpu serve ARGS` on a free port; yield once the bundled model is loaded; stop it after."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "sdcpu.engine.cli.app", "serve", "--port", str(port),
               "--stop-after", str(LIFETIME_SECONDS), *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                   env=os.environ | (env or {}))
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ready(server, ready_timeout, auth=_auth_in(args))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _auth_in(args) -> str | None:
    args = list(args)
    return args[args.index("--api-auth") + 1].split(",")[0] if "--api-auth" in args else None


def _wait_ready(server: LiveServer, timeout: float, auth: str | None) -> None:
    """Until the model loaded at start is in: /progress idle (the load runs as the first queued job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"sdcpu serve exited with {server.process.returncode}:\n{server.log()}")
        try:
            status, answer = server.get("/sdapi/v1/progress", auth=auth)
            if status == 200 and answer["state"]["job_count"] == 0 and answer["queue_length"] == 0:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"sdcpu serve did not get ready in {timeout} s:\n{server.log()}")
