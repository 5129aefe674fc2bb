#!/usr/bin/env bash
# GPU check (one CUDA device, <= 10 min): the gpu-marked tests, then the GPU benchmark.
#   bash benchmarks/gpu_check.sh               # COCO-scale PAL epoch (needs ~45 GB free disk)
#   PAIRS=8192 bash benchmarks/gpu_check.sh    # quick
set -euo pipefail
cd "$(dirname "$0")/.."
# PY: the interpreter holding alignbench (default .venv/bin/python; on a bare GPU node with the wheel installed
# elsewhere: PY="python3 -P", so the source folder alignbench/ does not shadow the installed package)
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ALIGNBENCH_PROGRESS=0
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
timeout 240 $PY -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -rs
timeout 330 $PY benchmarks/bench_gpu.py --pairs "${PAIRS:-82783}" --images "${IMAGES:-2048}" ${DATA_DIR:+--data-dir "$DATA_DIR"}
