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

import torch


def x_divergence(lprobs):
    """Per-position X-divergence of K passes.

    lprobs: (K, ..., V) tensor or a sequence of K (..., V) tensors: log-probabilities of the passes
    (computed in float32; float64 stays float64). Returns (...) per-position divergences >= 0; the
    caller masks pads and reduces. The gradient flows into every pass, through p_bar too.
    """
    if len(lprobs) < 2:
        raise ValueError(f"x_divergence needs at least 2 passes, got {len(lprobs)}")
    return _XDivergence.apply(*lprobs)


def _log_mean_offsets(lprobs):
    """(ref, m, deltas): ref = max_i log p_i, delta_i = log p_i - ref (exact when passes are close),
    m = log p_bar - ref = log1p(mean_i expm1(delta_i)), accurate to a relative eps of its size."""
    ref = lprobs[0].clone()
    for lp in lprobs[1:]:
        torch.maximum(ref, lp, out=ref)
    deltas = [lp - ref for lp in lprobs]
    m = torch.zeros_like(ref)
    for d in deltas:
        m += torch.expm1(d)
    return ref, m.div_(len(lprobs)).log1p_(), deltas


class _XDivergence(torch.autograd.Function):
    """X from the offsets d_i = log p_i - log p_bar, never from log p_i - log p_bar directly.

    With p_i - p_bar = p_bar expm1(d_i):  X = 1/K sum_v p_bar_v sum_i d_i,v expm1(d_i,v). Every term
    is >= 0 and small offsets are carried to their own relative precision, so X is accurate (and
    never negative) when the passes nearly agree; the textbook difference of O(log V) logs lost
    8 % of X at 6e-7 per token in float32 and could come out negative. d_i <= log K (ref is the max),
    so nothing overflows; d_i = -inf (a pass gives probability 0 where p_bar has mass) makes X inf,
    as KL(p_bar || p_i) is. Positions where every pass is -inf contribute 0.

    Gradient w.r.t. log p_j (chain through log_softmax is autograd's):
        dX/d log p_j,v = 1/K [p_j,v (d_j,v - mean_i d_i,v) + (p_j,v - p_bar_v)]
    recomputed from the inputs in backward (saving ref and m would cost two V-sized tensors per token).
    """

    @staticmethod
    def forward(ctx, *lprobs):
        ctx.input_dtypes = [lp.dtype for lp in lprobs]
        dtype = torch.float64 if lprobs[0].dtype == torch.float64 else torch.float32
        ctx.save_for_backward(*lprobs)
        lprobs = [lp.to(dtype) for lp in lprobs]
        ref, m, deltas = _log_mean_offsets(lprobs)
        terms = torch.zeros_like(ref)
        for d in deltas:
            d -= m
            terms += d * torch.expm1(d)
        x = terms.mul_(torch.exp(ref + m))
        x = torch.where(ref > -math.inf, x, torch.zeros_like(x))
        return x.sum(-1) / len(lprobs)

    @staticmethod
    def backward(ctx, grad_out):
        dtype = torch.float64 if ctx.input_dtypes[0] == torch.float64 else torch.float32
        lprobs = [lp.to(dtype) for lp in ctx.saved_tensors]
        k = len(lprobs)
        ref, m, deltas = _log_mean_offsets(lprobs)
        mean_d = sum(deltas) / k - m
        scale = torch.exp(ref + m).mul_(grad_out.to(dtype).unsqueeze(-1) / k)  # p_bar / K
        dead = ref == -math.inf  # every pass -inf: no gradient (m and d are NaN there)
        grads = []
        for d, in_dtype in zip(deltas, ctx.input_dtypes):
            d -= m
            g = torch.exp(d).mul_(d - mean_d).add_(torch.expm1(d)).mul_(scale).masked_fill_(dead, 0)
            grads.append(g.to(in_dtype))
        return tuple(grads)


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
