"""Token-level uncertainty measures (pure torch, no fairseq): ensembles and Dirichlet students.

Notation: V classes at one decoding position; every function reduces the last dimension.

Ensemble of K members P_k (from their log-probabilities, shape (K, ..., V)), P̄ = (1/K) Σ_k P_k:
    total      H[P̄]
    data       (1/K) Σ_k H[P_k]                              (expected data uncertainty)
    mi         (1/K) Σ_k KL(P_k ‖ P̄) = total − data         (knowledge: mutual information)
    rmi        (1/K) Σ_k KL(P̄ ‖ P_k)                        (knowledge: reverse MI)
    epkl       (1/K²) Σ_{k,k'} KL(P_k ‖ P_k') = mi + rmi     (expected pairwise KL)

Dirichlet student Dir(α), α = exp(z) + 1 from the raw logits z, α₀ = Σ_v α_v, m = α/α₀, and an
expected categorical p (`expected`): the decoding predictive softmax(z) ("softmax", the authors'
form and the default) or the Dirichlet's mean m ("mean", the self-consistent decomposition):
    total      H[p]
    mi         Σ_v p_v (φ(α_v) − φ(α₀)) − KL(p ‖ m),      φ(x) = ψ(x + 1) − ln x
    data       total − mi = −Σ_v p_v (ψ(α_v + 1) − ψ(α₀ + 1))
    rmi        Σ_v p_v (ln p_v − ψ(α_v) + ψ(α₀)) = Σ_v p_v (χ(α_v) − χ(α₀)) + KL(p ‖ m),  χ = ln − ψ
    epkl       (V − 1)/α₀                                 (E_{π,π'~Dir(α)} KL(π ‖ π'))
With p = m (self-consistent): KL(p ‖ m) = 0, data = E_{π~Dir(α)} H[π], total = data + mi and
mi + rmi = epkl (because φ + χ = 1/x). With p = softmax(z) (the authors' code: the expected
categorical is what the student decodes with, α only inside the digammas) rmi = E_{π~Dir(α)}
KL(p ‖ π) >= 0 still, but mi + rmi = Σ p_v/α_v − 1/α₀ ≠ epkl, and mi is *negative* where the +1
of α moves m away from p by more than the φ terms (KL(p ‖ m) ≈ −ln(1 − V/α₀) on confident
positions): the authors' code clamps it at 0; here it is reported as it is.

Expectation-of-products (Malinin & Gales 2021): the ensemble's sequence distribution is the mean
of the members' *sequence* probabilities, P̄(y) = (1/K) Σ_k P_k(y). Its conditional at a position
is the mixture with the members' posterior weights given the prefix, w_k ∝ P_k(y_<l), and the
sequence-level total, data, mi, rmi, epkl are, by the chain rule, E_{P̄} of the sums over
positions of (`log_weights` = ln w):
    total H[P̄_w], P̄_w = Σ_k w_k P_k;  data Σ_k w_k H[P_k];  mi Σ_k w_k KL(P_k ‖ P̄_w);
    rmi (1/K) Σ_k KL(P̄_w ‖ P_k);  epkl Σ_k w_k (1/K) Σ_k' KL(P_k ‖ P_k') = mi + rmi.
Uniform weights (the default) give the token-level forms above: product-of-expectations, the
token probabilities averaged, as fairseq's ensemble decodes.

A single model (or a mean-KD student) has only `total`, the entropy of its predictive.

Why these forms (numerics). Knowledge uncertainty is a small difference of large numbers when
the members agree; computed as total − data it comes out slightly negative in float32, and the
authors' code clamps it at 0 (hiding a sign error). Here every measure is a sum of terms that are
non-negative *as computed*, so mi, rmi, epkl >= 0 hold exactly, in float32 too, without a clamp:
  * KL(p ‖ q) = Σ_v q_v g(d_v) with d = ln p − ln q and g(d) = e^d (d − 1) + 1 >= 0; g is
    evaluated as d²·(1/2 + d/3 + d²/8 + ...) for |d| < 0.1 (no cancellation) and as
    (p (d − 1) + q)/q's numerator, i.e. the term p (d − 1) + q, elsewhere (>= 0.0047 q there).
  * φ and χ are positive and decreasing, so φ(α_v) − φ(α₀) >= 0 as α_v < α₀; they are computed in
    float64, from ψ for x < 10 and from their asymptotic series for x >= 10, where ψ(x) − ln x
    would cancel (α₀ reaches 1e9 for confident students).
"""

import math
from typing import Dict, Optional

import torch

ENSEMBLE_MEASURES = ("total", "data", "mi", "rmi", "epkl")
# The Dirichlet student's predictive distributions, read from its logits z: decided here, once
# (the model decodes with one of them, the measures take one as the expected categorical).
DIRICHLET_PREDICTIVES = ("softmax", "mean")
DEFAULT_DIRICHLET_PREDICTIVE = "softmax"  # the authors' (PD paper eq. 9)
# Which expected categorical a Dirichlet student's measures take: "predictive", the one it decodes
# with (the authors' form, the default), or "self-consistent", α/α₀ (total = data + mi).
DIRICHLET_FORMS = ("predictive", "self-consistent")


def dirichlet_expected(form: str, predictive: str) -> str:
    """The expected categorical of the measures for a form and the student's decoding predictive."""
    if form not in DIRICHLET_FORMS:
        raise ValueError(f"dirichlet measures must be one of {', '.join(DIRICHLET_FORMS)}")
    return predictive if form == "predictive" else "mean"


DIRICHLET_MEASURES = ENSEMBLE_MEASURES
SINGLE_MEASURES = ("total",)
KNOWLEDGE_MEASURES = ("mi", "rmi", "epkl")
# How an ensemble of autoregressive models is combined (Malinin & Gales 2021): token
# probabilities averaged (fairseq's decoding, the default) or sequence probabilities averaged.
ENSEMBLE_COMBINATIONS = ("product-of-expectations", "expectation-of-products")

_SMALL_D = 0.1  # below this |d| the Taylor series of g is used
_ASYMPTOTIC_X = 10.0  # from here on φ and χ come from their asymptotic series


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """H[p] = −Σ_v p_v ln p_v from ln p; classes with p = 0 contribute 0 (each term >= 0)."""
    p = log_probs.exp()
    return -(p * log_probs.masked_fill(p == 0, 0.0)).sum(-1)


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The non-negative terms q_v g(ln p_v − ln q_v) whose sum over v is KL(p ‖ q)."""
    d = log_p - log_q
    p, q = log_p.exp(), log_q.exp()
    series = d * d * (0.5 + d * (1 / 3 + d * (1 / 8 + d * (1 / 30 + d * (1 / 144 + d / 840)))))
    # p (d − 1) + q = q g(d); where p = 0 (d = −inf) the term is q, and d·0 must not make a NaN.
    direct = torch.where(p > 0, p * (d - 1), torch.zeros_like(p)) + q
    terms = torch.where(d.abs() < _SMALL_D, q * series, direct)
    return torch.where(q > 0, terms, torch.zeros_like(terms))  # q = 0: p = 0 too for a finite KL


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) >= 0 from log-probabilities, as a sum of non-negative terms."""
    return _kl_terms(log_p, log_q).sum(-1)


def ensemble_log_mean(member_log_probs: torch.Tensor) -> torch.Tensor:
    """ln P̄ = ln((1/K) Σ_k P_k) from (K, ..., V) member log-probabilities."""
    return torch.logsumexp(member_log_probs, dim=0) - math.log(member_log_probs.size(0))


def member_log_weights(prefix_log_probs: torch.Tensor) -> torch.Tensor:
    """ln w_k = ln P_k(y_<l) − ln Σ_k' P_k'(y_<l): the members' posterior given a prefix, (K, ...)."""
    return prefix_log_probs - torch.logsumexp(prefix_log_probs, dim=0, keepdim=True)


def ensemble_measures(
    member_log_probs: torch.Tensor, log_weights: Optional[torch.Tensor] = None
) -> Dict[str, torch.Tensor]:
    """Every ensemble measure, each of shape (...), in the input's dtype (K = 1: mi = rmi = 0).

    log_weights: (K, ...) normalised ln w_k of the members (expectation-of-products, module
    docstring); None: uniform, the token probabilities averaged."""
    lp = member_log_probs
    entropies = entropy(lp)
    if log_weights is None:
        log_mean = ensemble_log_mean(lp)
        kl_to_mean = kl_divergence(lp, log_mean.unsqueeze(0))
        data, mi = entropies.mean(0), kl_to_mean.mean(0)
    else:
        lw = log_weights.to(lp.dtype)
        log_mean = torch.logsumexp(lp + lw.unsqueeze(-1), dim=0)
        kl_to_mean = kl_divergence(lp, log_mean.unsqueeze(0))
        w = lw.exp()
        data, mi = (w * entropies).sum(0), (w * kl_to_mean).sum(0)
    total = entropy(log_mean)
    rmi = kl_divergence(log_mean.unsqueeze(0), lp).mean(0)
    return {"total": total, "data": data, "mi": mi, "rmi": rmi, "epkl": mi + rmi}


def _chi_series(x: torch.Tensor) -> torch.Tensor:
    """ln x − ψ(x) = 1/(2x) + Σ_n B_2n / (2n x^2n) (Bernoulli numbers), to x^-10: the first
    omitted term is < 2e-15 at x = 10."""
    inv2 = 1 / (x * x)
    return 1 / (2 * x) + inv2 * (
        1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 * (1 / 240 - inv2 / 132)))
    )


def _phi(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = ψ(x + 1) − ln x (> 0, decreasing), float64, without cancellation for large x."""
    big = x >= _ASYMPTOTIC_X
    xs = torch.where(big, torch.full_like(x, _ASYMPTOTIC_X), x)  # keep each branch finite
    xb = torch.where(big, x, torch.full_like(x, _ASYMPTOTIC_X))
    exact = torch.digamma(xs + 1) - torch.log(xs)
    asym = 1 / xb - _chi_series(xb)
    return torch.where(big, asym, exact)


def _chi(x: torch.Tensor) -> torch.Tensor:
    """χ(x) = ln x − ψ(x) = 1/x − φ(x) (> 0, decreasing), float64."""
    big = x >= _ASYMPTOTIC_X
    xs = torch.where(big, torch.full_like(x, _ASYMPTOTIC_X), x)
    xb = torch.where(big, x, torch.full_like(x, _ASYMPTOTIC_X))
    exact = torch.log(xs) - torch.digamma(xs)
    return torch.where(big, _chi_series(xb), exact)


def dirichlet_log_alpha(logits: torch.Tensor) -> torch.Tensor:
    """ln α = ln(exp(z) + 1) = softplus(z), float64 (finite for every finite z)."""
    return torch.nn.functional.softplus(logits.double())


def dirichlet_log_predictive(logits: torch.Tensor, predictive: str) -> torch.Tensor:
    """ln of a Dirichlet student's predictive from its logits z: "softmax" (softmax(z)) or "mean"
    (α/α₀ = softplus(z) − logsumexp(softplus(z))). float64 stays float64; every other dtype is
    computed in float32 (half logits would overflow exp)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    if predictive == "softmax":
        return torch.log_softmax(z, dim=-1)
    if predictive == "mean":
        log_alpha = torch.nn.functional.softplus(z)
        return log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
    raise ValueError(
        f"dirichlet predictive must be one of {', '.join(DIRICHLET_PREDICTIVES)}, got {predictive!r}"
    )


def dirichlet_measures(
    logits: torch.Tensor, expected: str = DEFAULT_DIRICHLET_PREDICTIVE
) -> Dict[str, torch.Tensor]:
    """Every closed-form measure of Dir(exp(z) + 1) from the raw logits z (..., V), with the
    expected categorical `expected` ("softmax" or "mean", module docstring); float64."""
    log_alpha = dirichlet_log_alpha(logits)
    log_alpha0 = torch.logsumexp(log_alpha, dim=-1)
    log_mean = log_alpha - log_alpha0.unsqueeze(-1)
    alpha, alpha0 = log_alpha.exp(), log_alpha0.exp().unsqueeze(-1)
    if expected == "mean":
        log_p, kl = log_mean, torch.zeros_like(log_alpha0)
    else:
        log_p = dirichlet_log_predictive(logits.double(), expected)
        kl = kl_divergence(log_p, log_mean)
    p = log_p.exp()
    total = entropy(log_p)
    mi = (p * (_phi(alpha) - _phi(alpha0))).sum(-1) - kl
    rmi = (p * (_chi(alpha) - _chi(alpha0))).sum(-1) + kl
    vocab = logits.size(-1)
    return {
        "total": total,
        "data": total - mi,
        "mi": mi,
        "rmi": rmi,
        "epkl": (vocab - 1) * torch.exp(-log_alpha0),
    }


def single_measures(log_probs: torch.Tensor) -> Dict[str, torch.Tensor]:
    """A single model's (or mean-KD student's) only measure: the entropy of its predictive."""
    return {"total": entropy(log_probs)}
