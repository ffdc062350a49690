"""`ensdist-learning-curves`: validation NLL and ECE-1 per epoch of fairseq-train runs, as a
markdown table and a PNG (ensdist_fairseq.report.learning_curves).

    ensdist-learning-curves --run "CE member=runs/demo/teachers/ce/seed1/train.log" \
        --run "LS member=runs/demo/teachers/ls/seed1/train.log" \
        --output-md docs/learning_curves_cpu.md --output-png docs/learning_curves_cpu.png
"""

import argparse
import os
from typing import List, Optional, Tuple

from ensdist_fairseq.atomic_files import check_writable, write_text_atomically
from ensdist_fairseq.cli import options
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.report.learning_curves import curves_markdown, write_curves_png
from ensdist_fairseq.report.train_logs import read_train_log


def _parse_run(spec: str) -> Tuple[str, str]:
    if "=" not in spec:
        raise EnsdistError(f"--run {spec}: expected LABEL=TRAIN_LOG")
    label, path = spec.split("=", 1)
    return label, path


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    ap = options.Parser(
        prog="ensdist-learning-curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--run", action="append", required=True, help="LABEL=TRAIN_LOG (repeat)")
    ap.add_argument("--title", help="heading of the table and the figure")
    ap.add_argument("--output-md", help="write the markdown table here (default: print it)")
    ap.add_argument("--output-png", help="write the figure here")
    args = ap.parse_args(argv)
    outputs = [("--output-md", args.output_md), ("--output-png", args.output_png)]
    options.check_outputs(
        [o for o in outputs if o[1]], [("--run", _parse_run(spec)[1]) for spec in args.run]
    )
    for flag, path in outputs:
        if path:
            check_writable(path, flag)
    runs = []
    for spec in args.run:
        label, path = _parse_run(spec)
        if not os.path.isfile(path):
            raise EnsdistError(f"--run {spec}: {path}: no such file")
        run = read_train_log(path)
        if not run.valid:
            raise EnsdistError(
                f"{path}: no validation lines (a fairseq-train --log-format simple log?)"
            )
        runs.append((label, run))
    md = curves_markdown(runs, args.title)
    if args.output_md:
        write_text_atomically(args.output_md, md)
    else:
        print(md)
    if args.output_png:
        write_curves_png(runs, args.output_png, args.title)
    return 0


if __name__ == "__main__":
    options.console(main)
