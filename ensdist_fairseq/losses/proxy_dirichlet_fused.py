"""The float32 fused Proxy-Dirichlet pass and the cancellation-free gradient bracket
(proxy_dirichlet.py holds the loss, its definitions and the float64 reference path).

The fused pass computes the loss and its gradient together in the forward, a block of rows at a
time, with lgamma/digamma/trigamma from dirichlet_special instead of torch's scalar kernels. The
classes of a trained student's tail (e^z < SERIES_BELOW) enter only through the power sums of
short series; the exact functions are evaluated on the gathered head and stored classes, or over
whole rows that have many heads. The few classes with alpha >= SERIES_FROM get their loss terms in
float64 (each is ~alpha_0 log alpha_0 and cancels against the alpha_0 terms) and the
cancellation-free gradient bracket (_recompute_large), which the float64 path uses too.
"""

import math

import torch

from ensdist_fairseq.losses.dirichlet_special import (
    EULER_GAMMA,
    SERIES_BELOW,
    GammaWorkspace,
    gamma_functions_1p,
    series_sums,
    series_terms,
)


def max_safe_logit(vocab_size, dtype):
    """Largest z for which alpha_0 * log(alpha_0) (<= V e^z * log(V e^z)) stays finite in `dtype`."""
    log_max = math.log(torch.finfo(dtype).max)
    return log_max - math.log(vocab_size) - math.log(log_max)


# Above this alpha the bracket is recomputed without cancellation; below it the plain difference
# is off by at most ~eps in the bracket, i.e. SERIES_FROM * eps / beta0_hat in the gradient.
SERIES_FROM = 64.0


def _x_trigamma_minus_one(x):
    """s(x) = x psi'(x) - 1 without forming x psi'(x) ~ 1: the asymptotic series
    1/(2x) + 1/(6x^2) - 1/(30x^4) + 1/(42x^6) - 1/(30x^8) (next term 5/(66x^10): relative
    error < 1e-17 for x >= SERIES_FROM), and the direct form below SERIES_FROM."""
    u = 1 / x.clamp(min=SERIES_FROM)
    u2 = u * u
    series = u * (0.5 + u * (1 / 6 + u2 * (-1 / 30 + u2 * (1 / 42 - u2 / 30))))
    return torch.where(x >= SERIES_FROM, series, x * torch.polygamma(1, x) - 1)


def _large(eps):
    """(rows, cols) of the classes with alpha = 1 + eps >= SERIES_FROM."""
    return torch.nonzero(eps >= SERIES_FROM - 1, as_tuple=True)


def _beta_at(rows, cols, indices, beta_top, beta_rest):
    """beta at the gathered classes: the stored event's beta if the class is stored, else beta_rest."""
    hit = indices[rows] == cols.unsqueeze(-1)
    return torch.where(hit.any(-1), (beta_top[rows] * hit).sum(-1), beta_rest[rows])


def _exact_bracket(a, a0, beta, beta0):
    """The bracket at alpha_v = a >= SERIES_FROM without cancellation (see _recompute_large)."""
    return (
        _x_trigamma_minus_one(a)
        - _x_trigamma_minus_one(a0)
        - beta * torch.polygamma(1, a)
        + beta0 * torch.polygamma(1, a0)
    )


def _recompute_large(bracket, eps, alpha0, beta_top, beta_rest, beta0, indices, large=None):
    """Overwrite bracket_v for alpha_v = 1 + eps_v >= SERIES_FROM with a cancellation-free form (in place).

    bracket_v = (alpha_v - beta_v) psi'(alpha_v) - (alpha_0 - beta_0) psi'(alpha_0) is a difference
    of two numbers close to 1 once alpha_v is large (x psi'(x) = 1 + 1/(2x) + ...), and (alpha_v - 1)
    then multiplies the rounding error: at alpha_v = e^30 the float32 top-class gradient was exactly
    0 instead of ~9. With f(x, b) = (x - b) psi'(x) = 1 + s(x) - b psi'(x) the ones cancel exactly:
        bracket_v = s(alpha_v) - s(alpha_0) - beta_v psi'(alpha_v) + beta_0 psi'(alpha_0),
    a sum of terms that are each computed to relative precision. Only a few classes per row are
    that large (alpha_0 >= their sum), so they are gathered rather than recomputed everywhere.
    """
    rows, cols = _large(eps) if large is None else large
    if rows.numel() == 0:
        return
    beta = _beta_at(rows, cols, indices, beta_top, beta_rest)
    bracket[rows, cols] = _exact_bracket(eps[rows, cols] + 1, alpha0[rows], beta, beta0[rows])


# Logits below this are raised to it in the fused pass: e^z stays a normal float32 (subnormal
# arithmetic is many times slower), and 1 + e^z is 1 in float32 either way. The loss changes by
# less than 1e-26 per class, the gradient of such a class is below 1e-26 / beta0_hat instead of 0.
FUSED_MIN_LOGIT = -60.0
# Rows per block: the few float32 buffers of BLOCK_ELEMENTS stay in L2/L3.
BLOCK_ELEMENTS = 1 << 18
# A row with more than this share of its classes at eps >= SERIES_BELOW (a student near its
# initialization) takes the dense path, the exact functions over the whole row; the others take
# the series over the row and the exact functions on their few head and stored classes.
DENSE_SHARE = 1 / 8


class _Target:
    """The per-row target terms of a batch of rows, float64 and float32 copies."""

    def __init__(self, indices, probs, precision, vocab):
        f64 = torch.float64
        probs64, self.precision = probs.to(f64), precision.to(f64)
        n_rest = vocab - indices.size(-1)
        tail = (1 - probs64.sum(-1)).clamp(min=0)
        self.beta_rest = tail / max(n_rest, 1) * self.precision + 1
        self.beta_top = probs64 * self.precision.unsqueeze(-1) + 1
        self.beta0 = self.beta_top.sum(-1) + n_rest * self.beta_rest
        self.log_norm = (
            torch.lgamma(self.beta_top).sum(-1)
            + n_rest * torch.lgamma(self.beta_rest)
            - torch.lgamma(self.beta0)
        )
        self.beta_top32, self.beta_rest32 = self.beta_top.float(), self.beta_rest.float()
        self.beta0_32, self.precision32 = self.beta0.float(), self.precision.float()


def _fused_rkl_and_gradient(logits, indices, probs, precision):
    """Float32 loss rows and their gradient in one pass over the logits, a block of rows at a
    time. Writing the row's class terms of the KL as
        sum_v (alpha_v - beta_v) psi(alpha_v) - lgamma(alpha_v)
            = sum_v A(eps_v) - t P(eps_v) + t gamma - sum_stored (beta_v - beta_rest) psi(alpha_v)
    (t = beta_rest - 1, dirichlet_special's A and P), the classes with eps < SERIES_BELOW, nearly
    all of a trained student's, enter through the power sums of the series, their gradient
    through the trigamma series; the head classes (eps above it) and the stored ones are then
    gathered and their terms replaced by the exact ones (float64 and the cancellation-free
    bracket for alpha >= SERIES_FROM, as in the exact path). Rows with many head classes take
    the dense path (_dense_rows). Row sums and the per-row terms (alpha_0, the target's
    normalizer) are float64. Returns (kl / beta0_hat, d(kl / beta0_hat)/dz)."""
    rows, vocab = logits.shape
    f64 = torch.float64
    # clamped a block at a time (a clamped copy of all the logits is one more pass out of cache)
    z = logits.to(torch.float32)
    bounds = dict(min=FUSED_MIN_LOGIT, max=max_safe_logit(vocab, torch.float32))
    tgt = _Target(indices, probs, precision, vocab)
    t = tgt.beta_rest - 1

    block = max(1, min(rows, BLOCK_ELEMENTS // max(vocab, 1)))
    eps_buf, es_buf, power_buf = (
        torch.empty(block, vocab, dtype=torch.float32, device=z.device) for _ in range(3)
    )
    grad = torch.empty_like(z)
    alpha0 = torch.empty(rows, dtype=f64, device=z.device)
    sums = torch.empty(rows, dtype=f64, device=z.device)
    head_rows, head_cols, dense_rows = [], [], []
    sparse = torch.ones(rows, dtype=torch.bool, device=z.device)
    work = GammaWorkspace((block, vocab), z.device)
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        eps, es, power, g = eps_buf[: r1 - r0], es_buf[: r1 - r0], power_buf[: r1 - r0], grad[r0:r1]
        torch.clamp(z[r0:r1], **bounds, out=eps).exp_()
        alpha0[r0:r1] = eps.sum(-1, dtype=f64) + vocab
        # The head classes enter the series at SERIES_BELOW; their terms are replaced below.
        # A row whose clamped sum says that more than DENSE_SHARE of it may be heads is dense.
        torch.clamp(eps, max=SERIES_BELOW, out=es)
        dense = es.sum(-1) > DENSE_SHARE * vocab * SERIES_BELOW
        if dense.all():
            sparse[r0:r1] = False
            _dense_block(r0, r1, eps, work, indices, tgt, alpha0, sums, grad)
            continue
        sum_a, sum_p = series_sums(es, power, g)
        sums[r0:r1] = sum_a - t[r0:r1] * (sum_p - EULER_GAMMA * vocab)
        # gradient (eps (eps - t) psi'(1 + eps) - eps C) / beta0_hat, C = (alpha_0 - beta_0) psi'(alpha_0)
        c = ((alpha0[r0:r1] - tgt.beta0[r0:r1]) * torch.polygamma(1, alpha0[r0:r1])).float()
        torch.sub(es, t[r0:r1, None].float(), out=power)
        g.mul_(power).sub_(c.unsqueeze(-1)).mul_(es).div_(tgt.precision32[r0:r1, None])
        # head classes that are not stored, of the rows that are not dense
        torch.sub(eps, es, out=power).scatter_(-1, indices[r0:r1], 0.0)
        power[dense] = 0
        with_heads = torch.nonzero(power.amax(-1) > 0)[:, 0]
        if with_heads.numel():
            found = torch.nonzero(power[with_heads])
            head_rows.append(with_heads[found[:, 0]] + r0)
            head_cols.append(found[:, 1])
        dense_rows.append(torch.nonzero(dense)[:, 0] + r0)
    if head_rows:
        head_rows, head_cols = torch.cat(head_rows), torch.cat(head_cols)
    else:
        head_rows = head_cols = indices.new_empty(0)
    for r in torch.cat(dense_rows).tolist() if dense_rows else []:
        sparse[r] = False
        eps = eps_buf[:1]
        torch.clamp(z[r : r + 1], **bounds, out=eps).exp_()
        _dense_block(r, r + 1, eps, work, indices, tgt, alpha0, sums, grad)
    sparse_rows = torch.nonzero(sparse)[:, 0]
    # the head classes and the stored classes of the rows that took the series
    stored = indices.size(-1)
    sp_rows = torch.cat([head_rows, sparse_rows.repeat_interleave(stored)])
    sp_cols = torch.cat([head_cols, indices[sparse_rows].reshape(-1)])
    beta = torch.cat([tgt.beta_rest[head_rows], tgt.beta_top[sparse_rows].reshape(-1)])
    _exact_classes(sp_rows, sp_cols, beta, z, bounds, tgt, t, alpha0, sums, grad)
    kl = torch.lgamma(alpha0) + tgt.log_norm + sums - (alpha0 - tgt.beta0) * torch.digamma(alpha0)
    return (kl / tgt.precision).float(), grad


def _exact_classes(rows, cols, beta, z, bounds, tgt, t, alpha0, sums, grad):
    """Replace the series terms of the gathered classes (rows, cols) with target beta by the exact
    ones: the loss terms in `sums`, the gradient in `grad` (both in place)."""
    if rows.numel() == 0:
        return
    eps = torch.exp(z[rows, cols].clamp(**bounds))
    lg, dg, tg = gamma_functions_1p(eps)
    beta32 = beta.float()
    terms = ((eps + 1 - beta32) * dg - lg).double()
    large = eps >= SERIES_FROM - 1
    a = eps[large].double() + 1
    terms[large] = (a - beta[large]) * torch.digamma(a) - torch.lgamma(a)
    # what the series put in for them (at eps clamped to SERIES_BELOW)
    series_a, series_p = series_terms(eps.clamp(max=SERIES_BELOW))
    t_row = t[rows]
    sums.index_add_(0, rows, terms - series_a + t_row * (series_p - EULER_GAMMA))
    a0 = alpha0[rows].float()
    c = ((alpha0 - tgt.beta0) * torch.polygamma(1, alpha0)).float()[rows]
    bracket = (eps + 1 - beta32) * tg - c
    bracket[large] = _exact_bracket(
        eps[large] + 1, a0[large], beta32[large], tgt.beta0_32[rows][large]
    )
    grad[rows, cols] = eps * bracket / tgt.precision32[rows]


def _dense_block(r0, r1, eps, work, indices, tgt, alpha0, sums, grad):
    """The exact functions over every class of rows r0..r1 (eps = exp(z) of them), written into
    sums and grad."""
    f64 = torch.float64
    g = grad[r0:r1]
    idx, b, b_top = indices[r0:r1], tgt.beta_rest32[r0:r1, None], tgt.beta_top32[r0:r1]
    lg, dg, tg = work.compute(eps)
    # sum_v (alpha_v - beta_v) psi(alpha_v) - lgamma(alpha_v), beta = beta_rest, in g for now.
    # The large classes' terms are each about alpha_0 log alpha_0 and cancel against the
    # alpha_0 terms: they are left out here and added in float64.
    large = _large(eps)
    torch.add(eps, 1 - b, out=g).mul_(dg).sub_(lg)
    g[large] = 0
    dg[large] = 0
    row_sums = g.sum(-1, dtype=f64)
    row_sums -= ((b_top - b) * dg.gather(-1, idx)).sum(-1, dtype=f64)
    if large[0].numel():
        a = eps[large].to(f64) + 1
        beta = _beta_at(*large, idx, tgt.beta_top[r0:r1], tgt.beta_rest[r0:r1])
        row_sums.index_add_(0, large[0], (a - beta) * torch.digamma(a) - torch.lgamma(a))
    sums[r0:r1] = row_sums
    # gradient bracket (alpha_v - beta_v) psi'(alpha_v) - (alpha_0 - beta_0) psi'(alpha_0)
    a0 = alpha0[r0:r1]
    last = ((a0 - tgt.beta0[r0:r1]) * torch.polygamma(1, a0)).float()
    torch.add(eps, 1 - b, out=g).mul_(tg)
    g.scatter_add_(-1, idx, (b - b_top) * tg.gather(-1, idx))
    g.sub_(last.unsqueeze(-1))
    _recompute_large(
        g, eps, a0.float(), b_top, tgt.beta_rest32[r0:r1], tgt.beta0_32[r0:r1], idx, large
    )
    g.mul_(eps).div_(tgt.precision32[r0:r1, None])
