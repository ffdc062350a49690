"""`fairseq-generate --scoring ece`: ECE-1 / ECE-5 of the teacher-forced references (fairseq glue).

    fairseq-generate DATA --user-dir "$(ensdist-path)" --task translation_distill \
        --path a.pt[:b.pt] --scoring ece [--ece-num-bins 10]

prints, in place of fairseq's BLEU line, e.g.
    Generate test with beam=5: ECE-1 = 7.8125 % | ECE-5 = 2.3400 % (unweighted over 10
    equal-count bins; weighted 7.8010 % / 2.3391 %) | 1234 tokens | sacreBLEU = 27.31 ...

Why the task is involved: fairseq's scorers receive only the reference and hypothesis strings
(add_string) or tokens (add), never probabilities. So the distillation task's inference_step
(the one fairseq-generate calls for every batch) also teacher-forces the batch's references
through the same models and hands the per-token summary to the active ECE scorer, through
`active_scorer()`. The summary is ensemble_scoring.summarize_batch, the function
`ensdist-evaluate` uses, so both report the same numbers (tests/test_scorer.py).

"Active" is the most recently built EceScorer still alive (a weak reference): fairseq-generate
builds one scorer per run, before its first batch. With another task (e.g. --task
translation) nothing feeds the scorer and its line says so.
"""

import weakref
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import BaseScorer, register_scorer

from ensdist_fairseq.metrics.calibration import (
    DEFAULT_NUM_BINS,
    CalibrationAccumulator,
    TokenPredictions,
)

_active: Optional[weakref.ref] = None


def active_scorer() -> Optional["EceScorer"]:
    """The ECE scorer that teacher-forced batches should go to, or None (no --scoring ece)."""
    return _active() if _active is not None else None


@dataclass
class EceScorerConfig(FairseqDataclass):
    ece_num_bins: int = field(
        default=DEFAULT_NUM_BINS, metadata={"help": "equal-count bins for ECE-1 / ECE-5"}
    )


@register_scorer("ece", dataclass=EceScorerConfig)
class EceScorer(BaseScorer):
    def __init__(self, cfg):
        super().__init__(cfg)  # keeps the reference/hypothesis strings (add_string) for BLEU
        self.accumulator = CalibrationAccumulator(num_bins=cfg.ece_num_bins)
        global _active
        _active = weakref.ref(self)

    def add_calibration(self, predictions: TokenPredictions) -> None:
        """One batch's teacher-forced token summary (from the task's inference_step)."""
        self.accumulator.add(predictions)

    def score(self) -> float:
        """ECE-1 (unweighted, the authors' form) in percent."""
        return 100 * self.accumulator.result().ece1_unweighted

    def result_string(self) -> str:
        if self.accumulator.num_tokens == 0:
            return (
                "ECE: no teacher-forced tokens were scored (the confidences come from "
                "--task translation_distill's inference step, on a split with references)"
            )
        r = self.accumulator.result()
        text = (
            f"ECE-1 = {100 * r.ece1_unweighted:.4f} % | ECE-5 = {100 * r.ece5_unweighted:.4f} % "
            f"(unweighted over {r.num_bins} equal-count bins; weighted "
            f"{100 * r.ece1_weighted:.4f} % / {100 * r.ece5_weighted:.4f} %) | "
            f"NLL = {r.nll:.4f} | accuracy = {100 * r.accuracy:.2f} % | {r.num_tokens} tokens"
        )
        if self.pred:
            from ensdist_fairseq.evaluation.bleu import corpus_bleu

            b = corpus_bleu(self.pred, self.ref)
            text += f" | sacreBLEU = {b.bleu:.2f} ({b.signature})"
        return text
