#!/usr/bin/env bash
# WMT16 English-German as in the paper (Reich et al. 2020, "We follow the procedure provided by
# (Ott et al., 2019)"): the WMT16 En-De training data of Vaswani et al. / fairseq's scaling_nmt
# (Europarl v7 + Common Crawl + News Commentary v11, about 4.5M pairs), newstest2013 as
# validation, newstest2014 (full, 3003 sentences) as test; a joint 32K BPE vocabulary ("a joint
# source and target byte-pair-encoding with a vocabulary of 32K symbols"), learned here with
# SentencePiece's BPE trainer (--model-type bpe).
# NEEDS INTERNET (about 1.5 GB from statmt.org) and is not run by the tests.
#
#   bash scripts/prepare_wmt16.sh [--out runs/wmt16_en_de] [--src en --tgt de] [--workers N]
#                                 [--spm-threads N] [--local DIR]
#
# Writes OUT/download (archives), OUT/raw/{train,valid,test}.{en,de}, then scripts/prepare_raw.sh
# writes OUT/spm and OUT/bin. Re-running skips finished steps (markers written last).
# --local DIR: the WMT16 files already on disk, nothing is downloaded: DIR (searched
# recursively) holds the three archives below or their extracted {europarl-v7,commoncrawl,
# news-commentary-v11}.de-en.{en,de}, and newstest2013.{en,de} / newstest2014.{en,de} (plain text,
# the full 3003-sentence newstest2014) for validation and test; without those two sacrebleu
# fetches them (once, into its cache).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT="$ROOT/runs/wmt16_en_de"
SRC=en
TGT=de
WORKERS=1
LOCAL=""
SPM_THREADS=1            # the SentencePiece model is reproducible for a fixed thread count
VOCAB_SIZE=32000         # paper: "a vocabulary of 32K symbols", joint source+target
SPM_SAMPLE=4000000       # lines of train.en+train.de (9M) sampled to train SentencePiece
CLEAN_MAX_LEN=250        # fairseq's WMT recipe: clean-corpus-n 1..250 subwords, ratio 1.5,
CLEAN_RATIO=1.5          # applied to the training split only

while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --src) need_value "$@"; SRC="$2"; shift 2 ;;
    --tgt) need_value "$@"; TGT="$2"; shift 2 ;;
    --workers) need_value "$@"; WORKERS="$2"; shift 2 ;;
    --spm-threads) need_value "$@"; SPM_THREADS="$2"; shift 2 ;;
    --local) need_value "$@"; LOCAL="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument $1 (see --help)" ;;
  esac
done
case "$SRC-$TGT" in en-de|de-en) ;; *) die "--src/--tgt must be en and de, got $SRC/$TGT" ;; esac
check_int --workers "$WORKERS" 1 1024
check_int --spm-threads "$SPM_THREADS" 1 1024

[ -z "$LOCAL" ] || [ -d "$LOCAL" ] || die "--local $LOCAL: no such directory"
SACREBLEU="$(tool sacrebleu)"
[ -n "$SACREBLEU" ] || die "no sacrebleu (validation/test sets): run scripts/setup_env.sh"
command -v tar >/dev/null || die "need tar"

# Training corpora: archive URL and the base name of the parallel files inside (.en / .de).
URLS=(
  "http://www.statmt.org/europarl/v7/de-en.tgz"
  "http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz"
  "http://data.statmt.org/wmt16/translation-task/training-parallel-nc-v11.tgz"
)
CORPORA=("europarl-v7.de-en" "commoncrawl.de-en" "news-commentary-v11.de-en")

DL="$OUT/download"
mkdir -p "$DL"
# local_file NAME: the first file called NAME under --local, or empty
local_file() { [ -z "$LOCAL" ] || find "$LOCAL" -name "$1" -type f -print -quit; }
if [ -n "$LOCAL" ] && [ -n "$(local_file "${CORPORA[0]}.en")" ]; then
  SOURCES="$LOCAL"   # extracted corpora on disk
else
  SOURCES="$DL/extracted"
  if [ ! -f "$DL/extracted/.done" ]; then
    for url in "${URLS[@]}"; do
      have="$(local_file "$(basename "$url")")"
      if [ -n "$have" ]; then ln -sfn "$(cd "$(dirname "$have")" && pwd)/$(basename "$have")" "$DL/$(basename "$url")"
      elif [ -n "$LOCAL" ]; then die "--local $LOCAL: neither $(basename "$url") nor the files extracted from it"
      else fetch "$url" "$DL/$(basename "$url")"; fi
    done
    rm -rf "$DL/extracted"; mkdir -p "$DL/extracted"
    for url in "${URLS[@]}"; do tar -xzf "$DL/$(basename "$url")" -C "$DL/extracted"; done
    touch "$DL/extracted/.done"
  fi
fi

RAW="$OUT/raw"
if [ -f "$RAW/.done" ]; then
  echo "[wmt16] $RAW is complete: skipping"
else
  new_work "$OUT"
  mkdir "$WORK/raw"
  for corpus in "${CORPORA[@]}"; do
    for lang in en de; do
      f="$(find -L "$SOURCES" -name "$corpus.$lang" -type f -print -quit)"
      [ -n "$f" ] || die "$corpus.$lang not found in $SOURCES (archive layout changed?)"
      cat "$f" >> "$WORK/raw/train.$lang"
    done
  done
  n_en="$(wc -l < "$WORK/raw/train.en")"; n_de="$(wc -l < "$WORK/raw/train.de")"
  [ "$n_en" = "$n_de" ] || die "training data misaligned: $n_en English vs $n_de German lines"
  # newstest2013 / newstest2014 through sacrebleu (its own download and caching); "full" is the
  # 3003-sentence test set used by Vaswani et al. and fairseq, not the 2737-sentence filtered one.
  for pair in valid:newstest2013:wmt13 test:newstest2014:wmt14/full; do
    IFS=: read -r split name set <<< "$pair"
    if [ -n "$(local_file "$name.en")" ] && [ -n "$(local_file "$name.de")" ]; then
      cp "$(local_file "$name.en")" "$WORK/raw/$split.en"; cp "$(local_file "$name.de")" "$WORK/raw/$split.de"
    else
      "$SACREBLEU" -t "$set" -l en-de --echo src > "$WORK/raw/$split.en"
      "$SACREBLEU" -t "$set" -l en-de --echo ref > "$WORK/raw/$split.de"
    fi
  done
  touch "$WORK/raw/.done"
  publish "$WORK/raw" "$RAW"
  echo "[wmt16] raw data: $n_en training pairs in $RAW"
fi

bash "$ROOT/scripts/prepare_raw.sh" --src "$SRC" --tgt "$TGT" --raw "$RAW" --out "$OUT" \
  --vocab-size "$VOCAB_SIZE" --workers "$WORKERS" --spm-threads "$SPM_THREADS" \
  --spm-sample "$SPM_SAMPLE" --clean-max-len "$CLEAN_MAX_LEN" --clean-ratio "$CLEAN_RATIO" \
  --model-type bpe
