"""`ensdist-evaluate`: BLEU and token-level calibration of one model or an ensemble.

Teacher-forces the references of a split (ensemble = mean of the members' probabilities) for
ECE-1, ECE-5, Brier, NLL and accuracy, and decodes the split with fairseq-generate + sacreBLEU
for BLEU. Writes one JSON per system (schema: docs/evaluation.md) and prints one summary line.
"""
import argparse
import json
import os
import sys
import time
from typing import List, Optional

import torch

from .. import bleu
from ..calibration import DEFAULT_NUM_BINS, CalibrationAccumulator
from ..checkpoint_checks import check_ensemble
from ..atomic_files import write_text_atomically

SCHEMA_VERSION = 1
KINDS = ("individual", "ensemble", "student")
MAX_CAUSE_CHARS = 200  # fairseq's messages can list every registered task: keep one readable line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ensdist-evaluate", description=__doc__)
    ap.add_argument("data", help="fairseq binarized data directory")
    ap.add_argument("--path", required=True, help="checkpoint(s), an ensemble as a.pt:b.pt:c.pt")
    ap.add_argument("--split", default="test")
    ap.add_argument("--name", required=True, help="name of the evaluated system")
    ap.add_argument("--method", default="default",
                    help="report group, e.g. 'CE+SWA' (rows of one method share a block)")
    ap.add_argument("--kind", choices=KINDS,
                    help="report row type (default: individual for one model, else ensemble)")
    ap.add_argument("--num-teachers", type=int,
                    help="students: size of the teacher ensemble (the report's #models)")
    ap.add_argument("--output-json", required=True)
    ap.add_argument("--bleu", action=argparse.BooleanOptionalAction, default=True,
                    help="also decode with fairseq-generate and score with sacreBLEU")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--lenpen", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=4000)
    ap.add_argument("--num-bins", type=int, default=DEFAULT_NUM_BINS,
                    help="equal-count bins for ECE")
    ap.add_argument("--reference", help="raw reference file of the split (BLEU; default: "
                                        "fairseq's detokenized targets)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    ap.add_argument("--log-interval", type=int, default=100,
                    help="report progress to stderr every this many batches")
    return ap


def flag_error(args) -> Optional[str]:
    """The first impossible flag value, as an error message, or None."""
    for flag, value in (("--num-bins", args.num_bins), ("--beam", args.beam),
                        ("--max-tokens", args.max_tokens), ("--log-interval", args.log_interval)):
        if value < 1:
            return f"{flag} must be >= 1, got {value}"
    if args.num_teachers is not None and (args.kind != "student" or args.num_teachers < 1):
        return f"--num-teachers must be >= 1 and needs --kind student, got {args.num_teachers}"
    if args.reference and not os.path.isfile(args.reference):
        return f"--reference {args.reference}: file not found"
    out_dir = os.path.dirname(os.path.abspath(args.output_json))
    if not os.path.isdir(out_dir):
        return f"--output-json {args.output_json}: directory {out_dir} does not exist"
    return None


def evaluate(args, paths: List[str], cuda: bool) -> dict:
    from ..ensemble_scoring import load_models, score_split  # imports fairseq: keep --help fast

    try:
        models, task = load_models(paths, args.data, cuda)
    except (RuntimeError, KeyError, AttributeError, AssertionError) as e:  # fairseq load failures
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = first if len(first) <= MAX_CAUSE_CHARS else first[:MAX_CAUSE_CHARS] + "..."
        raise ValueError(f"{':'.join(paths)}: cannot load as a fairseq model ({first})") from None
    accumulator = CalibrationAccumulator(num_bins=args.num_bins)
    start = time.perf_counter()

    def progress(done: int, total: int, tokens: int) -> None:
        if done % args.log_interval == 0 or done == total:
            rate = tokens / max(time.perf_counter() - start, 1e-9)
            print(f"[evaluate] {args.name}: batch {done}/{total}, {tokens} tokens, "
                  f"{rate:.0f} tokens/s", file=sys.stderr, flush=True)

    num_sentences = score_split(models, task, args.split, accumulator, args.max_tokens, cuda,
                                progress)
    seconds = time.perf_counter() - start
    del models  # free them before fairseq-generate loads its own copies
    result = {
        "schema_version": SCHEMA_VERSION, "name": args.name, "method": args.method,
        "kind": args.kind or ("individual" if len(paths) == 1 else "ensemble"),
        "num_models": len(paths), "num_teachers": args.num_teachers,
        "paths": [os.path.abspath(p) for p in paths], "data": os.path.abspath(args.data),
        "split": args.split, "num_sentences": num_sentences,
        **accumulator.result().to_dict(),
        "scoring_seconds": seconds, "tokens_per_second": accumulator.num_tokens / seconds,
        "bleu": None, "bleu_signature": None,
    }
    if args.bleu:
        print(f"[evaluate] {args.name}: decoding with fairseq-generate (beam {args.beam})",
              file=sys.stderr, flush=True)
        b = bleu.bleu_of(args.data, paths, args.split, reference_file=args.reference,
                         beam=args.beam, lenpen=args.lenpen, max_tokens=args.max_tokens,
                         cpu=not cuda, extra_args=args.generate_args)
        result.update(bleu=b.bleu, bleu_signature=b.signature)
    return result


def summary_line(r: dict) -> str:
    bleu_text = "n/a" if r["bleu"] is None else f"{r['bleu']:.2f}"
    return (f"{r['name']} ({r['kind']}, {r['num_models']} model(s), {r['split']}): "
            f"BLEU {bleu_text} | ECE-1 {100 * r['ece1']['unweighted']:.3f}% "
            f"ECE-5 {100 * r['ece5']['unweighted']:.3f}% (unweighted; weighted "
            f"{100 * r['ece1']['weighted']:.3f}% / {100 * r['ece5']['weighted']:.3f}%) | "
            f"Brier {r['brier']:.4f} | NLL {r['nll']:.4f} | acc {100 * r['accuracy']:.2f}% | "
            f"{r['num_tokens']} tokens")


def main(argv: Optional[List[str]] = None) -> int:
    # Options it does not know (e.g. --max-len-a 1.5) are passed on to fairseq-generate.
    args, args.generate_args = build_parser().parse_known_args(argv)
    if args.generate_args and not args.bleu:
        print(f"error: unrecognized arguments: {' '.join(args.generate_args)}", file=sys.stderr)
        return 2
    problem = flag_error(args)
    paths = [p for p in args.path.split(":") if p]
    try:
        if problem:
            raise ValueError(problem)
        check_ensemble(paths, args.data)
        result = evaluate(args, paths, cuda=torch.cuda.is_available() and not args.cpu)
    except (ValueError, RuntimeError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    write_text_atomically(args.output_json, json.dumps(result, indent=2) + "\n")
    print(summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
