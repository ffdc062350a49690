"""`ensdist-memoize`: store the teacher ensemble's top-V' token distributions of a split.

    ensdist-memoize DATA --path a.pt:b.pt:c.pt --output teacher.h5 [--split train] [--topk 64]
    torchrun --nproc_per_node 2 $(which ensdist-memoize) DATA --path ... --output ...   # sharded

The store format is docs/store-format.md. An interrupted run resumes from its complete chunks
when rerun with the same arguments (any number of processes).
"""

from typing import List, Optional

from ensdist_fairseq.cli import options


def build_parser() -> options.Parser:
    p = options.Parser(prog="ensdist-memoize", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="fairseq binarized data directory (the teachers' dictionary)")
    options.add_path(p, "teacher checkpoints")
    p.add_argument("--output", required=True, help="the store file to write (HDF5)")
    options.add_split(p, "train")
    # V' is checked against the vocabulary in one place (store.provenance.check_topk).
    p.add_argument(
        "--topk",
        type=options.integer(1),
        default=64,
        help="V': events kept per target token (default: %(default)s)",
    )
    p.add_argument(
        "--top-p",
        type=options.real(0, 1, lo_open=True),
        default=1.0,
        help="nucleus rows: keep per token the smallest prefix of the top-V' reaching this "
        "mass, padded with (index 0, probability 0) (default: %(default)s = whole rows)",
    )
    p.add_argument(
        "--min-k",
        type=options.integer(1),
        default=1,
        help="nucleus rows keep at least this many entries (at most --topk; "
        "default: %(default)s)",
    )
    options.add_batching(p)
    p.add_argument(
        "--chunk-sentences",
        type=options.integer(1),
        default=10000,
        help="sentences per chunk file: the unit of sharding and of resuming "
        "(default: %(default)s)",
    )
    options.add_cpu(p)
    p.add_argument(
        "--log-interval",
        type=options.real(0, lo_open=True, inf_means="no progress lines"),
        default=30.0,
        help="seconds between progress lines (default: %(default)s)",
    )
    return p


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    options.quiet_fairseq_logging()  # h5py would otherwise log every type conversion
    from ensdist_fairseq.teachers.memoize import MemoizeConfig, memoize  # imports fairseq, h5py

    cfg = MemoizeConfig(
        data=args.data,
        paths=options.split_paths(args.path),
        output=args.output,
        split=args.split,
        topk=args.topk,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        chunk_sentences=args.chunk_sentences,
        cpu=args.cpu,
        log_interval=args.log_interval,
        top_p=args.top_p,
        min_k=args.min_k,
    )
    memoize(cfg)
    return 0


if __name__ == "__main__":
    options.console(main)
