"""`python -m ensdist_fairseq.cli.swa`: write the SWA model of a finished fairseq-train run.

By default the window is the --epochs epoch checkpoints ending at the best validation epoch
(read from SAVE_DIR/checkpoint_best.pt); --end-epoch E fixes its end instead (e.g. the last
epoch of a fixed-length run). See docs/teachers.md.
"""
import argparse
import os
import sys

from ..training.safe_loading import load_checkpoint
from ..training.swa import best_epoch, epoch_snapshots, write_swa_checkpoint


def _val_loss(path):
    return (load_checkpoint(path).get("extra_state") or {}).get("val_loss")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save-dir", required=True, help="fairseq-train --save-dir of the run")
    ap.add_argument("--epochs", type=int, required=True,
                    help="average this many epoch checkpoints (fewer if the window starts "
                         "before epoch 1)")
    ap.add_argument("--end-epoch", type=int,
                    help="the window's last epoch (default: the best validation epoch)")
    ap.add_argument("--output", help="default: SAVE_DIR/checkpoint_swa.pt")
    ap.add_argument("--remove-snapshots", action="store_true",
                    help="delete every epoch checkpoint of the run once the SWA model is written")
    args = ap.parse_args(argv)
    if args.epochs <= 0:
        ap.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.end_epoch is not None and args.end_epoch <= 0:
        ap.error(f"--end-epoch must be >= 1, got {args.end_epoch}")
    if not os.path.isdir(args.save_dir):
        print(f"error: --save-dir {args.save_dir}: no such directory", file=sys.stderr)
        return 1
    output = args.output or os.path.join(args.save_dir, "checkpoint_swa.pt")
    try:
        end = args.end_epoch
        if end is None:
            end = best_epoch(args.save_dir)
            # The window's last snapshot must be the best model itself (same validation loss).
            best_file = os.path.join(args.save_dir, f"checkpoint{end}.pt")
            if (os.path.isfile(best_file) and
                    _val_loss(best_file) != _val_loss(os.path.join(args.save_dir, "checkpoint_best.pt"))):
                raise ValueError(f"{best_file}: its validation loss differs from checkpoint_best.pt's "
                                 f"(is the best epoch {end}?)")
        snaps = epoch_snapshots(args.save_dir, end, args.epochs)
        write_swa_checkpoint(snaps, output)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    first, last = (os.path.basename(p) for p in (snaps[0], snaps[-1]))
    print(f"[swa] averaged {len(snaps)} epoch checkpoints ({first} .. {last}, ending at "
          f"{'the best validation epoch ' if args.end_epoch is None else 'epoch '}{end}) -> {output}")
    if args.remove_snapshots:
        import re
        for name in os.listdir(args.save_dir):
            if re.fullmatch(r"checkpoint\d+\.pt", name):
                os.remove(os.path.join(args.save_dir, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
