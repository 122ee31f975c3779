"""The compile cache: one sealed folder per OpenVINO build, so no build is ever handed to the wrong request.

OpenVINO's own CACHE_DIR keys a blob on the model file and a few properties; on a CPU with AMX it gave
the f32 build to a bf16 request (NaN images), it does not notice new weights in `model.bin`, and for a
reshaped (static) model it must read and hash the whole IR before it can look (a warm SD1.5 UNet load
then maps 3.4 GB of IR beside the blob). So sdcpu keeps its own: each build gets a folder named by a
hash of everything that shapes it (the OpenVINO version, the device, the CPU: model, flags, usable
cores; every compile property we set; the static input shapes; the identity of each graph file: path,
size, mtime, ctime, inode, which any write through the file system changes), holding the compiled
model as OpenVINO exports it (`model.blob`). A warm load imports that blob, memory-mapped, and never
opens the IR. The folder is sealed with a record of the blob's identity and a sampled CRC; a folder
whose record is missing, unreadable or does not match its blobs (truncated, overwritten, half-written
by a killed process), or whose blob OpenVINO refuses, is emptied with a note and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from sdcpu.engine.atomic import atomic_write

LAYOUT_VERSION = 2
RECORD_NAME = "build.json"
BLOB_NAME = "model.blob"
SAMPLE_BLOCKS = 16
SAMPLE_BYTES = 64 * 1024
Log = Callable[[str], None]


def file_identity(path: Path) -> dict:
    """What changes whenever the file's bytes are replaced or written: size, mtime, ctime, inode."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def sampled_crc(path: Path, size: int) -> int:
    """CRC32 of the head, the tail and SAMPLE_BLOCKS blocks spread between: cheap on multi-GB blobs."""
    crc = 0
    with open(path, "rb") as file:
        for offset in sorted({0, max(size - SAMPLE_BYTES, 0),
                              *(size * i // (SAMPLE_BLOCKS + 1) for i in range(1, SAMPLE_BLOCKS + 1))}):
            file.seek(offset)
            crc = zlib.crc32(file.read(SAMPLE_BYTES), crc)
    return crc


@lru_cache(maxsize=1)
def cpu_identity() -> dict:
    """The CPU a build was compiled for: its model name and ISA flags, and the cores this process may use."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags") and key not in fields:
                fields[key] = value.strip()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "flags": hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:16], "cores": cores}


def build_parts(graph_files: list[Path], properties: dict, shapes: dict | None, device: str = "CPU") -> dict:
    """Everything that determines a compiled build; two requests share a build only if all of it is equal."""
    import openvino as ov

    return {
        "layout": LAYOUT_VERSION,
        "openvino": ov.get_version(),
        "device": device,
        "cpu": cpu_identity(),
        "properties": {key: str(value) for key, value in sorted(properties.items())},
        "shapes": {key: list(value) for key, value in sorted((shapes or {}).items())},
        "graph": [{"file": str(path.resolve()), **file_identity(path)} for path in graph_files],
    }


def build_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class BuildFolder:
    """The cache folder of one build: checked before OpenVINO may import from it, sealed after it wrote."""

    root: Path
    parts: dict
    graph_name: str

    @property
    def path(self) -> Path:
        return self.root / build_key(self.parts)

    def blobs(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.is_file() and p.name != RECORD_NAME)

    def problem(self) -> str | None:
        """Why this folder's blobs must not be imported, or None when it is empty or sealed and intact."""
        if not self.path.is_dir():
            return None
        blobs = self.blobs()
        record_path = self.path / RECORD_NAME
        if not record_path.exists():
            return "an unsealed build (an interrupted compile?)" if blobs else None
        try:
            record = json.loads(record_path.read_text())
            recorded = {entry["name"]: entry for entry in record["blobs"]}
            if record["parts"] != self.parts:
                return "a record made for another build"
        except (OSError, ValueError, KeyError, TypeError):
            return "an unreadable build record"
        if {p.name for p in blobs} != set(recorded):
            return "blobs added or removed after it was sealed"
        for blob in blobs:
            entry = recorded[blob.name]
            identity = file_identity(blob)
            if any(identity[key] != entry.get(key) for key in identity):
                return f"{blob.name} changed after it was written"
            if sampled_crc(blob, identity["size"]) != entry.get("crc"):
                return f"{blob.name} is corrupt"
        return None

    def prepare(self, log: Log | None) -> None:
        """Empty the folder when its content cannot be trusted, then make sure it exists."""
        problem = self.problem()
        if problem:
            if log:
                log(f"note: the cached build of {self.graph_name} is not usable ({problem}); "
                    f"compiling it again in {self.path}")
            shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def seal(self) -> None:
        """Record what OpenVINO left in the folder, so a later change to it is noticed (no write if unchanged)."""
        blobs = []
        for blob in self.blobs():
            identity = file_identity(blob)
            blobs.append({"name": blob.name, **identity, "crc": sampled_crc(blob, identity["size"])})
        text = json.dumps({"graph_name": self.graph_name, "parts": self.parts, "blobs": blobs}, indent=1)
        record_path = self.path / RECORD_NAME
        with contextlib.suppress(OSError):
            if record_path.read_text() == text:
                return
        atomic_write(record_path, lambda file: file.write(text.encode()))


def stale_builds(root: Path, parts: dict) -> Iterator[Path]:
    """Sealed builds of the same graph files made before those files last changed: never usable again."""
    current = {entry["file"]: entry for entry in parts["graph"]}
    for record_path in root.glob(f"*/{RECORD_NAME}"):
        try:
            graph = json.loads(record_path.read_text())["parts"]["graph"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        files = {entry.get("file") for entry in graph}
        if files == set(current) and any(entry != current[entry["file"]] for entry in graph):
            yield record_path.parent


def remove_stale_builds(root: Path, parts: dict) -> None:
    """Drop the builds `stale_builds` finds, and the blobs of the flat layout sdcpu used before (never read now)."""
    for folder in stale_builds(root, parts):
        shutil.rmtree(folder, ignore_errors=True)
        (root / f".{folder.name}.lock").unlink(missing_ok=True)
    for blob in root.glob("*.blob"):
        blob.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(root: Path, key: str) -> Iterator[None]:
    """One process at a time checks, compiles into and seals a build folder (POSIX; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(root / f".{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def compile_through_cache(root: Path, graph_name: str, graph_files: list[Path], properties: dict,
                          shapes: dict | None, compile: Callable[[dict], object],
                          import_blob: Callable[[Path, dict], object], log: Log | None = None):
    """The sealed build of this graph imported by `import_blob(path, properties)`, else `compile(properties)`
    exported into the build's folder and sealed.

    A cache root that cannot be written costs the cache, not the run: a note, and a compile without it.
    """
    build = BuildFolder(root, build_parts(graph_files, properties, shapes), graph_name)
    with contextlib.ExitStack() as stack:
        try:
            root.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locked(root, build.path.name))
            build.prepare(log)
        except OSError as exc:
            _note(log, f"the compile cache at {root} cannot be used ({exc.strerror or exc}); compiling without it")
            return compile(properties)
        blob = build.path / BLOB_NAME
        if blob.is_file():
            try:
                return import_blob(blob, properties)
            except Exception as exc:  # a sealed blob this OpenVINO refuses: rebuild it, never fail the run
                _note(log, f"the cached build of {graph_name} is not usable ({short_reason(exc)}); compiling it again")
                shutil.rmtree(build.path, ignore_errors=True)
                build.path.mkdir(parents=True, exist_ok=True)
        compiled = compile(properties)
        try:
            atomic_write(blob, lambda file: export_into(compiled, file))
            build.seal()
            remove_stale_builds(root, build.parts)
        except OSError as exc:
            _note(log, f"the compile cache of {graph_name} was not saved ({exc.strerror or exc})")
    return compiled


def export_into(compiled, file) -> None:
    """Write OpenVINO's export of a compiled model to an open file (its Python API exports into BytesIO only)."""
    buffer = io.BytesIO()
    compiled.export_model(buffer)
    file.write(buffer.getbuffer())


def short_reason(exc: Exception) -> str:
    """The informative line of a backend's multi-line error (not its source-location lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[-1]


def _note(log: Log | None, line: str) -> None:
    if log:
        log(f"note: {line}")
