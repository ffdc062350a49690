#!/usr/bin/env bash
# Intra-distillation alone (Xu et al. 2022) on IWSLT14 De->En: one model, K=3 dropout passes.
#
#   bash scripts/recipe_iwslt14_intra.sh --data data/iwslt14/bin --out runs/iwslt14 [--baseline]
#        [--reference data/iwslt14/raw/test.en] [--config configs/iwslt14_de_en_small.sh]
#
# --baseline trains the same model without intra-distillation (K=1) for the comparison.
# As the authors: STUDENT_MAX_UPDATE (50k) updates, then the checkpoint with the lowest
# validation loss (checkpoint_best.pt) is evaluated with ensdist-evaluate: BLEU (sacreBLEU)
# against the raw test.en (default: DATA/../raw/test.en, where scripts/prepare_iwslt14.sh puts
# it), ECE. One GPU; see docs/recipes.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CONFIG="$ROOT/configs/iwslt14_de_en_small.sh" DATA="" OUT="" PASSES="" REFERENCE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data) need_value "$@"; DATA="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --reference) need_value "$@"; REFERENCE="$2"; shift 2 ;;
    --baseline) PASSES=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1 (see --help)" ;;
  esac
done
load_config "$CONFIG"
PASSES="${PASSES:-${INTRA_PASSES:-3}}"
check_int INTRA_PASSES "$PASSES" 1 64
[ -d "$DATA" ] || die "--data ${DATA:-(none)}: no such directory (run scripts/prepare_iwslt14.sh)"
[ -n "$OUT" ] || die "--out: no output directory given"
REFERENCE="${REFERENCE:-$DATA/../raw/test.$TGT}"
[ -f "$REFERENCE" ] || die "--reference $REFERENCE: no such file (the raw test.$TGT to score BLEU against)"
name=$([ "$PASSES" = 1 ] && echo baseline || echo "intra_k$PASSES")
dir="$OUT/$name"
[ -f "$dir/done" ] || echo "[intra] $name: $STUDENT_MAX_UPDATE updates -> $dir (evaluating checkpoint_best.pt)"
train_then_average "$dir" 0 intra "$name" \
  "${FAIRSEQ_TRAIN[@]}" "$DATA" --user-dir "$PLUGIN_DIR" --task "$TEACHER_TASK" \
  "${ARCH_ARGS[@]}" "${TRAIN_ARGS[@]}" "${EVAL_ARGS[@]}" --criterion token_kd --kd-loss none \
  --label-smoothing "$LS_EPSILON" --intra-passes "$PASSES" \
  --max-update "$STUDENT_MAX_UPDATE" --seed 1 --save-dir "$dir" --no-epoch-checkpoints \
  --log-format simple
"${BIN}ensdist-evaluate" "$DATA" --path "$dir/checkpoint_best.pt" --name "$name" \
  --reference "$REFERENCE" --output "$dir/$name.json" "${DEVICE_ARGS[@]}" "${GEN_ARGS[@]}"
