"""`ensdist-ood-sets`: out-of-distribution input sets for OOD detection, built from files already
on the machine (ensdist_fairseq.uncertainty.ood_sets says what each set is).

    ensdist-ood-sets --data-dir runs/demo/data --out runs/demo/ood [--size 500] [--seed 1]
                     [--extra NAME=FILE ...]
"""

import argparse
import os
from typing import List, Optional

from ensdist_fairseq.cli import options
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.uncertainty.ood_sets import LOCALE_DIR, MANIFEST, write_sets


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
    manifest = write_sets(args.data_dir, args.out, args.size, args.seed, extra, args.locale_dir)
    for s in manifest["sets"]:
        print(
            f"[ood-sets] {s['name']}: {s['lines']} lines, {s['unk_tokens']} <unk> -- {s['about']}"
        )
    print(f"[ood-sets] -> {os.path.join(args.out, MANIFEST)}")
    return 0


if __name__ == "__main__":
    options.console(main)
