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
    (computed in float32; float64 stays float64), finite. Returns (...) per-position divergences
    >= 0; the caller masks pads and reduces. The gradient flows into every pass, through p_bar too.
    """
    if len(lprobs) < 2:
        raise ValueError(f"x_divergence needs at least 2 passes, got {len(lprobs)}")
    return _XDivergence.apply(*lprobs)


def _offsets(lprobs):
    """ref = max_i log p_i, and per pass delta_i = log p_i - ref (exact when passes are close:
    Sterbenz) and e_i = expm1(delta_i) = p_i / e^ref - 1 (to its own relative precision)."""
    ref = torch.maximum(lprobs[0], lprobs[1])
    for lp in lprobs[2:]:
        torch.maximum(ref, lp, out=ref)
    deltas = [lp - ref for lp in lprobs]
    return ref, deltas, [torch.expm1(d) for d in deltas]


class _XDivergence(torch.autograd.Function):
    """X from offsets to the largest pass, never from O(log V) log-probabilities directly.

    Any reference r independent of i may replace log p_bar, because sum_i (p_i - p_bar) = 0:
        X_v = 1/K sum_i (p_i,v - p_bar_v)(log p_i,v - r_v).
    With r = ref, p_i - p_bar = e^ref (e_i - mean e) and log p_i - ref = delta_i, so
        X_v = e^ref_v / K [sum_i e_i delta_i - (sum_i e_i)(sum_i delta_i) / K]
    (a covariance of e and delta, which cannot cancel badly: the largest pass has delta = 0).
    Every factor is carried to its own relative precision, so X is accurate when the passes
    nearly agree: the textbook difference of logs lost 8 % of X at 6e-7 per token in float32 and
    could come out negative. Rounding can still leave a per-position X of ~1e-20 below 0, hence
    the final clamp. Log-probabilities must be finite (log_softmax of finite logits is).

    Gradient w.r.t. log p_j (autograd chains it through log_softmax), p_bar not detached:
        dX/d log p_j = 1/K [p_j (log p_j - mean_i log p_i) + (p_j - p_bar)]
                     = e^ref / K [(1 + e_j)(delta_j - mean delta) + (e_j - mean e)],
    recomputed from the inputs in backward (saving the offsets would cost 2K V-sized tensors
    per token).
    """

    @staticmethod
    def forward(ctx, *lprobs):
        ctx.input_dtypes = [lp.dtype for lp in lprobs]
        ctx.save_for_backward(*lprobs)
        dtype = torch.float64 if lprobs[0].dtype == torch.float64 else torch.float32
        k = len(lprobs)
        ref, deltas, es = _offsets([lp.to(dtype) for lp in lprobs])
        sum_d, sum_e, cov = deltas[0].clone(), es[0].clone(), es[0] * deltas[0]
        for d, e in zip(deltas[1:], es[1:]):
            sum_d += d
            sum_e += e
            cov.addcmul_(e, d)
        cov.addcmul_(sum_e, sum_d, value=-1 / k)
        return (cov.mul_(ref.exp_()).sum(-1) / k).clamp_(min=0)

    @staticmethod
    def backward(ctx, grad_out):
        dtype = torch.float64 if ctx.input_dtypes[0] == torch.float64 else torch.float32
        k = len(ctx.input_dtypes)
        ref, deltas, es = _offsets([lp.to(dtype) for lp in ctx.saved_tensors])
        mean_d, mean_e = sum(deltas) / k, sum(es) / k
        scale = ref.exp_().mul_(grad_out.to(dtype).unsqueeze(-1) / k)  # e^ref / K
        grads = []
        for d, e, in_dtype in zip(deltas, es, ctx.input_dtypes):
            t = d.sub_(mean_d)
            g = torch.addcmul(t, e, t).add_(e).sub_(mean_e).mul_(scale)
            grads.append(g.to(in_dtype))
        return tuple(grads)


def check_adaptive_schedule(alpha, p, q):
    """Raise for schedule parameters that make alpha_t meaningless."""
    if alpha < 0:
        raise ValueError(f"intra-distillation alpha must be >= 0, got {alpha}")
    if not 0 < p < q:
        raise ValueError(
            f"the adaptive alpha schedule needs 0 < p < q (alpha reaches 1 at N/q before alpha at N/p), got p={p}, q={q}"
        )


def adaptive_alpha(alpha, num_updates, total_updates, p, q):
    """alpha_t of the adaptive schedule at update t = num_updates with N = total_updates."""
    check_adaptive_schedule(alpha, p, q)
    if total_updates <= 0:
        raise ValueError(
            f"the adaptive alpha schedule needs N = max_update > 0, got {total_updates}"
        )
    if alpha <= 1 or num_updates >= total_updates / p:
        return alpha
    gamma = math.log(1 / alpha) / math.log(p / q)
    return alpha * (p * num_updates / total_updates) ** gamma
