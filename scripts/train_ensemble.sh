#!/usr/bin/env bash
# Train K seeded teachers (seeds 1..K) in CE or LS mode, each followed by SWA.
#
#   bash scripts/train_ensemble.sh --config configs/builtin_cpu.sh --data DATA_BIN --out DIR \
#        [--mode ce|ls] [--members K] [-- extra fairseq-train arguments]
#
# Member k is written to DIR/<mode>/seed<k>/; its SWA model is checkpoint_swa.pt there.
# Finished members (checkpoint_swa.pt present) are skipped; an interrupted member resumes from
# its checkpoint_last.pt (fairseq-train restores it by itself).
# Multi-GPU: fairseq-train uses every visible GPU (one process each) unless the config passes
# --cpu. Multi-node: set LAUNCHER, e.g. LAUNCHER="torchrun --nnodes 2 --nproc_per_node 8
# --rdzv_backend c10d --rdzv_endpoint HOST:29500", and the run goes through
# `$LAUNCHER -m fairseq_cli.train` (fairseq reads torchrun's RANK/WORLD_SIZE); under SLURM run
# this script in the job and pass --distributed-port PORT after `--` (fairseq reads SLURM_*).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG="" DATA="" OUT="" MODE=ce MEMBERS=3 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    --members) MEMBERS="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
load_config "$CONFIG"
[ -n "$DATA" ] || die "--data: no data directory given"
[ -d "$DATA" ] || die "--data $DATA: no such directory (run a scripts/prepare_*.sh first)"
[ -n "$OUT" ] || die "--out: no output directory given"
case "$MODE" in
  ce) EPS=0 ;;
  ls) EPS="$LS_EPSILON" ;;
  *) die "--mode $MODE: must be ce or ls" ;;
esac
[[ "$MEMBERS" =~ ^[1-9][0-9]*$ ]] || die "--members $MEMBERS: must be a positive integer"

for k in $(seq 1 "$MEMBERS"); do
  dir="$OUT/$MODE/seed$k"
  if [ -f "$dir/checkpoint_swa.pt" ]; then
    echo "[teachers] $MODE member $k/$MEMBERS: done ($dir/checkpoint_swa.pt), skipping"
    continue
  fi
  mkdir -p "$dir"
  echo "[teachers] $MODE member $k/$MEMBERS: training seed $k, $MAX_EPOCH epochs -> $dir"
  # --keep-last-epochs keeps exactly the epoch checkpoints SWA averages (the tail of the run).
  "${FAIRSEQ_TRAIN[@]}" "$DATA" --user-dir "$PLUGIN_DIR" --task "$TEACHER_TASK" \
    "${ARCH_ARGS[@]}" "${TRAIN_ARGS[@]}" \
    --criterion label_smoothed_cross_entropy --label-smoothing "$EPS" \
    --seed "$k" --max-epoch "$MAX_EPOCH" --save-dir "$dir" --keep-last-epochs "$SWA_EPOCHS" \
    --log-format simple "${EXTRA[@]}" > "$dir/train.log" 2>&1 \
    || { tail -n 5 "$dir/train.log" >&2; die "training $MODE member $k failed (log: $dir/train.log)"; }
  grep "| train |" "$dir/train.log" | tail -n 1 | sed "s/^.*| train |/    last epoch:/"
  echo "[teachers] $MODE member $k/$MEMBERS: SWA over the last $SWA_EPOCHS epochs"
  "$PYTHON" -m ensdist_fairseq.cli.swa --save-dir "$dir" --last-epoch "$MAX_EPOCH" \
    --epochs "$SWA_EPOCHS" --remove-snapshots
done
