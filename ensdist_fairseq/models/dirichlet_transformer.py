"""A Transformer whose outputs are Dirichlet concentrations alpha = exp(z) + 1 (Proxy-Dirichlet student).

Only the output interpretation changes: the network and its parameters are fairseq's Transformer.

Two distributions come out of the same logits z = net_output[0]:
  * the Dirichlet Dir(alpha), alpha = exp(z) + 1: what the Proxy-Dirichlet loss trains
    (criterions/token_kd.py reads net_output[0] itself) and what the Dirichlet uncertainty
    measures read (uncertainty/measures.py, from the raw logits);
  * the predictive distribution that get_normalized_probs returns, i.e. what beam search,
    scoring (NLL, ECE) and fairseq-generate/validate use. --dirichlet-predictive picks it:
      softmax  softmax(z) (default): the authors decode their student with the plain
               Transformer's log-softmax (PD paper eq. 9);
      mean     the Dirichlet's mean alpha / alpha_0. With alpha = exp(z) + 1 every class keeps at
               least 1/alpha_0 of the mass (a uniform floor of >= V/alpha_0 in all), so this
               predictive is flatter (measured: docs/criterion.md).
Checkpoints saved before the option existed load with the default. The option can be changed on
an existing checkpoint at load time: fairseq-generate --model-overrides
"{'dirichlet_predictive': 'mean'}" or checkpoint_utils.load_model_ensemble(...,
arg_overrides={'dirichlet_predictive': 'mean'}).
"""

import torch
import torch.nn.functional as F
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel, base_architecture, transformer_iwslt_de_en

from ensdist_fairseq.losses.proxy_dirichlet import dirichlet_log_predictive

PREDICTIVES = ("softmax", "mean")
DEFAULT_PREDICTIVE = "softmax"
_PROBE = torch.zeros(1, 2)


def log_predictive(logits, predictive: str):
    """ln of the chosen predictive distribution from the logits z, in float32."""
    if predictive == "softmax":
        return F.log_softmax(logits.float(), dim=-1)
    if predictive == "mean":
        return dirichlet_log_predictive(logits)
    raise ValueError(
        f"--dirichlet-predictive must be one of {', '.join(PREDICTIVES)}, got {predictive!r}"
    )


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
            default=None,
            help="predictive distribution for decoding and scoring: softmax(z) "
            "(default, the authors') or the Dirichlet mean alpha/alpha_0; "
            "the loss and the uncertainty measures always use alpha = exp(z)+1",
        )

    @classmethod
    def build_model(cls, args, task):
        if getattr(args, "adaptive_softmax_cutoff", None):
            raise ValueError(
                "dirichlet_transformer needs full-vocabulary logits: --adaptive-softmax-cutoff is not supported"
            )
        if getattr(args, "dirichlet_predictive", None) is None:  # older checkpoints: the default
            args.dirichlet_predictive = DEFAULT_PREDICTIVE
        log_predictive(_PROBE, args.dirichlet_predictive)  # fails early on a bad value
        return super().build_model(args, task)

    @property
    def dirichlet_predictive(self) -> str:
        return getattr(self.args, "dirichlet_predictive", None) or DEFAULT_PREDICTIVE

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        """The predictive chosen by --dirichlet-predictive (log or not), in float32."""
        lprobs = log_predictive(net_output[0], self.dirichlet_predictive)
        return lprobs if log_probs else lprobs.exp()


def _set_defaults(args):
    if getattr(args, "dirichlet_predictive", None) is None:
        args.dirichlet_predictive = DEFAULT_PREDICTIVE


@register_model_architecture("dirichlet_transformer", "dirichlet_transformer")
def dirichlet_transformer(args):
    _set_defaults(args)
    base_architecture(args)


@register_model_architecture("dirichlet_transformer", "dirichlet_transformer_iwslt_de_en")
def dirichlet_transformer_iwslt_de_en(args):
    _set_defaults(args)
    transformer_iwslt_de_en(args)
