"""Intra-distillation (Xu, Koehn & Murray 2022): agreement between K dropout passes of one batch.

X-divergence of K distributions p_1..p_K with mean p_bar (not detached):
    X = 1/K sum_i [KL(p_i || p_bar) + KL(p_bar || p_i)] = 1/K sum_i sum_v (p_i,v - p_bar_v)(log p_i,v - log p_bar_v)
computed from log-probabilities, because the authors' log(softmax) gives -inf, then inf/NaN, once
a probability underflows.

Adaptive weight: for alpha > 1 and t < N/p, alpha_t = alpha * (p t / N)^gamma with
gamma = ln(1/alpha) / ln(p/q); else alpha_t = alpha. It rises from 0 to 1 at t = N/q and to alpha
at t = N/p, so q > p > 0.
"""
import math


def x_divergence(lprobs):
    """Per-position X-divergence of K passes.

    lprobs: (K, ..., V) tensor or a sequence of K (..., V) tensors: log-probabilities of the passes
    (any float dtype; computed in float32). Returns (...) per-position divergences; the caller
    masks pads and reduces.

    Summed over passes, (p_i - p_bar)(log p_i - log p_bar) loses its log p_bar part, because
    sum_i (p_i - p_bar) = 0: X = 1/K sum_i sum_v (p_i,v - p_bar_v) log p_i,v. So log p_bar is never
    formed (no -inf when p_bar underflows) and a sequence of passes needs no stacked copy.
    """
    if len(lprobs) < 2:
        raise ValueError(f"x_divergence needs at least 2 passes, got {len(lprobs)}")
    lprobs = [lp.float() for lp in lprobs]
    probs = [lp.exp() for lp in lprobs]
    mean = sum(probs) / len(probs)
    return sum(((p - mean) * lp).sum(-1) for p, lp in zip(probs, lprobs)) / len(probs)


def check_adaptive_schedule(alpha, p, q):
    """Raise for schedule parameters that make alpha_t meaningless."""
    if alpha < 0:
        raise ValueError(f"intra-distillation alpha must be >= 0, got {alpha}")
    if not 0 < p < q:
        raise ValueError(f"the adaptive alpha schedule needs 0 < p < q (alpha reaches 1 at N/q before alpha at N/p), got p={p}, q={q}")


def adaptive_alpha(alpha, num_updates, total_updates, p, q):
    """alpha_t of the adaptive schedule at update t = num_updates with N = total_updates."""
    check_adaptive_schedule(alpha, p, q)
    if total_updates <= 0:
        raise ValueError(f"the adaptive alpha schedule needs N = max_update > 0, got {total_updates}")
    if alpha <= 1 or num_updates >= total_updates / p:
        return alpha
    gamma = math.log(1 / alpha) / math.log(p / q)
    return alpha * (p * num_updates / total_updates) ** gamma
