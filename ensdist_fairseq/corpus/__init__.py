"""Corpus preparation: the built-in Ding English-German example sentences (``ding``) and the
joint SentencePiece model shared by source and target (``sentencepiece_prep``).

Plain Python (no fairseq import); binarization with fairseq-preprocess is done by
``scripts/prepare_raw.sh``.
"""
