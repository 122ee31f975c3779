"""Only a complete, renamed-into-place model folder is accepted, and it may only read files inside itself."""

from __future__ import annotations

import errno
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.errors import UserError
from sdcpu.engine.local_models import find_models, resolve_model
from sdcpu.engine.manifest import MANIFEST_NAME, load_manifest
from sdcpu.models.registry import DEFAULT_MODEL

REPO = Path(__file__).parents[1]
runner = CliRunner()

# Runs `sdcpu ARGS...` after patching one step to signal READY and wait, so a test can kill it right there.
PAUSED_CLI = """
import sys, time
from pathlib import Path
ready = Path(sys.argv[1])
{patch}
from sdcpu.engine.cli.app import main
sys.argv = ["sdcpu", *sys.argv[2:]]
main()
"""
PAUSE_AFTER_FIRST_MANIFEST = """
import sdcpu.export.exporter as exporter
real = exporter.write_manifest
def write_then_wait(folder, manifest):
    written = real(folder, manifest)
    ready.write_text(str(folder))
    time.sleep(300)
    return written
exporter.write_manifest = write_then_wait
"""
PAUSE_AFTER_PIPELINE_LOAD = """
import sdcpu.engine.pipeline as pipeline
real = pipeline.Pipeline.load.__func__
def load_then_wait(cls, *args, **kwargs):
    pipe = real(cls, *args, **kwargs)
    ready.write_text("loaded")
    time.sleep(300)
    return pipe
pipeline.Pipeline.load = classmethod(load_then_wait)
"""


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def one_error_line(args) -> str:
    """The single `error:` line of a command that must exit 2 without a traceback."""
    result, text = run(*args)
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


def copy_model(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest


def edit_manifest(folder: Path, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def start_paused(patch: str, args: list, ready: Path) -> subprocess.Popen:
    """`sdcpu ARGS` in a real subprocess; returns once it reached the paused step."""
    code = PAUSED_CLI.format(patch=patch)
    process = subprocess.Popen([sys.executable, "-c", code, str(ready), *map(str, args)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"never reached the pause (exit {process.returncode}):\n{out}\n{err}")
        time.sleep(0.05)
    return process


# 1. Every manifest path stays inside the model folder.

def _set_unet_file(value):
    return lambda data: data["components"]["unet"].update(file=value)


def _set_unet_bin(value):
    return lambda data: data["components"]["unet"]["files"].__setitem__(1, value)


@pytest.mark.parametrize("change,field", [
    (_set_unet_file("../../../../etc/passwd"), "components.unet.file"),
    (_set_unet_bin("../../../../etc/passwd"), "components.unet.files[1]"),
    (_set_unet_file(str(DEFAULT_MODEL / "unet" / "model.xml")), "components.unet.file"),
    (lambda data: data.update(scheduler_config="/etc/passwd"), "scheduler_config"),
    (lambda data: data.update(tokenizer="/etc/passwd"), "tokenizer"),
    (lambda data: data.update(tokenizer="../sdcpu-shapes-original/tokenizer"), "tokenizer"),
    (lambda data: data["components"]["vae_decoder"].update(file=5), "components.vae_decoder.file"),
])
def test_manifest_paths_outside_the_folder_are_refused(tmp_path, change, field):
    copy_model(DEFAULT_MODEL, tmp_path / "sdcpu-shapes-original")
    model = copy_model(DEFAULT_MODEL, tmp_path / "damaged")
    edit_manifest(model, change)
    with pytest.raises(UserError, match=re.escape(field)):
        load_manifest(model)
    error = one_error_line(["generate", "p", "--model", model, "-o", tmp_path / "x.png"])
    assert field in error and "model folder" in error
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("link,field", [
    ("unet/model.bin", "components.unet.files[1]"),
    ("text_encoder", "components.text_encoder.file"),
    ("tokenizer/tokenizer.json", "tokenizer (tokenizer/tokenizer.json)"),
    ("unet/model.xml.data", "components.unet.file (unet/model.xml.data)"),
    ("scheduler/scheduler_config.json", "scheduler_config"),
    (MANIFEST_NAME, MANIFEST_NAME),
])
def test_symlinks_leading_out_of_the_folder_are_refused(tmp_path, link, field):
    elsewhere = copy_model(DEFAULT_MODEL, tmp_path / "elsewhere")
    model = copy_model(DEFAULT_MODEL, tmp_path / "linked")
    target = model / link
    if target.is_dir():
        shutil.rmtree(target)
    target.unlink(missing_ok=True)
    target.symlink_to(elsewhere / "unet" / "model.bin" if link.endswith(".data") else elsewhere / link)
    with pytest.raises(UserError, match=re.escape(field) + ".* through a symlink"):
        load_manifest(model)
    assert "linked" not in [m.name for m in find_models([tmp_path])]


def test_symlinks_inside_the_folder_and_a_symlinked_folder_still_load(tmp_path):
    model = copy_model(DEFAULT_MODEL, tmp_path / "model")
    (model / "tokenizer" / "vocab-link.json").symlink_to(model / "tokenizer" / "tokenizer.json")
    (tmp_path / "alias").symlink_to(model)
    assert load_manifest(tmp_path / "alias").name == "sdcpu-shapes"


# 2. Interrupted exports: nothing but a complete, renamed-into-place folder is accepted.

def test_export_marks_only_its_final_manifest_complete(tiny_exports):
    for folder in tiny_exports.values():
        assert json.loads((folder / MANIFEST_NAME).read_text())["complete"] is True


def test_models_exported_before_the_completion_field_still_load(tmp_path):
    unmarked = copy_model(DEFAULT_MODEL, tmp_path / "old-export")
    edit_manifest(unmarked, lambda data: data.pop("complete", None))
    assert "complete" not in json.loads((unmarked / MANIFEST_NAME).read_text())
    assert load_manifest(unmarked).complete is None
    assert load_manifest(unmarked).name == "sdcpu-shapes"
    assert [m.name for m in find_models([tmp_path])] == ["old-export"]


@pytest.mark.parametrize("kind", ["partial", "old"])
@pytest.mark.parametrize("complete", [None, True])
def test_folders_named_like_staging_folders_are_refused(tmp_path, kind, complete):
    """E.g. killed after the final manifest was written (complete) but before the rename into place."""
    leftover = copy_model(DEFAULT_MODEL, tmp_path / f".model.{kind}-{dead_pid()}")
    if complete is not None:
        edit_manifest(leftover, lambda data: data.update(complete=complete))
    with pytest.raises(UserError, match="interrupted"):
        load_manifest(leftover)
    assert find_models([tmp_path]) == []
    assert "interrupted" in one_error_line(["generate", "p", "--model", leftover])
    error = one_error_line(["generate", "p", "--model", tmp_path / "model"])
    assert "does not exist" in error and "interrupted" in error


def test_a_manifest_marked_unfinished_is_refused_under_any_name(tmp_path):
    renamed = copy_model(DEFAULT_MODEL, tmp_path / "renamed-by-hand")
    edit_manifest(renamed, lambda data: data.update(complete=False))
    error = one_error_line(["generate", "p", "--model", renamed])
    assert f"{renamed} is an unfinished export (interrupted?); re-run sdcpu export" in error


def test_sigkilled_export_leaves_a_folder_nothing_accepts(tiny_sources, tmp_path, monkeypatch):
    parent = tmp_path / "exports"
    parent.mkdir()
    process = start_paused(PAUSE_AFTER_FIRST_MANIFEST, ["export", tiny_sources["sd15"], parent / "model",
                                                        "--precision", "fp32"], tmp_path / "ready")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    leftover = parent / f".model.partial-{process.pid}"
    assert sorted(p.name for p in parent.iterdir()) == [leftover.name]
    assert (leftover / MANIFEST_NAME).is_file()
    assert "unfinished export (interrupted?)" in one_error_line(["generate", "p", "--model", leftover])
    error = one_error_line(["generate", "p", "--model", parent / "model"])
    assert f"{leftover} is an unfinished export (interrupted?); re-run sdcpu export" in error
    result, text = run("models", parent)
    assert result.exit_code == 0 and "No exported models in" in text and "partial" not in text
    monkeypatch.chdir(parent)
    with pytest.raises(UserError, match="unfinished export"):
        resolve_model("model")
    moved = parent / "model"
    leftover.rename(moved)
    assert "unfinished export (interrupted?)" in one_error_line(["generate", "p", "--model", moved])


def test_sigterm_during_export_cleans_up_like_ctrl_c_and_exits_143(tiny_sources, tmp_path):
    parent = tmp_path / "exports"
    stale = copy_model(DEFAULT_MODEL, parent / f".other.partial-{dead_pid()}")
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        busy = copy_model(DEFAULT_MODEL, parent / f".busy.partial-{sleeper.pid}")
        process = start_paused(PAUSE_AFTER_FIRST_MANIFEST, ["export", tiny_sources["sd15"], parent / "model"],
                               tmp_path / "ready")
        assert not stale.exists()
        assert "still being written by process" in one_error_line(["generate", "p", "--model", busy])
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert process.returncode == 143, err
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == "terminated"
    assert f"removed {stale}, left by an interrupted export" in out
    assert sorted(p.name for p in parent.iterdir()) == [busy.name]


INTERRUPT_BETWEEN_THE_RENAMES = """
import os, signal
real_replace = os.replace
def replace_then_interrupt(source, target):
    real_replace(source, target)
    if ".old-" in str(target):
        os.kill(os.getpid(), signal.SIGINT)
os.replace = replace_then_interrupt
ready.write_text("patched")
"""


def test_ctrl_c_between_the_renames_of_an_overwrite_leaves_the_new_export_in_place(tiny_sources, tiny_exports,
                                                                                  tmp_path):
    out = copy_model(tiny_exports["sd15", "onnx"], tmp_path / "model")
    code = PAUSED_CLI.format(patch=INTERRUPT_BETWEEN_THE_RENAMES)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ready"), "export", str(tiny_sources["sd15"]),
                             str(out), "--overwrite", "--precision", "fp32"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 130 and "Traceback" not in result.stdout + result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "ready"]
    assert load_manifest(out).format == "openvino" and load_manifest(out).complete is True


def test_sigterm_during_generate_exits_143_without_writing(tmp_path):
    out = tmp_path / "x.png"
    process = start_paused(PAUSE_AFTER_PIPELINE_LOAD, ["generate", "a red circle", "--seed", "1", "-o", out],
                           tmp_path / "ready")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stdout + stderr and stderr.strip().splitlines()[-1] == "terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]


# 3. A full disk during export is one line, and the staging folder goes.

def _fail_on_unet(real, error):
    def convert(onnx_path, xml_path):
        if xml_path.parent.name == "unet":
            xml_path.parent.mkdir(parents=True, exist_ok=True)
            xml_path.with_suffix(".bin").write_bytes(b"\0" * 4096)
            raise error
        return real(onnx_path, xml_path)
    return convert


def _source_weight_mb(source: Path) -> float:
    return sum(f.stat().st_size for f in source.glob("*/*.safetensors")) / 10**6


@pytest.mark.parametrize("error", [
    RuntimeError("basic_ios::clear: iostream error"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_disk_full_during_export_is_one_line_with_the_space_needed(tiny_sources, tmp_path, monkeypatch, error):
    import sdcpu.export.exporter as exporter

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 0))
    monkeypatch.setattr(exporter, "onnx_to_openvino", _fail_on_unet(exporter.onnx_to_openvino, error))
    out = tmp_path / "model"
    line = one_error_line(["export", tiny_sources["sd15"], out, "--precision", "fp32"])
    needed = re.search(rf"no space left on {re.escape(str(tmp_path))} \(needs about (\d+) MB, 0 MB free\)", line)
    assert needed, line
    fp32_mb = _source_weight_mb(tiny_sources["sd15"])
    assert 1.9 * fp32_mb <= int(needed[1]) <= 2 * fp32_mb + 1
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_on_a_disk_with_room_is_not_called_disk_full(tiny_sources, tmp_path, monkeypatch):
    import sdcpu.export.exporter as exporter

    error = RuntimeError("basic_ios::clear: iostream error")
    monkeypatch.setattr(exporter, "onnx_to_openvino", _fail_on_unet(exporter.onnx_to_openvino, error))
    result, text = run("export", tiny_sources["sd15"], tmp_path / "model")
    assert result.exception is error and "no space" not in text
    assert list(tmp_path.iterdir()) == []


# 4. OUT_DIR must be a folder; checked before any model work.

def test_out_dir_that_is_a_file_is_refused_before_loading(tiny_sources, tmp_path):
    existing = tmp_path / "taken"
    existing.write_text("mine")
    for args in ([existing], [existing, "--overwrite"]):
        error = one_error_line(["export", tiny_sources["sd15"], *args])
        assert f"OUT_DIR {existing} is a file, not a folder" in error
    result, text = run("export", tiny_sources["sd15"], existing / "sub")
    assert result.exit_code == 2 and f"{existing} is a file" in text and "loading" not in text
    assert existing.read_text() == "mine"


def test_out_dir_named_like_a_staging_folder_is_refused(tiny_sources, tmp_path):
    error = one_error_line(["export", tiny_sources["sd15"], tmp_path / ".model.partial-12"])
    assert "named like sdcpu's staging folders" in error


def test_overwrite_never_replaces_the_source_being_exported(tiny_sources, tmp_path):
    source = shutil.copytree(tiny_sources["sd15"], tmp_path / "out" / "source")
    error = one_error_line(["export", source, tmp_path / "out", "--overwrite"])
    assert "holds the source" in error
    assert (source / "model_index.json").is_file()
