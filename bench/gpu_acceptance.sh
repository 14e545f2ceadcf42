#!/usr/bin/env bash
# GPU acceptance (issue 13 part 4): CUDA + bf16 training, 2-process DDP, 5 000-sample FID, optimal denoiser on CUDA.
#   bash bench/gpu_acceptance.sh                # needs CUDA; < 10 min on one GPU; writes results/bench/gpu.txt
#   bash bench/gpu_acceptance.sh --cpu-dry-run  # plumbing check on CPU at toy sizes; writes nothing
# Exits non-zero without CUDA (unless --cpu-dry-run) and on any failed stage, naming it. See bench/gpu_acceptance.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the README's virtual environment, else python on PATH
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
"$PY" -c "import torch" 2>/dev/null || { echo "gpu_acceptance: $PY cannot import torch; install msrepro as the README says (.venv) or set PYTHON" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" bench/gpu_acceptance.py "$@"
