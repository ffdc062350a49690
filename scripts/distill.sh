#!/usr/bin/env bash
# Distill a memoized teacher store into one student.
#
#   bash scripts/distill.sh --config configs/builtin_cpu.sh --data DATA_BIN --store STORE.h5 \
#        --variant mean_kd|proxy_dirichlet|intra_mean_kd --out DIR [-- extra fairseq-train args]
#
# Variants (criterion token_kd, docs/criterion.md):
#   mean_kd          ensemble-mean KD, (1-β)·NLL^LS + β·KD over the stored top-V′ (Reich et al.)
#   proxy_dirichlet  Proxy-Dirichlet reverse KL with the Dirichlet student (Ryabinin et al.)
#   intra_mean_kd    mean_kd plus intra-distillation over K dropout passes (Xu et al.)
# The student trains from scratch (random init, as the paper found best) for STUDENT_MAX_UPDATE
# updates into DIR/<variant>/; its final model is checkpoint_last.pt. A finished student
# (DIR/<variant>/done) is skipped; an interrupted one resumes from checkpoint_last.pt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG="" DATA="" STORE="" VARIANT="" OUT="" EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --store) STORE="$2"; shift 2 ;;
    --variant) VARIANT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
load_config "$CONFIG"
[ -d "$DATA" ] || die "--data ${DATA:-(none)}: no such directory"
[ -f "$STORE" ] || die "--store ${STORE:-(none)}: no such file (run ensdist-memoize first)"
[ -n "$OUT" ] || die "--out: no output directory given"

ARCH=("${ARCH_ARGS[@]}")
KD=(--criterion token_kd --label-smoothing "$LS_EPSILON" --kd-weight "$KD_WEIGHT")
case "$VARIANT" in
  mean_kd) KD+=(--kd-loss mean_kd) ;;
  proxy_dirichlet)
    KD+=(--kd-loss proxy_dirichlet --precision-limit "$PRECISION_LIMIT")
    # the same network, read as Dirichlet concentrations exp(z)+1 (docs/criterion.md)
    for i in "${!ARCH[@]}"; do
      [ "${ARCH[$i]}" = "--arch" ] && ARCH[i+1]="$DIRICHLET_ARCH"
    done ;;
  intra_mean_kd)
    KD+=(--kd-loss mean_kd --intra-passes "$INTRA_PASSES" --intra-alpha "$INTRA_ALPHA"
         --intra-p "$INTRA_P" --intra-q "$INTRA_Q") ;;
  *) die "--variant ${VARIANT:-(none)}: must be mean_kd, proxy_dirichlet or intra_mean_kd" ;;
esac

dir="$OUT/$VARIANT"
if [ -f "$dir/done" ]; then
  echo "[distill] $VARIANT: done ($dir/checkpoint_last.pt), skipping"; exit 0
fi
mkdir -p "$dir"
echo "[distill] $VARIANT: $STUDENT_MAX_UPDATE updates from $STORE -> $dir"
"${FAIRSEQ_TRAIN[@]}" "$DATA" --user-dir "$PLUGIN_DIR" --task translation_distill --teacher-store "$STORE" \
  --teacher-topk "$TOPK" "${ARCH[@]}" "${TRAIN_ARGS[@]}" "${KD[@]}" --seed 1 \
  --max-update "$STUDENT_MAX_UPDATE" --save-dir "$dir" --no-epoch-checkpoints \
  --log-format simple "${EXTRA[@]}" > "$dir/train.log" 2>&1 \
  || { tail -n 5 "$dir/train.log" >&2; die "distilling $VARIANT failed (log: $dir/train.log)"; }
grep "| train |" "$dir/train.log" | tail -n 1 | sed "s/^.*| train |/    last epoch:/"
touch "$dir/done"
