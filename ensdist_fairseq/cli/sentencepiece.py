"""`ensdist-sentencepiece`: train one joint SentencePiece model on the training split and encode
every split into pieces.

    ensdist-sentencepiece --raw RAWDIR --src en --tgt de --vocab-size 4000 --out SPMDIR

reads RAWDIR/{train,valid,test}.{src,tgt} (plain text, one sentence per line, aligned) and writes
SPMDIR/spm.model, SPMDIR/spm.vocab and SPMDIR/{train,valid,test}.{src,tgt} (space-separated
pieces), each file under a temporary name until all are written.
"""

import os
from typing import List, Optional

from ensdist_fairseq.cli import options
from ensdist_fairseq.corpus.sentencepiece_prep import SPLITS, raw_path, run
from ensdist_fairseq.errors import EnsdistError

# sentencepiece keeps piece ids in int32 and refuses vocabularies beyond its own limit with a
# message naming no flag: the flag's range says it first.
MAX_VOCAB = 1 << 24


def build_parser() -> options.Parser:
    p = options.Parser(prog="ensdist-sentencepiece", description=__doc__.split("\n\n")[0])
    p.add_argument("--raw", required=True, help="directory with {train,valid,test}.{SRC,TGT}")
    p.add_argument("--src", required=True, help="source language suffix, e.g. en")
    p.add_argument("--tgt", required=True, help="target language suffix, e.g. de")
    p.add_argument(
        "--vocab-size",
        type=options.integer(1, MAX_VOCAB),
        required=True,
        help="joint vocabulary size",
    )
    p.add_argument("--out", required=True, help="output directory (spm.model, spm.vocab, pieces)")
    p.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
    p.add_argument(
        "--character-coverage",
        type=options.real(0, 1, lo_open=True),
        default=1.0,
        help="share of characters covered by the model (1.0: small alphabets like en/de)",
    )
    p.add_argument(
        "--sample-sentences",
        type=options.integer(0),
        default=0,
        help="train the model on a seeded sample of this many lines (0: all lines)",
    )
    p.add_argument(
        "--threads",
        type=options.integer(1, 1024),
        default=1,
        help="trainer threads; the model is reproducible only for a fixed value",
    )
    p.add_argument("--seed", type=options.integer(), default=1, help="sentencepiece random seed")
    p.add_argument(
        "--clean-max-len",
        type=options.integer(1),
        default=None,
        help="drop train pairs with a side longer than this many pieces",
    )
    p.add_argument(
        "--clean-ratio",
        type=options.real(1),
        default=None,
        help="drop train pairs whose piece-length ratio exceeds this",
    )
    return p


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a.src == a.tgt:
        raise EnsdistError(f"--src and --tgt must differ, both are {a.src!r}")
    sides = [(split, lang) for split in SPLITS for lang in (a.src, a.tgt)]
    options.check_outputs(
        [("--out", os.path.join(a.out, n)) for n in ("spm.model", "spm.vocab")]
        + [("--out", os.path.join(a.out, f"{split}.{lang}")) for split, lang in sides],
        [("--raw", raw_path(a.raw, split, lang)) for split, lang in sides],
    )
    counts = run(a)
    print(f"sentencepiece: {a.model_type}, vocabulary {a.vocab_size} -> {a.out}/spm.model")
    for split, (kept, dropped) in counts.items():
        note = f" ({dropped} dropped by cleaning)" if dropped else ""
        print(f"  {split}: {kept} pairs{note}")
    return 0


if __name__ == "__main__":
    options.console(main)
