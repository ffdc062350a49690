"""Train one joint SentencePiece model on the training split and encode every split into pieces.

One model for both languages: fairseq's --joined-dictionary and --share-all-embeddings need
a single vocabulary, and a joint model lets names and numbers share pieces across languages.

The command is `ensdist-sentencepiece` (cli/sentencepiece.py): it reads RAWDIR/{train,valid,test}.{src,tgt} (plain text, one sentence per line, aligned) and writes
SPMDIR/spm.model, SPMDIR/spm.vocab and SPMDIR/{train,valid,test}.{src,tgt} (space-separated
pieces), each file under a temporary name until all are written.
"""

import io
import os
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import sentencepiece as spm

from ensdist_fairseq.corpus.text_lines import read_lines, read_pairs
from ensdist_fairseq.errors import EnsdistError

SPLITS = ("train", "valid", "test")


def raw_path(raw_dir: str, split: str, lang: str) -> str:
    return os.path.join(raw_dir, f"{split}.{lang}")


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def check_raw_files(raw_dir: str, src: str, tgt: str) -> Dict[str, int]:
    """Line count of every split; EnsdistError naming the file if one is missing or the two
    sides of a split differ in length (they would be silently misaligned by fairseq)."""
    counts = {}
    for split in SPLITS:
        for lang in (src, tgt):
            if not os.path.isfile(raw_path(raw_dir, split, lang)):
                raise EnsdistError(f"{raw_path(raw_dir, split, lang)}: raw file not found")
        n_src = count_lines(raw_path(raw_dir, split, src))
        n_tgt = count_lines(raw_path(raw_dir, split, tgt))
        if n_src != n_tgt:
            raise EnsdistError(
                f"{raw_path(raw_dir, split, src)}: {n_src} lines, but "
                f"{raw_path(raw_dir, split, tgt)} has {n_tgt}"
            )
        if n_src == 0:
            raise EnsdistError(f"{raw_path(raw_dir, split, src)} is empty")
        counts[split] = n_src
    return counts


def _lines(paths: Sequence[str], errors: list) -> Iterator[str]:
    """The training text. An error (invalid UTF-8) raised inside sentencepiece's C++ iteration
    would come back as a RuntimeError holding a traceback: keep it and stop instead."""
    try:
        for path in paths:
            yield from read_lines(path)
    except EnsdistError as e:
        errors.append(e)


def train_model(
    train_files: Sequence[str],
    vocab_size: int,
    model_type: str,
    character_coverage: float,
    sample_sentences: int,
    threads: int,
    seed: int,
) -> bytes:
    """The serialized model, identical for identical text wherever the files are: sentences go in
    through an iterator and the model out to memory, because sentencepiece stores --input paths
    and --model_prefix inside the model."""
    # Seeds the sampling of --sample-sentences and the unigram trainer; with a fixed thread
    # count the model is then identical on every run (threads change the summation order).
    spm.set_random_generator_seed(seed)
    out, errors = io.BytesIO(), []
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(train_files, errors),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=sample_sentences,
            shuffle_input_sentence=True,
            num_threads=threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        if errors:
            raise errors[0] from None
        # sentencepiece reports "Vocabulary size too high (N). Please set it to a value <= M."
        reason = str(e).splitlines()[-1].split("] ", 1)[-1]  # drop the C++ file/assert prefix
        limit = re.search(r"<=\s*(\d+)", reason)
        if "ocabulary size" in reason:
            most = f" (at most {limit.group(1)} for this data)" if limit else ""
            raise EnsdistError(
                f"--vocab-size {vocab_size} does not fit the training data "
                f"{', '.join(train_files)}{most}: {reason}"
            ) from None
        raise EnsdistError(f"sentencepiece training failed: {_first_line(e)}") from None
    if errors:
        raise errors[0]
    return out.getvalue()


def _first_line(e) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    return lines[-1] if lines else type(e).__name__


def vocab_text(sp: spm.SentencePieceProcessor) -> str:
    """The model's pieces and scores in sentencepiece's own .vocab format."""
    return "".join(
        f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size())
    )


def keep_pair(
    src_pieces: List[str], tgt_pieces: List[str], max_len: Optional[int], max_ratio: Optional[float]
) -> bool:
    """Moses clean-corpus-n on pieces: drop empty sides, sides longer than max_len, and pairs
    whose length ratio (either way) exceeds max_ratio -- usually misaligned lines."""
    ns, nt = len(src_pieces), len(tgt_pieces)
    if ns == 0 or nt == 0:
        return False
    if max_len is not None and max(ns, nt) > max_len:
        return False
    if max_ratio is not None and max(ns / nt, nt / ns) > max_ratio:
        return False
    return True


def encode_split(
    sp,
    src_in: str,
    tgt_in: str,
    src_out: str,
    tgt_out: str,
    clean: bool,
    max_len: Optional[int],
    max_ratio: Optional[float],
) -> Tuple[int, int]:
    """Encode one aligned split line by line (streaming: WMT does not fit in memory twice).
    Returns (kept, dropped); only `clean` splits (train) are filtered."""
    kept = dropped = 0
    with (
        open(src_out, "w", encoding="utf-8", newline="\n") as gs,
        open(tgt_out, "w", encoding="utf-8", newline="\n") as gt,
    ):
        for s_line, t_line in read_pairs(src_in, tgt_in):
            s = sp.encode(s_line, out_type=str)
            t = sp.encode(t_line, out_type=str)
            if clean and not keep_pair(s, t, max_len, max_ratio):
                dropped += 1
                continue
            gs.write(" ".join(s) + "\n")
            gt.write(" ".join(t) + "\n")
            kept += 1
    return kept, dropped


def run(a) -> Dict[str, Tuple[int, int]]:
    check_raw_files(a.raw, a.src, a.tgt)
    train_files = [raw_path(a.raw, "train", a.src), raw_path(a.raw, "train", a.tgt)]
    model = train_model(
        train_files,
        a.vocab_size,
        a.model_type,
        a.character_coverage,
        a.sample_sentences,
        a.threads,
        a.seed,
    )
    sp = spm.SentencePieceProcessor(model_proto=model)
    os.makedirs(a.out, exist_ok=True)
    tmp = f".tmp-{os.getpid()}"
    finals = []

    def staged(name):
        final = os.path.join(a.out, name)
        finals.append(final)
        return final + tmp

    try:
        with open(staged("spm.model"), "wb") as f:
            f.write(model)
        with open(staged("spm.vocab"), "w", encoding="utf-8") as f:
            f.write(vocab_text(sp))
        counts = {}
        for split in SPLITS:
            counts[split] = encode_split(
                sp,
                raw_path(a.raw, split, a.src),
                raw_path(a.raw, split, a.tgt),
                staged(f"{split}.{a.src}"),
                staged(f"{split}.{a.tgt}"),
                clean=(split == "train"),
                max_len=a.clean_max_len,
                max_ratio=a.clean_ratio,
            )
        if counts["train"][0] == 0:
            raise EnsdistError(
                "cleaning dropped every training pair (--clean-max-len / --clean-ratio)"
            )
    except BaseException:
        for final in finals:
            if os.path.exists(final + tmp):
                os.remove(final + tmp)
        raise
    for final in finals:
        os.replace(final + tmp, final)
    return counts
