"""fairseq glue for token-level distillation: label-smoothed NLL + (mean KD | Proxy-Dirichlet RKL),
optionally with intra-distillation over K dropout passes. The math lives in ensdist_fairseq.losses.

    L_pass = (1 - beta) * L_NLL^LS + beta * L_KD        (L_KD = 0 with --kd-loss none)
    L      = 1/K sum_i L_pass(i) + alpha_t * X(p_1..p_K)  (K = --intra-passes; K = 1: L = L_pass)

Validation (model.eval()) uses neither the teacher nor the extra passes: loss = label-smoothed NLL.
"""
import math
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from ..losses import (
    TRUNCATION_POLICIES,
    adaptive_alpha,
    bound_precision,
    check_adaptive_schedule,
    ensemble_mean_kd,
    proxy_dirichlet_rkl,
    x_divergence,
)

KD_LOSSES = ("none", "mean_kd", "proxy_dirichlet")
INTRA_FORWARDS = ("sequential", "stacked")


@dataclass
class TokenKDConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.1, metadata={"help": "epsilon for label smoothing of the NLL term"})
    kd_loss: ChoiceEnum(KD_LOSSES) = field(
        default="mean_kd", metadata={"help": "distillation term; needs sample['teacher'] unless 'none'"}
    )
    kd_weight: float = field(default=0.5, metadata={"help": "beta in (1 - beta) * NLL^LS + beta * KD, in [0, 1]"})
    kd_temperature: float = field(default=1.0, metadata={"help": "mean_kd temperature T > 0 (loss scaled by T^2)"})
    kd_truncation: ChoiceEnum(TRUNCATION_POLICIES) = field(
        default="tail", metadata={"help": "mean_kd use of the top-V' events: none | renormalize | tail (docs/criterion.md)"}
    )
    precision_limit: float = field(
        default=1e6, metadata={"help": "upper bound on the stored Proxy-Dirichlet precision beta0_hat (> 0)"}
    )
    intra_passes: int = field(default=1, metadata={"help": "K dropout passes for intra-distillation; 1 = off"})
    intra_alpha: float = field(default=5.0, metadata={"help": "weight alpha of the X-divergence"})
    intra_adaptive: bool = field(default=True, metadata={"help": "ramp alpha with the p/q schedule over N = --max-update"})
    intra_p: float = field(default=5.0, metadata={"help": "alpha_t reaches alpha at update N/p"})
    intra_q: float = field(default=10.0, metadata={"help": "alpha_t reaches 1 at update N/q (q > p)"})
    intra_forward: ChoiceEnum(INTRA_FORWARDS) = field(
        default="stacked", metadata={"help": "one forward pass on the K-times stacked batch, or K passes one after another"}
    )
    max_update: int = II("optimization.max_update")
    sentence_avg: bool = II("optimization.sentence_avg")


def _current_update():
    # fairseq 0.12 gives the update number to task.train_step and the model, never to the
    # criterion; the trainer logs it to the always-active "default" aggregator after every update
    # and on checkpoint restore, so this is the update being computed (0 before the first one).
    meter = metrics.get_meter("default", "num_updates")
    return 0 if meter is None or meter.val is None else meter.val


@register_criterion("token_kd", dataclass=TokenKDConfig)
class TokenKDCriterion(FairseqCriterion):
    def __init__(
        self, task, label_smoothing, kd_loss, kd_weight, kd_temperature, kd_truncation, precision_limit,
        intra_passes, intra_alpha, intra_adaptive, intra_p, intra_q, intra_forward, max_update, sentence_avg,
    ):
        super().__init__(task)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        if not 0 <= kd_weight <= 1:
            raise ValueError(f"--kd-weight (beta) must be in [0, 1], got {kd_weight}")
        if not kd_temperature > 0:
            raise ValueError(f"--kd-temperature must be > 0, got {kd_temperature}")
        if kd_truncation == "none" and kd_temperature != 1:
            raise ValueError("--kd-truncation none is only defined for --kd-temperature 1")
        if kd_loss == "proxy_dirichlet" and kd_temperature != 1:
            raise ValueError("--kd-temperature applies to mean_kd only; proxy_dirichlet needs 1")
        if not precision_limit > 0:
            raise ValueError(f"--precision-limit must be > 0, got {precision_limit}")
        if intra_passes < 1:
            raise ValueError(f"--intra-passes must be >= 1 (1 = off), got {intra_passes}")
        if intra_passes > 1 and intra_adaptive:
            check_adaptive_schedule(intra_alpha, intra_p, intra_q)
            if max_update <= 0:
                raise ValueError("--intra-adaptive takes N from --max-update, which must then be > 0")
        if intra_alpha < 0:
            raise ValueError(f"--intra-alpha must be >= 0, got {intra_alpha}")
        self.eps = label_smoothing
        self.kd_loss = kd_loss
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.kd_truncation = kd_truncation
        self.precision_limit = precision_limit
        self.intra_passes = intra_passes
        self.intra_alpha = intra_alpha
        self.intra_adaptive = intra_adaptive
        self.intra_p = intra_p
        self.intra_q = intra_q
        self.intra_forward = intra_forward
        self.max_update = max_update
        self.sentence_avg = sentence_avg

    def forward(self, model, sample, reduce=True):
        teacher = self.get_teacher(model, sample)
        passes = self.intra_passes if model.training else 1
        net_outputs = self.run_passes(model, sample["net_input"], passes)
        losses, nll_losses, kd_losses, lprobs = zip(
            *(self.compute_loss(model, net_output, sample, teacher) for net_output in net_outputs)
        )
        loss = sum(losses) / passes
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {}
        if teacher is not None:
            logging_output.update(self.teacher_stats(sample, teacher))
            logging_output["kd_loss"] = (sum(kd_losses) / passes).data
        if passes > 1:
            non_pad = sample["target"].ne(self.padding_idx)
            intra = x_divergence(lprobs)[non_pad].sum()
            alpha_t = self.intra_weight()
            loss = loss + alpha_t * intra
            logging_output["intra_loss"] = intra.data
            # Stored times sample_size so that summing over workers and dividing by the summed
            # sample_size gives alpha_t back.
            logging_output["intra_alpha"] = alpha_t * sample_size
        logging_output.update(
            loss=loss.data,
            nll_loss=(sum(nll_losses) / passes).data,
            ntokens=sample["ntokens"],
            nsentences=sample["target"].size(0),
            sample_size=sample_size,
        )
        return loss, sample_size, logging_output

    def get_teacher(self, model, sample):
        """sample['teacher'] when a KD term is trained, else None (validation needs no teacher)."""
        if self.kd_loss == "none" or not model.training:
            return None
        if "teacher" not in sample:
            raise ValueError(f"--kd-loss {self.kd_loss} needs sample['teacher']: train with the memoized-teacher task")
        if self.kd_loss == "proxy_dirichlet" and not getattr(model, "predicts_dirichlet", False):
            raise ValueError("--kd-loss proxy_dirichlet needs a Dirichlet student: --arch dirichlet_transformer[_*]")
        teacher = sample["teacher"]
        if teacher["indices"].shape[:2] != sample["target"].shape:
            raise ValueError(
                f"teacher entries {tuple(teacher['indices'].shape[:2])} are not aligned to the target {tuple(sample['target'].shape)}"
            )
        return teacher

    def run_passes(self, model, net_input, passes):
        """net_output of each pass; dropout makes them differ in train mode."""
        if passes == 1 or self.intra_forward == "sequential":
            return [model(**net_input) for _ in range(passes)]
        stacked = {k: torch.cat([v] * passes) if torch.is_tensor(v) else v for k, v in net_input.items()}
        logits, extra = model(**stacked)
        return [(chunk, extra) for chunk in logits.chunk(passes)]

    def compute_loss(self, model, net_output, sample, teacher):
        """(loss, nll_loss, kd_loss or None, lprobs) of one pass, summed over non-pad tokens."""
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = sample["target"]
        ls_loss, nll_loss = label_smoothed_nll_loss(
            lprobs.view(-1, lprobs.size(-1)), target.view(-1), self.eps, ignore_index=self.padding_idx
        )
        if teacher is None:
            return ls_loss, nll_loss, None, lprobs
        non_pad = target.ne(self.padding_idx)
        if self.kd_loss == "mean_kd":
            kd = ensemble_mean_kd(
                lprobs, teacher["indices"], teacher["probs"], self.kd_temperature, self.kd_truncation
            )
        else:
            # Pads carry precision 0; any positive value keeps their (masked) rows finite.
            precision = torch.where(non_pad, teacher["precision"], torch.ones_like(teacher["precision"]))
            kd = proxy_dirichlet_rkl(
                net_output[0], teacher["indices"], teacher["probs"], precision, self.precision_limit
            )
        kd = torch.where(non_pad, kd, torch.zeros_like(kd)).sum()
        loss = (1 - self.kd_weight) * ls_loss + self.kd_weight * kd
        return loss, nll_loss, kd, lprobs

    @torch.no_grad()
    def teacher_stats(self, sample, teacher):
        non_pad = sample["target"].ne(self.padding_idx)
        precision = bound_precision(teacher["precision"].float(), self.precision_limit)
        return {
            "teacher_ntokens": non_pad.sum().data,
            "teacher_coverage": teacher["probs"].float().sum(-1)[non_pad].sum().data,
            "teacher_precision": precision[non_pad].sum().data,
        }

    def intra_weight(self):
        if not self.intra_adaptive:
            return self.intra_alpha
        return adaptive_alpha(self.intra_alpha, _current_update(), self.max_update, self.intra_p, self.intra_q)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs from data parallel training (losses in bits, like fairseq)."""

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size, ntokens = total("sample_size"), total("ntokens")
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        teacher_ntokens = total("teacher_ntokens")
        if teacher_ntokens > 0:
            metrics.log_scalar("kd_loss", total("kd_loss") / sample_size / math.log(2), sample_size, round=3)
            metrics.log_scalar("teacher_coverage", total("teacher_coverage") / teacher_ntokens, teacher_ntokens, round=4)
            metrics.log_scalar("teacher_precision", total("teacher_precision") / teacher_ntokens, teacher_ntokens, round=1)
        if any("intra_loss" in log for log in logging_outputs):
            metrics.log_scalar("intra_loss", total("intra_loss") / sample_size / math.log(2), sample_size, round=3)
            metrics.log_scalar("intra_alpha", total("intra_alpha") / sample_size, sample_size, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
