#!/usr/bin/env bash
# IWSLT'14 German->English as in the intra-distillation recipe (Xu, Koehn, Murray 2022; their
# scripts/preprocess_iwslt14.sh, itself fairseq's examples/translation/prepare-iwslt14.sh):
#   train: TED talk transcripts, Moses-tokenized, clean-corpus-n ratio 1.5 / 1..175 tokens,
#          lower-cased, detokenized again; every 23rd pair is held out as validation;
#   test:  dev2010 + dev2012 (TEDX) + tst2010 + tst2011 + tst2012, lower-cased;
#   a joint 12k SentencePiece vocabulary.
# NEEDS INTERNET (the fairseq mirror of the IWSLT'14 release and the Moses scripts from GitHub)
# and is not run by the tests.
#
#   bash scripts/prepare_iwslt14.sh [--out runs/iwslt14_de_en] [--workers N]
#
# Writes OUT/download, OUT/raw/{train,valid,test}.{de,en}, then scripts/prepare_raw.sh writes
# OUT/spm and OUT/bin (--src de --tgt en). Re-running skips finished steps (markers written last).
# Deviations from the authors, on purpose: SentencePiece is trained on train only (they also
# fed valid and test to it) with character coverage 1.0, and the fairseq dictionary is built
# from the encoded training data. See docs/corpus.md.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT="$ROOT/runs/iwslt14_de_en"
WORKERS=1
VOCAB_SIZE=12000      # "a 12K bilingual vocabulary by using SentencePiece"
CLEAN_RATIO=1.5       # clean-corpus-n on Moses tokens, as fairseq and the authors
CLEAN_MAX_LEN=175
VALID_EVERY=23        # fairseq's prepare-iwslt14.sh: line numbers divisible by 23 -> valid
URL="http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
MOSES_REPO="https://github.com/moses-smt/mosesdecoder.git"

while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --workers) need_value "$@"; WORKERS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown argument $1 (see --help)" ;;
  esac
done
check_int --workers "$WORKERS" 1 1024
for tool in perl git tar; do command -v "$tool" >/dev/null || die "need $tool"; done

DL="$OUT/download"
mkdir -p "$DL"
fetch "$URL" "$DL/de-en.tgz"
if [ ! -d "$DL/mosesdecoder/scripts" ]; then
  echo "[iwslt14] cloning the Moses scripts (tokenizer, cleaning)"
  rm -rf "$DL/mosesdecoder"
  git clone -q --depth 1 "$MOSES_REPO" "$DL/mosesdecoder.part"
  mv "$DL/mosesdecoder.part" "$DL/mosesdecoder"
fi
SCRIPTS="$DL/mosesdecoder/scripts"
TOKENIZER="$SCRIPTS/tokenizer/tokenizer.perl"
DETOKENIZER="$SCRIPTS/tokenizer/detokenizer.perl"
LOWERCASE="$SCRIPTS/tokenizer/lowercase.perl"
CLEAN="$SCRIPTS/training/clean-corpus-n.perl"

RAW="$OUT/raw"
if [ -f "$RAW/.done" ]; then
  echo "[iwslt14] $RAW is complete: skipping"
else
  new_work "$OUT"
  tar -xzf "$DL/de-en.tgz" -C "$WORK"
  ORIG="$WORK/de-en"
  [ -f "$ORIG/train.tags.de-en.de" ] || die "train.tags.de-en.de not in $DL/de-en.tgz (archive layout changed?)"
  T="$WORK/tmp"; mkdir "$T" "$WORK/raw"

  echo "[iwslt14] training data: strip talk metadata, tokenize, clean, lower-case, detokenize"
  for l in de en; do
    # Metadata lines (<url>, <talkid>, <keywords>) are dropped, title/description kept as text.
    grep -v -e '<url>' -e '<talkid>' -e '<keywords>' "$ORIG/train.tags.de-en.$l" \
      | sed -e 's/<title>//g; s/<\/title>//g; s/<description>//g; s/<\/description>//g' \
      | perl "$TOKENIZER" -q -threads "$WORKERS" -l "$l" > "$T/train.tok.$l"
  done
  perl "$CLEAN" -ratio "$CLEAN_RATIO" "$T/train.tok" de en "$T/train.clean" 1 "$CLEAN_MAX_LEN"
  for l in de en; do
    perl "$LOWERCASE" < "$T/train.clean.$l" | perl "$DETOKENIZER" -q -l "$l" > "$T/train.$l"
    awk -v k="$VALID_EVERY" 'NR % k == 0' "$T/train.$l" > "$WORK/raw/valid.$l"
    awk -v k="$VALID_EVERY" 'NR % k != 0' "$T/train.$l" > "$WORK/raw/train.$l"
  done

  echo "[iwslt14] test data: dev2010 dev2012 tst2010 tst2011 tst2012"
  for l in de en; do
    for set in IWSLT14.TED.dev2010 IWSLT14.TEDX.dev2012 IWSLT14.TED.tst2010 IWSLT14.TED.tst2011 IWSLT14.TED.tst2012; do
      xml="$ORIG/$set.de-en.$l.xml"
      [ -f "$xml" ] || die "$set.de-en.$l.xml not in $DL/de-en.tgz"
      grep '<seg id' "$xml" \
        | sed -e 's/<seg id="[0-9]*">\s*//g' -e 's/\s*<\/seg>\s*//g' -e "s/’/'/g" \
        | perl "$LOWERCASE"
    done > "$WORK/raw/test.$l"
  done
  for split in train valid test; do
    [ "$(wc -l < "$WORK/raw/$split.de")" = "$(wc -l < "$WORK/raw/$split.en")" ] \
      || die "$split.de and $split.en differ in length after preprocessing"
  done
  touch "$WORK/raw/.done"
  publish "$WORK/raw" "$RAW"
  echo "[iwslt14] raw data in $RAW: $(wc -l < "$RAW/train.de") train, $(wc -l < "$RAW/valid.de") valid, $(wc -l < "$RAW/test.de") test"
fi

bash "$ROOT/scripts/prepare_raw.sh" --src de --tgt en --raw "$RAW" --out "$OUT" \
  --vocab-size "$VOCAB_SIZE" --workers "$WORKERS"
