"""Proxy-Dirichlet reverse-KL distribution distillation (Ryabinin, Malinin & Gales 2021).

Student: alpha_v = exp(z_v) + 1, alpha_0 = sum_v alpha_v; predictive distribution alpha / alpha_0.
Target:  beta_v = pi_v * beta0_hat + 1 from the stored top-V' ensemble mean pi and its precision
         beta0_hat (estimated over the full vocabulary at memoize time, bounded here).
Loss:    KL[Dir(alpha) || Dir(beta)] / beta0_hat per target position.

Tail rule: pi is only known on the V' stored events; the remaining mass 1 - sum(top-V') is spread
uniformly over the other V - V' classes, so beta is the same for every non-stored class and the
full-vocabulary target is never materialized in the forward pass.

Precision bounds: beta0_hat is clamped to [floor, limit] (defaults 1 and 1e6): 0 (a member
with log-prob -inf where the mean has mass) would make the loss infinite, inf (members agree)
a point-mass target.

Numerics (why a custom autograd function): written as lgamma/digamma sums, autograd's gradient
is a difference of O(1) terms multiplied by exp(z), which loses all precision once alpha is large.
The closed form
    dKL/dz_v = (alpha_v - 1) * [(alpha_v - beta_v) psi'(alpha_v) - (alpha_0 - beta_0) psi'(alpha_0)]
is divided by beta0_hat, which is of the order of alpha_0 for a student near its target; its
bracket still cancels (both terms ~1) for an overconfident student, so for alpha_v >= 64 it is
recomputed with the ones removed analytically (_recompute_large). Float32 is then enough;
half/bfloat16 logits are promoted to float32, float64 logits stay float64, and teacher inputs of
any dtype (float16 probabilities, float64 precisions) are converted to the compute dtype after
bounding. Logits above the largest value whose alpha_0 * log(alpha_0) is still finite in the
compute dtype are clamped for the forward pass, with the gradient passed straight through so the
loss can pull them back (a zero gradient would freeze them).

Float32 (and half) logits take the fused pass (proxy_dirichlet_fused.py): loss and gradient
together in the forward, the backward only scales the saved gradient. Float64 logits keep torch's
special functions and serve as the reference.
"""

import torch
import torch.nn.functional as F

from ensdist_fairseq.losses.proxy_dirichlet_fused import (  # noqa: F401 (max_safe_logit: API)
    _fused_rkl_and_gradient,
    _recompute_large,
    max_safe_logit,
)


def compute_dtype(dtype):
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dirichlet_log_predictive(logits):
    """log(alpha / alpha_0) for alpha = exp(z) + 1, computed as softplus(z) - logsumexp(softplus(z))
    in float32 (float64 for float64 logits)."""
    log_alpha = F.softplus(logits.to(compute_dtype(logits.dtype)))
    return log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)


# beta0_hat = (V - 1) / (2 mean_m KL(pi_hat || pi_m)) is 0 when a member gives an event log-prob
# -inf where the mean has mass, and infinite when the members agree exactly.
DEFAULT_PRECISION_FLOOR = 1.0
DEFAULT_PRECISION_LIMIT = 1e6
# Largest limit whose target beta = pi beta0_hat + 1 and lgamma(beta_0) stay finite in float32.
MAX_PRECISION_LIMIT = 1e30


def check_precision_bounds(floor, limit):
    """Raise for bounds that make the target meaningless or overflow float32."""
    if not 0 < limit <= MAX_PRECISION_LIMIT:
        raise ValueError(f"precision limit must be in (0, {MAX_PRECISION_LIMIT:g}], got {limit}")
    if not 0 < floor <= limit:
        raise ValueError(f"precision floor must be in (0, limit={limit:g}], got {floor}")


def bound_precision(precision, limit=DEFAULT_PRECISION_LIMIT, floor=DEFAULT_PRECISION_FLOOR):
    """beta0_hat clamped to [floor, limit], in its own dtype (float64 stays float64).

    Below the floor the loss KL / beta0_hat blows up (inf at 0); above the limit (inf when the
    members agree) the target is a point mass. NaN stays NaN: the store reader refuses it.
    """
    check_precision_bounds(floor, limit)
    return precision.clamp(min=floor, max=limit)


class _ProxyDirichletRKL(torch.autograd.Function):
    """Rows of KL[Dir(exp(z)+1) || Dir(beta)] / beta0_hat with the closed-form gradient."""

    @staticmethod
    def forward(ctx, logits, indices, probs, precision):
        ctx.input_dtype = logits.dtype
        if FUSED and compute_dtype(logits.dtype) == torch.float32:
            kl, grad = _fused_rkl_and_gradient(logits, indices, probs, precision)
            ctx.fused = True
            ctx.save_for_backward(grad)
            return kl
        ctx.fused = False
        dtype = compute_dtype(logits.dtype)
        vocab, stored = logits.size(-1), indices.size(-1)
        z = logits.to(dtype).clamp(max=max_safe_logit(vocab, dtype))
        probs, precision = probs.to(dtype), precision.to(dtype)

        alpha = torch.exp(z) + 1
        alpha0 = alpha.sum(-1)
        n_rest = vocab - stored
        tail = (1 - probs.sum(-1)).clamp(min=0)
        beta_rest = tail / max(n_rest, 1) * precision + 1
        beta_top = probs * precision.unsqueeze(-1) + 1
        beta0 = beta_top.sum(-1) + n_rest * beta_rest
        log_norm_beta = (
            torch.lgamma(beta_top).sum(-1) + n_rest * torch.lgamma(beta_rest) - torch.lgamma(beta0)
        )

        digamma = torch.digamma(alpha)
        # sum_v (alpha_v - beta_v) psi(alpha_v), with beta = beta_rest except on the stored events.
        cross = (
            (alpha * digamma).sum(-1)
            - beta_rest * digamma.sum(-1)
            - ((beta_top - beta_rest.unsqueeze(-1)) * digamma.gather(-1, indices)).sum(-1)
        )
        kl = (
            torch.lgamma(alpha0)
            - torch.lgamma(alpha).sum(-1)
            + log_norm_beta
            + cross
            - (alpha0 - beta0) * torch.digamma(alpha0)
        )
        ctx.save_for_backward(alpha, alpha0, beta_top, beta_rest, beta0, indices, precision)
        return kl / precision

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.fused:
            (grad,) = ctx.saved_tensors
            return (grad * grad_out.unsqueeze(-1)).to(ctx.input_dtype), None, None, None
        alpha, alpha0, beta_top, beta_rest, beta0, indices, precision = ctx.saved_tensors
        trigamma = torch.polygamma(1, alpha)
        # (alpha_v - beta_v) psi'(alpha_v) with beta = beta_rest, then corrected on the stored events.
        bracket = (alpha - beta_rest.unsqueeze(-1)) * trigamma
        bracket.scatter_add_(
            -1, indices, (beta_rest.unsqueeze(-1) - beta_top) * trigamma.gather(-1, indices)
        )
        bracket -= ((alpha0 - beta0) * torch.polygamma(1, alpha0)).unsqueeze(-1)
        _recompute_large(bracket, alpha - 1, alpha0, beta_top, beta_rest, beta0, indices)
        scale = (grad_out.to(alpha.dtype) / precision).unsqueeze(-1)
        grad = (alpha - 1) * bracket * scale
        return grad.to(ctx.input_dtype), None, None, None


# The float32 fused pass; False computes float32 with torch's special functions as float64 does
# (kept for benchmarks/bench_criterion.py, which times both).
FUSED = True


def proxy_dirichlet_rkl(
    logits,
    teacher_indices,
    teacher_probs,
    precision,
    precision_limit=DEFAULT_PRECISION_LIMIT,
    precision_floor=DEFAULT_PRECISION_FLOOR,
):
    """Per-position KL[Dir(alpha) || Dir(beta)] / beta0_hat (see the module docstring).

    logits: (..., V) raw student outputs z (any float dtype); teacher_indices / teacher_probs:
    (..., V') stored events and ensemble-mean probabilities (float16 as stored is fine);
    precision: (...) beta0_hat of any magnitude (float64 keeps values beyond float16/bfloat16
    range exact), clamped to [precision_floor, precision_limit]. Pads may carry any value: mask
    them afterwards. Returns (...) losses in float32 (float64 for float64 logits).
    """
    precision = bound_precision(precision, precision_limit, precision_floor)
    shape = logits.shape[:-1]
    loss = _ProxyDirichletRKL.apply(
        logits.reshape(-1, logits.size(-1)),
        teacher_indices.reshape(-1, teacher_indices.size(-1)),
        teacher_probs.reshape(-1, teacher_probs.size(-1)),
        precision.reshape(-1),
    )
    return loss.view(shape)
