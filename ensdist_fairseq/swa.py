"""Stochastic weight averaging (SWA) of a fairseq training run, from its tail snapshots.

Schedule (documented in docs/teachers.md): fairseq-train runs to ``--max-epoch E`` and writes
a checkpoint at the end of every epoch (``checkpoint<epoch>.pt``, ``--keep-last-epochs N`` keeps
the tail); the learning-rate schedule is left as it is (inverse-sqrt decays slowly there, so the
snapshots sample one basin). The SWA model is the equal-weight mean of the parameters of the
last N epoch checkpoints, as Reich et al. did with their last 10 epochs, and what
torch.optim.swa_utils.AveragedModel computes with its default averaging function. Epoch ends
rather than --save-interval-updates: fairseq skips an interval snapshot that falls on an epoch
end, which would make the schedule depend on the data size. Transformers use LayerNorm, not
BatchNorm, so SWA's BatchNorm pass (swa_utils.update_bn) has nothing to do.

Averaging works on checkpoints rather than a live model so a finished run can be averaged
without retraining and the result is an ordinary fairseq checkpoint (fairseq-generate reads it).
"""
import os
from typing import Dict, List, Sequence

import torch

from .atomic_files import atomic_open
from .safe_loading import load_checkpoint

def epoch_snapshots(save_dir: str, last_epoch: int, num_epochs: int) -> List[str]:
    """The epoch checkpoints last_epoch-num_epochs+1 .. last_epoch of `save_dir`, in order;
    ValueError naming the first one missing."""
    paths = [os.path.join(save_dir, f"checkpoint{e}.pt")
             for e in range(last_epoch - num_epochs + 1, last_epoch + 1)]
    for p in paths:
        if not os.path.isfile(p):
            raise ValueError(f"{p}: epoch checkpoint missing (needed for SWA over the last "
                             f"{num_epochs} of {last_epoch} epochs)")
    return paths


def average_state_dicts(state_dicts: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Equal-weight mean of parameter dicts, accumulated in float64 and cast back to each
    tensor's dtype (fp16 snapshots would otherwise lose precision in the running sum)."""
    if not state_dicts:
        raise ValueError("no snapshots to average")
    keys = list(state_dicts[0].keys())
    for i, sd in enumerate(state_dicts[1:], 1):
        if list(sd.keys()) != keys or any(sd[k].shape != state_dicts[0][k].shape for k in keys):
            raise ValueError(f"snapshot {i} has different parameters from snapshot 0")
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
        raise ValueError(f"{output}: no snapshots to average")
    states = [load_checkpoint(p) for p in snapshot_paths]
    for p, s in zip(snapshot_paths, states):
        if not isinstance(s, dict) or "model" not in s:
            raise ValueError(f"{p}: not a fairseq checkpoint (no 'model' entry)")
    result = dict(states[-1])
    result["model"] = average_state_dicts([s["model"] for s in states])
    result["last_optimizer_state"] = None
    extra = dict(result.get("extra_state") or {})
    extra["swa"] = {"snapshots": [os.path.basename(p) for p in snapshot_paths]}
    result["extra_state"] = extra
    with atomic_open(output, "wb") as f:
        torch.save(result, f)
