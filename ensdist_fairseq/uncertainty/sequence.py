"""Sequence-level uncertainty from token-level measures over beam hypotheses (pure torch).

The estimator (Malinin & Gales 2021, "Uncertainty estimation in autoregressive structured
prediction", §3–4, the form used for Table 4 of the Proxy-Dirichlet paper), for one source x
decoded with beam B (default 5) into hypotheses y⁽¹⁾ … y⁽ᴮ⁾:

  1. Teacher-force every hypothesis through the system. Its positions are its L_b tokens
     *including* the final </s> (the decoder predicted it, so its uncertainty counts too).
  2. Per hypothesis, length-normalise: ū_b = (1/L_b) Σ_{l=1..L_b} u(y⁽ᵇ⁾_{<l}, x), where u is a
     token-level measure (total, data, mi, rmi or epkl; see measures.py).
  3. Importance weights from the hypotheses' log-probabilities under the system's predictive:
     ln P(y⁽ᵇ⁾|x) = Σ_l ln P(y⁽ᵇ⁾_l | y⁽ᵇ⁾_{<l}, x)  (un-normalised: the *joint* probability),
     w_b = softmax_b(ln P(y⁽ᵇ⁾|x) / T), with calibration temperature T = 1 by default
     (Malinin & Gales treat T as a hyper-parameter; T → ∞ is the uniform average over the beam,
     T → 0 keeps the top hypothesis only).
  4. Û = Σ_b w_b ū_b.

For an ensemble, ln P is the ensemble's: with product-of-expectations (default; what fairseq's
ensemble decodes) the chain rule of the mean of the members' token probabilities, with
expectation-of-products ln((1/K) Σ_k P_k(y|x)), the mean of the members' sequence probabilities,
and then the token measures weigh the members by their posterior given the prefix
(measures.py; `prefix_log_probs`, `expectation_of_products_log_probs`). Either way the
hypotheses are the beam of fairseq's ensemble (product-of-expectations), re-weighted.
for a Dirichlet student, its decoding predictive (the model option, softmax(z) by default);
the token measures themselves come from the members (ensemble) or from α (Dirichlet).
Hypotheses are the system's own beam output, so each system is judged on what it produces.
"""

import math
from typing import Dict, Sequence

import torch


def hypothesis_means(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ū_b: the mean of (B, T) token values over the positions where `mask` (B, T) is True."""
    mask = mask.to(token_values.dtype)
    return (token_values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def importance_weights(hyp_log_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """w_b = softmax_b(ln P(y⁽ᵇ⁾|x) / T) over the last dimension (B hypotheses)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(hyp_log_probs.double() / temperature, dim=-1)


def sequence_measures(
    token_measures: Dict[str, torch.Tensor],
    mask: torch.Tensor,
    hyp_log_probs: torch.Tensor,
    temperature: float = 1.0,
) -> Dict[str, float]:
    """Û = Σ_b w_b ū_b for each measure of one sentence: token_measures[name] is (B, T),
    mask (B, T) marks each hypothesis's L_b positions, hyp_log_probs (B,) its ln P(y|x)."""
    w = importance_weights(hyp_log_probs, temperature)
    return {
        name: float((w * hypothesis_means(values.double(), mask)).sum())
        for name, values in token_measures.items()
    }


def hypothesis_log_probs(
    log_probs: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """ln P(y⁽ᵇ⁾|x) = Σ_l ln P(y_l | …) from (B, T, V) log-probs of the teacher-forced pass."""
    picked = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).double()
    return (picked * mask.to(picked.dtype)).sum(-1)


def prefix_log_probs(picked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ln P_k(y_<l | x) at every position: the exclusive cumulative sum over positions of the
    (K, N, T) members' log-probs of the hypothesis tokens (0 at pads and at l = 1)."""
    picked = picked.double() * mask.to(torch.float64)
    return picked.cumsum(-1) - picked


def expectation_of_products_log_probs(member_hyp_log_probs: torch.Tensor) -> torch.Tensor:
    """ln((1/K) Σ_k P_k(y|x)) from the (K, N) members' joint log-probs of N hypotheses."""
    k = member_hyp_log_probs.size(0)
    return torch.logsumexp(member_hyp_log_probs.double(), dim=0) - math.log(k)


def split_by_sentence(values: torch.Tensor, counts: Sequence[int]):
    """Rows of `values` (hypotheses of several sentences stacked) grouped per sentence."""
    return torch.split(values, list(counts), dim=0)
