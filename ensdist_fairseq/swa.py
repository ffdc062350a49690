"""Stochastic weight averaging (SWA) of a fairseq training run, from its tail snapshots.

Schedule (documented in docs/teachers.md): during the last ``swa_updates`` updates of a run,
fairseq-train writes a snapshot every ``--save-interval-updates`` updates
(``checkpoint_<epoch>_<updates>.pt``); the learning-rate schedule is left as it is (inverse-sqrt
decays slowly there, so the snapshots sample the same basin). The SWA model is the equal-weight
mean of those snapshots' parameters, which is what torch.optim.swa_utils.AveragedModel computes
with its default averaging function. Transformers use LayerNorm, not BatchNorm, so SWA's
BatchNorm-statistics pass (swa_utils.update_bn) has nothing to do.

Averaging works on checkpoints rather than a live model so a finished run can be averaged
without retraining and the result is an ordinary fairseq checkpoint (fairseq-generate reads it).
"""
import glob
import os
import re
from typing import Dict, List, Sequence

import torch

from .safe_loading import load_checkpoint

_SNAPSHOT = re.compile(r"checkpoint_(\d+)_(\d+)\.pt$")


def tail_snapshots(save_dir: str, max_update: int, swa_updates: int) -> List[str]:
    """Interval snapshots of `save_dir` written in the last `swa_updates` of `max_update` updates,
    in update order."""
    found = []
    for path in glob.glob(os.path.join(save_dir, "checkpoint_*_*.pt")):
        m = _SNAPSHOT.search(os.path.basename(path))
        if m and max_update - swa_updates < int(m.group(2)) <= max_update:
            found.append((int(m.group(2)), path))
    return [p for _, p in sorted(found)]


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
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(result, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, output)
