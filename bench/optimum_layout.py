"""Turn an OpenVINO sdcpu export into the folder layout optimum-intel and OpenVINO GenAI load.

    python bench/optimum_layout.py SDCPU_DIR OUT_DIR

Both peers read the layout `optimum-cli export openvino` writes: model_index.json, scheduler/,
tokenizer/ (HF files, plus openvino_tokenizer/detokenizer IR for GenAI), and per component
<name>/openvino_model.xml + .bin + config.json, the VAE decoder under vae_decoder/. The weights
are hard-linked (symlinked across file systems, copied as a last resort), never rewritten; where a
peer needs a different graph interface the small .xml is edited as text and the .bin reused as is:

* unet: GenAI feeds `timestep` as int64 (our export takes float32), so the Parameter becomes i64
  followed by a Convert to f32 (integer timesteps lose nothing: every scheduler used here yields
  whole numbers). Output and other input names already match (both peers take output 0).
* SDXL text encoders: both peers pick the penultimate hidden state by position (GenAI: output
  num_hidden_layers + 1; diffusers via optimum: hidden_states[-2] of the outputs named
  hidden_states.*), so the outputs are laid out like optimum's export:
  [last_hidden_state | text_embeds, pooler_output | last_hidden_state, hidden_states.0..N].
  Our export computes only the penultimate state (hidden_states.{N-1}) and text_embeds; the other
  outputs are cheap placeholders (ShapeOf of the penultimate state) that neither pipeline reads.

Component config.json files come from the diffusers configs of the export's source (the source
folder when it is a local diffusers folder, else the shipped models/configs/<family>), checked
against the IR and overridden with the manifest's own figures (VAE scaling factor, latent channels,
time_cond_proj_dim, sample size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

STAMP = "sdcpu_layout.json"
IR_XML, IR_BIN = "openvino_model.xml", "openvino_model.bin"
PIPELINES = {
    "sd15": "StableDiffusionPipeline",
    "lcm": "LatentConsistencyModelPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-turbo": "StableDiffusionXLPipeline",
}
# layout folder -> (diffusers config folder, model_index entry)
COMPONENTS = {
    "text_encoder": ("text_encoder", ["transformers", "CLIPTextModel"]),
    "text_encoder_2": ("text_encoder_2", ["transformers", "CLIPTextModelWithProjection"]),
    "unet": ("unet", ["diffusers", "UNet2DConditionModel"]),
    "vae_decoder": ("vae", ["diffusers", "AutoencoderKL"]),
}


def write_optimum_layout(sdcpu_folder: Path, out: Path, log=print) -> Path:
    """Write the optimum/GenAI layout of the OpenVINO sdcpu export `sdcpu_folder` to `out`.

    `out` is built beside itself and moved into place; an existing `out` is replaced only when it
    is an earlier layout written by this function (it holds sdcpu_layout.json).
    """
    from sdcpu.engine.manifest import load_manifest, required_components

    sdcpu_folder, out = Path(sdcpu_folder).resolve(), Path(out).resolve()
    manifest = load_manifest(sdcpu_folder)
    if manifest.format != "openvino":
        raise ValueError(f"{sdcpu_folder} is a {manifest.format} export; the peers load OpenVINO IR (export with --format openvino)")
    if manifest.family not in PIPELINES:
        raise ValueError(f"family {manifest.family!r} has no optimum/GenAI pipeline here (known: {', '.join(PIPELINES)})")
    if out.exists() and any(out.iterdir()) and not (out / STAMP).is_file():
        raise FileExistsError(f"{out} exists and is not a layout written by optimum_layout.py; remove it first")

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config_root = _config_root(manifest)
    notes: list[str] = [f"component configs from {config_root}"]
    try:
        for name in required_components(manifest):
            entry = manifest.components[name]
            src_xml = sdcpu_folder / entry.file
            dst = tmp / name
            dst.mkdir()
            config = _component_config(name, manifest, config_root)
            edited = _layout_ir(name, src_xml, config, manifest)
            _link(src_xml.with_suffix(".bin"), dst / IR_BIN)
            if edited is None:
                _link(src_xml, dst / IR_XML)
            else:
                (dst / IR_XML).write_bytes(edited[0])
                notes.append(f"{name}: {edited[1]}")
            _check_config(name, config, dst / IR_XML)
            (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _write_scheduler(sdcpu_folder / manifest.scheduler_config, tmp / "scheduler")
        tokenizers = [("tokenizer", manifest.tokenizer)] + ([("tokenizer_2", manifest.tokenizer_2)] if manifest.tokenizer_2 else [])
        for name, rel in tokenizers:
            notes.append(_write_tokenizer(sdcpu_folder / rel, tmp / name))
        (tmp / "model_index.json").write_text(json.dumps(_model_index(manifest, tmp), indent=2) + "\n")
        stamp = {"source": str(sdcpu_folder), "family": manifest.family, "precision": manifest.precision, "notes": notes}
        (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for note in notes:
        log(f"optimum layout: {note}")
    return out


# --- files -------------------------------------------------------------------------------------


def _link(src: Path, dst: Path) -> None:
    """Hard link, else a symlink to the resolved file (other file system), else a copy."""
    try:
        os.link(src, dst)
        return
    except OSError:
        pass
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_scheduler(config: Path, folder: Path) -> None:
    folder.mkdir()
    shutil.copy2(config, folder / "scheduler_config.json")


def _write_tokenizer(src: Path, folder: Path) -> str:
    """The HF tokenizer files as exported, plus GenAI's openvino_tokenizer/detokenizer IR when openvino_tokenizers is here.

    Truncation to the model's 77 positions is built in: GenAI copies the ids into a fixed 77-wide
    row without truncating, and diffusers truncates the same way.
    """
    shutil.copytree(src, folder)
    try:
        import openvino as ov
        from openvino_tokenizers import convert_tokenizer
        from transformers import CLIPTokenizer
    except ImportError as exc:
        return f"{folder.name}: no openvino_tokenizer.xml ({exc.name} missing): OpenVINO GenAI cannot load this layout"
    hf = CLIPTokenizer.from_pretrained(folder)
    tokenizer, detokenizer = convert_tokenizer(hf, with_detokenizer=True, truncation=True, max_length=hf.model_max_length)
    ov.save_model(tokenizer, folder / "openvino_tokenizer.xml")
    ov.save_model(detokenizer, folder / "openvino_detokenizer.xml")
    return f"{folder.name}: HF files + openvino_tokenizer/detokenizer (truncation to {hf.model_max_length})"


def _model_index(manifest, folder: Path) -> dict:
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    index = {
        "_class_name": PIPELINES[manifest.family],
        "_diffusers_version": scheduler.get("_diffusers_version", "0.42.1"),
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    for name in ("text_encoder", "text_encoder_2", "unet"):
        if (folder / name).is_dir():
            index[name] = COMPONENTS[name][1]
    index["vae"] = COMPONENTS["vae_decoder"][1]
    if manifest.tokenizer_2:
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        index["force_zeros_for_empty_prompt"] = bool(manifest.force_zeros_for_empty_prompt)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    return dict(sorted(index.items()))


# --- component configs ---------------------------------------------------------------------------


def _config_root(manifest) -> Path:
    """The diffusers folder whose <component>/config.json describe this export."""
    source = Path(manifest.source) if manifest.source and not manifest.source.startswith("random-weights:") else None
    if source is not None and (source / "model_index.json").is_file():
        return source
    import sdcpu.models as models

    shipped = Path(models.__file__).parent / "configs"
    for name in (manifest.family, "sdxl-turbo" if manifest.family == "sdxl" else None):
        if name and (shipped / name / "model_index.json").is_file():
            return shipped / name
    raise FileNotFoundError(f"no diffusers configs for family {manifest.family!r} (source {manifest.source!r})")


def _component_config(name: str, manifest, root: Path) -> dict:
    config = json.loads((root / COMPONENTS[name][0] / "config.json").read_text())
    side = manifest.default_size[0] // manifest.vae_scale_factor
    if name == "unet":
        config.update(in_channels=manifest.latent_channels, time_cond_proj_dim=manifest.time_cond_proj_dim)
        config.setdefault("sample_size", side)
    elif name == "vae_decoder":
        config.update(latent_channels=manifest.latent_channels, scaling_factor=manifest.vae_scaling_factor)
        blocks = config.get("block_out_channels") or []
        if 2 ** (len(blocks) - 1) != manifest.vae_scale_factor:
            raise ValueError(f"VAE config {root} has {len(blocks)} blocks; the export says scale factor {manifest.vae_scale_factor}")
    elif name.startswith("text_encoder"):
        config.setdefault("max_position_embeddings", 77)
    return config


def _check_config(name: str, config: dict, xml: Path) -> None:
    """The figures the peers size tensors from must match the graph."""
    import openvino as ov

    model = ov.Core().read_model(xml)
    shapes = {n: p.get_partial_shape() for p in model.inputs for n in p.get_names()}
    shapes.update({n: p.get_partial_shape() for p in model.outputs for n in p.get_names()})
    checks = []
    if name == "unet":
        checks = [("encoder_hidden_states", -1, "cross_attention_dim"), ("sample", 1, "in_channels"),
                  ("timestep_cond", -1, "time_cond_proj_dim")]
        if ("timestep_cond" in shapes) != bool(config.get("time_cond_proj_dim")):
            raise ValueError(f"{xml}: timestep_cond input and config time_cond_proj_dim={config.get('time_cond_proj_dim')} disagree")
    elif name == "vae_decoder":
        checks = [("latent_sample", 1, "latent_channels")]
    elif name.startswith("text_encoder"):
        layers = config.get("num_hidden_layers")
        checks = [(f"hidden_states.{layers - 1}" if "hidden_states.0" in shapes else "last_hidden_state", -1, "hidden_size"),
                  ("text_embeds", -1, "projection_dim")]
    for tensor, axis, key in checks:
        if tensor not in shapes:
            continue
        dim = shapes[tensor][axis]
        if dim.is_static and config.get(key) is not None and dim.get_length() != config[key]:
            raise ValueError(f"{xml}: {tensor} has {dim.get_length()} on axis {axis}, config {key} says {config[key]}")


# --- IR edits ------------------------------------------------------------------------------------


def _layout_ir(name: str, xml: Path, config: dict, manifest) -> tuple[bytes, str] | None:
    """The edited .xml text and what changed, or None when the graph is used as exported."""
    if name == "unet":
        return _int64_timestep(xml)
    if name.startswith("text_encoder") and manifest.tokenizer_2:
        return _sdxl_text_outputs(xml, name, config["num_hidden_layers"])
    return None


class _IR:
    """Just enough of an IR v11 .xml to add layers and rewire edges; Const offsets into the .bin stay as they are."""

    def __init__(self, xml: Path):
        self.tree = ET.parse(xml)
        root = self.tree.getroot()
        if root.get("version") not in ("10", "11"):
            raise ValueError(f"{xml}: IR version {root.get('version')} (expected 10 or 11)")
        self.layers = root.find("layers")
        self.edges = root.find("edges")
        self.next_id = max(int(layer.get("id")) for layer in self.layers) + 1

    def find_port(self, tensor: str):
        """(layer, output port) whose tensor names include `tensor`."""
        for layer in self.layers:
            for port in layer.findall("./output/port"):
                if tensor in (port.get("names") or "").split(","):
                    return layer, port
        raise KeyError(tensor)

    def consumers(self, layer, port) -> list:
        return [e for e in self.edges if e.get("from-layer") == layer.get("id") and e.get("from-port") == port.get("id")]

    def add_layer(self, type_: str, version: str, name: str, data: dict | None = None, inputs=(), outputs=(), attrs=None):
        """inputs/outputs: lists of (precision, dims, names or None); returns the new layer element."""
        layer = ET.SubElement(self.layers, "layer", {"id": str(self.next_id), "name": name, "type": type_, "version": version,
                                                     **(attrs or {})})
        self.next_id += 1
        if data is not None:
            ET.SubElement(layer, "data", data)
        port_id = 0
        for tag, ports in (("input", inputs), ("output", outputs)):
            if not ports:
                continue
            group = ET.SubElement(layer, tag)
            for precision, dims, names in ports:
                port = ET.SubElement(group, "port", {"id": str(port_id), "precision": precision,
                                                     **({"names": names} if names else {})})
                port_id += 1
                for d in dims:
                    ET.SubElement(port, "dim").text = str(d)
        return layer

    def connect(self, src_layer, src_port, dst_layer, dst_port: int = 0) -> None:
        ET.SubElement(self.edges, "edge", {"from-layer": src_layer.get("id"), "from-port": src_port.get("id"),
                                           "to-layer": dst_layer.get("id"), "to-port": str(dst_port)})

    def tobytes(self) -> bytes:
        ET.indent(self.tree, "\t")
        return ET.tostring(self.tree.getroot(), encoding="utf-8", xml_declaration=True)


def _dims(port) -> list[str]:
    return [d.text for d in port.findall("dim")]


def _int64_timestep(xml: Path) -> tuple[bytes, str] | None:
    ir = _IR(xml)
    param, port = ir.find_port("timestep")
    data = param.find("data")
    if data.get("element_type") == "i64":
        return None
    if data.get("element_type") != "f32":
        raise ValueError(f"{xml}: timestep is {data.get('element_type')}, expected f32")
    consumers = ir.consumers(param, port)
    data.set("element_type", "i64")
    port.set("precision", "I64")
    rt_info = param.find("rt_info")
    if rt_info is not None:
        param.remove(rt_info)
    dims = _dims(port)
    convert = ir.add_layer("Convert", "opset1", "timestep/to_f32", {"destination_type": "f32"},
                           inputs=[("I64", dims, None)], outputs=[("FP32", dims, None)])
    out_port = convert.find("./output/port")
    for edge in consumers:
        edge.set("from-layer", convert.get("id"))
        edge.set("from-port", out_port.get("id"))
    ir.connect(param, port, convert)
    return ir.tobytes(), "timestep input int64 (+ Convert to f32), as GenAI feeds it"


def _sdxl_text_outputs(xml: Path, name: str, layers: int) -> tuple[bytes, str]:
    ir = _IR(xml)
    results = [layer for layer in ir.layers if layer.get("type") == "Result"]
    for layer in results:
        ir.layers.remove(layer)
    dropped = {layer.get("id") for layer in results}
    for edge in [e for e in ir.edges if e.get("to-layer") in dropped]:
        ir.edges.remove(edge)

    penultimate = f"hidden_states.{layers - 1}"
    hidden_layer, hidden_port = ir.find_port("hidden_states")
    hidden_port.set("names", penultimate)
    real = {penultimate: (hidden_layer, hidden_port)}
    first = ["last_hidden_state", "pooler_output"]
    if name == "text_encoder_2":
        real["text_embeds"] = ir.find_port("text_embeds")
        first = ["text_embeds", "last_hidden_state"]
    order = first + [f"hidden_states.{i}" for i in range(layers + 1)]
    hidden_dims = _dims(hidden_port)
    for tensor in order:
        if tensor in real:
            layer, port = real[tensor]
        else:
            layer = ir.add_layer("ShapeOf", "opset3", f"{tensor}/placeholder", {"output_type": "i64"},
                                 inputs=[("FP32", hidden_dims, None)], outputs=[("I64", [len(hidden_dims)], tensor)])
            port = layer.find("./output/port")
            ir.connect(hidden_layer, hidden_port, layer)
        result = ir.add_layer("Result", "opset1", f"{tensor}/sink_port_0",
                              inputs=[(port.get("precision"), _dims(port), None)], attrs={"output_names": tensor})
        ir.connect(layer, port, result)
    placeholders = [t for t in order if t not in real]
    return ir.tobytes(), (f"outputs laid out as optimum's export, {', '.join(real)} real; "
                          f"{len(placeholders)} placeholders (ShapeOf) for {placeholders[0]}, ..., {placeholders[-1]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdcpu_dir", type=Path, help="an OpenVINO sdcpu export (manifest.json)")
    parser.add_argument("out_dir", type=Path, help="the layout folder to write")
    args = parser.parse_args(argv)
    print(write_optimum_layout(args.sdcpu_dir, args.out_dir))


if __name__ == "__main__":
    main()
