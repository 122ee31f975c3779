"""The compile cache never hands a build to a request it was not made for, and never imports a damaged one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from sdcpu.engine.backends import Graph, cpu_has_bf16
from sdcpu.engine.compile_cache import RECORD_NAME, BuildFolder, build_key, build_parts
from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import ComponentEntry
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.models.registry import DEFAULT_MODEL

PROMPT = "a red circle on a blue background"




def key(files, properties=None, shapes=None) -> str:
    return build_key(build_parts(files, properties or {}, shapes))


@pytest.fixture
def graph_files(tmp_path):
    xml, weights = tmp_path / "model.xml", tmp_path / "model.bin"
    xml.write_text("<net/>")
    weights.write_bytes(b"\x01" * 4096)
    return [xml, weights]


def test_key_is_stable_for_the_same_build(graph_files):
    properties = {"INFERENCE_PRECISION_HINT": "f32"}
    assert key(graph_files, properties, {"sample": (2, 4, 8, 8)}) == key(graph_files, dict(properties),
                                                                          {"sample": [2, 4, 8, 8]})


@pytest.mark.parametrize("other", [{"INFERENCE_PRECISION_HINT": "bf16"}, {}, {"INFERENCE_PRECISION_HINT": "f32",
                                                                               "NUM_STREAMS": "2"}])
def test_every_compile_property_is_part_of_the_key(graph_files, other):
    assert key(graph_files, {"INFERENCE_PRECISION_HINT": "f32"}) != key(graph_files, other)


def test_static_shapes_are_part_of_the_key(graph_files):
    assert key(graph_files, shapes={"sample": (2, 4, 8, 8)}) != key(graph_files, shapes={"sample": (2, 4, 16, 8)})
    assert key(graph_files) != key(graph_files, shapes={"sample": (2, 4, 8, 8)})


def test_new_weights_of_the_same_size_change_the_key(graph_files):
    before = key(graph_files)
    with open(graph_files[1], "r+b") as file:  # in place: same size, same inode
        file.seek(100)
        file.write(b"\x00" * 16)
    assert key(graph_files) != before


def test_a_mtime_put_back_after_a_write_still_changes_the_key(graph_files):
    before, stat = key(graph_files), graph_files[1].stat()
    graph_files[1].write_bytes(b"\x02" * 4096)
    os.utime(graph_files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert key(graph_files) != before


def sealed_build(tmp_path, graph_files) -> BuildFolder:
    build = BuildFolder(tmp_path / "cache", build_parts(graph_files, {}, None), "unet")
    build.prepare(None)
    (build.path / "123.blob").write_bytes(bytes(range(256)) * 4096)
    build.seal()
    assert build.problem() is None
    return build


def test_a_sealed_build_survives_a_read_only_look(tmp_path, graph_files):
    build = sealed_build(tmp_path, graph_files)
    (build.path / "123.blob").read_bytes()
    build.seal()
    assert build.problem() is None


@pytest.mark.parametrize("damage", ["garbage", "truncate", "extra blob", "record", "unsealed"])
def test_a_damaged_build_is_found_and_emptied(tmp_path, graph_files, damage):
    build = sealed_build(tmp_path, graph_files)
    blob = build.path / "123.blob"
    if damage == "garbage":
        with open(blob, "r+b") as file:
            file.seek(blob.stat().st_size // 2)
            file.write(b"garbage!")
    elif damage == "truncate":
        os.truncate(blob, blob.stat().st_size - 1000)
    elif damage == "extra blob":
        (build.path / "456.blob").write_bytes(b"x")
    elif damage == "record":
        (build.path / RECORD_NAME).write_text("{not json")
    else:
        (build.path / RECORD_NAME).unlink()
    assert build.problem() is not None
    notes = []
    build.prepare(notes.append)
    assert len(notes) == 1 and "compiling it again" in notes[0] and "unet" in notes[0]
    assert build.path.is_dir() and not any(build.path.iterdir())


def generate_with(model: Path, cache: Path | None, precision: str = "auto", notes=None) -> np.ndarray:
    """One 8-step image of the bundled model's copy at MODEL, through the cache at CACHE (None: no cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDCPU_CACHE_DIR", str(cache or "/nonexistent"))
        return _generate(model, cache is not None, precision, notes)


def _generate(model: Path, compile_cache: bool, precision: str, notes) -> np.ndarray:
    pipe = Pipeline.load(model, compile_cache=compile_cache, inference_precision=precision,
                         log=None if notes is None else notes.append)
    request = Request(prompt=PROMPT, negative_prompt="", steps=8, guidance=2.0, seed=3, width=64, height=64,
                      sampler=pipe.default_sampler())
    return pipe.generate(request).images[0]


@pytest.fixture
def model_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copytree(DEFAULT_MODEL, tmp_path / "model"))


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU computes bf16 in f32 (no AVX512-BF16/AMX)")
def test_f32_bf16_f32_through_one_warm_cache_match_their_uncached_twins(model_copy, tmp_path):
    cache = tmp_path / "cache"
    for precision in ("f32", "bf16", "f32", "bf16"):
        cached = generate_with(model_copy, cache, precision)
        assert np.array_equal(cached, generate_with(model_copy, None, precision)), precision
        assert cached.max() > 0


def test_a_corrupt_cached_blob_is_rebuilt_with_a_note(model_copy, tmp_path):
    cache = tmp_path / "cache"
    clean = generate_with(model_copy, cache)
    blobs = sorted(cache.glob("*/*.blob"), key=lambda p: p.stat().st_size)
    with open(blobs[-1], "r+b") as file:
        file.seek(blobs[-1].stat().st_size // 3)
        file.write(os.urandom(64))
    os.truncate(blobs[0], blobs[0].stat().st_size // 2)
    notes = []
    assert np.array_equal(generate_with(model_copy, cache, notes=notes), clean)
    assert len(notes) == 2 and all("compiling it again" in line for line in notes)
    notes.clear()
    generate_with(model_copy, cache, notes=notes)
    assert notes == []


def retrain_unet(xml: Path) -> None:
    """Rewrite the graph in place with other weights (every large f32 constant scaled), as a re-export would."""
    model = ov.Core().read_model(str(xml))
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f32 and op.get_output_size():
            values = op.get_data()
            if values.size > 1000:
                replacement = ov.op.Constant(values * np.float32(0.9))
                op.output(0).replace(replacement.output(0))
    staged = xml.with_name("retrained.xml")
    ov.save_model(model, str(staged), compress_to_fp16=False)
    os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(staged, xml)


def test_new_weights_in_the_model_folder_are_never_served_from_the_cache(model_copy, tmp_path):
    cache = tmp_path / "cache"
    generate_with(model_copy, cache)
    retrain_unet(model_copy / "unet" / "model.xml")
    assert np.array_equal(generate_with(model_copy, cache), generate_with(model_copy, None))
    assert len(list(cache.glob(f"*/{RECORD_NAME}"))) == 3, "the stale UNet build was not removed"
    os.truncate(model_copy / "unet" / "model.bin", 1000)
    with pytest.raises(UserError, match="cannot load unet"):
        generate_with(model_copy, cache)


def test_an_unwritable_cache_costs_a_note_not_the_run(model_copy, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    notes = []
    assert np.array_equal(generate_with(model_copy, blocker / "cache", notes=notes), generate_with(model_copy, None))
    assert notes and all("compiling without it" in line for line in notes)


def test_a_graph_that_outputs_nan_is_one_error_naming_it():
    entry = ComponentEntry(file="x", files=["x"], inputs={"x": {"shape": [1], "dtype": "float32"}},
                           outputs={"y": {}})
    graph = Graph("unet", entry, lambda feeds: {"y": np.array([np.nan], np.float32)})
    with pytest.raises(UserError, match="unet produced NaN/Inf .* finite inputs"):
        graph(x=np.zeros(1, np.float32))
    with pytest.raises(UserError, match="unet was given NaN/Inf in x"):
        graph(x=np.full(1, np.inf, np.float32))



def test_a_warm_load_imports_the_blob_without_reading_the_ir(model_copy, tmp_path, monkeypatch):
    from sdcpu.engine import backends

    opened = []
    original = backends.MappedFile.open
    monkeypatch.setattr(backends.MappedFile, "open", lambda path: opened.append(Path(path).name) or original(path))
    cold = generate_with(model_copy, tmp_path / "cache", "f32")
    assert "model.bin" in opened and "model.blob" not in opened
    opened.clear()
    warm = generate_with(model_copy, tmp_path / "cache", "f32")
    assert opened and set(opened) == {"model.blob"}
    assert np.array_equal(cold, warm)


def test_static_builds_are_cached_per_size(model_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_CACHE_DIR", str(tmp_path / "cache"))
    request = Request(prompt=PROMPT, negative_prompt="", steps=4, guidance=2.0, seed=3, width=64, height=64,
                      sampler="euler")
    images = [Pipeline.load(model_copy, inference_precision="f32", size=(64, 64)).generate(request).images[0]
              for _ in range(2)]
    builds = {p.parent.name for p in (tmp_path / "cache").glob("*/model.blob")}
    assert np.array_equal(images[0], images[1])
    Pipeline.load(model_copy, inference_precision="f32", size=(64, 96))
    assert len({p.parent.name for p in (tmp_path / "cache").glob("*/model.blob")} - builds) >= 2
