"""fairseq glue for token-level distillation: label-smoothed NLL + (mean KD | Proxy-Dirichlet RKL),
optionally with intra-distillation over K dropout passes. The math lives in ensdist_fairseq.losses.

    L_pass = (1 - beta) * L_NLL^LS + beta * L_KD        (L_KD = 0 with --kd-loss none)
    L      = 1/K sum_i L_pass(i) + alpha_t * X(p_1..p_K)  (K = --intra-passes; K = 1: L = L_pass)

Built on fairseq's label_smoothed_cross_entropy: its config (--label-smoothing, --report-accuracy,
--sentence-avg), its label_smoothed_nll_loss and its loss/nll_loss/ppl/accuracy logging; this
class adds the KD and intra-distillation terms and their statistics. Validation (model.eval())
uses neither the teacher nor the extra passes: loss = label-smoothed NLL, as fairseq's criterion.

Mixed precision: the batch's teacher arrives as float16 probabilities and float64 precisions
(fairseq's --fp16/--bf16 sample conversion only narrows float32), the model's log-probs are
float32, and every loss is computed in float32 (float64 for a float64 model) outside autocast.
"""

import contextlib
import math
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from omegaconf import II

from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.losses import (
    DEFAULT_PRECISION_FLOOR,
    DEFAULT_PRECISION_LIMIT,
    MAX_PRECISION_LIMIT,
    TRUNCATION_POLICIES,
    adaptive_alpha,
    bound_precision,
    check_adaptive_schedule,
    ensemble_mean_kd,
    proxy_dirichlet_rkl,
    x_divergence,
)
from ensdist_fairseq.models.dirichlet_transformer import TRAINING_PREDICTIVE, log_predictive
from ensdist_fairseq.numeric import Integer, Real, check_fields

KD_LOSSES = ("none", "mean_kd", "proxy_dirichlet")
# a training batch's teacher logging keys, in the order forward() adds them: the ranks of a
# multi-process run sum logging outputs as one buffer, so every rank needs the same keys
TEACHER_KEYS = ("teacher_ntokens", "teacher_coverage", "teacher_precision", "kd_loss")
INTRA_FORWARDS = ("sequential", "stacked")


@dataclass
class TokenKDConfig(LabelSmoothedCrossEntropyCriterionConfig):
    label_smoothing: float = field(
        default=0.1, metadata={"help": "epsilon for label smoothing of the NLL term"}
    )
    kd_loss: ChoiceEnum(KD_LOSSES) = field(
        default="mean_kd",
        metadata={"help": "distillation term; needs sample['teacher'] unless 'none'"},
    )
    kd_weight: float = field(
        default=0.5, metadata={"help": "beta in (1 - beta) * NLL^LS + beta * KD, in [0, 1]"}
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "mean_kd temperature T > 0 (loss scaled by T^2)"}
    )
    kd_truncation: ChoiceEnum(TRUNCATION_POLICIES) = field(
        default="tail",
        metadata={
            "help": "mean_kd use of the top-V' events: "
            + " | ".join(TRUNCATION_POLICIES)
            + " (docs/criterion.md)"
        },
    )
    precision_limit: float = field(
        default=DEFAULT_PRECISION_LIMIT,
        metadata={
            "help": f"upper bound on the stored Proxy-Dirichlet precision beta0_hat (<= {MAX_PRECISION_LIMIT:g})"
        },
    )
    precision_floor: float = field(
        default=DEFAULT_PRECISION_FLOOR,
        metadata={
            "help": "lower bound on beta0_hat (> 0): 0 (a member with log-prob -inf) would make the loss infinite"
        },
    )
    intra_passes: int = field(
        default=1, metadata={"help": "K dropout passes for intra-distillation; 1 = off"}
    )
    intra_alpha: float = field(default=5.0, metadata={"help": "weight alpha of the X-divergence"})
    no_intra_adaptive: bool = field(
        default=False,
        metadata={
            "help": "alpha_t = --intra-alpha from the first update (default: the p/q ramp over --max-update)"
        },
    )
    intra_p: float = field(default=5.0, metadata={"help": "alpha_t reaches alpha at update N/p"})
    intra_q: float = field(
        default=10.0, metadata={"help": "alpha_t reaches 1 at update N/q (q > p)"}
    )
    intra_forward: ChoiceEnum(INTRA_FORWARDS) = field(
        default="stacked",
        metadata={
            "help": "one forward pass on the K-times stacked batch, or K passes one after another"
        },
    )
    max_update: int = II("optimization.max_update")


@register_criterion("token_kd", dataclass=TokenKDConfig)
class TokenKDCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(
        self,
        task,
        sentence_avg,
        label_smoothing=0.1,
        ignore_prefix_size=0,
        report_accuracy=False,
        kd_loss="mean_kd",
        kd_weight=0.5,
        kd_temperature=1.0,
        kd_truncation="tail",
        precision_limit=DEFAULT_PRECISION_LIMIT,
        precision_floor=DEFAULT_PRECISION_FLOOR,
        intra_passes=1,
        intra_alpha=5.0,
        no_intra_adaptive=False,
        intra_p=5.0,
        intra_q=10.0,
        intra_forward="stacked",
        max_update=0,
    ):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        _check_flags(
            label_smoothing,
            ignore_prefix_size,
            kd_loss,
            kd_weight,
            kd_temperature,
            kd_truncation,
            precision_limit,
            precision_floor,
            intra_passes,
            intra_alpha,
            no_intra_adaptive,
            intra_p,
            intra_q,
            max_update,
        )
        _check_task(task, kd_loss)
        self.kd_loss = kd_loss
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.kd_truncation = kd_truncation
        self.precision_limit = precision_limit
        self.precision_floor = precision_floor
        self.intra_passes = intra_passes
        self.intra_alpha = intra_alpha
        self.intra_adaptive = not no_intra_adaptive
        self.intra_p = intra_p
        self.intra_q = intra_q
        self.intra_forward = intra_forward
        self.max_update = max_update
        self.num_updates = None  # set by the task's train_step (set_num_updates)
        self.stand_in = False  # set by the task's train_step around fairseq's dummy batch

    @contextlib.contextmanager
    def stand_in_batch(self):
        """Around fairseq's stand-in ("dummy") batch: a rank that has run out of batches in a
        multi-process epoch trains once more on a batch whose loss fairseq multiplies by 0 and
        whose logging values it zeroes. That batch may be a validation batch (fairseq-train's
        dry-run validation resets it), so it has no teacher entries: the forward passes run
        (every parameter takes part, as DDP needs), the KD term is left out, and the logging
        output has the keys of a real batch (summed across ranks key by key) with zero values."""
        self.stand_in = True
        try:
            yield
        finally:
            self.stand_in = False

    def set_num_updates(self, num_updates):
        """The update being computed, from TranslationDistillTask.train_step's update_num."""
        self.num_updates = num_updates

    def forward(self, model, sample, reduce=True):
        """(loss, sample_size, logging_output); with reduce=False the loss is per target token,
        shaped (B*T, 1) like fairseq's label_smoothed_cross_entropy, zero at pads."""
        stand_in = self.stand_in and model.training
        teacher = None if stand_in else self.get_teacher(model, sample)
        passes = self.intra_passes if model.training else 1
        net_outputs = self.run_passes(model, sample["net_input"], passes)
        with _no_autocast(sample["target"]):
            losses, ls_losses, nll_losses, kd_losses, lprobs = zip(
                *(
                    self.pass_loss(model, net_output, sample, teacher, reduce)
                    for net_output in net_outputs
                )
            )
            loss = sum(losses) / passes if passes > 1 else losses[0]
            logging_output = {}
            if passes > 1:
                non_pad = sample["target"].ne(self.padding_idx).view(-1, 1)
                intra = x_divergence([lp.view(-1, lp.size(-1)) for lp in lprobs]).view(-1, 1)
                intra = torch.where(non_pad, intra, torch.zeros_like(intra))
                intra = intra.sum() if reduce else intra
                alpha_t = self.intra_weight()
                loss = loss + alpha_t * intra
                logging_output["intra_loss"] = _total(intra)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        if passes > 1:
            # Stored times sample_size so that summing over workers and dividing by the summed
            # sample_size gives alpha_t back.
            logging_output["intra_alpha"] = alpha_t * sample_size
        if teacher is not None:
            logging_output.update(self.teacher_stats(sample, teacher))
            logging_output["kd_loss"] = _total(sum(kd_losses)) / passes
        elif stand_in and self.kd_loss != "none":
            logging_output.update({k: torch.zeros(()) for k in TEACHER_KEYS})
        if model.training:
            # what the gradient descends (the KD mixture, intra term included); "loss" stays the
            # label-smoothed loss of the references, the quantity validation logs as "loss"
            logging_output["objective"] = _total(loss)
        logging_output.update(
            loss=_total(sum(ls_losses) / passes),
            nll_loss=_total(sum(nll_losses) / passes),
            ntokens=sample["ntokens"],
            nsentences=sample["target"].size(0),
            sample_size=sample_size,
        )
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_outputs[0], sample)
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        if stand_in:
            logging_output = {k: v * 0 for k, v in logging_output.items()}
        return loss, sample_size, logging_output

    def get_teacher(self, model, sample):
        """sample['teacher'] when a KD term is trained, else None (validation needs no teacher)."""
        if self.kd_loss == "none" or not model.training:
            return None
        if "teacher" not in sample:
            raise EnsdistError(
                f"--kd-loss {self.kd_loss} needs sample['teacher']: train with --task translation_distill --teacher-store"
            )
        if self.kd_loss == "proxy_dirichlet" and not getattr(model, "predicts_dirichlet", False):
            raise EnsdistError(
                "--kd-loss proxy_dirichlet needs a Dirichlet student: --arch dirichlet_transformer[_*]"
            )
        teacher = sample["teacher"]
        if teacher["indices"].shape[:2] != sample["target"].shape:
            raise EnsdistError(
                f"--teacher-store: teacher entries {tuple(teacher['indices'].shape[:2])} are not aligned to the target {tuple(sample['target'].shape)}"
            )
        return teacher

    def run_passes(self, model, net_input, passes):
        """net_output of each pass; dropout makes them differ in train mode."""
        if passes == 1 or self.intra_forward == "sequential":
            return [model(**net_input) for _ in range(passes)]
        stacked = {
            k: torch.cat([v] * passes) if torch.is_tensor(v) else v for k, v in net_input.items()
        }
        logits, extra = model(**stacked)
        return [(chunk, extra) for chunk in logits.chunk(passes)]

    def get_lprobs_and_target(self, model, net_output, sample):
        """fairseq's, except that a Dirichlet student's log-probs are softmax(z) whatever its
        --dirichlet-predictive: that option is how a checkpoint is read (decoding, scoring), it
        changes neither the objective nor the validation nll_loss that early stopping watches."""
        if not getattr(model, "predicts_dirichlet", False):
            return super().get_lprobs_and_target(model, net_output, sample)
        lprobs = log_predictive(net_output[0], TRAINING_PREDICTIVE)
        target = model.get_targets(sample, net_output)
        return lprobs.view(-1, lprobs.size(-1)), target.view(-1)

    def pass_loss(self, model, net_output, sample, teacher, reduce):
        """(loss, ls_loss, nll_loss, kd_loss or None, lprobs (B*T, V)) of one pass, loss being
        the objective (the KD mixture when there is a teacher, else ls_loss): sums over the
        non-pad tokens, or (B*T, 1) per-token values with reduce=False."""
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        ls_loss, nll_loss = label_smoothed_nll_loss(
            lprobs, target, self.eps, ignore_index=self.padding_idx, reduce=reduce
        )
        if teacher is None:
            return ls_loss, ls_loss, nll_loss, None, lprobs
        non_pad = target.ne(self.padding_idx)
        indices = teacher["indices"].reshape(-1, teacher["indices"].size(-1))
        probs = teacher["probs"].reshape(-1, teacher["probs"].size(-1))
        if self.kd_loss == "mean_kd":
            kd = ensemble_mean_kd(lprobs, indices, probs, self.kd_temperature, self.kd_truncation)
        else:
            logits = net_output[0].reshape(-1, net_output[0].size(-1))
            kd = proxy_dirichlet_rkl(
                logits,
                indices,
                probs,
                teacher["precision"].reshape(-1),
                self.precision_limit,
                self.precision_floor,
            )
        kd = torch.where(non_pad, kd, torch.zeros_like(kd))
        kd = kd.sum() if reduce else kd.unsqueeze(-1)
        loss = (1 - self.kd_weight) * ls_loss + self.kd_weight * kd
        return loss, ls_loss, nll_loss, kd, lprobs

    @torch.no_grad()
    def teacher_stats(self, sample, teacher):
        non_pad = sample["target"].ne(self.padding_idx)
        precision = bound_precision(
            teacher["precision"].double(), self.precision_limit, self.precision_floor
        )
        return {
            "teacher_ntokens": non_pad.sum().data,
            "teacher_coverage": teacher["probs"].float().sum(-1)[non_pad].sum().data,
            "teacher_precision": precision[non_pad].sum().data,
        }

    def intra_weight(self):
        if not self.intra_adaptive:
            return self.intra_alpha
        if self.num_updates is None:
            raise EnsdistError(
                "--intra-passes with the adaptive alpha needs the update number, which only "
                "--task translation_distill hands to the criterion: use that task (without "
                "--teacher-store it is fairseq's translation) or --no-intra-adaptive"
            )
        return adaptive_alpha(
            self.intra_alpha, self.num_updates, self.max_update, self.intra_p, self.intra_q
        )

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """fairseq's loss / nll_loss / ppl (/ accuracy), then the objective, the KD and intra
        statistics (bits)."""
        super().reduce_metrics(logging_outputs)

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size = total("sample_size")
        if any("objective" in log for log in logging_outputs):
            metrics.log_scalar(
                "objective", total("objective") / sample_size / math.log(2), sample_size, round=3
            )
        teacher_ntokens = total("teacher_ntokens")
        if teacher_ntokens > 0:
            metrics.log_scalar(
                "kd_loss", total("kd_loss") / sample_size / math.log(2), sample_size, round=3
            )
            metrics.log_scalar(
                "teacher_coverage",
                total("teacher_coverage") / teacher_ntokens,
                teacher_ntokens,
                round=4,
            )
            metrics.log_scalar(
                "teacher_precision",
                total("teacher_precision") / teacher_ntokens,
                teacher_ntokens,
                round=1,
            )
        if any("intra_loss" in log for log in logging_outputs):
            metrics.log_scalar(
                "intra_loss", total("intra_loss") / sample_size / math.log(2), sample_size, round=3
            )
            metrics.log_scalar(
                "intra_alpha", total("intra_alpha") / sample_size, sample_size, round=3
            )


def _total(x):
    """A logging value: the (detached) sum, also for reduce=False per-token tensors."""
    return (x if x.dim() == 0 else x.sum()).data


def _no_autocast(like):
    """Losses run outside --amp's autocast: its float16 casts are not ours to take."""
    return torch.autocast(device_type=like.device.type, enabled=False)


# every numeric field, by the package's one rule (ensdist_fairseq/numeric.py)
NUMERIC_FIELDS = {
    "label_smoothing": Real(0, 1, hi_open=True),
    "ignore_prefix_size": Integer(0),
    "kd_weight": Real(0, 1),
    "kd_temperature": Real(0, lo_open=True),
    "precision_limit": Real(0, MAX_PRECISION_LIMIT, lo_open=True),
    "precision_floor": Real(0, lo_open=True),
    "intra_passes": Integer(1),
    "intra_alpha": Real(0),
    "intra_p": Real(0, lo_open=True),
    "intra_q": Real(0, lo_open=True),
    "max_update": Integer(0),
}


def _check_task(task, kd_loss):
    """What the criterion can judge when it is built, before any data is read: a KD term needs
    the store (a task config without --teacher-store never yields sample['teacher']) and
    Proxy-Dirichlet needs a Dirichlet student (the task records what build_model built)."""
    cfg = getattr(task, "cfg", None)
    if kd_loss != "none" and cfg is not None and not getattr(cfg, "teacher_store", None):
        raise EnsdistError(
            f"--kd-loss {kd_loss} needs the teacher store: train with --task translation_distill "
            "--teacher-store (or --kd-loss none)"
        )
    if kd_loss == "proxy_dirichlet" and getattr(task, "model_predicts_dirichlet", None) is False:
        raise EnsdistError(
            "--kd-loss proxy_dirichlet needs a Dirichlet student: --arch dirichlet_transformer[_*]"
        )


def _check_flags(
    label_smoothing,
    ignore_prefix_size,
    kd_loss,
    kd_weight,
    kd_temperature,
    kd_truncation,
    precision_limit,
    precision_floor,
    intra_passes,
    intra_alpha,
    no_intra_adaptive,
    intra_p,
    intra_q,
    max_update,
):
    """Refuse impossible settings, naming the flag."""
    check_fields(locals(), NUMERIC_FIELDS, EnsdistError)
    if ignore_prefix_size:
        raise EnsdistError(
            "--ignore-prefix-size is not supported by --criterion token_kd (the teacher covers every target token)"
        )
    if kd_truncation == "none" and kd_temperature != 1:
        raise EnsdistError("--kd-truncation none is only defined for --kd-temperature 1")
    if kd_loss == "proxy_dirichlet" and kd_temperature != 1:
        raise EnsdistError("--kd-temperature applies to mean_kd only; proxy_dirichlet needs 1")
    if not precision_floor <= precision_limit:
        raise EnsdistError(
            f"--precision-floor {precision_floor}: must be at most --precision-limit {precision_limit}"
        )
    if intra_passes > 1 and not no_intra_adaptive:
        try:
            check_adaptive_schedule(intra_alpha, intra_p, intra_q)
        except ValueError as e:
            raise EnsdistError(f"--intra-p/--intra-q: {e}") from None
        if max_update <= 0:
            raise EnsdistError(
                "--max-update must be > 0 with the adaptive --intra-alpha schedule (it is N), or pass --no-intra-adaptive"
            )
