#!/usr/bin/env bash
# Distill a memoized teacher store into one student.
#
#   bash scripts/distill.sh --config configs/builtin_cpu.sh --data DATA_BIN --store STORE.h5 \
#        --variant mean_kd|mean_kd_tail|proxy_dirichlet|intra_mean_kd|seqkd_mean_kd --out DIR \
#        [--topk V'] [-- extra fairseq-train args]
#   bash scripts/distill.sh --config ... --data SEQKD_DATA --variant seqkd --out DIR   (no store)
#
# Variants (criterion token_kd with its defaults, docs/criterion.md):
#   mean_kd          ensemble-mean KD, (1-β)·NLL^LS + β·KD over the stored top-V′ (Reich et al.)
#   mean_kd_tail     mean_kd with --kd-truncation tail_kl: the tail mass as one more event, an exact
#                    (V′+1)-category KL (docs/criterion.md)
#   proxy_dirichlet  Proxy-Dirichlet reverse KL with the Dirichlet student (Ryabinin et al.)
#   intra_mean_kd    mean_kd plus intra-distillation over INTRA_PASSES (3) dropout passes (Xu et al.)
#   seqkd            sequence-level KD (Kim & Rush): the NLL^LS term alone (--kd-loss none) on
#                    --data made by ensdist-seqkd (the teachers' beam search as targets)
#   seqkd_mean_kd    mean_kd on ensdist-seqkd's data, --store memoized on those targets
#                    (docs/sequence_kd.md); both validate on the references
# V′ is the store's (the task reads it); --topk asks for fewer. The student trains from scratch
# (random init, as the paper found best) into DIR/<variant>/ by the teachers' stopping rule
# (docs/teachers.md): early stopping on validation loss with PATIENCE, capped at STUDENT_MAX_EPOCH
# (default MAX_EPOCH) epochs and STUDENT_MAX_UPDATE updates (intra-distillation's α schedule runs over the latter);
# with STUDENT_SWA_EPOCHS > 0 its model is checkpoint_swa.pt (SWA ending at the best epoch),
# else checkpoint_best.pt; when the update cap ends inside an epoch and that last validation is
# the best, the SWA window ends at the best epoch end instead (no epoch checkpoint holds a
# mid-epoch model). A finished student (DIR/<variant>/done) is skipped; an interrupted one
# resumes from checkpoint_last.pt (docs/teachers.md says what a resumed run reproduces).
# SIGINT/SIGTERM stop the trainer too; one training at a time per directory (DIR/<variant>/.lock).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG="" DATA="" STORE="" VARIANT="" OUT="" TOPK_ARGS=() EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --data) need_value "$@"; DATA="$2"; shift 2 ;;
    --store) need_value "$@"; STORE="$2"; shift 2 ;;
    --variant) need_value "$@"; VARIANT="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --topk) need_value "$@"; check_int --topk "$2" 1; TOPK_ARGS=(--teacher-topk "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage_error "unknown option $1 (see --help)" ;;
  esac
done
load_config "$CONFIG"
[ -d "$DATA" ] || die "--data ${DATA:-(none)}: no such directory"
STORE_ARGS=()
case "$VARIANT" in
  seqkd) [ -z "$STORE" ] && [ "${#TOPK_ARGS[@]}" = 0 ] || usage_error "--store/--topk: --variant seqkd trains on the distilled targets alone (no store)" ;;
  *) [ -f "$STORE" ] || die "--store ${STORE:-(none)}: no such file (run ensdist-memoize first)"
     STORE_ARGS=(--teacher-store "$STORE") ;;
esac
case "$VARIANT" in  # sequence-level KD trains on ensdist-seqkd's output, never on the references
  seqkd|seqkd_mean_kd) [ -f "$DATA/seqkd.json" ] || die "--data $DATA: not made by ensdist-seqkd (no seqkd.json): --variant $VARIANT trains on the teachers' translations" ;;
esac
[ -n "$OUT" ] || die "--out: no output directory given"
STUDENT_SWA_EPOCHS="${STUDENT_SWA_EPOCHS:-$SWA_EPOCHS}"

ARCH=("${ARCH_ARGS[@]}")
KD=(--criterion token_kd)
case "$VARIANT" in
  mean_kd|seqkd_mean_kd) KD+=(--kd-loss mean_kd) ;;
  seqkd) KD+=(--kd-loss none) ;;
  mean_kd_tail) KD+=(--kd-loss mean_kd --kd-truncation tail_kl) ;;
  proxy_dirichlet)
    KD+=(--kd-loss proxy_dirichlet)
    # the same network, read as Dirichlet concentrations exp(z)+1 (docs/criterion.md)
    for i in "${!ARCH[@]}"; do
      if [ "${ARCH[$i]}" = "--arch" ]; then
        case "${ARCH[i+1]}" in
          transformer|transformer_wmt_en_de) ARCH[i+1]=dirichlet_transformer ;;
          transformer_iwslt_de_en) ARCH[i+1]=dirichlet_transformer_iwslt_de_en ;;
          *) ARCH[i+1]="${DIRICHLET_ARCH:?$CONFIG: no Dirichlet variant of --arch ${ARCH[i+1]} known; set DIRICHLET_ARCH}" ;;
        esac
      fi
    done ;;
  intra_mean_kd) KD+=(--kd-loss mean_kd --intra-passes "${INTRA_PASSES:-3}") ;;
  *) usage_error "--variant ${VARIANT:-(none)}: must be mean_kd, mean_kd_tail, proxy_dirichlet, intra_mean_kd, seqkd or seqkd_mean_kd" ;;
esac
# Students may need more epochs than their teachers (the KD target regularizes): their own cap.
STUDENT_MAX_EPOCH="${STUDENT_MAX_EPOCH:-$MAX_EPOCH}"
mapfile -t STOP < <(stop_rule_args "$STUDENT_MAX_EPOCH" "$PATIENCE" "$STUDENT_SWA_EPOCHS")

[ -f "$OUT/$VARIANT/done" ] || echo "[distill] $VARIANT: from ${STORE:-$DATA} (patience $PATIENCE, at most $STUDENT_MAX_EPOCH epochs / $STUDENT_MAX_UPDATE updates) -> $OUT/$VARIANT"
train_then_average "$OUT/$VARIANT" "$STUDENT_SWA_EPOCHS" distill "$VARIANT" \
  "${FAIRSEQ_TRAIN[@]}" "$DATA" --user-dir "$PLUGIN_DIR" --task translation_distill \
  "${STORE_ARGS[@]}" "${TOPK_ARGS[@]}" "${ARCH[@]}" "${TRAIN_ARGS[@]}" "${EVAL_ARGS[@]}" \
  "${KD[@]}" "${STUDENT_ARGS[@]}" --seed 1 "${STOP[@]}" --max-update "$STUDENT_MAX_UPDATE" \
  --save-dir "$OUT/$VARIANT" --log-format simple "${EXTRA[@]}"
