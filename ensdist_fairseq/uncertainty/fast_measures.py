"""The same measures as measures.py, with fewer passes over the vocabulary (pure torch).

measures.py writes every knowledge measure as a sum of terms that are non-negative as computed:
exact in any dtype, but ~20 element-wise passes over (K ×) positions × V, plus a digamma per
class (~140 ns each on a CPU). Here the sums are formed directly, in float64:

Ensemble:  total = −Σ P̄ ln P̄,  data = −(1/K) Σ_k Σ P_k ln P_k,  cross = Σ_v P̄_v (1/K) Σ_k ln P_k,v
           mi = total − data,  rmi = −total − cross,  epkl = mi + rmi.
Dirichlet: with ε_v = e^{z_v} (α_v = 1 + ε_v), S_ψ = Σ α_v ψ(α_v), S_l = Σ α_v ln α_v:
           total = ln α₀ − S_l/α₀,  mi = (S_ψ + V − S_l)/α₀ − φ(α₀),  rmi = (S_l − S_ψ)/α₀ − χ(α₀)
           (φ(x) = ψ(x+1) − ln x = ψ(x) + 1/x − ln x, χ = ln x − ψ: measures.py).
           Classes with ε < 3e-3 (the tail: most classes of a trained student, whose α_v − 1 is
           about π̂_v β̂₀) enter only through the moments Σε^n, n <= 6, of the power series of
           (1+ε)ψ(1+ε) and (1+ε)ln(1+ε) (error < 3e-18 per class); digamma (~140 ns a call on a
           CPU) runs on the other classes only.
           That is the self-consistent form (expected categorical α/α₀). With the decoding
           predictive p = softmax(z) as the expected categorical (the authors' form, measures.py):
           total = H[p], mi = Σ p φ(α) − φ(α₀) − KL(p ‖ α/α₀), rmi = Σ p χ(α) − χ(α₀) + KL(…),
           in float64, with the tail classes through the moments Σ ε^n, n <= 8, of the power
           series of ε φ(1 + ε) and ε χ(1 + ε) (p = ε / Σ e^z), digamma on the head classes only; Σ p φ(α) − φ(α₀) is a sum of
           non-negative terms (φ decreasing, α_v < α₀), so nothing cancels there.
A difference of sums loses precision only when the measure is tiny against the sums: positions
where mi or rmi < 1e-9 × (the size of the sums) are recomputed with measures.py's exact forms,
so the results keep measures.py's guarantee (mi, rmi, epkl >= 0, never clamped). Tests check
both paths against each other (tests/test_uncertainty_measures.py).
"""

import math
from typing import Dict, Optional

import torch

from ensdist_fairseq.uncertainty import measures as M

_TAIL_EPS = 3e-3  # classes with ε = e^z below this enter through the moments Σ ε^n only
_TAIL_DEGREE = 6  # first omitted term ~ ζ(8) ε^7 < 3e-18 per class
_DENSE_HEAD_SHARE = 0.3  # above this share of head classes, digamma densely on every class
_RELATIVE = 1e-9  # float64 inputs
_RELATIVE_FLOAT32 = 1e-5  # ensemble of float32 members (see ensemble_measures)
_RELATIVE_DIRICHLET = 1e-6  # Dirichlet: float32 moments (see dirichlet_measures)
_EULER = 0.5772156649015329
# positions at a time: (K ×) rows × V temporaries small enough for malloc to reuse them from its
# heap, where a fresh (K ×) beams × V buffer per pass is mostly page faults
_ROWS = 128


def _tail_coefficients(degree: int):
    """c_n of (1+ε)ψ(1+ε) = Σ c_n ε^n and b_n of (1+ε)ln(1+ε) = Σ b_n ε^n, n = 0..degree.

    ψ(1+ε) = −γ + Σ_{k>=2} (−1)^k ζ(k) ε^(k−1);  ln(1+ε) = Σ_{n>=1} (−1)^(n+1) ε^n / n."""
    zeta = [
        (
            float(
                torch.special.zeta(
                    torch.tensor(float(k), dtype=torch.float64),
                    torch.tensor(1.0, dtype=torch.float64),
                )
            )
            if k >= 2
            else 0.0
        )
        for k in range(degree + 2)
    ]
    a = [-_EULER] + [(-1) ** (n + 1) * zeta[n + 1] for n in range(1, degree + 1)]
    c = [a[0]] + [a[n] + a[n - 1] for n in range(1, degree + 1)]
    b = [0.0, 1.0] + [(-1) ** n / (n * (n - 1)) for n in range(2, degree + 1)]
    return c, b


_PSI_COEF, _LOG_COEF = _tail_coefficients(_TAIL_DEGREE)


def _phi_chi_tail_coefficients(degree: int):
    """Coefficients of φ(1+ε) = ψ(2+ε) − ln(1+ε) and χ(1+ε) = ln(1+ε) − ψ(1+ε) in powers of ε."""
    zeta = [
        float(torch.special.zeta(torch.tensor(float(k), dtype=torch.float64), torch.tensor(1.0)))
        for k in range(2, degree + 2)
    ]
    psi = [-_EULER] + [(-1) ** (n + 1) * zeta[n - 1] for n in range(1, degree + 1)]
    log = [0.0] + [(-1) ** (n + 1) / n for n in range(1, degree + 1)]
    phi = [psi[n] + (-1) ** n - log[n] for n in range(degree + 1)]  # ψ(2+ε) = ψ(1+ε) + 1/(1+ε)
    chi = [log[n] - psi[n] for n in range(degree + 1)]
    return phi, chi


# degree 7 at ε < 3e-3: the first omitted term ~ ζ(9) ε^8 < 1e-20 per class (× p / ε < 1/S)
_PHI_COEF, _CHI_COEF = _phi_chi_tail_coefficients(_TAIL_DEGREE + 1)


def _recompute(values: Dict[str, torch.Tensor], bad: torch.Tensor, exact_fn, *inputs) -> None:
    if bool(bad.any()):
        exact = exact_fn(*(x[..., bad, :] for x in inputs))
        for name, v in exact.items():
            values[name][bad] = v.to(values[name].dtype)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """measures.entropy, bit for bit, with one (..., V) temporary instead of three (on a CPU the
    fresh temporaries, not the arithmetic, dominate): the same products and the same sums in the
    input's dtype. A row with some ln p = −inf gives 0 · (−inf) = NaN here: measures.entropy."""
    h = log_probs.exp().mul_(log_probs).sum(-1).neg_()
    bad = torch.isnan(h)
    if bool(bad.any()):
        h[bad] = M.entropy(log_probs[bad])
    return h


def single_measures(log_probs: torch.Tensor) -> Dict[str, torch.Tensor]:
    """measures.single_measures (the entropy of the predictive), bit for bit."""
    return {"total": entropy(log_probs)}


def ensemble_measures(
    member_log_probs: torch.Tensor,
    log_weights: Optional[torch.Tensor] = None,
    log_mean: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """measures.ensemble_measures for (K, P, V) log-probs (and (K, P) member log-weights, or
    None for uniform ones), float64 results of shape (P,).

    log_mean: ln P̄ = measures.ensemble_log_mean(member_log_probs) if the caller has it already
    (the beam search decodes with it), uniform weights only; it is not recomputed then.

    Element-wise work stays in the input's float32 (a (K, P, V) float64 temporary costs more
    in page faults than the arithmetic); every sum over V accumulates in float64. The sums are
    then good to ~1e-6 (float32 products), so positions where mi or rmi is below 1e-5 × the
    size of the sums are recomputed exactly in float64 (measures.py). _ROWS positions at a time
    (the same values: every position is computed on its own)."""
    n = member_log_probs.size(1)
    parts = [
        _ensemble_block(
            member_log_probs[:, i : i + _ROWS],
            None if log_weights is None else log_weights[:, i : i + _ROWS],
            None if log_mean is None else log_mean[i : i + _ROWS],
        )
        for i in range(0, max(n, 1), _ROWS)
    ]
    return {k: torch.cat([v[k] for v in parts]) for k in parts[0]}


def _ensemble_block(lp, log_weights, log_mean) -> Dict[str, torch.Tensor]:
    neg_entropies = lp.exp().mul_(lp).sum(-1, dtype=torch.float64)  # one (K, P, V) temporary
    if log_weights is None:
        if log_mean is None:
            log_mean = torch.logsumexp(lp, dim=0) - math.log(lp.size(0))
        data = -neg_entropies.mean(0)
    else:
        if log_mean is not None:
            raise ValueError("log_mean is for uniform member weights only")
        log_mean = torch.logsumexp(lp + log_weights.to(lp.dtype).unsqueeze(-1), dim=0)
        data = -(log_weights.double().exp() * neg_entropies).sum(0)
    mean = log_mean.exp()
    neg_total = (mean * log_mean).sum(-1, dtype=torch.float64)
    cross = lp.mean(0).mul_(mean).sum(-1, dtype=torch.float64)  # the same products, in place
    total = -neg_total
    mi, rmi = total - data, neg_total - cross
    values = {"total": total, "data": data, "mi": mi, "rmi": rmi, "epkl": mi + rmi}
    relative = _RELATIVE if lp.dtype == torch.float64 else _RELATIVE_FLOAT32
    scale = relative * (total.abs() + data.abs() + cross.abs() + 1)
    bad = (mi < scale) | (rmi < scale)
    if log_weights is None:
        _recompute(values, bad, lambda x: M.ensemble_measures(x.double()), lp)
    elif bool(bad.any()):
        exact = M.ensemble_measures(lp[:, bad].double(), log_weights[:, bad].double())
        for name, v in exact.items():
            values[name][bad] = v
    values["epkl"] = values["mi"] + values["rmi"]
    return values


def dirichlet_measures(
    logits: torch.Tensor, expected: str = M.DEFAULT_DIRICHLET_PREDICTIVE
) -> Dict[str, torch.Tensor]:
    """measures.dirichlet_measures for (P, V) raw logits and the expected categorical
    `expected` ("softmax" or "mean"), float64 results of shape (P,)."""
    if expected == "mean":
        return _self_consistent(logits)
    if expected == "softmax":
        flat = logits.reshape(-1, logits.size(-1))
        parts = [
            _softmax_expected(flat[i : i + _ROWS]) for i in range(0, max(flat.size(0), 1), _ROWS)
        ]
        return {k: torch.cat([v[k] for v in parts]).view(logits.shape[:-1]) for k in parts[0]}
    return M.dirichlet_measures(logits, expected)  # names it in its error


def _phi_chi(x: torch.Tensor):
    """(measures._phi(x), measures._chi(x)) for x >= 1 with one digamma and one log: ψ(x + 1) =
    ψ(x) + 1/x, and the asymptotic series computed on the classes x >= 10 only (measures.py builds
    both branches over every class, twice)."""
    xs = x.clamp(max=M._ASYMPTOTIC_X)
    psi, log = torch.digamma(xs), torch.log(xs)
    chi = log.sub_(psi)  # ln x − ψ(x)
    phi = xs.reciprocal_().sub_(chi)  # ψ(x) + 1/x − ln x
    big = x >= M._ASYMPTOTIC_X
    if bool(big.any()):
        series = M._chi_series(x[big])
        chi[big] = series
        phi[big] = 1 / x[big] - series
    return phi, chi


def _softmax_expected(logits: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The authors' form (p = softmax(z)): float64, digamma on the head classes only (on every
    class where most of them are in the head)."""
    z = logits.double()
    eps = z.exp()
    head = eps >= _TAIL_EPS
    dense = int(head.sum()) > _DENSE_HEAD_SHARE * head.numel()  # a count: no (P, V) float copy
    log_p = torch.log_softmax(z, dim=-1)
    log_alpha = torch.nn.functional.softplus(z)
    log_alpha0 = torch.logsumexp(log_alpha, dim=-1)
    alpha0 = log_alpha0.exp()
    log_mean = log_alpha - log_alpha0.unsqueeze(-1)
    p = log_p.exp()
    total = -(p * log_p).sum(-1)
    # KL(p ‖ α/α₀) as one float64 sum; where it is tiny against its parts (p close to α/α₀),
    # measures.py's sum of non-negative terms instead, so that rmi >= 0 holds as computed
    kl = (p * (log_p - log_mean)).sum(-1)
    # its parts: total − Σ p ln m = 2 total + kl (no third pass over V)
    small = kl < _RELATIVE * (2 * total + kl + 1)
    if bool(small.any()):
        kl[small] = M.kl_divergence(log_p[small], log_mean[small])
    if dense:  # Σ p φ(α), Σ p χ(α) over every class, α = 1 + ε
        phi, chi = _phi_chi(eps.add_(1))
        p_phi, p_chi = phi.mul_(p).sum(-1), chi.mul_(p).sum(-1)
        return _authors_values(z.size(-1), total, kl, p_phi, p_chi, alpha0)
    # tail classes: Σ_tail p φ(1+ε) = e^{−lse z} Σ_n c_n Σ_tail ε^(n+1), the same moments for χ
    tail_eps = eps.masked_fill_(head, 0.0)
    power = tail_eps.clone()
    inv_s = torch.exp(-torch.logsumexp(z, dim=-1))
    p_phi = torch.zeros_like(total)
    p_chi = torch.zeros_like(total)
    for n in range(len(_PHI_COEF)):
        moment = power.sum(-1)
        p_phi += _PHI_COEF[n] * moment
        p_chi += _CHI_COEF[n] * moment
        if n + 1 < len(_PHI_COEF):
            power.mul_(tail_eps)
    del power, tail_eps
    p_phi, p_chi = p_phi * inv_s, p_chi * inv_s
    if bool(head.any()):  # head classes: exact, summed per row through a dense buffer
        alpha, p_head = z[head].exp() + 1, p[head]
        buf = torch.zeros_like(z)
        phi, chi = _phi_chi(alpha)
        buf[head] = p_head * phi
        p_phi += buf.sum(-1)
        buf[head] = p_head * chi
        p_chi += buf.sum(-1)
    return _authors_values(z.size(-1), total, kl, p_phi, p_chi, alpha0)


def _authors_values(vocab, total, kl, p_phi, p_chi, alpha0) -> Dict[str, torch.Tensor]:
    """The authors' measures from H[p], KL(p ‖ α/α₀), Σ p φ(α), Σ p χ(α) and α₀."""
    mi = p_phi - M._phi(alpha0) - kl
    rmi = p_chi - M._chi(alpha0) + kl
    return {
        "total": total,
        "data": total - mi,
        "mi": mi,
        "rmi": rmi,
        "epkl": (vocab - 1) / alpha0,
    }


def _self_consistent(logits: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The self-consistent form (expected categorical α/α₀).

    ε and its powers stay in the logits' float32 (the moments are summed in float64): a (P, V)
    float64 temporary costs more in page faults than the arithmetic, and float32's relative 6e-8
    on each ε moves the measures by < 1e-9 (they are divided by α₀ >= V)."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    vocab = z.size(-1)
    eps = torch.exp(z)
    head = eps >= _TAIL_EPS
    if int(head.sum()) > _DENSE_HEAD_SHARE * head.numel():
        # Most classes in the head (e.g. a softmax-like student): digamma on every class, densely.
        del eps
        alpha = 1 + z.double().exp()
        alpha0 = alpha.sum(-1)
        s_psi = (alpha * torch.digamma(alpha)).sum(-1)
        s_log = (alpha * torch.log(alpha)).sum(-1)
    else:
        eps.masked_fill_(head, 0.0)  # in place: from here on the tail's ε only
        s_psi = _PSI_COEF[0] * (vocab - head.sum(-1)).double()
        s_log = torch.zeros_like(s_psi)
        power = eps.clone()
        for n in range(1, _TAIL_DEGREE + 1):  # the moments Σ_tail ε^n
            moment = power.sum(-1, dtype=torch.float64)
            if n == 1:  # α₀ = V + Σ ε: the tail's part here, the head's (in float64) below
                alpha0 = vocab + moment
            s_psi = s_psi + _PSI_COEF[n] * moment
            s_log = s_log + _LOG_COEF[n] * moment
            if n < _TAIL_DEGREE:
                power.mul_(eps)
        del power, eps
        if bool(head.any()):  # the head: exact digamma, in float64, on its classes only
            head_eps = z[head].double().exp()
            alpha = 1 + head_eps
            # per-row sums through a dense buffer: index_add over many rows is a slow scatter
            buf = torch.zeros(z.shape, dtype=torch.float64)
            for acc, vals in (
                (0, head_eps),
                (1, alpha * torch.digamma(alpha)),
                (2, alpha * torch.log(alpha)),
            ):
                buf[head] = vals
                row_sums = buf.sum(-1)
                if acc == 0:
                    alpha0 = alpha0 + row_sums
                elif acc == 1:
                    s_psi = s_psi + row_sums
                else:
                    s_log = s_log + row_sums
    total = torch.log(alpha0) - s_log / alpha0
    mi = (s_psi + vocab - s_log) / alpha0 - M._phi(alpha0)
    rmi = (s_log - s_psi) / alpha0 - M._chi(alpha0)
    values = {
        "total": total,
        "data": total - mi,
        "mi": mi,
        "rmi": rmi,
        "epkl": (vocab - 1) / alpha0,
    }
    scale = _RELATIVE_DIRICHLET * (s_psi.abs() + s_log.abs() + vocab) / alpha0
    _recompute(
        values,
        (mi < scale) | (rmi < scale) | ~torch.isfinite(alpha0),
        lambda x: M.dirichlet_measures(x, "mean"),
        z,
    )
    values["data"] = values["total"] - values["mi"]
    return values
