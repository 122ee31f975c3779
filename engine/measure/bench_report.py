"""What `sdcpu bench` reports besides the per-step timings: machine, GEMM probe, memory, fit, FLOPs.

The numpy GEMM probe runs in the same process as the benchmark, so a reader can divide by it to
compare runs made on a busier or a different machine. Everything here goes into the JSON and,
summarised, under the timing table.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import sdcpu
from sdcpu.engine.measure.flops import COUNTERS
from sdcpu.engine.measure.latency import LATENCY_COLUMNS, LatencyRow, latency_cells
from sdcpu.engine.measure.markdown import markdown_table, plural

GEMM_LABEL = "numpy fp32 GEMM probe"
MIB = 1024 * 1024


def cpuinfo_value(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first non-empty value of field `name` in /proc/cpuinfo (Linux); empty when there is none."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name and value.strip():
                return value.strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows, else 'unknown'."""
    return cpuinfo_value("model name") or platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    """A runtime package's version, or None when it does not import."""
    try:
        return __import__(name).__version__
    except Exception:  # an uninstalled or broken backend is reported, not fatal
        return None


MATRIX_ISA = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_isa() -> list[str]:
    """The CPU's matrix-relevant ISA extensions (AMX, AVX512-BF16, VNNI, ...) from /proc/cpuinfo (Linux)."""
    present = set(cpuinfo_value("flags").split())
    return [name for name in MATRIX_ISA if name in present]


def machine_info() -> dict:
    """CPU, its matrix ISA, logical cores and the versions of everything that computes."""
    return {"cpu": cpu_model(), "isa": cpu_isa(), "logical_cores": os.cpu_count(),
            "openvino": package_version("openvino"), "onnxruntime": package_version("onnxruntime"),
            "numpy": np.__version__, "python": platform.python_version()}


@dataclass(frozen=True)
class GemmProbe:
    """Median seconds and GFLOP/s of a size x size @ size x size float32 matmul (numpy, or OpenVINO)."""

    label: str
    size: int
    repeats: int
    seconds_median: float
    gflops: float


def median_seconds(call, repeats: int) -> float:
    """One untimed call (warm caches, lazy compilation), then the median of `repeats` timed calls."""
    call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def gemm_result(label: str, size: int, repeats: int, median: float) -> GemmProbe:
    return GemmProbe(label, size, repeats, median, 2 * size**3 / median / 1e9)


def gemm_probe(size: int = 1024, repeats: int = 5) -> GemmProbe:
    """Time numpy's fp32 matmul and report the median's GFLOP/s."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    return gemm_result(GEMM_LABEL, size, repeats, median_seconds(lambda: a @ b, repeats))


def openvino_gemm_probe(size: int = 2048, repeats: int = 5, precision: str = "bf16") -> GemmProbe:
    """Time an OpenVINO MatMul compiled with this inference precision: the rate the UNet's rate is judged by."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([size, size], ov.Type.f32, name="a")
    b = ops.constant(rng.standard_normal((size, size), dtype=np.float32))
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(a, b, False, False)], [a]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    x = rng.standard_normal((size, size), dtype=np.float32)
    median = median_seconds(lambda: request.infer({0: x}), repeats)
    return gemm_result(f"OpenVINO {precision} GEMM probe", size, repeats, median)


def current_rss_mib(status: Path = Path("/proc/self/status")) -> float | None:
    """VmRSS of this process in MiB (Linux), else None."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_usage() -> dict[str, float | None]:
    """Peak RSS (getrusage: KiB on Linux, bytes on macOS; None on Windows) and current RSS, both in MiB."""
    try:
        import resource
    except ImportError:
        return {"peak_rss_mib": None, "current_rss_mib": current_rss_mib()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = peak / MIB if sys.platform == "darwin" else peak / 1024
    return {"peak_rss_mib": peak_mib, "current_rss_mib": current_rss_mib()}


@dataclass(frozen=True)
class LinearFit:
    """total ~ a + b * steps for one sampler; a is None with fewer than 2 distinct step counts."""

    sampler: str
    a_s: float | None
    b_s_per_step: float
    step_counts: list[int]


def fit_totals(rows: list[LatencyRow]) -> list[LinearFit]:
    """Least squares of median total seconds on steps, per sampler (b = s/step median with one count)."""
    fits = []
    for sampler in dict.fromkeys(r.sampler for r in rows):
        mine = [r for r in rows if r.sampler == sampler]
        steps = [r.steps for r in mine]
        if len(set(steps)) < 2:
            fits.append(LinearFit(sampler, None, statistics.median(r.step_median for r in mine), steps))
            continue
        b, a = np.polyfit(np.array(steps, float), np.array([r.total_median for r in mine]), 1)
        fits.append(LinearFit(sampler, float(a), float(b), steps))
    return fits


def fit_text(fit: LinearFit) -> str:
    """'total ≈ A s + B s/step' for one sampler, saying so when A cannot be fitted."""
    where = f"({fit.sampler}, steps {','.join(map(str, fit.step_counts))})"
    if fit.a_s is None:
        return f"total ≈ ? s + {fit.b_s_per_step:.4f} s/step {where}: one step count, b is the s/step median"
    return f"total ≈ {fit.a_s:.4f} s + {fit.b_s_per_step:.4f} s/step {where}"


@dataclass
class UnetFlops:
    """FLOPs (2 x MACs of convolutions, matmuls, attention) of one UNet call at the benchmark's shapes."""

    per_call: int
    batch: int
    cfg: bool
    by_op: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_macs(cls, macs: dict[str, int], batch: int, cfg: bool) -> "UnetFlops":
        by_op = {kind: 2 * macs.get(kind, 0) for kind in COUNTERS}
        return cls(sum(by_op.values()), batch, cfg, by_op)


def row_compute(row: LatencyRow, flops: UnetFlops | None) -> dict[str, float | None]:
    """FLOPs per step (UNet calls per image spread over its steps) and TFLOP/s of the median UNet call."""
    if flops is None:
        return {"unet_flops_per_step": None, "unet_tflops": None}
    return {"unet_flops_per_step": flops.per_call * row.unet_calls / row.steps,
            "unet_tflops": flops.per_call / row.unet_call_median / 1e12}


@dataclass
class LatencyReport:
    """Everything one timing run of `sdcpu bench` measured, with the settings it ran under."""

    model: str
    format: str
    precision: str
    width: int
    height: int
    guidance: float
    runs: int
    warmup: int
    compile_cache: bool
    compile_s: float
    rows: list[LatencyRow]
    flops: UnetFlops | None
    memory: dict[str, float | None]
    gemm: GemmProbe
    machine: dict
    gemm_openvino: GemmProbe | None = None
    runtime: dict[str, dict] = field(default_factory=dict)
    tiny_vae: bool = False


def report_json(report: LatencyReport) -> dict:
    """The JSON document: settings, machine, probe, compile and first-call times, memory, FLOPs, fits, rows."""
    data = {key: getattr(report, key) for key in (
        "model", "format", "precision", "tiny_vae", "width", "height", "guidance", "runs", "warmup", "compile_cache")}
    first = report.rows[0]
    data.update(
        sdcpu_version=sdcpu.__version__, machine=report.machine, gemm_probe=asdict(report.gemm),
        gemm_probe_openvino=asdict(report.gemm_openvino) if report.gemm_openvino else None,
        unet_vs_openvino_gemm=unet_vs_gemm(report),
        compile_s=report.compile_s, first_call_s=first.first_call, warm_total_s=first.total_median,
        memory=report.memory, runtime=report.runtime, unet_flops=asdict(report.flops) if report.flops else None,
        fits=[asdict(fit) for fit in fit_totals(report.rows)],
        rows=[{**asdict(row), **row_compute(row, report.flops)} for row in report.rows],
    )
    return data


def unet_vs_gemm(report: "LatencyReport") -> float | None:
    """The best row's UNet TFLOP/s over the OpenVINO GEMM probe's: 1 means the UNet runs at plain GEMM speed."""
    if report.flops is None or report.gemm_openvino is None:
        return None
    best = max(row_compute(row, report.flops)["unet_tflops"] for row in report.rows)
    return best * 1e3 / report.gemm_openvino.gflops


COMPUTE_COLUMNS = ["UNet calls", "UNet s/call median", "GFLOP/step", "TFLOP/s"]


def compute_cells(row: LatencyRow, flops: UnetFlops | None) -> list:
    """UNet calls per image, median seconds per call, GFLOP per step and achieved TFLOP/s of one row."""
    compute = row_compute(row, flops)
    per_step, tflops = compute["unet_flops_per_step"], compute["unet_tflops"]
    return [row.unet_calls, f"{row.unet_call_median:.4f}", "n/a" if per_step is None else f"{per_step / 1e9:.3f}",
            "n/a" if tflops is None else f"{tflops:.4f}"]


def bench_table(rows: list[LatencyRow], flops: UnetFlops | None) -> str:
    """One line per scheduler and step count: component and step seconds, then UNet work and throughput."""
    return markdown_table(LATENCY_COLUMNS + COMPUTE_COLUMNS,
                          (latency_cells(row) + compute_cells(row, flops) for row in rows))


def size_text(mib: float | None) -> str:
    """MiB below 1 GiB, GiB above."""
    if mib is None:
        return "n/a"
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def runtime_text(unet: dict) -> str:
    """How the UNet was compiled to run: compute precision, threads, streams, performance hint."""
    return (f"UNet compute: {unet['inference_precision']}, threads {unet['threads']}, "
            f"streams {unet['streams']}, performance hint {unet['performance_hint']}")


def report_text(report: LatencyReport) -> str:
    """The tables and summary lines printed on stdout."""
    r, first, m = report, report.rows[0], report.machine
    vae = ", tiny VAE" if r.tiny_vae else ""
    lines = [f"{r.model}: {r.format} {r.precision}{vae}, {r.width}x{r.height}, guidance {r.guidance:g}, "
             f"{plural(r.runs, 'timed run')} after {plural(r.warmup, 'warm-up call')} each", "", bench_table(r.rows, r.flops), ""]
    lines += [fit_text(fit) for fit in fit_totals(r.rows)]
    lines.append(f"compile (Pipeline.load): {r.compile_s:.2f} s; first call {first.first_call:.3f} s "
                 f"vs warm {first.total_median:.3f} s ({first.sampler}, {plural(first.steps, 'step')})")
    if r.flops:
        lines.append(f"UNet: {r.flops.per_call / 1e9:.3f} GFLOP per call (batch {r.flops.batch}"
                     f"{', CFG' if r.flops.cfg else ''}; convolutions, matmuls, attention)")
    lines.append(f"memory: peak RSS {size_text(r.memory['peak_rss_mib'])}, "
                 f"current RSS {size_text(r.memory['current_rss_mib'])}")
    for probe in (r.gemm, r.gemm_openvino):
        if probe:
            lines.append(f"{probe.label}: {probe.size}x{probe.size} @ {probe.size}x{probe.size}, "
                         f"{probe.gflops:.1f} GFLOP/s (median of {probe.repeats})")
    ratio = unet_vs_gemm(r)
    if ratio is not None:
        lines.append(f"UNet effective rate: {ratio:.2f}x the {r.gemm_openvino.label.replace(' probe', '')}")
    if "unet" in r.runtime:
        lines.append(runtime_text(r.runtime["unet"]))
    lines.append(f"machine: {m['cpu']}, {m['logical_cores']} logical cores; openvino {m['openvino']}, "
                 f"onnxruntime {m['onnxruntime']}, sdcpu {sdcpu.__version__}")
    return "\n".join(lines)
