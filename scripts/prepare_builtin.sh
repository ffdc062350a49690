#!/usr/bin/env bash
# Prepare the built-in corpus: English-German example sentences of the Ding dictionary
# (Debian package trans-de-en 1.9-6, GPL-2+, installed by scripts/setup_env.sh).
#
#   bash scripts/prepare_builtin.sh [--config configs/builtin_cpu.sh] [--out runs/builtin] [--max-pairs N]
#
# Stage 1 extracts DIR/raw/{train,valid,test}.{en,de} (ensdist-corpus-ding), stage 2
# runs scripts/prepare_raw.sh (SentencePiece, fairseq-preprocess) into DIR/spm and DIR/bin.
# The config provides SRC, TGT (en and de, either direction) and SPM_VOCAB_SIZE, and may set
# MAX_PAIRS (default for --max-pairs) and CLEAN_MAX_LEN (drop training pairs with a side longer
# than this many pieces: the demo's sentence-length filter).
# Each stage writes a marker last and is skipped when its marker matches; see docs/corpus.md.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The one file of the Debian package; the recipe and the counts in docs/corpus.md are for 1.9-6.
DING_FILE=/usr/share/trans/de-en
DING_VERSION=1.9-6

CONFIG="$ROOT/configs/builtin_cpu.sh"
OUT="$ROOT/runs/builtin"
MAX_PAIRS_OPT=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --max-pairs) need_value "$@"; MAX_PAIRS_OPT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument $1 (see --help)" ;;
  esac
done

# ---- inputs, checked before anything is written ------------------------------------------
[ -f "$CONFIG" ] || die "--config $CONFIG: no such file"
CLEAN_MAX_LEN="" MAX_PAIRS=""
# shellcheck source=/dev/null
source "$CONFIG"
MAX_PAIRS="${MAX_PAIRS_OPT:-$MAX_PAIRS}"
for var in SRC TGT SPM_VOCAB_SIZE; do
  [ -n "${!var:-}" ] || die "$CONFIG does not set $var"
done
case "$SRC-$TGT" in
  en-de|de-en) ;;
  *) die "the built-in corpus is English-German: $CONFIG sets SRC=$SRC TGT=$TGT" ;;
esac
[ -z "$MAX_PAIRS_OPT" ] || check_int --max-pairs "$MAX_PAIRS_OPT" 1
[ -z "$MAX_PAIRS" ] || check_int "$CONFIG: MAX_PAIRS" "$MAX_PAIRS" 1
check_int "$CONFIG: SPM_VOCAB_SIZE" "$SPM_VOCAB_SIZE" 1 16777216
[ -z "$CLEAN_MAX_LEN" ] || check_int "$CONFIG: CLEAN_MAX_LEN" "$CLEAN_MAX_LEN" 1
[ -f "$DING_FILE" ] || die "$DING_FILE not found: run scripts/setup_env.sh (installs trans-de-en=$DING_VERSION)"
installed="$(dpkg-query -W -f='${Version}' trans-de-en 2>/dev/null || echo unknown)"
[ "$installed" = "$DING_VERSION" ] \
  || echo "[prepare_builtin] warning: trans-de-en $installed installed, docs/corpus.md describes $DING_VERSION" >&2

[ -n "$PYTHON" ] || die "no python: run scripts/setup_env.sh"

# ---- stage 1: extraction -----------------------------------------------------------------
RAW="$OUT/raw"
RAW_MARKER="$RAW/.extracted"
fingerprint="ding=$(sha256sum "$DING_FILE" | cut -c1-64) max_pairs=${MAX_PAIRS:-all}"
t0=$SECONDS
if [ -f "$RAW_MARKER" ] && [ "$(cat "$RAW_MARKER")" = "$fingerprint" ]; then
  echo "[prepare_builtin] stage 1/2: $RAW is complete: skipping"
elif [ -f "$RAW_MARKER" ]; then
  die "$RAW was extracted with other settings (see $RAW_MARKER): use another --out or delete $OUT"
else
  echo "[prepare_builtin] stage 1/2: extracting Ding example sentences into $RAW"
  new_work "$OUT"
  max_args=()
  [ -z "$MAX_PAIRS" ] || max_args=(--max-pairs "$MAX_PAIRS")
  # A subdirectory (not the mktemp one itself, which is private): it gets the usual permissions.
  "${BIN}ensdist-corpus-ding" --source "$DING_FILE" --out "$WORK/raw" ${max_args[@]+"${max_args[@]}"}
  echo "$fingerprint" > "$WORK/raw/.extracted"
  publish "$WORK/raw" "$RAW"
  echo "[prepare_builtin] stage 1/2 took $((SECONDS - t0)) s"
fi

# ---- stage 2: SentencePiece + binarization -----------------------------------------------
t0=$SECONDS
echo "[prepare_builtin] stage 2/2: sentencepiece ($SPM_VOCAB_SIZE) + fairseq-preprocess into $OUT/bin"
bash "$ROOT/scripts/prepare_raw.sh" --src "$SRC" --tgt "$TGT" --raw "$RAW" --out "$OUT" \
  --vocab-size "$SPM_VOCAB_SIZE" ${CLEAN_MAX_LEN:+--clean-max-len "$CLEAN_MAX_LEN"}
echo "[prepare_builtin] stage 2/2 took $((SECONDS - t0)) s; data for fairseq: $OUT/bin"
