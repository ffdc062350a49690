"""`python -m ensdist_fairseq.cli.swa`: write the SWA model of a finished fairseq-train run."""
import argparse
import os
import sys

from ..swa import epoch_snapshots, write_swa_checkpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--save-dir", required=True, help="fairseq-train --save-dir of the run")
    ap.add_argument("--last-epoch", type=int, required=True, help="the run's --max-epoch")
    ap.add_argument("--epochs", type=int, required=True,
                    help="average the epoch checkpoints of the last this-many epochs")
    ap.add_argument("--output", help="default: SAVE_DIR/checkpoint_swa.pt")
    ap.add_argument("--remove-snapshots", action="store_true",
                    help="delete the averaged epoch checkpoints once the SWA model is written")
    args = ap.parse_args(argv)
    if args.epochs <= 0 or args.epochs > args.last_epoch:
        ap.error(f"--epochs must be in 1..--last-epoch ({args.last_epoch}), got {args.epochs}")
    if not os.path.isdir(args.save_dir):
        print(f"error: --save-dir {args.save_dir}: no such directory", file=sys.stderr)
        return 1
    output = args.output or os.path.join(args.save_dir, "checkpoint_swa.pt")
    try:
        snaps = epoch_snapshots(args.save_dir, args.last_epoch, args.epochs)
        write_swa_checkpoint(snaps, output)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[swa] averaged {len(snaps)} epoch checkpoints -> {output}")
    if args.remove_snapshots:
        for p in snaps:
            os.remove(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
