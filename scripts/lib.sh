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
# The package is importable from the checkout even where it is not installed (prepare scripts);
# sourcing lib.sh twice (demo.sh: before and after the setup stage) adds it once.
case ":${PYTHONPATH:-}:" in *":$ROOT:"*) ;; *) export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" ;; esac

# fairseq-train as the recipes run it: the venv's console script, or through a launcher for
# several machines, e.g. LAUNCHER="torchrun --nnodes 2 --nproc_per_node 8 ..." (docs/teachers.md).
if [ -n "${LAUNCHER:-}" ]; then read -r -a FAIRSEQ_TRAIN <<< "$LAUNCHER -m fairseq_cli.train"
else FAIRSEQ_TRAIN=("${BIN}fairseq-train"); fi

# A wrong command line (a missing value, an unknown option, a number outside its range) stops
# with one error line and exit status 2, before any work: the rule of the ensdist-* commands.
usage_error() { echo "error: $*" >&2; exit 2; }
need_value() { [ "$#" -ge 2 ] || usage_error "$1 needs a value"; }

# usage [FILE]: the header comment of the script (its first comment block), without the '#'.
usage() {
  awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${1:-$0}"
}

# The numeric rule of every script option (the same as cli/options.py's integer and real):
#   check_int FLAG VALUE [LO [HI]]   a decimal integer in LO..HI (default 0..2147483647)
#   check_real FLAG VALUE [LO [HI]]  a finite decimal number in [LO, HI] (default: any finite)
# Anything else stops with "error: FLAG: must be ..., got 'VALUE'" (exit status 2).
INT_MAX=2147483647
check_int() {
  local flag="$1" v="$2" lo="${3:-0}" hi="${4:-$INT_MAX}" digits n
  [[ "$v" =~ ^[+-]?[0-9]+$ ]] || usage_error "$flag: must be an integer in $lo..$hi, got '$v'"
  digits="${v#[+-]}"; digits="${digits#"${digits%%[!0]*}"}"
  # beyond 18 digits bash arithmetic would wrap around; every bound here is far below that
  [ "${#digits}" -le 18 ] || usage_error "$flag: must be an integer in $lo..$hi, got '$v'"
  n=$(( 10#${digits:-0} )); [ "${v:0:1}" != "-" ] || n=$(( -n ))
  [ "$n" -ge "$lo" ] && [ "$n" -le "$hi" ] || usage_error "$flag: must be an integer in $lo..$hi, got '$v'"
}
check_real() {
  local flag="$1" v="$2" lo="${3:-}" hi="${4:-}" range
  range="${lo:+ in [$lo, ${hi:-inf}]}"
  [[ "$v" =~ ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$ ]] \
    || usage_error "$flag: must be a finite number$range, got '$v'"
  awk -v v="$v" -v lo="$lo" -v hi="$hi" 'BEGIN {
    x = v + 0; bad = (x > 1.7e308 || x < -1.7e308)  # an exponent too large for a double: inf
    if (lo != "" && x < lo + 0) bad = 1; if (hi != "" && x > hi + 0) bad = 1; exit bad }' \
    || usage_error "$flag: must be a finite number$range, got '$v'"
}

# run_logged LOG WHAT CMD...: run CMD with stdout+stderr appended to LOG (a resumed run keeps
# the log of its first part); on failure show LOG's last lines and stop with one error line.
# CMD runs in its own process group (setsid), and SIGINT/SIGTERM/SIGHUP to the script are
# passed on to that whole group (fairseq-train's GPU workers, DataLoader workers) and waited
# for: a stopped script leaves no trainer behind that a rerun would race against.
run_logged() {
  local log="$1" what="$2" rc=0; shift 2
  if command -v setsid >/dev/null; then setsid "$@" >> "$log" 2>&1 & else "$@" >> "$log" 2>&1 & fi
  CHILD=$!
  trap 'forward_signal TERM 143' TERM; trap 'forward_signal INT 130' INT; trap 'forward_signal HUP 129' HUP
  wait "$CHILD" || rc=$?
  trap - TERM INT HUP; CHILD=""
  [ "$rc" -eq 0 ] || { tail -n 10 "$log" >&2; die "$what failed (log: $log)"; }
}
CHILD=""
forward_signal() {  # forward_signal SIG STATUS: pass SIG on to CHILD's group, wait, exit STATUS
  trap '' TERM INT HUP
  if [ -n "$CHILD" ]; then
    kill -s "$1" -- "-$CHILD" 2>/dev/null || kill -s "$1" "$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  echo "error: stopped by SIG$1" >&2
  exit "$2"
}

# lock_dir DIR: hold DIR/.lock for the rest of the script, or stop if another process holds it.
# The lock is an open file descriptor that the trainer inherits, so it is held as long as any
# trainer started here lives, even one whose script was killed with SIGKILL (a few seconds' wait
# lets a trainer that is being killed release it).
lock_dir() {
  command -v flock >/dev/null || { echo "[lock] warning: no flock, $1 is not locked" >&2; return 0; }
  exec 9>> "$1/.lock"
  flock -w 5 9 || die "$1: another training is running in this directory (it holds $1/.lock; wait for it or stop it)"
}

# swa_end_epoch DIR: empty when checkpoint_best.pt is an epoch's end (ensdist-swa's default
# window, ending at the best epoch, applies); when the best validation came mid-epoch (a
# --max-update cap that ends inside an epoch validates and saves there, and no epoch checkpoint
# holds that model), the epoch whose end validated best among DIR's epoch checkpoints. Fails
# when no epoch ended before the cap.
swa_end_epoch() {
  "$PYTHON" - "$1" <<'PY'
import os, re, sys
from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint

save_dir = sys.argv[1]
def extra(name):
    return load_checkpoint(os.path.join(save_dir, name)).get("extra_state") or {}
state = extra("checkpoint_best.pt").get("train_iterator") or {}
if state.get("iterations_in_epoch", 0) == 0:
    sys.exit(0)
losses = {}
for name in os.listdir(save_dir):
    m = re.fullmatch(r"checkpoint(\d+)\.pt", name)
    if m and extra(name).get("val_loss") is not None:
        losses[int(m.group(1))] = extra(name)["val_loss"]
if not losses:
    sys.exit(f"error: {save_dir}: no epoch ended before --max-update (no epoch checkpoint to average)")
print(min(losses, key=lambda e: (losses[e], e)))
PY
}

# train_then_average DIR SWA_EPOCHS TAG NAME CMD...: the one skeleton of every training of the
# recipes (messages "[TAG] NAME: ..."). DIR/done: finished, skipped. Else, under DIR's lock:
# CMD (fairseq-train, resuming from DIR/checkpoint_last.pt if there is one) logged to
# DIR/train.log unless DIR/trained says it finished; its last validation; with SWA_EPOCHS > 0
# the SWA model DIR/checkpoint_swa.pt (ensdist-swa, then the epoch checkpoints are removed);
# DIR/done last.
train_then_average() {
  local dir="$1" swa="$2" tag="$3" name="$4" end; shift 4
  if [ -f "$dir/done" ]; then
    echo "[$tag] $name: done ($(final_checkpoint "$dir" "$swa")), skipping"; return 0
  fi
  mkdir -p "$dir"
  lock_dir "$dir"
  if [ ! -f "$dir/trained" ]; then  # a finished run is not restarted (fairseq would train on)
    run_logged "$dir/train.log" "$tag $name" "$@"
    touch "$dir/trained"
  fi
  last_epoch_line "$dir/train.log"
  if [ "$swa" -gt 0 ] && [ ! -f "$dir/checkpoint_swa.pt" ]; then  # written atomically, last
    end="$(swa_end_epoch "$dir")" || die "$tag $name: SWA impossible (see above)"
    [ -z "$end" ] || echo "[$tag] $name: the best validation came mid-epoch (the --max-update cap): SWA ends at epoch $end, the best epoch end"
    "${BIN}ensdist-swa" --save-dir "$dir" --epochs "$swa" ${end:+--end-epoch "$end"} --remove-snapshots
  fi
  touch "$dir/done"
}

# fetch URL FILE: download URL to FILE once (FILE.part until complete), with wget or curl.
fetch() {
  [ ! -f "$2" ] || { echo "[fetch] have $2"; return 0; }
  echo "[fetch] downloading $1"
  if command -v wget >/dev/null; then wget -q -O "$2.part" "$1" || die "download failed: $1"
  elif command -v curl >/dev/null; then curl -fsSL -o "$2.part" "$1" || die "download failed: $1"
  else die "need wget or curl to download $1"; fi
  mv "$2.part" "$2"
}

# Build in place: new_work PARENT makes WORK, a temporary directory inside PARENT (removed on
# exit); publish WORK/x FINAL replaces FINAL by WORK/x in one rename and removes WORK. A FINAL
# without its marker is an interrupted earlier run, which publish replaces.
new_work() { mkdir -p "$1"; WORK="$(mktemp -d "$1/.work.XXXXXX")"; trap 'rm -rf "$WORK"' EXIT; }
publish() {
  rm -rf "${2:?}"
  mv "$1" "$2"
  rm -rf "$WORK"; trap - EXIT
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
  # The config's numbers (environment overrides included) follow the options' rule.
  local var
  for var in MAX_EPOCH PATIENCE SWA_EPOCHS STUDENT_MAX_EPOCH STUDENT_SWA_EPOCHS STUDENT_MAX_UPDATE \
      TOPK JOBS SPM_VOCAB_SIZE MAX_PAIRS INTRA_PASSES GPUS UPDATE_FREQ; do
    [ -z "${!var:-}" ] || check_int "$1: $var" "${!var}" "$(case "$var" in PATIENCE|*SWA_EPOCHS|GPUS) echo 0 ;; *) echo 1 ;; esac)"
  done
  [ -z "${LS_EPSILON:-}" ] || check_real "$1: LS_EPSILON" "$LS_EPSILON" 0 1
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

# gpu_count: the GPUs a run here would use: CUDA_VISIBLE_DEVICES's entries when it is set
# (empty or -1: none), else the GPUs nvidia-smi lists, else 0.
gpu_count() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    case "$CUDA_VISIBLE_DEVICES" in ""|-1*) echo 0 ;; *) tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c . ;; esac
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}

# update_freq VAR BATCHES GPUS: set VAR to the --update-freq that makes one update exactly
# BATCHES GPU-batches on GPUS devices (0: one device, the CPU); stops naming the nearest valid
# GPU counts when GPUS does not divide BATCHES (3 GPUs cannot make 8 batches an update).
update_freq() {
  local batches="$2" gpus="$3" below above alt
  check_int GPUS "$gpus" 0
  [ "$gpus" -gt 0 ] || gpus=1
  if [ $(( batches % gpus )) -eq 0 ]; then printf -v "$1" '%s' $(( batches / gpus )); return 0; fi
  for (( below = gpus; batches % below; below-- )); do :; done
  for (( above = gpus; above <= batches && batches % above; above++ )); do :; done
  alt="use $below"; [ "$above" -gt "$batches" ] || alt="use $below or $above"
  die "GPUS=$gpus: an update of $batches GPU-batches needs a GPU count that divides $batches ($alt: CUDA_VISIBLE_DEVICES or GPUS=N)"
}

# launch_on_gpus CMD...: CMD as one process per visible GPU (torchrun) when there are several
# and CMD is not asked to run on the CPU, else CMD itself (ensdist-memoize shards by rank).
launch_on_gpus() {
  local n; n="$(gpu_count)"
  if [ "$n" -gt 1 ] && ! printf '%s\n' "$@" | grep -qx -- --cpu; then
    "${BIN}torchrun" --standalone --nproc_per_node "$n" "$(command -v "$1" || echo "$1")" "${@:2}"
  else
    "$@"
  fi
}

# cuda_visible: true when the venv's torch sees a CUDA device (the demo then picks
# configs/builtin_gpu.sh). ENSDIST_CUDA=1 or 0 overrides the detection (tests, odd drivers).
cuda_visible() {
  case "${ENSDIST_CUDA:-}" in
    1) return 0 ;; 0) return 1 ;;
  esac
  [ -n "$PYTHON" ] && "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
}
