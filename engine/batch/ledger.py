"""The batch's ledger, `DIR/index.jsonl`: one JSON line per finished job (done or failed), appended by the one
writer, fsync'd line by line.

Why JSON Lines and not SQLite: a line is appended and made durable in one write and one fsync, and a power
loss can cost at most a torn last line, which `open` cuts off; it reads with grep, jq or pandas; and it needs
no file locking, which SQLite gets wrong on the network filesystems a cluster's output folder often lives on.
The order of writes keeps it true: a job's PNG is written atomically (temp file, fsync, rename) before its
line, so a line never names an image that is not there; an image without a line (a kill between the two) is
made again, atomically, on the next run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sdcpu.engine.errors import UserError

LEDGER_NAME = "index.jsonl"
LOCK_NAME = ".sdcpu-batch.lock"
DONE, FAILED = "done", "failed"


class Ledger:
    """The ledger of one output folder, held by one batch at a time (a lock file)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / LEDGER_NAME
        self._lock = None
        self._file = None

    def open(self) -> dict[str, str]:
        """Take the folder, cut a torn last line, remove temp files of a killed run; the last status per job id
        (a `done` whose PNG is missing is dropped: that job runs again). Only ids and statuses are kept, so a
        million-line ledger costs the driver about 100 MB, not its full entries."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the output folder {self.folder}: {exc.strerror or exc}") from None
        self._take_lock()
        for temp in self.folder.glob(".*.png.*.tmp"):
            temp.unlink(missing_ok=True)
        entries = self._read_and_repair()
        self._file = open(self.path, "a", encoding="utf-8")
        return {job_id: status for job_id, (status, file) in entries.items()
                if status != DONE or (self.folder / file).is_file()}

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        self._lock = open(self.folder / LOCK_NAME, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another sdcpu batch is writing into {self.folder}; wait for it or pick another --out") \
                from None

    def _read_and_repair(self) -> dict[str, tuple[str, str]]:
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):  # a torn line from a power loss: cut it, so the next line starts clean
            with open(self.path, "r+b") as file:
                file.truncate(keep)
                file.flush()
                os.fsync(file.fileno())
        entries = {}
        for number, line in enumerate(data[:keep].splitlines(), start=1):
            try:
                entry = json.loads(line)
                entries[entry["id"]] = (entry["status"], entry.get("file", ""))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{self.path} line {number} is not a ledger entry; move the file away to start "
                                "the batch afresh") from None
        return entries

    def record(self, entry: dict) -> None:
        """Append one entry and make it durable before returning."""
        entry = {**entry, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._file.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._lock is not None:
            self._lock.close()
