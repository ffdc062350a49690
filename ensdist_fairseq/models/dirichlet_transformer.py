"""A Transformer whose outputs are Dirichlet concentrations alpha = exp(z) + 1 (Proxy-Dirichlet student).

Only the output interpretation changes: the network and its parameters are fairseq's Transformer.

Two distributions come out of the same logits z = net_output[0]:
  * the Dirichlet Dir(alpha), alpha = exp(z) + 1: what the Proxy-Dirichlet loss trains
    (criterions/token_kd.py reads net_output[0] itself) and what the Dirichlet uncertainty
    measures read (uncertainty/measures.py, from the raw logits);
  * the predictive distribution that get_normalized_probs returns, i.e. what beam search and
    scoring (ensdist-evaluate's NLL and ECE, --eval-calibration, fairseq-generate's scores) use.
    --dirichlet-predictive picks it (the names and their math: uncertainty/measures.py):
      softmax  softmax(z) (default): the authors decode their student with the plain
               Transformer's log-softmax (PD paper eq. 9);
      mean     the Dirichlet's mean alpha / alpha_0. With alpha = exp(z) + 1 every class keeps at
               least 1/alpha_0 of the mass (a uniform floor of >= V/alpha_0 in all), so this
               predictive is flatter.
The option is a reading of the checkpoint, not part of training: token_kd's NLL term, its
validation loss / nll_loss (early stopping, the SWA window) always use softmax(z)
(TRAINING_PREDICTIVE), whatever the option.

A checkpoint records the option (its cfg.model.dirichlet_predictive: fairseq-train stores the
flag's default). One saved before the option existed has no such field: then get_normalized_probs
returned alpha / alpha_0, so it loads as "mean" (LEGACY_PREDICTIVE), with a warning. Either
predictive can be chosen at load time: fairseq-generate --model-overrides
"{'dirichlet_predictive': 'softmax'}", checkpoint_utils.load_model_ensemble(...,
arg_overrides={'dirichlet_predictive': 'softmax'}), ensdist-evaluate/-uncertainty
--dirichlet-predictive.
"""

import logging

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel, base_architecture, transformer_iwslt_de_en

from ensdist_fairseq.uncertainty.measures import (
    DEFAULT_DIRICHLET_PREDICTIVE,
    DIRICHLET_PREDICTIVES,
    dirichlet_log_predictive,
)

logger = logging.getLogger(__name__)

PREDICTIVES = DIRICHLET_PREDICTIVES
DEFAULT_PREDICTIVE = DEFAULT_DIRICHLET_PREDICTIVE
LEGACY_PREDICTIVE = "mean"  # what get_normalized_probs returned before the option existed
TRAINING_PREDICTIVE = "softmax"  # the criterion's NLL term, whatever the option


def log_predictive(logits, predictive: str):
    """ln of the chosen predictive distribution from the logits z, in float32 (float64 kept)."""
    return dirichlet_log_predictive(logits, predictive)


def checkpoint_predictive(args) -> str:
    """The predictive a model's cfg asks for: its recorded option, LEGACY_PREDICTIVE without one."""
    recorded = getattr(args, "dirichlet_predictive", None)
    if recorded is None:
        logger.warning(
            "dirichlet_transformer: the checkpoint records no dirichlet_predictive (saved before "
            f"the option existed, when the model decoded with alpha/alpha_0): loading it as "
            f"'{LEGACY_PREDICTIVE}'; override with dirichlet_predictive={DEFAULT_PREDICTIVE!r}"
        )
        return LEGACY_PREDICTIVE
    if recorded not in PREDICTIVES:
        raise ValueError(
            f"--dirichlet-predictive must be one of {', '.join(PREDICTIVES)}, got {recorded!r}"
        )
    return recorded


@register_model("dirichlet_transformer")
class DirichletTransformerModel(TransformerModel):
    """fairseq Transformer read as a Prior Network: net_output[0] holds the log-concentrations z."""

    # Duck-typed marker the criterion checks, because distributed training wraps the model.
    predicts_dirichlet = True

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        parser.add_argument(
            "--dirichlet-predictive",
            choices=PREDICTIVES,
            default=DEFAULT_PREDICTIVE,
            help="predictive distribution for decoding and scoring (not training: the NLL "
            "term and validation loss use softmax(z)): softmax(z) (default, the authors') or "
            "the Dirichlet mean alpha/alpha_0; the PD loss uses alpha = exp(z)+1",
        )

    @classmethod
    def build_model(cls, args, task):
        if getattr(args, "adaptive_softmax_cutoff", None):
            raise ValueError(
                "dirichlet_transformer needs full-vocabulary logits: --adaptive-softmax-cutoff is not supported"
            )
        args.dirichlet_predictive = checkpoint_predictive(args)  # decided here, once
        return super().build_model(args, task)

    @property
    def dirichlet_predictive(self) -> str:
        return self.args.dirichlet_predictive

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        """The predictive chosen by --dirichlet-predictive (log or not), in float32."""
        lprobs = log_predictive(net_output[0], self.dirichlet_predictive)
        return lprobs if log_probs else lprobs.exp()


@register_model_architecture("dirichlet_transformer", "dirichlet_transformer")
def dirichlet_transformer(args):
    base_architecture(args)


@register_model_architecture("dirichlet_transformer", "dirichlet_transformer_iwslt_de_en")
def dirichlet_transformer_iwslt_de_en(args):
    transformer_iwslt_de_en(args)
