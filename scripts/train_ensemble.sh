#!/usr/bin/env bash
# Train K seeded teachers (seeds 1..K) in CE or LS mode, each followed by SWA.
#
#   bash scripts/train_ensemble.sh --config configs/builtin_cpu.sh --data DATA_BIN --out DIR \
#        [--mode ce|ls] [--members K | --seed K] [-- extra fairseq-train arguments]
#
# --seed K trains member K alone (the demo runs members as separate jobs to fill its slots).
# Member k is written to DIR/<mode>/seed<k>/; its SWA model is checkpoint_swa.pt there.
# Stopping rule (docs/teachers.md): early stopping on validation loss (PATIENCE epochs without a
# new best, MAX_EPOCH as a cap); SWA averages the SWA_EPOCHS epoch checkpoints ending at the
# best validation epoch. Finished members (DIR/<mode>/seed<k>/done) are skipped; an
# interrupted member resumes from its checkpoint_last.pt (fairseq-train restores it by itself).
# SIGINT/SIGTERM stop the trainer too; one training at a time per directory (its .lock).
# Multi-GPU: fairseq-train uses every visible GPU (one process each) unless the config passes
# --cpu. Multi-node: set LAUNCHER, e.g. LAUNCHER="torchrun --nnodes 2 --nproc_per_node 8
# --rdzv_backend c10d --rdzv_endpoint HOST:29500", and the run goes through
# `$LAUNCHER -m fairseq_cli.train` (fairseq reads torchrun's RANK/WORLD_SIZE); under SLURM run
# this script in the job and pass --distributed-port PORT after `--` (fairseq reads SLURM_*).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG="" DATA="" OUT="" MODE=ce MEMBERS=3 ONLY_SEED="" EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --data) need_value "$@"; DATA="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --mode) need_value "$@"; MODE="$2"; shift 2 ;;
    --members) need_value "$@"; MEMBERS="$2"; shift 2 ;;
    --seed) need_value "$@"; ONLY_SEED="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage_error "unknown option $1 (see --help)" ;;
  esac
done
load_config "$CONFIG"
[ -n "$DATA" ] || die "--data: no data directory given"
[ -d "$DATA" ] || die "--data $DATA: no such directory (run a scripts/prepare_*.sh first)"
[ -n "$OUT" ] || die "--out: no output directory given"
case "$MODE" in
  ce) EPS=0 ;;
  ls) EPS="$LS_EPSILON" ;;
  *) usage_error "--mode $MODE: must be ce or ls" ;;
esac
check_int --members "$MEMBERS" 1
[ -z "$ONLY_SEED" ] || check_int --seed "$ONLY_SEED" 1
[ "$SWA_EPOCHS" -ge 1 ] || die "$CONFIG: SWA_EPOCHS must be >= 1 for teachers"
mapfile -t STOP < <(stop_rule_args "$MAX_EPOCH" "$PATIENCE" "$SWA_EPOCHS")

for k in ${ONLY_SEED:-$(seq 1 "$MEMBERS")}; do
  dir="$OUT/$MODE/seed$k"
  # members finished before the done marker existed: their SWA model is the marker
  [ ! -f "$dir/checkpoint_swa.pt" ] || [ -f "$dir/done" ] || touch "$dir/done"
  [ -f "$dir/done" ] || echo "[teachers] $MODE member $k/$MEMBERS: seed $k (patience $PATIENCE, at most $MAX_EPOCH epochs, SWA over the $SWA_EPOCHS epochs ending at the best) -> $dir"
  train_then_average "$dir" "$SWA_EPOCHS" teachers "$MODE member $k/$MEMBERS" \
    "${FAIRSEQ_TRAIN[@]}" "$DATA" --user-dir "$PLUGIN_DIR" --task "$TEACHER_TASK" \
    "${ARCH_ARGS[@]}" "${TRAIN_ARGS[@]}" "${EVAL_ARGS[@]}" \
    --criterion label_smoothed_cross_entropy --label-smoothing "$EPS" \
    --seed "$k" "${STOP[@]}" --save-dir "$dir" --log-format simple "${EXTRA[@]}"
done
