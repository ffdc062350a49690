"""Stochastic weight averaging (SWA) of a fairseq training run, from its epoch snapshots.

Schedule (docs/teachers.md): fairseq-train stops by the early-stopping rule (``--patience P``:
P validations without a new best validation loss, ``--max-epoch`` as a cap) and writes a
checkpoint at the end of every epoch (``--keep-last-epochs N+P`` keeps the tail). The SWA model
is the equal-weight mean of the parameters of the N epoch checkpoints ENDING AT THE BEST
VALIDATION EPOCH (epochs b-N+1 .. b; fewer when b < N): the window around the plateau, chosen
by a rule fixed before training and not by the test numbers it is judged on. Reich et al.
average their last 10 epochs of a fixed-length run, which is the same window when the run stops
at its plateau. The mean is what torch.optim.swa_utils.AveragedModel computes with its default
averaging function. Epoch ends rather than --save-interval-updates: fairseq skips an interval
snapshot that falls on an epoch end, which would make the schedule depend on the data size.
Transformers use LayerNorm, not BatchNorm, so SWA's BatchNorm pass (update_bn) has nothing to do.

Averaging works on checkpoints rather than a live model so a finished run can be averaged
without retraining and the result is an ordinary fairseq checkpoint (fairseq-generate reads it).
"""

import os
from typing import Dict, List, Sequence

import torch

from ensdist_fairseq.atomic_files import atomic_open
from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint
from ensdist_fairseq.errors import EnsdistError


def best_epoch(save_dir: str) -> int:
    """The epoch whose end produced SAVE_DIR/checkpoint_best.pt (the best validation loss).

    fairseq stores the epoch iterator's state, which at an epoch end already points at the
    next epoch (epoch + 1, 0 iterations in it); a checkpoint saved mid-epoch keeps its epoch."""
    path = os.path.join(save_dir, "checkpoint_best.pt")
    if not os.path.isfile(path):
        raise EnsdistError(f"{path}: missing (the run validated no epoch, or is not a fairseq run)")
    state = (load_checkpoint(path).get("extra_state") or {}).get("train_iterator") or {}
    if "epoch" not in state:
        raise EnsdistError(f"{path}: no epoch in its train_iterator state")
    return state["epoch"] - 1 if state.get("iterations_in_epoch", 0) == 0 else state["epoch"]


def swa_window(end_epoch: int, num_epochs: int) -> List[int]:
    """Epochs end_epoch-num_epochs+1 .. end_epoch, starting at epoch 1 at the earliest."""
    if num_epochs < 1 or end_epoch < 1:
        raise EnsdistError(
            f"SWA window: need num_epochs >= 1 and end epoch >= 1, got "
            f"{num_epochs} ending at {end_epoch}"
        )
    return list(range(max(1, end_epoch - num_epochs + 1), end_epoch + 1))


def epoch_snapshots(save_dir: str, last_epoch: int, num_epochs: int) -> List[str]:
    """The epoch checkpoints of swa_window(last_epoch, num_epochs) in `save_dir`, in order;
    ValueError naming the first one missing."""
    paths = [
        os.path.join(save_dir, f"checkpoint{e}.pt") for e in swa_window(last_epoch, num_epochs)
    ]
    for p in paths:
        if not os.path.isfile(p):
            raise EnsdistError(
                f"{p}: epoch checkpoint missing (needed for SWA over the "
                f"{num_epochs} epochs ending at epoch {last_epoch}; keep at least "
                f"SWA epochs + patience with --keep-last-epochs)"
            )
    return paths


def average_state_dicts(state_dicts: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Equal-weight mean of parameter dicts, accumulated in float64 and cast back to each
    tensor's dtype (fp16 snapshots would otherwise lose precision in the running sum)."""
    if not state_dicts:
        raise EnsdistError("no snapshots to average")
    keys = list(state_dicts[0].keys())
    for i, sd in enumerate(state_dicts[1:], 1):
        if list(sd.keys()) != keys or any(sd[k].shape != state_dicts[0][k].shape for k in keys):
            raise EnsdistError(f"snapshot {i} has different parameters from snapshot 0")
    avg = {}
    for k in keys:
        ref = state_dicts[0][k]
        if not torch.is_floating_point(ref):  # integer buffers (e.g. step counters): keep the last
            avg[k] = state_dicts[-1][k].clone()
            continue
        total = torch.zeros(ref.shape, dtype=torch.float64)
        for sd in state_dicts:
            total += sd[k].to(torch.float64)
        avg[k] = (total / len(state_dicts)).to(ref.dtype)
    return avg


def write_swa_checkpoint(snapshot_paths: Sequence[str], output: str) -> None:
    """Average the snapshots' models into `output` (written atomically).

    The result keeps the last snapshot's config and training history so fairseq loads it like
    any checkpoint; the optimizer state is dropped (it belongs to no averaged model)."""
    if not snapshot_paths:
        raise EnsdistError(f"{output}: no snapshots to average")
    states = [load_checkpoint(p) for p in snapshot_paths]
    for p, s in zip(snapshot_paths, states):
        if not isinstance(s, dict) or "model" not in s:
            raise EnsdistError(f"{p}: not a fairseq checkpoint (no 'model' entry)")
    result = dict(states[-1])
    result["model"] = average_state_dicts([s["model"] for s in states])
    result["last_optimizer_state"] = None
    extra = dict(result.get("extra_state") or {})
    extra["swa"] = {"snapshots": [os.path.basename(p) for p in snapshot_paths]}
    result["extra_state"] = extra
    with atomic_open(output, "wb") as f:
        torch.save(result, f)
