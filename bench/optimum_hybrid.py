"""optimum-intel's own hybrid INT8 quantization of an optimum-layout folder: the fair INT8 peer of `--quant hybrid`.

Run under the venv bench/setup_optimum_venv.sh builds (bench/peers.py does it for the
`optimum-intel-int8-hybrid` peer):
    bench/.venv-optimum/bin/python bench/optimum_hybrid.py LAYOUT OUT --family sd15 [--samples 32]

optimum's hybrid mode (OVWeightQuantizationConfig(quant_method="hybrid")): the UNet's MatMul/embedding
weights int8, its other ops' activations and weights int8 from calibration on the pipeline's own UNet
inputs, the other graphs int8 weight-only. Calibrated on sdcpu's calibration captions (the machine has
no dataset hub) with as many UNet samples as sdcpu's export uses by default, so the two recipes see the
same amount of data.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

PIPELINE_CLASSES = {
    "sd15": "OVStableDiffusionPipeline",
    "lcm": "OVLatentConsistencyModelPipeline",
    "sdxl-turbo": "OVStableDiffusionXLPipeline",
}
PROMPTS = Path(__file__).resolve().parents[1] / "export" / "calibration_prompts.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layout", type=Path, help="folder bench/optimum_layout.py wrote")
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", choices=sorted(PIPELINE_CLASSES), required=True)
    parser.add_argument("--samples", type=int, default=32, help="UNet calibration samples (sdcpu's default)")
    args = parser.parse_args()

    import optimum.intel
    from optimum.intel import OVConfig, OVQuantizer, OVWeightQuantizationConfig

    prompts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()]
    cls = getattr(optimum.intel, PIPELINE_CLASSES[args.family])
    pipe = cls.from_pretrained(str(args.layout), device="CPU", compile=False, export=False, local_files_only=True)
    config = OVWeightQuantizationConfig(bits=8, quant_method="hybrid", dataset=prompts, num_samples=args.samples)
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    OVQuantizer(pipe).quantize(ov_config=OVConfig(quantization_config=config), save_directory=str(staging))
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
