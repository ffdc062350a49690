"""`ensdist-ood-sets`: out-of-distribution input sets for OOD detection, built from files already
on the machine (ensdist_fairseq.uncertainty.ood_sets says what each set is).

    ensdist-ood-sets --data-dir runs/demo/data --out runs/demo/ood [--size 500] [--seed 1]
                     [--length-bins 10] [--extra NAME=FILE ...]
"""

import argparse
import glob
import os
from typing import List, Optional

from ensdist_fairseq.cli import options
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.uncertainty.ood_sets import LOCALE_DIR, MANIFEST, write_sets

BUILT_SETS = ("permuted", "domain", "target", "third")


def check_not_inputs(data_dir: str, out: str, extra: dict) -> None:
    """No file this run writes is one it reads: an --out that is (or holds) --data-dir would
    otherwise write set NAME over raw/NAME.*, spm/NAME.*, bin/NAME.* of the corpus (and an
    --extra file under --out/raw/ over itself). Only existing files can be inputs, so the
    outputs compared are the existing files under the names this run writes."""
    names = list(BUILT_SETS) + list(extra)
    outputs = [("--out", os.path.join(out, MANIFEST))]
    for sub in ("raw", "spm", "bin"):
        for name in names:
            pattern = os.path.join(glob.escape(os.path.join(out, sub)), f"{glob.escape(name)}.*")
            outputs += [("--out", p) for p in sorted(glob.glob(pattern))]
    inputs = [("--extra", path) for path in extra.values()]
    for sub in ("raw", "spm", "bin"):
        pattern = os.path.join(glob.escape(os.path.join(data_dir, sub)), "*")
        inputs += [("--data-dir", p) for p in sorted(glob.glob(pattern)) if os.path.isfile(p)]
    options.check_outputs(outputs, inputs)


def _quartiles(lengths: dict) -> str:
    return "/".join(str(lengths[q]) for q in ("q1", "q2", "q3"))


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    ap = options.Parser(
        prog="ensdist-ood-sets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data-dir", required=True, help="prepared corpus: raw/, spm/, bin/")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--size", type=options.integer(1), default=500, help="sentences per OOD set")
    ap.add_argument("--seed", type=options.integer(), default=1)
    ap.add_argument(
        "--length-bins",
        type=options.integer(0, 1000),
        default=10,
        help="draw each set with the in-domain test sources' length distribution (in pieces) over"
        " this many quantile bins; 0: no length matching",
    )
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="also binarize your own raw source-language file as OOD set NAME",
    )
    ap.add_argument("--locale-dir", default=LOCALE_DIR, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    extra = {}
    for item in args.extra:
        if "=" not in item:
            raise EnsdistError(f"--extra {item}: expected NAME=FILE")
        name, path = item.split("=", 1)
        extra[name] = path
    check_not_inputs(args.data_dir, args.out, extra)
    manifest = write_sets(
        args.data_dir, args.out, args.size, args.seed, extra, args.locale_dir, args.length_bins
    )
    match = manifest["length_match"]
    lengths = match["in_domain_lengths"]
    print(
        f"[ood-sets] in-domain: {lengths['mean']} pieces (quartiles {_quartiles(lengths)}),"
        f" {100 * match['in_domain_unk_rate']:.2f}% <unk>"
    )
    for s in manifest["sets"]:
        print(
            f"[ood-sets] {s['name']}: {s['lines']} lines, {s['lengths']['mean']} pieces (quartiles"
            f" {_quartiles(s['lengths'])}), {s['unk_tokens']} <unk> ({100 * s['unk_rate']:.2f}%)"
            f" -- {s['about']}"
        )
    print(f"[ood-sets] -> {os.path.join(args.out, MANIFEST)}")
    return 0


if __name__ == "__main__":
    options.console(main)
