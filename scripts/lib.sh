# Shared helpers for the bash recipes (sourced, not run): the one definition of each.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "error: $*" >&2; exit 1; }

# tool NAME: the repo venv's console script NAME if there is one, else NAME on PATH (a user's own
# env), else empty. PYTHON and BIN follow the same rule (BIN is the prefix for console scripts).
tool() {
  if [ -x "$ROOT/.venv/bin/$1" ]; then echo "$ROOT/.venv/bin/$1"; else command -v "$1" || true; fi
}
if [ -x "$ROOT/.venv/bin/python" ]; then
  PYTHON="$ROOT/.venv/bin/python"; BIN="$ROOT/.venv/bin/"
else
  PYTHON="$(command -v python3 || true)"; BIN=""
fi
PLUGIN_DIR="$ROOT/ensdist_fairseq"
# The package is importable from the checkout even where it is not installed (prepare scripts).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# fairseq-train as the recipes run it: the venv's console script, or through a launcher for
# several machines, e.g. LAUNCHER="torchrun --nnodes 2 --nproc_per_node 8 ..." (docs/teachers.md).
if [ -n "${LAUNCHER:-}" ]; then read -r -a FAIRSEQ_TRAIN <<< "$LAUNCHER -m fairseq_cli.train"
else FAIRSEQ_TRAIN=("${BIN}fairseq-train"); fi

need_value() { [ "$#" -ge 2 ] || die "$1 needs a value"; }

# run_logged LOG WHAT CMD...: run CMD with stdout+stderr appended to LOG (a resumed run keeps
# the log of its first part); on failure show LOG's last lines and stop with one error line.
run_logged() {
  local log="$1" what="$2"; shift 2
  "$@" >> "$log" 2>&1 || { tail -n 10 "$log" >&2; die "$what failed (log: $log)"; }
}

load_config() {  # load_config FILE: source a configs/*.sh file, with a clear error if missing
  [ -n "${1:-}" ] || die "--config: no config file given"
  [ -f "$1" ] || die "--config $1: no such config file (see configs/)"
  # What a config may leave out (configs hold only what differs from these defaults):
  # the teachers' task (plain translation when it has no store) with validation ECE-1/ECE-5
  # per epoch (the learning curves and the report's regime read it), extra argument lists.
  TEACHER_TASK=translation_distill
  EVAL_ARGS=(--eval-calibration)
  STUDENT_ARGS=() DEVICE_ARGS=() GEN_ARGS=()
  # shellcheck disable=SC1090
  source "$1"
}

# The early-stopping rule every training follows (docs/teachers.md): fairseq-train stops after
# PATIENCE validations without a new best validation NLL of the references (nll_loss: the same
# quantity for CE, label-smoothed and distilled models), or at MAX_EPOCH; epoch checkpoints are
# kept for the SWA window (SWA_EPOCHS ending at the best epoch) and the PATIENCE epochs after.
stop_rule_args() {  # stop_rule_args MAX_EPOCH PATIENCE SWA_EPOCHS -> fairseq-train arguments
  local keep=$(( $3 + $2 ))
  printf '%s\n' --max-epoch "$1" --best-checkpoint-metric nll_loss
  [ "$2" -gt 0 ] && printf '%s\n' --patience "$2"
  if [ "$3" -gt 0 ]; then printf '%s\n' --keep-last-epochs "$keep"; else printf '%s\n' --no-epoch-checkpoints; fi
}

# final_checkpoint DIR SWA_EPOCHS: the model a run is judged by: its SWA model when SWA is on,
# else checkpoint_best.pt (the best validation loss).
final_checkpoint() {
  if [ "$2" -gt 0 ]; then echo "$1/checkpoint_swa.pt"; else echo "$1/checkpoint_best.pt"; fi
}

# last_epoch_line LOG: a one-line summary of where the run stopped (for the recipe's output).
last_epoch_line() {
  grep "| valid on" "$1" | tail -n 1 | sed "s/^.*| valid on 'valid' subset |/    last validation:/" || true
}

# cuda_visible: true when the venv's torch sees a CUDA device (the demo then picks
# configs/builtin_gpu.sh). ENSDIST_CUDA=1 or 0 overrides the detection (tests, odd drivers).
cuda_visible() {
  case "${ENSDIST_CUDA:-}" in
    1) return 0 ;; 0) return 1 ;;
  esac
  [ -n "$PYTHON" ] && "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}
