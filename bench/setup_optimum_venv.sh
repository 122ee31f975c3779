#!/usr/bin/env bash
# Build the separate venv the optimum-intel bench peer (bench/peer_optimum.py) runs in.
#
#   bash bench/setup_optimum_venv.sh          # venv at $SDCPU_OPTIMUM_VENV, default bench/.venv-optimum
#
# optimum-intel cannot share sdcpu's venv: with our pins (diffusers 0.42, transformers 5.23) pip picks
# optimum-intel 1.15.0, which fails, and 2.2.0 needs transformers<5.6 and pulls torchvision. The set
# below is the newest that resolves together on torch 2.13.0 (CPU) and imports + runs
# OVStableDiffusionPipeline / OVLatentConsistencyModelPipeline / OVStableDiffusionXLPipeline on
# OpenVINO 2026.4:
#   optimum-intel 2.1.0 (the last release without the torchvision requirement; caps transformers<5.6
#   and huggingface-hub<1.22), optimum 2.3.0, transformers 5.5.4, diffusers 0.37.1 (0.38+ needs
#   huggingface-hub>=1.32), openvino 2026.4.1, openvino-tokenizers 2026.4.1.0.
# Every other package is pinned to the version resolved with them (constraints below).
#
# torch must be the CPU build of 2.13.0: any other torch (or the PyPI CUDA build) pulls several GB
# of CUDA packages. The script checks what pip would install before installing it; point
# SDCPU_TORCH_SPEC at a local CPU wheel (or set PIP_FIND_LINKS) where pip does not find one.
# Idempotent: rerunning on an up-to-date venv installs nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SDCPU_OPTIMUM_VENV:-$HERE/.venv-optimum}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${SDCPU_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
        || { echo "setup_optimum_venv: need Python >= 3.10 ($PYTHON)" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
CONSTRAINTS="$VENV/sdcpu-optimum-constraints.txt"
cat > "$CONSTRAINTS" <<'EOF'
torch==2.13.0
optimum-intel==2.1.0
optimum==2.3.0
transformers==5.5.4
diffusers==0.37.1
openvino==2026.4.1
openvino-tokenizers==2026.4.1.0
openvino-telemetry==2025.2.0
nncf==3.4.0
huggingface_hub==1.21.0
tokenizers==0.22.2
safetensors==0.7.0
numpy==2.4.6
pillow==13.0.0
scipy==1.17.1
scikit-learn==1.9.1
annotated-doc==0.0.7
anyio==4.16.0
certifi==2026.10.18
charset-normalizer==3.5.2
click==8.5.1
cloudpickle==3.1.2
filelock==4.2.12
fsspec==2026.9.0
h11==0.16.0
hf-xet==1.8.0
httpcore==1.0.9
httpx==0.28.1
idna==3.20
importlib_metadata==10.2.0
Jinja2==3.1.6
joblib==1.6.0
lazy-importer==0.1.0
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
mpmath==1.3.0
narwhals==2.29.0
networkx==3.6.1
ninja==1.13.2
packaging==26.3
psutil==7.2.2
pydot==4.0.1
Pygments==2.21.0
pyparsing==3.3.3
PyYAML==6.0.3
regex==2026.11.15
requests==2.34.2
rich==15.0.0
shellingham==1.5.4
sympy==1.14.0
tabulate==0.10.0
threadpoolctl==3.8.0
tqdm==4.70.1
typer==0.25.1
typing_extensions==4.16.0
urllib3==2.8.0
zipp==4.1.2
EOF

PIP=("$PY" -m pip --disable-pip-version-check)

# torch first, and only if pip would install a CPU build (checked from metadata, nothing downloaded big).
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") and torch.version.cuda is None else 1)' 2>/dev/null; then
    REPORT="$(mktemp)"
    trap 'rm -f "$REPORT"' EXIT
    "${PIP[@]}" install --quiet --dry-run --no-deps --ignore-installed --report "$REPORT" "$TORCH_SPEC"
    "$PY" - "$REPORT" <<'EOF'
import json, sys
items = json.load(open(sys.argv[1]))["install"]
torch = next(i for i in items if i["metadata"]["name"] == "torch")
version, deps = torch["metadata"]["version"], torch["metadata"].get("requires_dist") or []
url = torch["download_info"]["url"]
if not version.startswith("2.13.0") or any(d.startswith("nvidia") for d in deps):
    sys.exit(f"setup_optimum_venv: pip would install torch {version} from {url}, not the 2.13.0 CPU build; "
             "set SDCPU_TORCH_SPEC to a local CPU wheel (or PIP_FIND_LINKS to its folder)")
print(f"setup_optimum_venv: torch {version} from {url}")
EOF
    "${PIP[@]}" install --quiet -c "$CONSTRAINTS" "$TORCH_SPEC"
fi

"${PIP[@]}" install --quiet -c "$CONSTRAINTS" \
    optimum-intel==2.1.0 optimum==2.3.0 transformers==5.5.4 diffusers==0.37.1 \
    openvino==2026.4.1 openvino-tokenizers==2026.4.1.0 nncf==3.4.0

"$PY" - <<'EOF'
import torch
from optimum.intel import OVLatentConsistencyModelPipeline, OVStableDiffusionPipeline, OVStableDiffusionXLPipeline
from importlib.metadata import version
assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build"
print("setup_optimum_venv: ok:", ", ".join(f"{p} {version(p)}" for p in
      ("optimum-intel", "optimum", "diffusers", "transformers", "openvino", "torch")))
EOF
echo "$VENV/bin/python"
