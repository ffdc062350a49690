"""Proxy-Dirichlet reverse-KL distribution distillation (Ryabinin, Malinin & Gales 2021).

Student: alpha_v = exp(z_v) + 1, alpha_0 = sum_v alpha_v; predictive distribution alpha / alpha_0.
Target:  beta_v = pi_v * beta0_hat + 1 from the stored top-V' ensemble mean pi and its precision
         beta0_hat (estimated over the full vocabulary at memoize time, bounded here by a limit).
Loss:    KL[Dir(alpha) || Dir(beta)] / beta0_hat per target position.

Tail rule: pi is only known on the V' stored events; the remaining mass 1 - sum(top-V') is spread
uniformly over the other V - V' classes, so beta is the same for every non-stored class and the
full-vocabulary target is never materialized in the forward pass.

Numerics (why a custom autograd function): written as lgamma/digamma sums, autograd's gradient
is a difference of O(1) terms multiplied by exp(z), which loses all precision once alpha is large.
The closed form
    dKL/dz_v = (alpha_v - 1) * [(alpha_v - beta_v) psi'(alpha_v) - (alpha_0 - beta_0) psi'(alpha_0)]
has the same rounding but is divided by beta0_hat, which is of the order of alpha_0 for a student
that is anywhere near its target, so float32 is enough; half/bfloat16 logits are promoted to float32,
float64 logits stay float64. It also needs one trigamma instead of autograd's saved intermediates.
Logits above the largest value whose alpha_0 * log(alpha_0) is still finite in the compute dtype are
clamped for the forward pass, with the gradient passed straight through so the loss can pull them
back (a zero gradient would freeze them).
"""
import math

import torch
import torch.nn.functional as F


def dirichlet_log_predictive(logits):
    """log(alpha / alpha_0) for alpha = exp(z) + 1, computed as softplus(z) - logsumexp(softplus(z))."""
    log_alpha = F.softplus(logits.float())
    return log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)


def bound_precision(precision, limit):
    """beta0_hat is unbounded (inf) when the ensemble members agree: cap it at `limit`."""
    if not limit > 0:
        raise ValueError(f"precision limit must be > 0, got {limit}")
    return precision.clamp(max=limit)


def max_safe_logit(vocab_size, dtype):
    """Largest z for which alpha_0 * log(alpha_0) (<= V e^z * log(V e^z)) stays finite in `dtype`."""
    log_max = math.log(torch.finfo(dtype).max)
    return log_max - math.log(vocab_size) - math.log(log_max)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


class _ProxyDirichletRKL(torch.autograd.Function):
    """Rows of KL[Dir(exp(z)+1) || Dir(beta)] / beta0_hat with the closed-form gradient."""

    @staticmethod
    def forward(ctx, logits, indices, probs, precision):
        dtype = _compute_dtype(logits.dtype)
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
        log_norm_beta = torch.lgamma(beta_top).sum(-1) + n_rest * torch.lgamma(beta_rest) - torch.lgamma(beta0)

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
        ctx.input_dtype = logits.dtype
        return kl / precision

    @staticmethod
    def backward(ctx, grad_out):
        alpha, alpha0, beta_top, beta_rest, beta0, indices, precision = ctx.saved_tensors
        trigamma = torch.polygamma(1, alpha)
        # (alpha_v - beta_v) psi'(alpha_v) with beta = beta_rest, then corrected on the stored events.
        bracket = (alpha - beta_rest.unsqueeze(-1)) * trigamma
        bracket.scatter_add_(-1, indices, (beta_rest.unsqueeze(-1) - beta_top) * trigamma.gather(-1, indices))
        bracket -= ((alpha0 - beta0) * torch.polygamma(1, alpha0)).unsqueeze(-1)
        scale = (grad_out.to(alpha.dtype) / precision).unsqueeze(-1)
        grad = (alpha - 1) * bracket * scale
        return grad.to(ctx.input_dtype), None, None, None


def proxy_dirichlet_rkl(logits, teacher_indices, teacher_probs, precision, precision_limit=None):
    """Per-position KL[Dir(alpha) || Dir(beta)] / beta0_hat (see the module docstring).

    logits: (..., V) raw student outputs z; teacher_indices / teacher_probs: (..., V') stored
    events and ensemble-mean probabilities; precision: (...) beta0_hat, must be > 0 (give pad
    positions any positive value and mask them afterwards). precision_limit: optional cap on beta0_hat.
    Returns (...) losses in float32 (float64 for float64 logits).
    """
    if precision_limit is not None:
        precision = bound_precision(precision, precision_limit)
    shape = logits.shape[:-1]
    loss = _ProxyDirichletRKL.apply(
        logits.reshape(-1, logits.size(-1)),
        teacher_indices.reshape(-1, teacher_indices.size(-1)),
        teacher_probs.reshape(-1, teacher_probs.size(-1)),
        precision.reshape(-1),
    )
    return loss.view(shape)
