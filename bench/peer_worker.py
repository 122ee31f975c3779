"""One peer, one process: load a pipeline, warm it, time images at two step counts, report JSON.

Run by bench/peers.py (which may use another interpreter for a peer that needs its own venv), so
this file imports only the standard library and the one adapter module it is told to use. Every
adapter exposes `versions() -> dict` and `load(folder, settings) -> generate(steps, seed, on_step)`;
generate may return the image (HxWx3 uint8 array or PIL image), which is then saved for the PSNR column.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def peak_rss_mib() -> float:
    """The process's high-water resident set (VmHWM), the figure `/usr/bin/time -v` reports."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_image(generate, steps: int, seed: int) -> dict:
    """One image: wall seconds, and the seconds between step callbacks (the first from the call's start).

    Callbacks count loop iterations, which differ between libraries (diffusers' PNDM loop runs steps + 1
    times), so the per-step figure the driver reports is the slope of wall time over step counts instead.
    """
    stamps: list[float] = []
    start = time.perf_counter()
    image = generate(steps, seed, lambda i: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    bounds = [start] + stamps
    return {"steps": steps, "total_s": total, "callback_gaps_s": [b - a for a, b in zip(bounds, bounds[1:])],
            "image": image}


def save_image(image, path: Path) -> bool:
    if image is None:
        return False
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    image.save(path)
    return True


def run(peer: str, folder: str, settings: dict, steps: list[int], seed: int, image_path: Path | None) -> dict:
    """Load (timed), one untimed 1-step warm-up image, then one timed image per step count."""
    adapter = importlib.import_module(f"peer_{peer}")
    started = time.perf_counter()
    generate = adapter.load(Path(folder), settings)
    load_s = time.perf_counter() - started
    first = timed_image(generate, 1, seed)
    rows = [timed_image(generate, n, seed) for n in steps]
    saved = bool(image_path) and save_image(rows[-1]["image"], image_path)
    for row in (first, *rows):
        row.pop("image")
    return {"peer": peer, "versions": adapter.versions(), "load_s": load_s, "first_image_s": first["total_s"],
            "rows": rows, "peak_rss_mib": peak_rss_mib(), "image": str(image_path) if saved else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, help="adapter name: bench/peer_<name>.py")
    parser.add_argument("--folder", required=True, help="the model folder the adapter loads")
    parser.add_argument("--settings", required=True, help="JSON: family, width, height, guidance, prompt, ...")
    parser.add_argument("--steps", default="1,5", help="comma-separated step counts to time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", type=Path, default=None, help="save the last image here (PNG)")
    parser.add_argument("--out", type=Path, required=True, help="write the result JSON here")
    args = parser.parse_args()
    result = run(args.peer, args.folder, json.loads(args.settings), [int(s) for s in args.steps.split(",")],
                 args.seed, args.image)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
