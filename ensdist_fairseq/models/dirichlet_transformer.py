"""A Transformer whose outputs are Dirichlet concentrations alpha = exp(z) + 1 (Proxy-Dirichlet student).

Only the output interpretation changes: the network and its parameters are fairseq's Transformer.
get_normalized_probs returns the Dirichlet's predictive distribution alpha / alpha_0, so every
fairseq consumer (fairseq-generate's beam search, fairseq-validate, the NLL in the criterion,
our evaluator) sees the same distribution the Proxy-Dirichlet loss trains.
"""
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel, base_architecture, transformer_iwslt_de_en

from ..losses.proxy_dirichlet import dirichlet_log_predictive


@register_model("dirichlet_transformer")
class DirichletTransformerModel(TransformerModel):
    """fairseq Transformer read as a Prior Network: net_output[0] holds the log-concentrations z."""

    # Duck-typed marker the criterion checks, because distributed training wraps the model.
    predicts_dirichlet = True

    @classmethod
    def build_model(cls, args, task):
        if getattr(args, "adaptive_softmax_cutoff", None):
            raise ValueError("dirichlet_transformer needs full-vocabulary logits: --adaptive-softmax-cutoff is not supported")
        return super().build_model(args, task)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        """log(alpha / alpha_0) (or alpha / alpha_0), in float32."""
        lprobs = dirichlet_log_predictive(net_output[0])
        return lprobs if log_probs else lprobs.exp()


@register_model_architecture("dirichlet_transformer", "dirichlet_transformer")
def dirichlet_transformer(args):
    base_architecture(args)


@register_model_architecture("dirichlet_transformer", "dirichlet_transformer_iwslt_de_en")
def dirichlet_transformer_iwslt_de_en(args):
    transformer_iwslt_de_en(args)
