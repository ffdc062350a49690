"""What a fairseq-train log (``--log-format simple``) says about a run, epoch by epoch.

The recipes write each run's stdout to SAVE_DIR/train.log (appending when a run resumes), so
the log is the one record of the whole run: the per-epoch validation lines give the learning
curve, the last one where the run stopped, the early-stopping line why. Pure text parsing: no
fairseq import, so reports and plots work wherever the logs are.

A validation line looks like
``... | valid | epoch 011 | valid on 'valid' subset | loss 5.175 | nll_loss 5.175 | ... |
ece1 6.6 | ece5 1.9 | ... | num_updates 1496 | best_loss 5.175``; loss (the criterion's, with
label smoothing or distillation terms) and nll_loss (the references' NLL) are in bits (fairseq's
base 2), ece1/ece5 in percent (present when the validation measures calibration).
A train line ``... | train | epoch 011 | loss ... | train_wall 21 | ...`` gives the epoch's time.
"""

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

_VALID = re.compile(r"\| valid \| epoch (\d+) \| valid on '([^']+)' subset \|(.*)$")
_TRAIN = re.compile(r"\| train \| epoch (\d+) \|(.*)$")
_EARLY_STOP = re.compile(r"early stop since valid performance hasn't improved for last (\d+) runs")


def _fields(rest: str) -> Dict[str, float]:
    out = {}
    for part in rest.split("|"):
        kv = part.strip().split(" ", 1)
        if len(kv) == 2:
            try:
                out[kv[0]] = float(kv[1])
            except ValueError:
                pass
    return out


@dataclass
class RunLog:
    """One run: per-epoch validation metrics (last line per epoch wins: a resumed run repeats
    nothing, but a validation rerun would) and training seconds."""

    valid: Dict[int, Dict[str, float]] = field(default_factory=dict)
    train: Dict[int, Dict[str, float]] = field(default_factory=dict)
    early_stop_patience: Optional[int] = None

    @property
    def epochs(self) -> List[int]:
        return sorted(self.valid)

    @property
    def last_epoch(self) -> Optional[int]:
        return max(self.valid) if self.valid else None

    @property
    def metric(self) -> str:
        """The validation NLL of the references (nll_loss) that the recipes' early stopping
        watches (--best-checkpoint-metric nll_loss); "loss" for logs without it."""
        return (
            "nll_loss"
            if self.valid and all("nll_loss" in v for v in self.valid.values())
            else "loss"
        )

    @property
    def best_epoch(self) -> Optional[int]:
        """The first epoch with the lowest validation NLL (fairseq's checkpoint_best: a later
        epoch replaces it only when strictly better; the log's 3 decimals can hide a difference
        in the 4th, so prefer the checkpoint when it is at hand)."""
        if not self.valid:
            return None
        return min(self.epochs, key=lambda e: (self.valid[e][self.metric], e))

    @property
    def stopped_early(self) -> bool:
        return self.early_stop_patience is not None


def parse_train_log(text: str, subset: str = "valid") -> RunLog:
    run = RunLog()
    for line in text.splitlines():
        m = _VALID.search(line)
        if m and m.group(2) == subset:
            f = _fields(m.group(3))
            if "loss" in f:
                run.valid[int(m.group(1))] = f
            continue
        m = _TRAIN.search(line)
        if m:
            run.train[int(m.group(1))] = _fields(m.group(2))
            continue
        m = _EARLY_STOP.search(line)
        if m:
            run.early_stop_patience = int(m.group(1))
    return run


def read_train_log(path: str, subset: str = "valid") -> RunLog:
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_train_log(f.read(), subset)
