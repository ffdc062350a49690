#!/usr/bin/env bash
# The main job on the built-in corpus (or your own prepared data), in one command:
#
#   bash scripts/demo.sh [--out runs/demo] [--config configs/builtin_cpu.sh] [--data BIN_DIR]
#                        [--reference RAW_TEST_TARGET] [--members K]
#
# Stages: setup -> prepare the corpus -> K CE+SWA teachers -> BLEU of members and ensembles.
# Every stage skips work that is already finished, so re-running is cheap and an interrupted run
# resumes. Results: OUT/results/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/runs/demo" CONFIG="$ROOT/configs/builtin_cpu.sh" DATA="" REFERENCE="" MEMBERS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --reference) REFERENCE="$2"; shift 2 ;;
    --members) MEMBERS="$2"; shift 2 ;;
    *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 1 ;;
  esac
done
STARTED=$(date +%s)
stage() { echo; echo "=== [demo] $1 ($(( $(date +%s) - STARTED ))s elapsed)"; }

stage "setup: .venv"
bash "$ROOT/scripts/setup_env.sh"
source "$ROOT/scripts/lib.sh"
load_config "$CONFIG"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"

if [ -z "$DATA" ]; then
  stage "prepare: built-in corpus -> $OUT/data"
  bash "$ROOT/scripts/prepare_builtin.sh" --config "$CONFIG" --out "$OUT/data"
  DATA="$OUT/data/bin"
  REFERENCE="$OUT/data/raw/test.$TGT"
fi
[ -d "$DATA" ] || die "--data $DATA: no such directory"

stage "teachers: $MEMBERS CE+SWA members"
bash "$ROOT/scripts/train_ensemble.sh" --config "$CONFIG" --data "$DATA" --out "$OUT/teachers" \
  --mode ce --members "$MEMBERS"

stage "evaluate: BLEU of each member and of the ensembles of 1..$MEMBERS"
mkdir -p "$OUT/results"
paths=$(for k in $(seq 1 "$MEMBERS"); do printf '%s:' "$OUT/teachers/ce/seed$k/checkpoint_swa.pt"; done)
if [ -f "$OUT/results/teachers_bleu.json" ]; then
  echo "[bleu] $OUT/results/teachers_bleu.json exists, skipping"; cat "$OUT/results/teachers_bleu.md"
else
  "${BIN}ensdist-bleu-table" "$DATA" --path "${paths%:}" ${REFERENCE:+--reference "$REFERENCE"} \
    "${GEN_ARGS[@]}" --output-json "$OUT/results/teachers_bleu.json" \
    --output-md "$OUT/results/teachers_bleu.md"
fi
stage "done: results in $OUT/results"
