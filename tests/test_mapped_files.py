"""Weights mapped copy-on-write and paged out once OpenVINO has its own packed copy: same outputs, less memory."""

from __future__ import annotations

import numpy as np

from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.mapped_files import MappedFile
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.models.registry import DEFAULT_MODEL


def test_an_empty_file_maps_to_nothing(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    assert MappedFile.open(tmp_path / "empty.bin") is None


def test_paging_out_keeps_the_bytes(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8)
    (tmp_path / "w.bin").write_bytes(data.tobytes())
    mapped = MappedFile.open(tmp_path / "w.bin")
    before = mapped.array.copy()
    mapped.page_out()
    assert np.array_equal(mapped.array, before) and np.array_equal(before, data)


def test_graphs_keep_their_outputs_after_their_weights_are_paged_out():
    pipe = Pipeline.load(DEFAULT_MODEL, compile_cache=False, inference_precision="f32", size=(64, 64))
    assert all(graph.mapped_files for graph in pipe.graphs().values())
    request = Request(prompt="a red circle", negative_prompt="", steps=4, guidance=2.0, seed=1, width=64,
                      height=64, sampler="euler")
    first = pipe.generate(request).images[0]
    for graph in pipe.graphs().values():
        for mapping in graph.mapped_files:
            mapping.page_out()
    assert np.array_equal(first, pipe.generate(request).images[0])
    assert load_manifest(DEFAULT_MODEL).format == "openvino"
