#!/usr/bin/env bash
# Intra-distillation alone (Xu et al. 2022) on IWSLT14 De->En: one model, K=3 dropout passes.
#
#   bash scripts/recipe_iwslt14_intra.sh --data data/iwslt14/bin --out runs/iwslt14 [--baseline]
#
# --baseline trains the same model without intra-distillation (K=1) for the comparison.
# Evaluates the final checkpoint with ensdist-evaluate (BLEU, ECE). One GPU; see docs/recipes.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONFIG="$ROOT/configs/iwslt14_de_en_small.sh" DATA="" OUT="" PASSES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --baseline) PASSES=1; shift ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
load_config "$CONFIG"
PASSES="${PASSES:-$INTRA_PASSES}"
[ -d "$DATA" ] || die "--data ${DATA:-(none)}: no such directory (run scripts/prepare_iwslt14.sh)"
[ -n "$OUT" ] || die "--out: no output directory given"
name=$([ "$PASSES" = 1 ] && echo baseline || echo "intra_k$PASSES")
dir="$OUT/$name"
mkdir -p "$dir"
echo "[intra] $name: $STUDENT_MAX_UPDATE updates -> $dir"
"${FAIRSEQ_TRAIN[@]}" "$DATA" --user-dir "$PLUGIN_DIR" --task "$TEACHER_TASK" \
  "${ARCH_ARGS[@]}" "${TRAIN_ARGS[@]}" --criterion token_kd --kd-loss none \
  --label-smoothing "$LS_EPSILON" --intra-passes "$PASSES" --intra-alpha "$INTRA_ALPHA" \
  --intra-p "$INTRA_P" --intra-q "$INTRA_Q" --max-update "$STUDENT_MAX_UPDATE" --seed 1 \
  --save-dir "$dir" --no-epoch-checkpoints --log-format simple 2>&1 | tee -a "$dir/train.log"
"${BIN}ensdist-evaluate" "$DATA" --path "$dir/checkpoint_last.pt" --name "$name" \
  --output-json "$dir/$name.json" "${GEN_ARGS[@]}"
