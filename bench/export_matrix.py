"""Export every format x precision of a model and tabulate time, peak RAM, size and parity.

Run by hand, not in CI. Each export runs in its own process (`sdcpu export ...`), its output in
OUT/<name>.log; its peak RAM is the child's own peak RSS (ru_maxrss from wait4), so an export the
kernel kills for memory still gets a row, marked failed, and the matrix goes on.

  python bench/export_matrix.py --tiny sd15,lcm,sdxl-turbo --out /tmp/matrix          # seconds each
  python bench/export_matrix.py --random-weights sd15 --out /tmp/matrix-real          # real size, ~1 h
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.measure.markdown import table_header

COMBOS = [
    ("openvino", "fp32", "weights"), ("openvino", "fp16", "weights"), ("openvino", "int8", "weights"),
    ("openvino", "int8", "hybrid"), ("onnx", "fp32", "weights"), ("onnx", "fp16", "weights"),
    ("onnx", "int8", "weights"),
]


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run_export(source_args: list[str], out: Path, fmt: str, precision: str, quant: str, extra: list[str]) -> dict:
    """One export in a child process: wall time, the child's peak RSS, and the manifest's figures."""
    command = ["sdcpu", "export", *source_args, str(out), "--format", fmt, "--precision", precision,
               "--quant", quant, "--overwrite", *extra]
    started = time.perf_counter()
    with open(out.with_name(out.name + ".log"), "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    figures = {"seconds": time.perf_counter() - started, "peak_gib": usage.ru_maxrss / 2**20}
    if child.returncode:
        for partial in out.parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(partial)
        killed = child.returncode == -signal.SIGKILL
        figures["failed"] = "killed (out of memory?)" if killed else f"exit status {child.returncode}"
        return figures
    manifest = load_manifest(out)
    parity = {name: entry.parity for name, entry in manifest.components.items()}
    return {**figures, "bytes": folder_bytes(out), "parity": parity, "quality": manifest.quality}


def row(family: str, combo: tuple, figures: dict) -> str:
    fmt, precision, quant = combo
    label = precision + (" hybrid" if quant == "hybrid" else "")
    head = f"| {family} | {fmt} | {label} | {figures['seconds']:.0f} | {figures['peak_gib']:.1f} |"
    if "failed" in figures:
        return f"{head} failed: {figures['failed']} | | | |"
    unet = figures["parity"]["unet"]
    worst = min(p["psnr_db"] for p in figures["parity"].values())
    image = figures["quality"].get("image_psnr_db", "-")
    return (f"{head} {figures['bytes'] / 2**20:.1f} | {unet['max_abs_error']:.2e} / {unet['psnr_db']:.1f} | "
            f"{worst:.1f} | {image} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", default="", help="comma-separated tiny families (sd15, lcm, sdxl-turbo)")
    parser.add_argument("--random-weights", default="", help="comma-separated real-size families")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--combos", default="", help="e.g. openvino:int8:hybrid,onnx:fp16:weights (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the exported folders")
    args = parser.parse_args()
    combos = [tuple(c.split(":")) for c in args.combos.split(",")] if args.combos else COMBOS
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    if args.tiny:
        from sdcpu.export.tiny import build_tiny_pipeline

        for family in args.tiny.split(","):
            source = build_tiny_pipeline(args.out / "sources" / family, family=family)
            jobs.append((f"{family} (tiny)", [str(source)], ["--calibration-samples", "8"]))
    for family in filter(None, args.random_weights.split(",")):
        jobs.append((f"{family} (real size, random)", ["--random-weights", family], []))
    print(table_header(["model", "format", "precision", "export s", "peak RAM GiB", "folder MiB",
                        "UNet max err / PSNR dB", "worst component PSNR dB", "image PSNR vs fp32 dB"]))
    for family, source_args, extra in jobs:
        for combo in combos:
            out = args.out / f"{family.split()[0]}-{'-'.join(combo)}"
            figures = run_export(source_args, out, *combo, extra)
            print(row(family, combo, figures), flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
