"""`python -m ensdist_fairseq.cli.swa`: write the SWA model of a finished fairseq-train run."""
import argparse
import os
import sys

from ..swa import tail_snapshots, write_swa_checkpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--save-dir", required=True, help="fairseq-train --save-dir of the run")
    ap.add_argument("--max-update", type=int, required=True, help="the run's --max-update")
    ap.add_argument("--swa-updates", type=int, required=True,
                    help="average the interval snapshots of the last this-many updates")
    ap.add_argument("--output", help="default: SAVE_DIR/checkpoint_swa.pt")
    ap.add_argument("--remove-snapshots", action="store_true",
                    help="delete the averaged interval snapshots once the SWA model is written")
    args = ap.parse_args(argv)
    if args.swa_updates <= 0 or args.swa_updates > args.max_update:
        ap.error(f"--swa-updates must be in 1..--max-update ({args.max_update}), got {args.swa_updates}")
    if not os.path.isdir(args.save_dir):
        print(f"error: --save-dir {args.save_dir}: no such directory", file=sys.stderr)
        return 1
    output = args.output or os.path.join(args.save_dir, "checkpoint_swa.pt")
    snaps = tail_snapshots(args.save_dir, args.max_update, args.swa_updates)
    if not snaps:
        print(f"error: {args.save_dir}: no checkpoint_<epoch>_<updates>.pt snapshots in the last "
              f"{args.swa_updates} of {args.max_update} updates (was --save-interval-updates set?)",
              file=sys.stderr)
        return 1
    try:
        write_swa_checkpoint(snaps, output)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[swa] averaged {len(snaps)} snapshots -> {output}")
    if args.remove_snapshots:
        for p in snaps:
            os.remove(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
