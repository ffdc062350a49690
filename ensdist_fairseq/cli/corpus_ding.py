"""`ensdist-corpus-ding`: the built-in corpus, English-German example sentences of the Ding
dictionary (Debian package trans-de-en), as deterministic, disjoint train/valid/test splits.

    ensdist-corpus-ding --source /usr/share/trans/de-en --out RAWDIR [--max-pairs N]

writes RAWDIR/{train,valid,test}.{en,de} (one sentence per line, aligned) and prints counts.
"""

import os
from typing import List, Optional

from ensdist_fairseq.cli import options
from ensdist_fairseq.corpus.ding import (
    SPLITS,
    extract_pairs,
    heldout_sizes,
    mean_words,
    rank_pairs,
    split_pairs,
    write_splits,
)
from ensdist_fairseq.corpus.text_lines import read_lines
from ensdist_fairseq.errors import EnsdistError


def build_parser() -> options.Parser:
    p = options.Parser(prog="ensdist-corpus-ding", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--source",
        default="/usr/share/trans/de-en",
        help="the Ding file (Debian package trans-de-en)",
    )
    p.add_argument("--out", required=True, help="directory for {train,valid,test}.{en,de}")
    p.add_argument(
        "--valid-size", type=options.integer(1), default=500, help="pairs in the validation split"
    )
    p.add_argument(
        "--test-size",
        type=options.integer(1),
        default=1000,
        help="pairs in the held-out test split",
    )
    p.add_argument(
        "--max-heldout-fraction",
        type=options.real(0, 1, lo_open=True, hi_open=True),
        default=0.2,
        help="valid+test are scaled down together to at most this share of the pairs",
    )
    p.add_argument(
        "--max-pairs",
        type=options.integer(1),
        default=None,
        help="keep only this many pairs (the first of the seeded ranking), for quick runs",
    )
    p.add_argument(
        "--min-words", type=options.integer(1), default=3, help="minimum words on each side"
    )
    p.add_argument(
        "--seed", type=options.integer(), default=1, help="seed of the split (and of --max-pairs)"
    )
    return p


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.source):
        raise EnsdistError(
            f"--source {args.source}: no such file (install: apt-get install trans-de-en=1.9-6)"
        )
    options.check_outputs(
        [("--out", os.path.join(args.out, f"{n}.{lang}")) for n in SPLITS for lang in ("en", "de")],
        [("--source", args.source)],
    )
    pairs = extract_pairs(read_lines(args.source), args.min_words)
    n_extracted = len(pairs)
    if args.max_pairs is not None and args.max_pairs < len(pairs):
        keep = set(rank_pairs(pairs, args.seed)[: args.max_pairs])
        pairs = [p for p in pairs if p in keep]
    valid_size, test_size = heldout_sizes(
        len(pairs), args.valid_size, args.test_size, args.max_heldout_fraction
    )
    if valid_size < 1 or test_size < 1:
        raise EnsdistError(
            f"only {len(pairs)} pairs: too few for a valid and a test split "
            f"(raise --max-pairs or --max-heldout-fraction)"
        )
    splits = split_pairs(pairs, valid_size, test_size, args.seed)
    write_splits(args.out, splits)
    en = [p[0] for p in pairs]
    de = [p[1] for p in pairs]
    print(
        f"extracted {n_extracted} pairs from {args.source}; using {len(pairs)} "
        f"(mean words: en {mean_words(en):.2f}, de {mean_words(de):.2f})"
    )
    if (valid_size, test_size) != (args.valid_size, args.test_size):
        print(
            f"note: valid/test scaled down to {valid_size}/{test_size} "
            f"(--max-heldout-fraction {args.max_heldout_fraction})"
        )
    print("splits: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    options.console(main)
