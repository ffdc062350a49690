"""`ensdist-export`: a Dirichlet student as a plain fairseq `transformer` checkpoint.

    ensdist-export --path student/checkpoint_best.pt --output plain.pt
    fairseq-generate DATA --path plain.pt ...        # no --user-dir: fairseq alone

The student's default predictive, softmax(z), is a plain Transformer's: the exported checkpoint
decodes to the same hypotheses and scores. What is rewritten: ensdist_fairseq/checkpoints/export.py.
"""

from typing import List, Optional

from ensdist_fairseq.cli import options


def build_parser() -> options.Parser:
    p = options.Parser(prog="ensdist-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--path", required=True, help="a dirichlet_transformer checkpoint")
    p.add_argument("--output", required=True, help="the plain transformer checkpoint to write")
    p.add_argument(
        "--softmax-predictive",
        action="store_true",
        help="export softmax(z) also when the student decodes with the Dirichlet mean "
        "(alpha/alpha_0; checkpoints recording no predictive do): the export then decodes "
        "differently from the student as saved",
    )
    return p


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    options.quiet_fairseq_logging()
    import os

    from ensdist_fairseq import register_with_fairseq
    from ensdist_fairseq.atomic_files import check_writable
    from ensdist_fairseq.checkpoints.export import export_plain_transformer
    from ensdist_fairseq.errors import EnsdistError

    if not os.path.isfile(args.path):
        raise EnsdistError(f"--path {args.path}: checkpoint not found")
    check_writable(args.output, "--output")
    register_with_fairseq()
    arch = export_plain_transformer(args.path, args.output, args.softmax_predictive)
    print(f"ensdist-export: {args.path} -> {args.output} (arch {arch}, plain fairseq)")
    return 0


if __name__ == "__main__":
    options.console(main)
