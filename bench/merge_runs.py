"""Merge several bench/peers.py runs of one family into one dataset, as if they were rounds of one run.

    python bench/merge_runs.py OUT.json RUN.json [RUN.json ...] [--tag TAG]

Each run is interleaved on its own; merging keeps every round of every peer (renumbered), the GEMM
probes and the first run's settings and machine, so bench/peers_report.py takes medians over all of
them. Runs must share family, settings and step counts (a mismatch is refused).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def merge(datasets: list[dict], tag: str) -> dict:
    first = datasets[0]
    for data in datasets[1:]:
        for key in ("family", "settings", "steps"):
            if data[key] != first[key]:
                sys.exit(f"runs differ in {key}: {first[key]!r} vs {data[key]!r}")
    peers, runs, probes, offset = [], [], [], 0
    for data in datasets:
        peers += [p for p in data["peers"] if p not in peers]
        runs += [{**run, "round": run["round"] + offset} for run in data["runs"]]
        probes += data["gemm_probe_gflops"]
        offset += data["rounds"]
    return {**first, "tag": tag, "rounds": offset, "peers": peers, "runs": runs, "gemm_probe_gflops": probes,
            "merged_from": [data.get("tag", "") for data in datasets]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--tag", default="merged")
    args = parser.parse_args()
    merged = merge([json.loads(path.read_text()) for path in args.runs], args.tag)
    args.out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {args.out}: {merged['rounds']} rounds, peers {', '.join(merged['peers'])}")


if __name__ == "__main__":
    main()
