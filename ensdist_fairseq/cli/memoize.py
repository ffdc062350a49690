"""`ensdist-memoize`: store the teacher ensemble's top-V' token distributions of a split.

    ensdist-memoize DATA --path a.pt:b.pt:c.pt --output teacher.h5 [--split train] [--topk 64]
    torchrun --nproc_per_node 2 $(which ensdist-memoize) DATA --path ... --output ...   # sharded

The store format is docs/store-format.md. An interrupted run resumes from its complete chunks
when rerun with the same arguments (any number of processes).
"""
import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensdist-memoize", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="fairseq binarized data directory (the teachers' dictionary)")
    p.add_argument("--path", required=True, help="teacher checkpoints, colon-separated: a.pt:b.pt:c.pt")
    p.add_argument("--output", required=True, help="the store file to write (HDF5)")
    p.add_argument("--split", default="train", help="split to memoize (default: %(default)s)")
    p.add_argument("--topk", type=int, default=64, help="V': events kept per target token (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=4096,
                   help="maximum tokens per batch (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="maximum sentences per batch")
    p.add_argument("--chunk-sentences", type=int, default=10000,
                   help="sentences per chunk file: the unit of sharding and of resuming (default: %(default)s)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when CUDA is available")
    p.add_argument("--log-interval", type=float, default=30.0,
                   help="seconds between progress lines (default: %(default)s)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    # fairseq's import leaves the root logger at DEBUG (h5py then logs every type conversion).
    logging.basicConfig(level=logging.WARNING, force=True, format="%(levelname)s | %(name)s | %(message)s")
    from ..errors import EnsdistError, one_line
    from ..store.memoize import MemoizeConfig, memoize  # imports fairseq and h5py: after logging is set

    # --topk is checked against the vocabulary, in one place (store.provenance.check_topk).
    for flag in ("max_tokens", "batch_size", "chunk_sentences"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            sys.exit(f"error: --{flag.replace('_', '-')} must be >= 1, got {value}")
    cfg = MemoizeConfig(
        data=args.data, paths=[p for p in args.path.split(":") if p], output=args.output,
        split=args.split, topk=args.topk, max_tokens=args.max_tokens, batch_size=args.batch_size,
        chunk_sentences=args.chunk_sentences, cpu=args.cpu, log_interval=args.log_interval)
    try:
        memoize(cfg)
    except EnsdistError as e:
        sys.exit(f"error: {one_line(e)}")
    except OSError as e:  # an input that vanished or cannot be read: name the file, no traceback
        sys.exit(f"error: {e.filename or '--output ' + args.output}: {e.strerror or e}")


if __name__ == "__main__":
    main()
