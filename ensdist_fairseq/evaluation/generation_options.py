"""The fairseq-generate options our decoding commands accept, under fairseq's own names.

`ensdist-evaluate` and `ensdist-bleu-table` used to pass options they did not know on to a
fairseq-generate subprocess. They now decode in-process (decoding.py), so each accepted option
is listed here with fairseq's flag, type and default (GenerationConfig's, checked by
tests/test_decoding.py) and anything else is refused by name. No fairseq import: building the
parser (and `--help`) stays fast.
"""
import argparse
from typing import Dict

# (flag, GenerationConfig field, type, default, help); defaults are fairseq 0.12's.
SEARCH_OPTIONS = (
    ("--beam", "beam", int, 5, "beam size"),
    ("--lenpen", "lenpen", float, 1.0,
     "length penalty: <1.0 favours shorter, >1.0 longer sentences"),
    ("--max-len-a", "max_len_a", float, 0.0,
     "generate sequences of maximum length ax + b, where x is the source length"),
    ("--max-len-b", "max_len_b", int, 200, "see --max-len-a"),
    ("--min-len", "min_len", int, 1, "minimum generation length"),
    ("--unkpen", "unkpen", float, 0.0, "unknown word penalty: <0 produces more unks"),
    ("--no-repeat-ngram-size", "no_repeat_ngram_size", int, 0,
     "ngram blocking such that this size ngram cannot be repeated in the generation"),
    ("--temperature", "temperature", float, 1.0, "temperature for generation"),
)
SWITCHES = (
    ("--unnormalized", "unnormalized", "compare unnormalized hypothesis scores"),
)
DEFAULT_POST_PROCESS = "sentencepiece"


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (fairseq-generate's options, same meaning)")
    for flag, dest, typ, default, text in SEARCH_OPTIONS:
        group.add_argument(flag, dest=dest, type=typ, default=default,
                           help=f"{text} (default: {default})")
    for flag, dest, text in SWITCHES:
        group.add_argument(flag, dest=dest, action="store_true", help=text)
    group.add_argument("--batch-size", type=int, default=None,
                       help="at most this many sentences a batch (with --max-tokens)")
    group.add_argument("--post-process", "--remove-bpe", dest="post_process",
                       default=DEFAULT_POST_PROCESS,
                       help="how pieces become text, as fairseq-generate's --post-process "
                            f"(default: {DEFAULT_POST_PROCESS}; 'none' keeps the pieces)")


def generation_overrides(args: argparse.Namespace) -> Dict[str, object]:
    """GenerationConfig field -> value, for decoding.generation_config(**...)."""
    out = {dest: getattr(args, dest) for _f, dest, *_ in SEARCH_OPTIONS}
    out.update({dest: getattr(args, dest) for _f, dest, _t in SWITCHES})
    return out


def post_process(args: argparse.Namespace):
    return None if args.post_process in (None, "none") else args.post_process


def generation_error(args: argparse.Namespace):
    """The first impossible decoding option, as a one-line message, or None."""
    if args.beam < 1:
        return f"--beam must be >= 1, got {args.beam}"
    if args.batch_size is not None and args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    if args.max_len_b < 0 or args.max_len_a < 0:
        return f"--max-len-a/--max-len-b must be >= 0, got {args.max_len_a} and {args.max_len_b}"
    if args.temperature <= 0:
        return f"--temperature must be > 0, got {args.temperature}"
    return None


def unknown_options_error(unknown) -> str:
    known = ", ".join([f for f, *_ in SEARCH_OPTIONS] + [f for f, *_ in SWITCHES]
                      + ["--batch-size", "--post-process"])
    return (f"unrecognized arguments: {' '.join(unknown)} (decoding is in-process; the "
            f"fairseq-generate options accepted are {known})")
