"""Peer comparison: sdcpu against optimum-intel, OpenVINO GenAI and diffusers on the same model, interleaved.

Run by hand, not in CI (real-size models, minutes per peer):
    python bench/peers.py --family sd15 --work /work/peers [--rounds 2] [--peers all]

Every peer gets the same random-weights model (`sdcpu export --random-weights FAMILY`; diffusers
builds the same seeded weights in memory), size, prompt, guidance and seed, and runs in its own
process, one at a time, in an order that rotates each round. An OpenVINO bf16 GEMM probe runs before
each peer so drift shows. Per peer: seconds per step (slope of wall time between the two step
counts), wall time per image, load time, first image, peak RSS, PSNR against diffusers fp32.
Results go to WORK/FAMILY-peers.json; bench/peers_report.py turns every family's JSON into
bench/RESULTS.md and a chart.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from sdcpu.engine.measure.bench_report import machine_info, openvino_gemm_probe
from sdcpu.models.registry import family as family_defaults

PROMPT = "a photo of a cat"
STEP_COUNTS = {"sd15": "1,5", "lcm": "1,4", "sdxl-turbo": "1,2"}
WORKER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Peer:
    """One contender: the adapter it runs, the model folder kind it loads, its own settings."""

    name: str
    adapter: str
    folder: str
    settings: dict = field(default_factory=dict)
    python: str | None = None


def peer_table(optimum_python: str | None) -> dict[str, Peer]:
    return {p.name: p for p in (
        Peer("sdcpu", "sdcpu", "ov-default"),
        Peer("sdcpu-dynamic", "sdcpu", "ov-default", {"dynamic_shapes": True}),
        Peer("sdcpu-fast", "sdcpu", "ov-fast", {"fast": True}),
        Peer("sdcpu-bf16", "sdcpu", "ov", {"inference_precision": "bf16"}),
        Peer("sdcpu-f32", "sdcpu", "ov", {"inference_precision": "f32"}),
        Peer("sdcpu-bf16-deepcache3", "sdcpu", "ov", {"inference_precision": "bf16", "deepcache": 3}),
        Peer("sdcpu-fp16", "sdcpu", "ov-fp16"),
        Peer("sdcpu-int8", "sdcpu", "ov-int8"),
        Peer("sdcpu-int8-hybrid", "sdcpu", "ov-hybrid"),
        Peer("sdcpu-int8-hybrid-deepcache3", "sdcpu", "ov-hybrid", {"deepcache": 3}),
        Peer("sdcpu-bf16-tinyvae", "sdcpu", "ov", {"inference_precision": "bf16", "tiny_vae": True}),
        Peer("sdcpu-int8-hybrid-tinyvae", "sdcpu", "ov-hybrid", {"tiny_vae": True}),
        Peer("sdcpu-int8-hybrid-deepcache3-tinyvae", "sdcpu", "ov-hybrid", {"deepcache": 3, "tiny_vae": True}),
        Peer("sdcpu-onnx", "sdcpu", "onnx"),
        Peer("openvino-genai", "genai", "optimum"),
        Peer("optimum-intel", "optimum", "optimum", python=optimum_python),
        Peer("optimum-intel-int8-hybrid", "optimum", "optimum-hybrid", python=optimum_python),
        Peer("diffusers-fp32", "diffusers", "random", {"dtype": "fp32"}),
        Peer("diffusers-bf16", "diffusers", "random", {"dtype": "bf16"}),
    )}


def run_logged(command: list[str], log: Path) -> None:
    """Run a preparation command, its output to `log`; stop the bench with the log's tail if it fails."""
    print("$", " ".join(command), flush=True)
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        sys.exit(f"failed ({code}): {' '.join(command)}\n" + "\n".join(log.read_text().splitlines()[-15:]))


TINY_VAE = ["--tiny-vae", "random"]
EXPORTS = {  # folder kind -> (folder suffix, extra `sdcpu export` options)
    "ov-default": ("default-ov", []),
    "ov-fast": ("fast-ov", ["--fast"]),
    "ov": ("fp32-ov", ["--precision", "fp32", "--deepcache", *TINY_VAE]),
    "ov-fp16": ("fp16-ov", ["--precision", "fp16"]),
    "ov-int8": ("int8-ov", ["--precision", "int8"]),
    "ov-hybrid": ("int8-hybrid-ov", ["--precision", "int8", "--quant", "hybrid", "--deepcache", *TINY_VAE]),
    "onnx": ("fp32-onnx", ["--format", "onnx", "--precision", "fp32"]),
}

# The export optimum-intel and GenAI load, in their layout. SDXL-Turbo's fp32 export peaks at 22.5 GiB of
# RAM on a 24 GiB machine, so they get the default fp16 export there; they compute in bf16 on a bf16 CPU
# either way (their default), so the weights' storage precision does not change their speed.
OPTIMUM_SOURCE = {"sdxl-turbo": "ov-default"}


def model_folders(family: str, work: Path, kinds: set[str], optimum_python: str) -> dict[str, str]:
    """Export what the chosen peers load, once per work folder (sdcpu exports, then the optimum layouts)."""
    sdcpu = [sys.executable, "-m", "sdcpu.engine.cli.app", "export", "--random-weights", family, "--no-quality-check"]
    folders = {"random": f"random-weights:{family}"}
    optimum_kinds = {"optimum", "optimum-hybrid"}
    optimum_source = OPTIMUM_SOURCE.get(family, "ov")
    if kinds & optimum_kinds:
        kinds = kinds | {optimum_source, "optimum"}
    for kind in sorted(kinds):
        if kind not in EXPORTS:
            continue
        suffix, options = EXPORTS[kind]
        if family == "sdxl-turbo":  # one step: nothing to reuse, and the extra UNets would cost 20 GB of disk
            options = [o for o in options if o != "--deepcache"]
        folder = work / f"{family}-{suffix}"
        if not (folder / "manifest.json").is_file():
            run_logged([*sdcpu, *options, str(folder)], work / f"{family}-export-{suffix}.log")
        folders[kind] = str(folder)
    if "optimum" in kinds:
        layout = work / f"{family}-optimum"
        if not (layout / "model_index.json").is_file():
            run_logged([sys.executable, str(REPO / "bench" / "optimum_layout.py"), folders[optimum_source], str(layout)],
                       work / f"{family}-optimum-layout.log")
        folders["optimum"] = str(layout)
    if "optimum-hybrid" in kinds:
        hybrid = work / f"{family}-optimum-int8-hybrid"
        if not (hybrid / "model_index.json").is_file():
            run_logged([optimum_python, str(REPO / "bench" / "optimum_hybrid.py"), str(layout), str(hybrid),
                        "--family", family], work / f"{family}-optimum-hybrid.log")
        folders["optimum-hybrid"] = str(hybrid)
    return folders


def settings_for(family: str) -> dict:
    """The family's default size and guidance, our latency prompt, no negative prompt."""
    f = family_defaults(family)
    return {"family": family, "width": f.default_size[0], "height": f.default_size[1],
            "guidance": f.default_guidance, "prompt": PROMPT, "negative_prompt": ""}


def run_peer(peer: Peer, folder: str, settings: dict, steps: str, work: Path, round_index: int, tag: str) -> dict:
    """One worker process; its JSON, or the error's last line."""
    stem = work / f"{settings['family']}{tag}-{peer.name}-r{round_index}"
    command = [peer.python or sys.executable, str(REPO / "bench" / "peer_worker.py"), "--peer", peer.adapter,
               "--folder", folder, "--settings", json.dumps({**settings, **peer.settings}), "--steps", steps,
               "--image", f"{stem}.png", "--out", f"{stem}.json"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"peer": peer.name, "error": f"timed out after {WORKER_TIMEOUT_S} s"}
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return {"peer": peer.name, "error": (lines or ["exit code %d" % done.returncode])[-1][:300]}
    result = json.loads(Path(f"{stem}.json").read_text())
    return {**result, "peer": peer.name, "settings": peer.settings, "process_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(STEP_COUNTS), required=True)
    parser.add_argument("--work", type=Path, required=True, help="folder for exports, images and per-run JSON")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peers", default="all", help="comma-separated names, or all: " +
                        ", ".join(peer_table(None)))
    parser.add_argument("--steps", default=None, help="two step counts to time (default per family)")
    parser.add_argument("--tag", default="", help="name this run: results go to WORK/FAMILY-TAG-peers.json")
    parser.add_argument("--optimum-python", default=str(REPO / "bench" / ".venv-optimum" / "bin" / "python"),
                        help="interpreter of the venv bench/setup_optimum_venv.sh builds")
    args = parser.parse_args()

    table = peer_table(args.optimum_python)
    names = list(table) if args.peers == "all" else args.peers.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"unknown peer {unknown[0]!r}; choose from {', '.join(table)}")
    if not Path(args.optimum_python).is_file():
        for name in [n for n in names if table[n].python]:
            print(f"note: {args.optimum_python} is missing (run bench/setup_optimum_venv.sh); skipping {name}")
            names.remove(name)
    args.work.mkdir(parents=True, exist_ok=True)
    folders = model_folders(args.family, args.work, {table[n].folder for n in names}, args.optimum_python)
    settings = settings_for(args.family)
    steps = args.steps or STEP_COUNTS[args.family]
    tag = f"-{args.tag}" if args.tag else ""

    runs, probes = [], []
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            probes.append(openvino_gemm_probe().gflops)
            peer = table[name]
            result = run_peer(peer, folders[peer.folder], settings, steps, args.work, round_index, tag)
            result["round"] = round_index
            runs.append(result)
            print(summary_line(result), flush=True)
    out = args.work / f"{args.family}{tag}-peers.json"
    out.write_text(json.dumps({"family": args.family, "tag": args.tag, "settings": settings, "steps": steps, "rounds": args.rounds,
                               "peers": names, "machine": machine_info(), "gemm_probe_gflops": probes,
                               "runs": runs}, indent=2) + "\n")
    print(f"wrote {out}")


def summary_line(result: dict) -> str:
    if "error" in result:
        return f"{result['peer']}: FAILED: {result['error']}"
    totals = ", ".join(f"{row['steps']} steps {row['total_s']:.1f} s" for row in result["rows"])
    return (f"{result['peer']} (round {result['round']}): load {result['load_s']:.1f} s, {totals}, "
            f"peak RSS {result['peak_rss_mib'] / 1024:.1f} GiB")


if __name__ == "__main__":
    main()
