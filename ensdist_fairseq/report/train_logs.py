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

With ``--log-format json`` fairseq writes the same statistics as one JSON object per line,
keys prefixed by the subset (``... | valid | {"epoch": 11, "valid_loss": "5.175", ...}``;
``... | train | {"epoch": 11, "train_loss": ..., "train_wall": "21", ...}``): those lines are
read as JSON, not by their wording, and give the same RunLog. The two forms may be mixed (a run
resumed with another --log-format appends to the same train.log).
"""

import json
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

_VALID = re.compile(r"\| valid \| epoch (\d+) \| valid on '([^']+)' subset \|(.*)$")
_TRAIN = re.compile(r"\| train \| epoch (\d+) \|(.*)$")
_JSON = re.compile(r"\| ([^|]+) \| (\{.*\})\s*$")  # logger name (the subset or "train"), stats
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


def _json_stats(line: str):
    """(tag, epoch, {key without the tag's prefix: number}) of a json log line, or None."""
    m = _JSON.search(line)
    if not m:
        return None
    tag = m.group(1).strip()
    try:
        stats = json.loads(m.group(2))
    except json.JSONDecodeError:
        return None
    if not isinstance(stats, dict) or "epoch" not in stats:
        return None
    out = {}
    for key, value in stats.items():
        if key.startswith(tag + "_"):
            try:
                out[key[len(tag) + 1 :]] = float(value)
            except (TypeError, ValueError):
                pass
    return tag, int(stats["epoch"]), out


def parse_train_log(text: str, subset: str = "valid") -> RunLog:
    run = RunLog()
    for line in text.splitlines():
        js = _json_stats(line)
        if js is not None:
            tag, epoch, f = js
            if tag == subset and "loss" in f:
                run.valid[epoch] = f
            elif tag == "train":
                run.train[epoch] = f
            continue
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
