#!/usr/bin/env bash
# The device check: one GPU, no network, <= 10 minutes on one H100, one table printed.
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--dry-run] [gpu_check.py options...]
#
# What it measures and the targets: benchmarks/gpu_check.py's docstring (students in fp32 /
# --fp16 / --bf16, memoize on CUDA vs CPU, memoize vs raw forward, criterion step-time ratios).
#
# Install, offline: python3 must already hold CUDA torch (the GPU machines here: Python 3.12,
# torch 2.11 + cu130, torchaudio, h5py, sacrebleu, sentencepiece, numpy, regex, tqdm, scikit-learn;
# fairseq's cffi/cython requirements are build-time only). The rest comes as wheels from --wheels DIR
# (default .whl/ at the repository root), installed with --no-deps into $SITE (/tmp/ensdist_site),
# which goes first on PYTHONPATH with the repository itself (nothing is installed into python3).
# Fetch the wheels on a machine with network, at the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl ve-fairseq==0.12.3 hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 bitarray==3.12.3
#
# (antlr4-python3-runtime 4.9.3 is a source distribution only: fetch it without --only-binary
# and build its wheel with `python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3`.)
# --dry-run: tiny sizes on the CPU with the repository's .venv (no install), to test the code paths.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$ROOT/.whl" DRY=0 PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) [ "$#" -ge 2 ] || { echo "error: --wheels needs a value" >&2; exit 2; }; WHEELS="$2"; shift 2 ;;
    --dry-run) DRY=1; PASS+=("$1"); shift ;;
    *) PASS+=("$1"); shift ;;
  esac
done

if [ "$DRY" = 1 ]; then
  PY="$ROOT/.venv/bin/python"
  [ -x "$PY" ] || PY=python3
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  PY=python3
  SITE=${SITE:-/tmp/ensdist_site}
  if ! "$PY" -c "import fairseq, hydra, omegaconf, bitarray" 2>/dev/null; then
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "error: --wheels $WHEELS: no wheels (see the header of $0)" >&2; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'" \
    || { echo "error: CUDA is not available to $PY (use --dry-run on a CPU)" >&2; exit 1; }
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "${PASS[@]}"
