"""`ensdist-memoize`: store the teacher ensemble's top-V' token distributions of a split.

    ensdist-memoize DATA --path a.pt:b.pt:c.pt --output teacher.h5 [--split train] [--topk 64]
    torchrun --nproc_per_node 2 $(which ensdist-memoize) DATA --path ... --output ...   # sharded

The store format is docs/store-format.md. An interrupted run resumes from its complete chunks
when rerun with the same arguments (any number of processes).
"""

from typing import List, Optional

from ensdist_fairseq.cli import options
from ensdist_fairseq.store.provenance import FORMAT_VERSION, WRITABLE_FORMATS


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
    p.add_argument(
        "--store-format",
        type=options.integer(min(WRITABLE_FORMATS), max(WRITABLE_FORMATS)),
        default=FORMAT_VERSION,
        help="4: rows coded with tables fitted per chunk, the smallest store; 3: rows coded "
        "per sentence, larger, cheaper to read (BENCHMARKS.md; default: %(default)s)",
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
    teachers = p.add_argument_group("teachers (loading, and the checks that they fit the data)")
    teachers.add_argument(
        "--model-overrides",
        default="{}",
        help="model options set at load time, a Python dict as fairseq's --model-overrides "
        "(e.g. \"{'dropout': 0.0}\")",
    )
    teachers.add_argument(
        "--user-dir", help="a fairseq plugin directory with the teachers' own architecture"
    )
    half = teachers.add_mutually_exclusive_group()
    half.add_argument("--fp16", action="store_true", help="teachers' forward pass in float16 (GPU)")
    half.add_argument(
        "--bf16", action="store_true", help="teachers' forward pass in bfloat16 (GPU)"
    )
    teachers.add_argument(
        "--teacher-dict",
        action="append",
        default=[],
        metavar="FILE",
        help="the target dictionary the teachers were trained with (e.g. the dict.txt shipped "
        "with a pretrained model), compared with the data's by content; once for all "
        "teachers or once per teacher. Needed for checkpoints that record none "
        "(--task translation); default: a dict.<tgt>.txt beside the checkpoint if there is one",
    )
    teachers.add_argument(
        "--accuracy-sentences",
        type=options.integer(1),
        default=1000,
        help="sentences of the split (the first ones) on which the ensemble's teacher-forced "
        "accuracy is measured before anything is written, and recorded in the store "
        "(default: %(default)s)",
    )
    teachers.add_argument(
        "--allow-low-accuracy",
        action="store_true",
        help="store the teachers even when their accuracy is near a constant guess's",
    )
    p.add_argument(
        "--log-interval",
        type=options.real(0, lo_open=True, inf_means="no progress lines"),
        default=30.0,
        help="seconds between progress lines (default: %(default)s)",
    )
    return p


def _model_overrides(text: str, parser) -> dict:
    """--model-overrides as fairseq reads it (a Python dict literal), without eval()."""
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        parser.error(
            f"argument --model-overrides: expected a dict like \"{{'dropout': 0.0}}\", got {text!r}"
        )
    return value


def _import_user_dir(user_dir: Optional[str]) -> None:
    """fairseq's --user-dir: import the plugin so its architectures are registered."""
    if user_dir is None:
        return
    import argparse
    import os

    from ensdist_fairseq.errors import EnsdistError

    if not os.path.isdir(user_dir):
        raise EnsdistError(f"--user-dir {user_dir}: directory not found")
    from fairseq.utils import import_user_module

    import_user_module(argparse.Namespace(user_dir=user_dir))


@options.command
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = _model_overrides(args.model_overrides, parser)
    options.quiet_fairseq_logging()  # h5py would otherwise log every type conversion
    _import_user_dir(args.user_dir)
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
        model_overrides=overrides,
        precision="fp16" if args.fp16 else "bf16" if args.bf16 else None,
        teacher_dicts=args.teacher_dict,
        accuracy_sentences=args.accuracy_sentences,
        allow_low_accuracy=args.allow_low_accuracy,
        store_format=args.store_format,
    )
    memoize(cfg)
    return 0


if __name__ == "__main__":
    options.console(main)
