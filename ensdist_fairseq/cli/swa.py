"""`ensdist-swa`: write the SWA model of a finished fairseq-train run.

By default the window is the --epochs epoch checkpoints ending at the best validation epoch
(read from SAVE_DIR/checkpoint_best.pt); --end-epoch E fixes its end instead (e.g. the last
epoch of a fixed-length run). See docs/teachers.md.
"""

import os
import re

from ensdist_fairseq.atomic_files import check_writable
from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint
from ensdist_fairseq.checkpoints.swa import best_epoch, epoch_snapshots, write_swa_checkpoint
from ensdist_fairseq.cli import options
from ensdist_fairseq.errors import EnsdistError


def _val_loss(path):
    return (load_checkpoint(path).get("extra_state") or {}).get("val_loss")


@options.command
def main(argv=None) -> int:
    ap = options.Parser(prog="ensdist-swa", description=__doc__.split("\n\n")[0])
    ap.add_argument("--save-dir", required=True, help="fairseq-train --save-dir of the run")
    ap.add_argument(
        "--epochs",
        type=options.integer(1),
        required=True,
        help="average this many epoch checkpoints (fewer if the window starts before epoch 1)",
    )
    ap.add_argument(
        "--end-epoch",
        type=options.integer(1),
        help="the window's last epoch (default: the best validation epoch)",
    )
    ap.add_argument("--output", help="default: SAVE_DIR/checkpoint_swa.pt")
    ap.add_argument(
        "--remove-snapshots",
        action="store_true",
        help="delete every epoch checkpoint of the run once the SWA model is written",
    )
    args = ap.parse_args(argv)
    if not os.path.isdir(args.save_dir):
        raise EnsdistError(f"--save-dir {args.save_dir}: no such directory")
    output = args.output or os.path.join(args.save_dir, "checkpoint_swa.pt")
    if args.remove_snapshots and _is_snapshot(output, args.save_dir):
        raise EnsdistError(
            f"--output {output}: an epoch checkpoint of --save-dir, which "
            f"--remove-snapshots would delete"
        )
    end = args.end_epoch
    if end is None:
        end = best_epoch(args.save_dir)
        # The window's last snapshot must be the best model itself (same validation loss).
        best_file = os.path.join(args.save_dir, f"checkpoint{end}.pt")
        if os.path.isfile(best_file) and _val_loss(best_file) != _val_loss(
            os.path.join(args.save_dir, "checkpoint_best.pt")
        ):
            raise EnsdistError(
                f"{best_file}: its validation loss differs from checkpoint_best.pt's "
                f"(is the best epoch {end}?)"
            )
    snaps = epoch_snapshots(args.save_dir, end, args.epochs)
    # fairseq-train's own files are the run's record (and resume point): never written over
    kept = ("checkpoint_best.pt", "checkpoint_last.pt")
    run_files = [os.path.join(args.save_dir, n) for n in kept]
    options.check_outputs(
        [("--output", output)],
        [("--save-dir", p) for p in snaps + [p for p in run_files if os.path.exists(p)]],
    )
    check_writable(output, "--output")
    write_swa_checkpoint(snaps, output)
    first, last = (os.path.basename(p) for p in (snaps[0], snaps[-1]))
    print(
        f"[swa] averaged {len(snaps)} epoch checkpoints ({first} .. {last}, ending at "
        f"{'the best validation epoch ' if args.end_epoch is None else 'epoch '}{end}) -> {output}"
    )
    if args.remove_snapshots:
        for name in os.listdir(args.save_dir):
            if _SNAPSHOT.fullmatch(name):
                os.remove(os.path.join(args.save_dir, name))
    return 0


_SNAPSHOT = re.compile(r"checkpoint\d+\.pt")


def _is_snapshot(path: str, save_dir: str) -> bool:
    return os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(
        save_dir
    ) and bool(_SNAPSHOT.fullmatch(os.path.basename(path)))


if __name__ == "__main__":
    options.console(main)
