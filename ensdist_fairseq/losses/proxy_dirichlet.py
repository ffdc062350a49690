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

Float32 (and half) logits take the fused pass: loss and gradient together in the forward, a block
of rows at a time, with lgamma/digamma/trigamma from dirichlet_special instead of torch's scalar
kernels; the backward only scales the saved gradient. The classes of a trained student's tail
(e^z < SERIES_BELOW) enter only through the power sums of short series; the exact functions are
evaluated on the gathered head and stored classes, or over whole rows that have many heads. The few classes with alpha >= SERIES_FROM
get their loss terms in float64 (each is ~alpha_0 log alpha_0 and cancels against the alpha_0
terms) and the cancellation-free gradient bracket. Float64 logits keep torch's special functions
and serve as the reference.
"""

import math

import torch
import torch.nn.functional as F

from ensdist_fairseq.losses.dirichlet_special import (
    EULER_GAMMA,
    SERIES_BELOW,
    GammaWorkspace,
    gamma_functions_1p,
    series_sums,
    series_terms,
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


def max_safe_logit(vocab_size, dtype):
    """Largest z for which alpha_0 * log(alpha_0) (<= V e^z * log(V e^z)) stays finite in `dtype`."""
    log_max = math.log(torch.finfo(dtype).max)
    return log_max - math.log(vocab_size) - math.log(log_max)


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


# The float32 fused pass; False computes float32 with torch's special functions as float64 does
# (kept for benchmarks/bench_criterion.py, which times both).
FUSED = True
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
