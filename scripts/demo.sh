#!/usr/bin/env bash
# The main job, in one command: the paper's comparison on the built-in corpus (or your data).
#
#   bash scripts/demo.sh [--out runs/demo] [--config CONFIG]
#        [--data BIN_DIR --reference RAW_TEST_TARGET] [--members K] [--topk V']
#        [--students "intra_mean_kd proxy_dirichlet mean_kd seqkd seqkd_mean_kd"] [--jobs N]
#        [--max-pairs N] [--print-config]
#
# Stages: setup -> prepare the corpus -> K CE+SWA and K LS+SWA teachers -> memoize the CE
# ensemble (top-V') -> distill the students -> evaluate every member, the ensembles of 1..K and
# every student (BLEU, ECE-1, ECE-5) -> uncertainty (built-in corpus: in-domain test vs
# out-of-distribution inputs) -> report (table, regime, uncertainty, reliability diagrams) in
# OUT/results. Every training stops by the rule of docs/teachers.md (early
# stopping on validation loss, SWA ending at the best epoch).
# Sequence-level KD students (docs/sequence_kd.md), an option not in the default run:
# --students "seqkd seqkd_mean_kd ..." adds a stage before distill that decodes the train split
# with the CE ensemble (ensdist-seqkd, GEN_ARGS's search) into OUT/seqkd/ce_kK and, for
# seqkd_mean_kd, memoizes the ensemble on those targets (OUT/store/seqkd_ce_kK_vV'.h5). seqkd
# trains on the distilled targets alone (students/ce_kK/seqkd), seqkd_mean_kd adds mean-KD
# from that store; both validate and are tested on the references.
# CONFIG defaults to configs/builtin_gpu.sh when the venv's torch sees a CUDA device, else
# configs/builtin_cpu.sh (ENSDIST_CUDA=0|1 overrides the detection; --print-config shows the
# choice and exits). --topk V' is the one V' of the run: the store, the students and their names.
# Every stage skips finished work, so re-running is cheap and an interrupted run resumes.
# --jobs N runs up to N trainings/evaluations at once (default: the config's JOBS, else the
# number of CPU cores), each with OMP_NUM_THREADS = cores / N.
set -euo pipefail
# lib.sh first: the command line is checked (one error line, exit status 2) before any work.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT="$ROOT/runs/demo" CONFIG="" DATA="" REFERENCE="" MEMBERS=3 PRINT_CONFIG=0
# Students are launched in the order given: the longest first (intra_mean_kd, K passes, then
# proxy_dirichlet) so the shorter ones share the other slots. Default: the config's
# DEMO_STUDENTS (configs/builtin_cpu.sh leaves intra_mean_kd out to fit 30 minutes on 2 cores),
# else all three.
TOPK_OPT="" STUDENTS_OPT="" JOBS_OPT="" MAX_PAIRS_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --data) need_value "$@"; DATA="$2"; shift 2 ;;
    --reference) need_value "$@"; REFERENCE="$2"; shift 2 ;;
    --members) need_value "$@"; check_int --members "$2" 1 100; MEMBERS="$2"; shift 2 ;;
    --topk) need_value "$@"; check_int --topk "$2" 1; TOPK_OPT="$2"; shift 2 ;;
    --students) need_value "$@"; STUDENTS_OPT="$2"; shift 2 ;;
    --jobs) need_value "$@"; check_int --jobs "$2" 1 1024; JOBS_OPT="$2"; shift 2 ;;
    --max-pairs) need_value "$@"; check_int --max-pairs "$2" 1; MAX_PAIRS_ARGS=(--max-pairs "$2"); shift 2 ;;  # a small slice of the built-in corpus
    --print-config) PRINT_CONFIG=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1 (see --help)" ;;
  esac
done
[ -z "$STUDENTS_OPT" ] || [ -n "${STUDENTS_OPT// /}" ] || usage_error "--students: no student named"
for v in $STUDENTS_OPT; do
  case "$v" in mean_kd|mean_kd_tail|proxy_dirichlet|intra_mean_kd|seqkd|seqkd_mean_kd) ;;
    *) usage_error "--students: unknown student '$v' (mean_kd, mean_kd_tail, proxy_dirichlet, intra_mean_kd, seqkd, seqkd_mean_kd)" ;; esac
done
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "--config $CONFIG: no such config file (see configs/)"
[ -z "$DATA" ] || [ -d "$DATA" ] || die "--data $DATA: no such directory"
[ -z "$REFERENCE" ] || [ -f "$REFERENCE" ] || die "--reference $REFERENCE: no such file"
STARTED=$(date +%s)
stage() { echo; echo "=== [demo] $1 ($(( $(date +%s) - STARTED ))s elapsed)"; }

stage "setup: .venv"
# the built-in corpus's Debian package only when the demo uses the built-in corpus
corpus=(); [ -n "$DATA" ] || corpus=(--corpus)
bash "$ROOT/scripts/setup_env.sh" ${corpus[@]+"${corpus[@]}"}
source "$ROOT/scripts/lib.sh"   # again: the venv's tools (BIN, PYTHON) exist now
if [ -z "$CONFIG" ]; then
  if cuda_visible; then CONFIG="$ROOT/configs/builtin_gpu.sh"; else CONFIG="$ROOT/configs/builtin_cpu.sh"; fi
fi
echo "[demo] config: $CONFIG"
[ "$PRINT_CONFIG" = 0 ] || exit 0
load_config "$CONFIG"
# V' of this run, the one variable: --topk, else the config's. It sizes the store (memoize) and
# names it and the students; the students take V' from the store (distill.sh passes no
# --teacher-topk), so they train on exactly this many entries.
TOPK="${TOPK_OPT:-$TOPK}"
STUDENTS="${STUDENTS_OPT:-${DEMO_STUDENTS:-intra_mean_kd proxy_dirichlet mean_kd}}"
# the machine's cores: nproc alone answers OMP_NUM_THREADS when it is set (below: cores / JOBS)
CORES="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
JOBS="${JOBS_OPT:-${JOBS:-$CORES}}"
check_int "JOBS" "$JOBS" 1 1024
export OMP_NUM_THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))
STUDENT_SWA_EPOCHS="${STUDENT_SWA_EPOCHS:-$SWA_EPOCHS}"

# run_parallel CMD...: each argument is one shell command; at most $JOBS run at once, a new one
# starting as soon as any finishes (wait -n); fails if any fails.
# Stopped (SIGINT/SIGTERM), it passes SIGTERM on to its jobs (train_ensemble.sh and distill.sh
# pass it on to their trainers) and waits for them.
run_parallel() {
  local running=0 failed=0 cmd
  trap 'trap "" INT TERM; kill -TERM $(jobs -p) 2>/dev/null; wait; die "stopped"' INT TERM
  for cmd in "$@"; do
    bash -c "$cmd" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then wait -n || failed=1; running=$((running - 1)); fi
  done
  while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
  trap - INT TERM
  [ "$failed" -eq 0 ] || die "a job of this stage failed (see its message above)"
}

OOD=""  # out-of-distribution inputs of the uncertainty stage: built for the built-in corpus only
if [ -z "$DATA" ]; then
  stage "prepare: built-in corpus -> $OUT/data (and out-of-distribution sets -> $OUT/ood)"
  bash "$ROOT/scripts/prepare_builtin.sh" --config "$CONFIG" --out "$OUT/data" "${MAX_PAIRS_ARGS[@]}"
  DATA="$OUT/data/bin"
  REFERENCE="$OUT/data/raw/test.$TGT"
  OOD="$OUT/ood"
  if [ -f "$OOD/ood_sets.json" ]; then echo "[ood] $OOD exists, skipping"
  else  # 500 sentences per set (docs/uncertainty.md), fewer on a slice with a smaller test split;
    # length-matched in 10 bins, one bin per 50 sentences on a smaller slice (none below 50)
    ood_size=$(( $(wc -l < "$REFERENCE") < 500 ? $(wc -l < "$REFERENCE") : 500 ))
    "${BIN}ensdist-ood-sets" --data-dir "$OUT/data" --out "$OOD" --size "$ood_size" \
      --length-bins "$(( ood_size / 50 < 10 ? ood_size / 50 : 10 ))"
  fi
fi
[ -d "$DATA" ] || die "--data $DATA: no such directory"
[ -z "$REFERENCE" ] || [ -f "$REFERENCE" ] || die "--reference $REFERENCE: no such file"

stage "teachers: $MEMBERS CE+SWA and $MEMBERS LS+SWA members (patience $PATIENCE, at most $MAX_EPOCH epochs)"
# One job per member, LS and CE interleaved (LS members plateau later: they go first), so the
# slots stay full however long each member takes to reach its plateau.
train() { printf 'bash %q --config %q --data %q --out %q --mode %s --members %s --seed %s' \
  "$ROOT/scripts/train_ensemble.sh" "$CONFIG" "$DATA" "$OUT/teachers" "$1" "$MEMBERS" "$2"; }
teacher_cmds=()
for k in $(seq 1 "$MEMBERS"); do teacher_cmds+=("$(train ls "$k")" "$(train ce "$k")"); done
run_parallel "${teacher_cmds[@]}"
members() {  # members MODE [K]: colon-separated SWA checkpoints of seeds 1..K
  local k
  for k in $(seq 1 "${2:-$MEMBERS}"); do printf '%s:' "$OUT/teachers/$1/seed$k/checkpoint_swa.pt"; done | sed 's/:$//'
}

STORE="$OUT/store/ce_k${MEMBERS}_v${TOPK}.h5"
STUDENTS_DIR="$OUT/students/ce_k${MEMBERS}_v${TOPK}"  # one set of students per teacher store
memoize() {  # memoize DATA STORE: the CE ensemble's top-V' on DATA's train targets, once
  mkdir -p "$(dirname "$2")"
  if [ -f "$2" ]; then echo "[memoize] $2 exists, skipping"
  else  # every core, and one process per visible GPU when there are several (torchrun)
    OMP_NUM_THREADS="$CORES" launch_on_gpus "${BIN}ensdist-memoize" "$1" --path "$(members ce)" --topk "$TOPK" \
      "${DEVICE_ARGS[@]}" ${MEMOIZE_ARGS[@]+"${MEMOIZE_ARGS[@]}"} --output "$2"
  fi
}
stage "memoize: the CE ensemble of $MEMBERS, V'=$TOPK -> $STORE"
memoize "$DATA" "$STORE"

# Sequence-level KD (docs/sequence_kd.md), only when a seqkd student is asked for.
SEQKD_DATA="$OUT/seqkd/ce_k${MEMBERS}"
SEQKD_STORE="$OUT/store/seqkd_ce_k${MEMBERS}_v${TOPK}.h5"
wants() { case " $STUDENTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if wants seqkd || wants seqkd_mean_kd; then
  stage "seqkd: the train split translated by the CE ensemble of $MEMBERS -> $SEQKD_DATA"
  if [ -d "$SEQKD_DATA" ]; then echo "[seqkd] $SEQKD_DATA exists, skipping"
  else  # the search every system is evaluated with; resumes from SEQKD_DATA.shards/ if stopped
    OMP_NUM_THREADS="$CORES" launch_on_gpus "${BIN}ensdist-seqkd" "$DATA" --path "$(members ce)" \
      --out "$SEQKD_DATA" "${DEVICE_ARGS[@]}" "${GEN_ARGS[@]}"
  fi
  if wants seqkd_mean_kd; then
    stage "memoize: the CE ensemble of $MEMBERS on its own translations, V'=$TOPK -> $SEQKD_STORE"
    memoize "$SEQKD_DATA" "$SEQKD_STORE"
  fi
fi

RES="$OUT/results"
mkdir -p "$RES"
evaluate() {  # evaluate NAME METHOD PATHS [ensdist-evaluate options]: a command, skipped if done
  local name="$1" method="$2" paths="$3"; shift 3
  [ -f "$RES/$name.json" ] && { echo "echo '[evaluate] $name: done, skipping'"; return; }
  printf '%q ' "${BIN}ensdist-evaluate" "$DATA" --path "$paths" --name "$name" --method "$method" \
    --output "$RES/$name.json" "${DEVICE_ARGS[@]}" ${REFERENCE:+--reference "$REFERENCE"} "$@" "${GEN_ARGS[@]}"
}
uncertainty() {  # uncertainty NAME GROUP PATHS: a command, skipped if done (docs/uncertainty.md)
  local name="$1" group="$2" paths="$3"
  [ -f "$RES/uncertainty/$name/system.json" ] && { echo "echo '[uncertainty] $name: done, skipping'"; return; }
  printf '%q ' "${BIN}ensdist-uncertainty" "$DATA" --path "$paths" --name "$name" --group "$group" \
    --ood-dir "$OOD" --out "$RES/uncertainty/$name" --beam 5 --max-len-a 1.5 --max-len-b 10 "${DEVICE_ARGS[@]}"
}
# seqkd alone has no store: its student and its name do not depend on V'
student_dir() { if [ "$1" = seqkd ]; then echo "$OUT/students/ce_k${MEMBERS}"; else echo "$STUDENTS_DIR"; fi; }
student_name() { if [ "$1" = seqkd ]; then echo "student-$1-k$MEMBERS"; else echo "student-$1-k$MEMBERS-v$TOPK"; fi; }
student() { final_checkpoint "$(student_dir "$1")/$1" "$STUDENT_SWA_EPOCHS"; }  # student VARIANT: its model

# The teachers' evaluations (BLEU, ECE of members and ensembles of 1..K) and uncertainty
# (built-in corpus: CE members and the CE ensemble, in-domain test vs out-of-distribution
# inputs) need no student: they fill the slots the students leave free.
teacher_evals=()
for mode in ce ls; do
  method=$([ "$mode" = ce ] && echo "CE+SWA" || echo "LS+SWA")
  for k in $(seq 1 "$MEMBERS"); do
    teacher_evals+=("$(evaluate "$mode-seed$k" "$method" "$OUT/teachers/$mode/seed$k/checkpoint_swa.pt")")
  done
  for k in $(seq 2 "$MEMBERS"); do
    teacher_evals+=("$(evaluate "$mode-ensemble$k" "$method" "$(members "$mode" "$k")" --kind ensemble)")
  done
done
# the rival every reader asks about: a temperature-scaled member and ensemble (T fitted on the
# validation split, docs/evaluation.md), in the table beside the students
teacher_evals+=("$(evaluate "ce-seed1-ts" "CE+SWA" "$OUT/teachers/ce/seed1/checkpoint_swa.pt" --fit-temperature-on valid)")
[ "$MEMBERS" -lt 2 ] || teacher_evals+=("$(evaluate "ce-ensemble$MEMBERS-ts" "CE+SWA" "$(members ce)" --kind ensemble --fit-temperature-on valid)")
if [ -n "$OOD" ]; then
  teacher_evals+=("$(uncertainty "ce-ensemble$MEMBERS" ensemble "$(members ce)")")
  for k in $(seq 1 "$MEMBERS"); do
    teacher_evals+=("$(uncertainty "ce-seed$k" single "$OUT/teachers/ce/seed$k/checkpoint_swa.pt")")
  done
fi

stage "distill: $STUDENTS (V'=$TOPK from the store); meanwhile evaluate and measure the uncertainty of the teachers"
distill_cmds=()
for v in $STUDENTS; do
  case "$v" in  # the training data and the store of each student
    seqkd) inputs=(--data "$SEQKD_DATA") ;;
    seqkd_mean_kd) inputs=(--data "$SEQKD_DATA" --store "$SEQKD_STORE") ;;
    *) inputs=(--data "$DATA" --store "$STORE") ;;
  esac
  distill_cmds+=("$(printf '%q ' bash "$ROOT/scripts/distill.sh" --config "$CONFIG" "${inputs[@]}" \
    --variant "$v" --out "$(student_dir "$v")")")
done
run_parallel "${distill_cmds[@]}" "${teacher_evals[@]}"

stage "evaluate: students (BLEU, ECE-1, ECE-5)${OOD:+ and their uncertainty}"
student_evals=()
for v in $STUDENTS; do
  student_evals+=("$(evaluate "$(student_name "$v")" "CE+SWA" "$(student "$v")" \
    --kind student --num-teachers "$MEMBERS")")
  # the Dirichlet student read through its mean alpha/alpha0 too (it decodes with softmax(z))
  [ "$v" != proxy_dirichlet ] || student_evals+=("$(evaluate "student-$v-k$MEMBERS-v$TOPK-mean" "CE+SWA" \
    "$(student "$v")" --kind student --num-teachers "$MEMBERS" --dirichlet-predictive mean)")
  if [ -n "$OOD" ]; then
    group=$(case "$v" in mean_kd) echo mean-kd ;; proxy_dirichlet) echo proxy-dirichlet ;; *) echo other ;; esac)
    student_evals+=("$(uncertainty "$(student_name "$v")" "$group" "$(student "$v")")")
  fi
done
run_parallel "${student_evals[@]}"

stage "report -> $RES/report.md"
"${BIN}ensdist-report" "$RES"
stage "done: results in $RES ($(( $(date +%s) - STARTED ))s in all)"
