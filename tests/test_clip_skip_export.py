"""Exports for A1111 features: clip-skip states from the text encoder, a UNet context of any 77-token multiple,
and the source checkpoint's SHA-256 / A1111 short hash in the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdcpu.engine.backends import exact_precision, load_graph
from sdcpu.engine.manifest import MANIFEST_NAME, Manifest, load_manifest
from sdcpu.models.registry import DEFAULT_MODEL, SHAPES_DIFFUSERS

FORMATS = ("openvino", "onnx")
CLIP_SKIPS = (1, 2, 3)
MAX_ABS_ERROR = 1e-4
PROMPT = "a red circle on a blue background"


def graph(folder: Path, name: str):
    manifest = load_manifest(folder)
    return load_graph(folder, name, manifest.components[name], manifest.format,
                      inference_precision=exact_precision(manifest.format))


def token_ids(source: Path) -> torch.Tensor:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(source / "tokenizer")
    return tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids


def a1111_context(source: Path, ids: torch.Tensor, clip_skip: int) -> np.ndarray:
    """What A1111's clip skip N feeds the UNet: final_layer_norm(hidden_states[-N]), the last hidden state for N = 1."""
    from transformers import CLIPTextModel

    model = CLIPTextModel.from_pretrained(source / "text_encoder", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        if clip_skip == 1:
            return out.last_hidden_state.numpy()
        final_layer_norm = getattr(model, "text_model", model).final_layer_norm  # transformers 5 dropped text_model
        return final_layer_norm(out.hidden_states[-clip_skip]).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_clip_skip_states_are_a1111s_contexts(tiny_exports, tiny_sources, fmt):
    folder, source = tiny_exports["sd15", fmt], tiny_sources["sd15"]
    ids = token_ids(source)
    outputs = graph(folder, "text_encoder").run(input_ids=ids.numpy())
    assert list(load_manifest(folder).components["text_encoder"].outputs) == ["last_hidden_state", "clip_skip_states"]
    states = outputs["clip_skip_states"]
    assert states.shape == (1, 3, 77, 32) and states.dtype == np.float32
    contexts = {n: a1111_context(source, ids, n) for n in CLIP_SKIPS}
    for n in CLIP_SKIPS:
        assert np.abs(states[:, n - 1] - contexts[n]).max() < MAX_ABS_ERROR, n
    assert np.abs(outputs["last_hidden_state"] - contexts[1]).max() < MAX_ABS_ERROR
    assert np.abs(contexts[2] - contexts[1]).max() > 0.1  # the skips are really different layers


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_unet_takes_a_context_of_two_prompt_chunks(tiny_exports, tiny_sources, fmt):
    from diffusers import UNet2DConditionModel

    folder = tiny_exports["sd15", fmt]
    assert load_manifest(folder).components["unet"].inputs["encoder_hidden_states"]["shape"] == ["batch", "sequence", 32]
    g = np.random.default_rng(3)
    feeds = {"sample": g.standard_normal((1, 4, 8, 8), dtype=np.float32),
             "timestep": np.array([400.0], np.float32),
             "encoder_hidden_states": g.standard_normal((1, 154, 32), dtype=np.float32)}
    unet = UNet2DConditionModel.from_pretrained(tiny_sources["sd15"], subfolder="unet").eval()
    with torch.no_grad():
        expected = unet(*(torch.from_numpy(v) for v in feeds.values()), return_dict=False)[0].numpy()
    got = graph(folder, "unet").run(**feeds)["out_sample"]
    assert np.abs(got - expected).max() < MAX_ABS_ERROR
    shorter = graph(folder, "unet").run(**{**feeds, "encoder_hidden_states": feeds["encoder_hidden_states"][:, :77]})
    assert np.abs(shorter["out_sample"] - got).max() > 1e-3  # the second chunk is attended to


def test_the_bundled_model_has_clip_skip_states():
    ids = token_ids(SHAPES_DIFFUSERS)
    outputs = graph(DEFAULT_MODEL, "text_encoder").run(input_ids=ids.numpy())
    assert outputs["clip_skip_states"].shape == (1, 2, 77, 64)
    for n in (1, 2):
        assert np.abs(outputs["clip_skip_states"][:, n - 1] - a1111_context(SHAPES_DIFFUSERS, ids, n)).max() < MAX_ABS_ERROR
    manifest = load_manifest(DEFAULT_MODEL)
    assert manifest.complete is True and manifest.source_sha256 is None and manifest.a1111_hash is None


def test_a_single_file_export_records_the_files_sha256_and_a1111_hash(tiny_sources, tmp_path, monkeypatch):
    from sdcpu.export import checkpoint_hash
    from sdcpu.export.exporter import export_model
    from sdcpu.export.ldm_layout import write_ldm_checkpoint

    checkpoint = write_ldm_checkpoint(tiny_sources["sd15"], tmp_path / "tiny.safetensors")
    monkeypatch.setattr(checkpoint_hash, "LOG_ABOVE_BYTES", 0)
    lines = []
    manifest = export_model(str(checkpoint), tmp_path / "out", fmt="onnx", config=str(tiny_sources["sd15"]),
                            log=lines.append)
    expected = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert manifest.source_sha256 == expected and manifest.a1111_hash == expected[:10]
    written = load_manifest(tmp_path / "out")
    assert (written.source_sha256, written.a1111_hash) == (expected, expected[:10])
    assert f"hashing {checkpoint} for A1111's model hash" in lines


def test_folder_sources_record_no_hash_and_old_manifests_still_load(tiny_exports):
    folder = tiny_exports["sd15", "onnx"]
    manifest = load_manifest(folder)
    assert manifest.source_sha256 is None and manifest.a1111_hash is None
    old = json.loads((folder / MANIFEST_NAME).read_text())
    del old["source_sha256"], old["a1111_hash"]
    assert Manifest.from_dict(old).a1111_hash is None


def test_file_sha256_reads_in_blocks_and_matches_hashlib(tmp_path):
    from sdcpu.export.checkpoint_hash import file_sha256, short_hash

    data = np.random.default_rng(0).bytes(2 * 2**20 + 12345)
    path = tmp_path / "blob.safetensors"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert short_hash(file_sha256(path)) == hashlib.sha256(data).hexdigest()[:10]
