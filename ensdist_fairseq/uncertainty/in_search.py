"""Token measures computed inside fairseq's beam search, carried along with each hypothesis.

Why: teacher-forcing the B hypotheses after the search runs the decoder over as many positions
as the search itself did, so it doubles the cost (measured: 1.5-2x fairseq-generate on a CPU).
But the search already computes, at every step and for every live beam, each member's
distribution over the next token, and fairseq's SequenceGenerator already carries one per-step
tensor along the beam's reorderings and hands it out with each finished hypothesis: the
decoder's attention (`hypo["attention"]`, (width, L)). MeasuringEnsemble is fairseq's
EnsembleModel with forward_decoder returning, in that slot, the token measures of the step's
distributions instead of attention weights. A finished hypothesis then holds, at column l, the
measures of the distribution its l-th token (</s> included) was chosen from: exactly the
teacher-forced values (tests/test_uncertainty_cli.py checks the two paths agree).

The measures are those of runner.py: the members' distributions for an ensemble, α = exp(z) + 1
from the raw (untempered) logits for a Dirichlet student with the expected categorical it is
given (measures.py), the entropy for a single model; fairseq stores
them in float32. Cost: the measures for every live beam at every step, no second decoder pass.

Expectation-of-products (an ensemble's sequence probabilities averaged, measures.py) needs each
member's ln P_k(y_<l) of every live prefix: kept here, and reordered with the beams
(reorder_incremental_state, which fairseq calls with every reordering, finished sentences'
removal included); the token chosen at the previous step is the last column of `tokens`. Each
step then also carries, after the measures, the K prefix log-probs and the K members' ln P_k(</s>),
from which runner.py forms ln P_k(y|x) of every finished hypothesis (it ends in </s>).
"""

import math
from typing import List, Optional, Sequence

import torch
from fairseq.sequence_generator import EnsembleModel

from ensdist_fairseq.uncertainty import fast_measures as F
from ensdist_fairseq.uncertainty import measures as M


class MeasuringEnsemble(EnsembleModel):
    """fairseq's EnsembleModel whose forward_decoder returns (ln predictive, token measures)."""

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        kind: str,
        measures: Sequence[str],
        dirichlet_expected: Optional[str] = None,
        ensemble_combination: str = M.ENSEMBLE_COMBINATIONS[0],
    ):
        super().__init__(list(models))
        self.kind = kind
        self.measure_names: List[str] = list(measures)
        self.dirichlet_expected = dirichlet_expected
        self.posterior = kind == "ensemble" and ensemble_combination == "expectation-of-products"
        self.eos = models[0].decoder.dictionary.eos() if self.posterior else None
        self._prefix = self._last = self._order = None  # (K, rows), (K, rows, V), (rows,)

    def reorder_incremental_state(self, incremental_states, new_order):
        self._order = new_order  # applied with the next step's chosen tokens
        super().reorder_incremental_state(incremental_states, new_order)

    def _prefix_log_probs(self, tokens, stacked):
        """ln P_k(y_<l) of each live prefix, (K, rows), float64."""
        if tokens.size(1) == 1:  # a new batch's first step: empty prefixes
            prefix = stacked.new_zeros(stacked.shape[:2], dtype=torch.float64)
        else:
            order = self._order if self._order is not None else torch.arange(tokens.size(0))
            order = order.to(tokens.device)
            chosen = self._last[:, order, tokens[:, -1]]  # (K, rows): last step's choice
            prefix = self._prefix[:, order] + chosen.double()
        self._prefix, self._last, self._order = prefix, stacked, None
        return prefix

    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):
        log_probs, logits = [], None
        for i, model in enumerate(self.models):
            encoder_out = encoder_outs[i] if self.has_encoder() else None
            if self.has_incremental_states():
                decoder_out = model.decoder.forward(
                    tokens, encoder_out=encoder_out, incremental_state=incremental_states[i]
                )
            else:
                decoder_out = model.decoder.forward(tokens, encoder_out=encoder_out)
            last = decoder_out[0][:, -1:, :]
            if self.kind == "dirichlet":
                logits = last[:, -1, :]  # the trained α = exp(z) + 1, before any temperature
            if temperature != 1.0:
                last = last / temperature
            extra = decoder_out[1] if len(decoder_out) > 1 else None
            log_probs.append(model.get_normalized_probs((last, extra), log_probs=True)[:, -1, :])
        if len(log_probs) == 1:
            predictive = log_probs[0]
        else:
            stacked = torch.stack(log_probs)
            predictive = torch.logsumexp(stacked, dim=0) - math.log(len(log_probs))
        columns = []
        if self.kind == "ensemble" and self.posterior:
            prefix = self._prefix_log_probs(tokens, stacked)
            values = F.ensemble_measures(stacked, M.member_log_weights(prefix))
            columns = [prefix.t(), stacked[:, :, self.eos].t().double()]
        elif self.kind == "ensemble":
            values = F.ensemble_measures(stacked, log_mean=predictive)  # decoded with: reused
        elif self.kind == "dirichlet":
            values = F.dirichlet_measures(logits, self.dirichlet_expected)
        else:
            values = F.single_measures(predictive)
        # (rows, M [+ 2K]): fairseq copies it into its attention buffer at this step's column
        out = torch.cat([torch.stack([values[m] for m in self.measure_names], dim=1), *columns], 1)
        return predictive, out.to(predictive)
