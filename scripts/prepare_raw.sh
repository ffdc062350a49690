#!/usr/bin/env bash
# Prepare the user's own parallel text for fairseq: one joint SentencePiece model, then
# fairseq-preprocess with a joined dictionary.
#
#   bash scripts/prepare_raw.sh --src en --tgt de --raw RAWDIR --out OUTDIR \
#        [--vocab-size 8000] [--workers 1] [--spm-threads 1] [--spm-sample 0] \
#        [--clean-max-len N] [--clean-ratio R] [--model-type unigram|bpe]
#
# RAWDIR holds {train,valid,test}.{SRC,TGT}: plain UTF-8 text, one sentence per line, the two
# sides of a split aligned line by line. Writes
#   OUTDIR/spm/  spm.model spm.vocab {train,valid,test}.{SRC,TGT}  (pieces)
#   OUTDIR/bin/  dict.SRC.txt dict.TGT.txt (identical) {train,valid,test}.SRC-TGT.{SRC,TGT}.{bin,idx}
# Everything is built in a temporary directory inside OUTDIR and moved in place at the end;
# OUTDIR/bin/.prepared (settings + checksum of the raw files) is written last. A second run with
# the same inputs and settings skips; with different ones it stops instead of mixing the two.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SRC="" TGT="" RAW="" OUT=""
VOCAB_SIZE=8000     # joint SentencePiece vocabulary
WORKERS=1           # fairseq-preprocess processes (does not change the result)
SPM_THREADS=1       # SentencePiece trainer threads (the model is reproducible per value)
SPM_SAMPLE=0        # lines sampled to train SentencePiece (0: all)
CLEAN_MAX_LEN=""    # drop train pairs with a side longer than this many pieces (empty: keep)
CLEAN_RATIO=""      # drop train pairs whose piece-length ratio exceeds this (empty: keep)
MODEL_TYPE=unigram  # SentencePiece model: unigram (its default) or bpe (Reich et al.'s BPE)

while [ "$#" -gt 0 ]; do
  case "$1" in
    --src) need_value "$@"; SRC="$2"; shift 2 ;;
    --tgt) need_value "$@"; TGT="$2"; shift 2 ;;
    --raw) need_value "$@"; RAW="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --vocab-size) need_value "$@"; VOCAB_SIZE="$2"; shift 2 ;;
    --workers) need_value "$@"; WORKERS="$2"; shift 2 ;;
    --spm-threads) need_value "$@"; SPM_THREADS="$2"; shift 2 ;;
    --spm-sample) need_value "$@"; SPM_SAMPLE="$2"; shift 2 ;;
    --clean-max-len) need_value "$@"; CLEAN_MAX_LEN="$2"; shift 2 ;;
    --clean-ratio) need_value "$@"; CLEAN_RATIO="$2"; shift 2 ;;
    --model-type) need_value "$@"; MODEL_TYPE="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument $1 (see --help)" ;;
  esac
done

# ---- inputs, checked before anything is written ------------------------------------------
[ -n "$SRC" ] || die "--src is required (see --help)"
[ -n "$TGT" ] || die "--tgt is required (see --help)"
[ -n "$RAW" ] || die "--raw is required (see --help)"
[ -n "$OUT" ] || die "--out is required (see --help)"
[ "$SRC" != "$TGT" ] || die "--src and --tgt must differ (both are $SRC)"
check_int --vocab-size "$VOCAB_SIZE" 1 16777216   # ensdist-sentencepiece's range
check_int --workers "$WORKERS" 1 1024
check_int --spm-threads "$SPM_THREADS" 1 1024
check_int --spm-sample "$SPM_SAMPLE" 0
[ -z "$CLEAN_MAX_LEN" ] || check_int --clean-max-len "$CLEAN_MAX_LEN" 1
[ -z "$CLEAN_RATIO" ] || check_real --clean-ratio "$CLEAN_RATIO" 1
case "$MODEL_TYPE" in unigram|bpe) ;; *) usage_error "--model-type must be unigram or bpe, got '$MODEL_TYPE'" ;; esac
[ -d "$RAW" ] || die "--raw $RAW: no such directory"
for split in train valid test; do
  for lang in "$SRC" "$TGT"; do
    [ -f "$RAW/$split.$lang" ] || die "missing raw file $RAW/$split.$lang"
  done
done

PREPROCESS="$(tool fairseq-preprocess)"
[ -n "$PYTHON" ] || die "no python: run scripts/setup_env.sh"
[ -n "$PREPROCESS" ] || die "no fairseq-preprocess: run scripts/setup_env.sh"

# ---- skip if already done with the same inputs -------------------------------------------
MARKER="$OUT/bin/.prepared"
# One checksum per file (with its name), so that moving lines between files changes it too.
raw_sum="$(cd "$RAW" && sha256sum train."$SRC" train."$TGT" valid."$SRC" valid."$TGT" test."$SRC" test."$TGT" | sha256sum | cut -c1-64)"
fingerprint="src=$SRC tgt=$TGT vocab_size=$VOCAB_SIZE spm_threads=$SPM_THREADS spm_sample=$SPM_SAMPLE clean_max_len=$CLEAN_MAX_LEN clean_ratio=$CLEAN_RATIO model_type=$MODEL_TYPE raw_sha256=$raw_sum"
if [ -f "$MARKER" ]; then
  if [ "$(cat "$MARKER")" = "$fingerprint" ]; then
    echo "[prepare_raw] $OUT/bin is complete ($MARKER): skipping"
    exit 0
  fi
  die "$OUT/bin was prepared from other inputs or settings (see $MARKER); use another --out or delete $OUT/spm and $OUT/bin"
fi

new_work "$OUT"

echo "[prepare_raw] sentencepiece: joint $MODEL_TYPE model (vocabulary $VOCAB_SIZE) on $RAW/train.{$SRC,$TGT}"
clean_args=()
[ -z "$CLEAN_MAX_LEN" ] || clean_args+=(--clean-max-len "$CLEAN_MAX_LEN")
[ -z "$CLEAN_RATIO" ] || clean_args+=(--clean-ratio "$CLEAN_RATIO")
"${BIN}ensdist-sentencepiece" --raw "$RAW" --src "$SRC" --tgt "$TGT" \
  --vocab-size "$VOCAB_SIZE" --model-type "$MODEL_TYPE" --threads "$SPM_THREADS" --sample-sentences "$SPM_SAMPLE" \
  --out "$WORK/spm" ${clean_args[@]+"${clean_args[@]}"}

echo "[prepare_raw] fairseq-preprocess: joined dictionary, $WORKERS worker(s)"
if ! "$PREPROCESS" --source-lang "$SRC" --target-lang "$TGT" \
    --trainpref "$WORK/spm/train" --validpref "$WORK/spm/valid" --testpref "$WORK/spm/test" \
    --destdir "$WORK/bin" --joined-dictionary --workers "$WORKERS" > "$WORK/preprocess.out" 2>&1; then
  tail -n 20 "$WORK/preprocess.out" >&2
  die "fairseq-preprocess failed (output above)"
fi

# Move in place: a leftover spm/ or bin/ without marker is an interrupted earlier run.
echo "$fingerprint" > "$WORK/bin/.prepared"
rm -rf "${OUT:?}/spm"; mv "$WORK/spm" "$OUT/spm"
publish "$WORK/bin" "$OUT/bin"   # bin/ and its marker last
# fairseq adds 4 specials (<s> <pad> </s> <unk>) and pads to a multiple of 8 with madeupword*.
n_dict="$(wc -l < "$OUT/bin/dict.$SRC.txt")"
n_pad="$(grep -c '^madeupword' "$OUT/bin/dict.$SRC.txt" || true)"
echo "[prepare_raw] done: $OUT/bin (dictionary: $((n_dict + 4)) symbols = $((n_dict - n_pad)) pieces + 4 special + $n_pad padding)"
