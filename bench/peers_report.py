"""Turn bench/peers.py's JSON files into bench/RESULTS.md (one table per family) and a bar chart.

    python bench/peers_report.py WORK/sd15-peers.json WORK/lcm-peers.json ... [--out bench/RESULTS.md]

Per peer, medians over rounds: seconds per step (slope of wall time between the two timed step
counts), seconds per image at the family's headline step count, load, first image, peak RSS, and
PSNR of its image against diffusers fp32's (same weights, seed and steps). Speed-ups are against
optimum-intel's and OpenVINO GenAI's pipelines, as the goals of issue 6 are stated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]

from sdcpu.engine.measure.markdown import markdown_table
from sdcpu.export.quality import image_psnr_db

HEADLINE_STEPS = {"sd15": 20, "lcm": 4, "sdxl-turbo": 1}
PEERS_TO_BEAT = ("optimum-intel", "openvino-genai")
REFERENCE = "diffusers-fp32"


def slope(run: dict) -> float:
    """Seconds per step: wall-time difference between the two step counts over their difference."""
    (a, b) = run["rows"][0], run["rows"][-1]
    return (b["total_s"] - a["total_s"]) / (b["steps"] - a["steps"])


def image_seconds(run: dict, steps: int) -> tuple[float, bool]:
    """Wall time of one image at `steps`: measured if timed, else extrapolated along the slope (flag True)."""
    for row in run["rows"]:
        if row["steps"] == steps:
            return row["total_s"], False
    first = run["rows"][0]
    return first["total_s"] + (steps - first["steps"]) * slope(run), True


def psnr(path_a: str | None, path_b: str | None) -> float | None:
    if not path_a or not path_b or not Path(path_a).is_file() or not Path(path_b).is_file():
        return None
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (path_a, path_b))
    return image_psnr_db(b, a) if a.shape == b.shape else None


def summarise(data: dict) -> list[dict]:
    """One dict per peer with the medians over its successful rounds (errors kept as text)."""
    steps = HEADLINE_STEPS[data["family"]]
    reference = next((r.get("image") for r in data["runs"] if r["peer"] == REFERENCE and "error" not in r), None)
    rows = []
    for name in data["peers"]:
        runs = [r for r in data["runs"] if r["peer"] == name]
        good = [r for r in runs if "error" not in r]
        if not good:
            rows.append({"peer": name, "error": runs[0]["error"] if runs else "not run"})
            continue
        per_image = [image_seconds(r, steps) for r in good]
        rows.append({
            "peer": name, "versions": good[0]["versions"], "rounds": len(good),
            "s_per_step": statistics.median(slope(r) for r in good),
            "image_s": statistics.median(s for s, _ in per_image), "extrapolated": per_image[0][1],
            "load_s": statistics.median(r["load_s"] for r in good),
            "first_image_s": statistics.median(r["first_image_s"] for r in good),
            "peak_rss_gib": max(r["peak_rss_mib"] for r in good) / 1024,
            "psnr_db": None if name == REFERENCE else psnr(good[0].get("image"), reference),
            "tiny_vae": bool(good[0].get("settings", {}).get("tiny_vae")),
        })
    return rows


def speedup(value: float, base: dict | None, key: str) -> str:
    """How many times faster than `base` (above 1x: faster)."""
    if base is None or "error" in base:
        return "n/a"
    return f"{base[key] / value:.2f}x"


def psnr_cell(row: dict) -> str:
    if row["peer"] == REFERENCE:
        return "reference"
    if row["tiny_vae"]:
        return "n/a (random tiny VAE)"
    return "n/a" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"


def family_section(data: dict) -> str:
    rows = summarise(data)
    optimum, genai = (next((r for r in rows if r["peer"] == name), None) for name in PEERS_TO_BEAT)
    s, steps = data["settings"], HEADLINE_STEPS[data["family"]]
    columns = ["peer", "s/step", "step speed-up vs optimum", f"image at {steps} step{'' if steps == 1 else 's'} (s)",
               "image speed-up vs optimum", "vs GenAI", "load s", "first 1-step image s", "peak RSS GiB",
               "PSNR vs diffusers fp32 (dB)"]
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["peer"], "failed: " + r["error"].replace("|", "/")] + [""] * (len(columns) - 2))
            continue
        cells.append([r["peer"], f"{r['s_per_step']:.2f}", speedup(r["s_per_step"], optimum, "s_per_step"),
                      f"{r['image_s']:.1f}{' (fit)' if r['extrapolated'] else ''}",
                      speedup(r["image_s"], optimum, "image_s"), speedup(r["image_s"], genai, "image_s"),
                      f"{r['load_s']:.1f}", f"{r['first_image_s']:.1f}", f"{r['peak_rss_gib']:.2f}", psnr_cell(r)])
    probes = data["gemm_probe_gflops"]
    rounds = f"{data['rounds']} rounds"
    if data.get("merged_from"):
        per_peer = ", ".join(f"{r['peer']} {r['rounds']}" for r in rows if "rounds" in r)
        rounds = (f"{len(data['merged_from'])} interleaved runs merged by bench/merge_runs.py (rounds per peer: "
                  f"{per_peer})")
    lines = [
        f"## {data['family']}{' (' + data['tag'] + ')' if data.get('tag') else ''}: {s['width']}x{s['height']}, guidance {s['guidance']:g}, prompt \"{s['prompt']}\"",
        "",
        f"Timed step counts {data['steps']}, {rounds}, peers interleaved (order rotates per round). "
        f"OpenVINO bf16 GEMM probe before each peer: {min(probes):.0f}-{max(probes):.0f} GFLOP/s "
        f"(median {statistics.median(probes):.0f}). Speed-ups above 1x mean faster than optimum-intel "
        "(or OpenVINO GenAI).",
        "",
        markdown_table(columns, cells),
        "",
        versions_text(rows),
        "",
    ]
    return "\n".join(lines)


DOCUMENT_STEPS = {"sd15": (20,), "lcm": (4,), "sdxl-turbo": (1, 4)}
DOCUMENT_PATHS = (("default", "sdcpu"), ("fast", "sdcpu-fast"))


def median_image_seconds(data: dict, peer: str, steps: int) -> tuple[float, bool]:
    """Median over a peer's good rounds of its image time at `steps` (fitted flag as image_seconds gives it)."""
    timed = [image_seconds(r, steps) for r in data["runs"] if r["peer"] == peer and "error" not in r]
    return statistics.median(s for s, _ in timed), timed[0][1]


def better_source(label: str, candidate: tuple[bool, int], current: tuple) -> bool:
    """Whether (fitted, rounds) beats the row found so far: the fast path's DeepCache calls are not uniform,
    so a measured image wins there; the default's calls are, so the run with more rounds wins."""
    fitted, rounds = candidate
    if label == "fast":
        return current[1] and not fitted
    return rounds > current[4]["rounds"]


def documents_section(datasets: list[dict]) -> str:
    """The seed documents' table: per family and step count, sdcpu's default and fast path, seconds per image
    and per step, with the machine's GEMM probe and ISA; which run each row comes from: `better_source`."""
    found: dict[tuple, tuple] = {}
    probes, machine, ratios = [], {}, []
    for data in datasets:
        rows = {r["peer"]: r for r in summarise(data) if "error" not in r}
        probes += data["gemm_probe_gflops"]
        machine = data.get("machine", machine)
        for steps in DOCUMENT_STEPS.get(data["family"], ()):
            for label, peer in DOCUMENT_PATHS:
                if peer not in rows:
                    continue
                seconds, fitted = median_image_seconds(data, peer, steps)
                optimum = median_image_seconds(data, "optimum-intel", steps)[0] if "optimum-intel" in rows else None
                key = (data["family"], steps, label)
                if key not in found or better_source(label, (fitted, data["rounds"]), found[key]):
                    found[key] = (seconds, fitted, peer, optimum, data)
        if "sdcpu-int8-hybrid" in rows and "sdcpu" in rows:
            ratios.append(f"{data['family']} {rows['sdcpu']['s_per_step'] / rows['sdcpu-int8-hybrid']['s_per_step']:.2f}x")
    if not found:
        return ""
    cells = []
    for (family, steps, label), (seconds, fitted, peer, optimum, data) in found.items():
        per_step = seconds / steps if not fitted else next(r["s_per_step"] for r in summarise(data) if r["peer"] == peer)
        cells.append([family, str(steps), f"{label} (`{peer}`)", f"{seconds:.1f}{' (fit)' if fitted else ''}",
                      f"{per_step:.2f}", f"{optimum / seconds:.2f}x" if optimum else "n/a", data.get("tag") or "-"])
    isa = ", ".join(machine.get("isa", [])) or "not recorded"
    lines = ["## The documents' table: seconds per image and per step, default and fast path", "",
             f"CPU: {machine.get('cpu', '?')}, {machine.get('logical_cores', '?')} logical cores; ISA: {isa}. "
             f"OpenVINO bf16 GEMM probe {min(probes):.0f}-{max(probes):.0f} GFLOP/s (median "
             f"{statistics.median(probes):.0f}): scale by your machine's probe to translate. s/step of a "
             "measured image is its wall time over its steps (text encoder and VAE included).", "",
             markdown_table(["family", "steps", "path", "s/image", "s/step", "image vs optimum-intel", "run"], cells),
             ""]
    unhurried = sorted({f for f, _, label in found if label == "default"} - {f for f, _, label in found if label == "fast"})
    if unhurried:
        lines += [f"No fast row for {', '.join(unhurried)}: no `--fast` preset there (models/registry.py "
                  "FAST_PRESETS; at 1-4 steps DeepCache has no UNet call to reuse).", ""]
    if ratios and "amx_int8" in machine.get("isa", []):
        lines += [f"AMX int8 against bf16 (the default's s/step over the int8 hybrid export's): {', '.join(ratios)}.",
                  ""]
    return "\n".join(lines)


def versions_text(rows: list[dict]) -> str:
    """One line per distinct set of versions, naming the peers that ran with it."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        if "versions" in r:
            key = ", ".join(f"{k} {v.split('-')[0]}" for k, v in r["versions"].items())
            groups.setdefault(key, []).append(r["peer"])
    return "Versions: " + "; ".join(f"{', '.join(peers)}: {key}" for key, peers in groups.items()) + "."


def levers_section(data: dict) -> str:
    """bench/levers.py's table: each lever's median seconds per call, speed-up and output PSNR."""
    cells = [[r["lever"], f"{r['median_s']:.2f}", f"{r['speedup']:.2f}x",
              "baseline" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"] for r in data["rows"]]
    probes = data["gemm_probe_gflops"]
    return "\n".join([
        f"## Levers: one UNet call (CFG, batch 2) and one VAE decode, {data['width']}x{data['height']}",
        "",
        f"`python bench/levers.py --model {Path(data['model']).name} --int8 {Path(data['int8']).name} "
        f"--rounds {data['rounds']}` (SD1.5 architecture). Variants called in turn each round; medians. "
        f"OpenVINO bf16 GEMM probe {min(probes):.0f}-{max(probes):.0f} GFLOP/s. PSNR of the output against "
        "the f32 call on the same inputs.",
        "",
        markdown_table(["lever", "s/call", "speed-up vs f32", "PSNR vs f32 (dB)"], cells),
        "",
    ])


def draw_chart(datas: list[dict], path: Path) -> None:
    """Horizontal bars of seconds per step, one group per family, the sdcpu bars first."""
    groups = [(d["family"], [r for r in summarise(d) if "error" not in r]) for d in datas]
    bar, gap, left, width = 22, 30, 170, 900
    height = sum(gap + bar * len(rows) for _, rows in groups) + gap
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = gap
    for family, rows in groups:
        draw.text((10, y - 18), f"{family}: seconds per step", fill="black")
        top = max((r["s_per_step"] for r in rows), default=1.0)
        for r in rows:
            length = int((width - left - 80) * r["s_per_step"] / top)
            colour = (40, 110, 200) if r["peer"].startswith("sdcpu") else (170, 170, 170)
            draw.text((10, y + 5), r["peer"], fill="black")
            draw.rectangle([left, y + 3, left + length, y + bar - 3], fill=colour)
            draw.text((left + length + 6, y + 5), f"{r['s_per_step']:.2f} s", fill="black")
            y += bar
        y += gap
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="FAMILY-peers.json files from bench/peers.py")
    parser.add_argument("--levers", type=Path, action="append", default=[], help="bench/levers.py --json files")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    parser.add_argument("--header", type=Path, default=REPO / "bench" / "RESULTS_HEADER.md",
                        help="Markdown placed above the tables (machine, method, commands)")
    parser.add_argument("--earlier", type=Path, default=REPO / "bench" / "RESULTS_EARLIER.md",
                        help="Markdown of earlier sessions' tables, placed after this run's, as they are")
    args = parser.parse_args()
    datas = [json.loads(p.read_text()) for p in args.results]
    kept = args.out.parent / "results"
    kept.mkdir(exist_ok=True)
    for path in [*args.results, *args.levers]:
        shutil.copyfile(path, kept / path.name)
    draw_chart(datas, kept / "peers.png")
    header = args.header.read_text() if args.header.is_file() else "# Peer comparison\n"
    body = "\n".join([documents_section(datas), *(family_section(d) for d in datas),
                      *(levers_section(json.loads(p.read_text())) for p in args.levers)])
    earlier = args.earlier.read_text() if args.earlier.is_file() else ""
    args.out.write_text(f"{header}\n{body}\n{earlier}\n![seconds per step](results/peers.png)\n")
    print(f"wrote {args.out} and {kept / 'peers.png'}")


if __name__ == "__main__":
    main()
