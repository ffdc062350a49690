"""`ensdist-seqkd`: sequence-level knowledge distillation data (Kim & Rush 2016).

    ensdist-seqkd DATA --path a.pt:b.pt:c.pt --out DISTILLED [--split train] [--beam 5] ...
    torchrun --nproc_per_node N $(which ensdist-seqkd) DATA --path ... --out ...   # sharded

Decodes the split's sources with the teacher ensemble (fairseq's beam search, the members
searched jointly) and writes DISTILLED: a fairseq data directory whose split has the teachers'
best hypotheses as targets, every other file of DATA copied unchanged. Train a student on it
with `--task translation`, or memoize a store on it for token-level KD on the distilled targets.
An interrupted run resumes from its complete chunks when rerun with the same arguments.
"""

import argparse
from typing import List, Optional

from ensdist_fairseq.cli import generation_options as gen_opts
from ensdist_fairseq.cli import options


def build_parser() -> options.Parser:
    p = options.Parser(
        prog="ensdist-seqkd",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="fairseq binarized data directory (the teachers' dictionary)")
    options.add_path(p, "teacher checkpoints")
    p.add_argument("--out", required=True, help="the data directory to write")
    options.add_split(p, "train")
    options.add_batching(p)
    p.add_argument(
        "--chunk-sentences",
        type=options.integer(1),
        default=2000,
        help="sentences per chunk: the unit of sharding and of resuming (default: %(default)s)",
    )
    options.add_cpu(p)
    gen_opts.add_generation_options(p, post_process=False)
    return p


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = gen_opts.generation_error(args)
    if problem:
        parser.error(problem)
    options.quiet_fairseq_logging()
    from ensdist_fairseq.teachers.sequence_kd import SeqKDConfig, sequence_kd

    sequence_kd(
        SeqKDConfig(
            data=args.data,
            paths=options.split_paths(args.path),
            out=args.out,
            split=args.split,
            generation=gen_opts.generation_overrides(args),
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            chunk_sentences=args.chunk_sentences,
            device=options.device(args),
        )
    )
    return 0


if __name__ == "__main__":
    options.console(main)
