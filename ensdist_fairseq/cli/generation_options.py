"""The fairseq-generate options our decoding commands accept, under fairseq's own names.

`ensdist-evaluate`, `ensdist-bleu-table` and `ensdist-uncertainty` decode in-process
(evaluation/decoding.py), so each accepted option is listed here once with fairseq's flag,
default (GenerationConfig's, checked by tests/test_decoding.py) and the range the numeric-flag
rule of cli/options.py enforces; anything else is refused by name. No fairseq import: building
the parser (and `--help`) stays fast.
"""

import argparse
from typing import Dict, Optional

from ensdist_fairseq.cli import options

# (flag, GenerationConfig field, parser, default, help); defaults are fairseq 0.12's. A beam of
# more than 1000 or a temperature outside [1e-3, 1e3] is no search anyone means (and a tiny
# temperature overflows the scaled scores into NaN).
# A score is divided by length ** lenpen: beyond these the power overflows a float (lengths up
# to 2**31) and every hypothesis scores 0 or inf; an unknown-word penalty is added to a
# float32 log-probability, and beyond a few hundred nats it only makes <unk> impossible or
# certain, which these bounds already do.
MAX_LENPEN = 10.0
MAX_UNKPEN = 1e3
SEARCH_OPTIONS = (
    ("--beam", "beam", options.integer(1, 1000), 5, "beam size"),
    (
        "--lenpen",
        "lenpen",
        options.real(-MAX_LENPEN, MAX_LENPEN),
        1.0,
        "length penalty: <1.0 favours shorter, >1.0 longer sentences",
    ),
    (
        "--max-len-a",
        "max_len_a",
        options.real(0),
        0.0,
        "generate sequences of maximum length ax + b, where x is the source length",
    ),
    ("--max-len-b", "max_len_b", options.integer(1), 200, "see --max-len-a"),
    ("--min-len", "min_len", options.integer(1), 1, "minimum generation length"),
    (
        "--unkpen",
        "unkpen",
        options.real(-MAX_UNKPEN, MAX_UNKPEN),
        0.0,
        "unknown word penalty: <0 produces more unks",
    ),
    (
        "--no-repeat-ngram-size",
        "no_repeat_ngram_size",
        options.integer(0),
        0,
        "ngram blocking such that this size ngram cannot be repeated in the generation",
    ),
    (
        "--temperature",
        "temperature",
        options.real(1e-3, 1e3),
        1.0,
        "temperature for generation (of the model's scores, as fairseq-generate's)",
    ),
)
SWITCHES = (("--unnormalized", "unnormalized", "compare unnormalized hypothesis scores"),)
# fairseq-generate's --post-process symbols (fairseq.data.data_utils.post_process), and "auto":
# what the data was made with, read off its dictionary (evaluation/decoding.resolve_post_process).
POST_PROCESS = (
    "auto",
    "sentencepiece",
    "subword_nmt",
    "@@ ",
    "@@",
    "wordpiece",
    "letter",
    "silence",
    "_EOW",
    "none",
)
DEFAULT_POST_PROCESS = "auto"


def add_generation_options(parser: argparse.ArgumentParser, post_process: bool = True) -> None:
    group = parser.add_argument_group("decoding (fairseq-generate's options, same meaning)")
    for flag, dest, typ, default, text in SEARCH_OPTIONS:
        group.add_argument(
            flag, dest=dest, type=typ, default=default, help=f"{text} (default: {default})"
        )
    for flag, dest, text in SWITCHES:
        group.add_argument(flag, dest=dest, action="store_true", help=text)
    if post_process:
        group.add_argument(
            "--post-process",
            "--remove-bpe",
            dest="post_process",
            default=DEFAULT_POST_PROCESS,
            help="how pieces become text, as fairseq-generate's --post-process "
            f"(default: {DEFAULT_POST_PROCESS}; 'none' keeps the pieces)",
        )


def generation_overrides(args: argparse.Namespace) -> Dict[str, object]:
    """GenerationConfig field -> value, for decoding.generation_config(**...)."""
    out = {dest: getattr(args, dest) for _f, dest, *_ in SEARCH_OPTIONS}
    out.update({dest: getattr(args, dest) for _f, dest, _t in SWITCHES})
    return out


def generation_error(args: argparse.Namespace) -> Optional[str]:
    """The first combination of decoding options fairseq's search would assert on, or None.

    The search allows at most int(a * source_length + b) output tokens and asserts that
    --min-len fits: with a source of one token (its end of sentence) that is b, whatever a is."""
    if args.min_len > args.max_len_b:
        return (
            f"--min-len {args.min_len} is longer than the longest output of a one-token source "
            f"(--max-len-b {args.max_len_b})"
        )
    return None


def check_min_len(args: argparse.Namespace, models) -> None:
    """EnsdistError if --min-len exceeds what the models can output (fairseq's search caps
    the length at max_decoder_positions - 1 and asserts on it after all earlier work)."""
    from ensdist_fairseq.errors import EnsdistError

    longest = min(m.max_decoder_positions() for m in models) - 1
    if args.min_len > longest:
        raise EnsdistError(
            f"--min-len {args.min_len}: longer than the {longest} tokens the model(s) can output"
        )


def unknown_options_error(unknown) -> str:
    known = ", ".join(
        [f for f, *_ in SEARCH_OPTIONS]
        + [f for f, *_ in SWITCHES]
        + ["--batch-size", "--post-process"]
    )
    return (
        f"unrecognized arguments: {' '.join(unknown)} (decoding is in-process; the "
        f"fairseq-generate options accepted are {known})"
    )
