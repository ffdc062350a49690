"""lgamma, digamma and trigamma of 1 + eps (eps = e^z >= 0) in float32 as plain elementwise
arithmetic: the pieces of the Dirichlet losses and uncertainty measures.

torch's CPU kernels for these three are scalar loops, each several times the cost of a whole
log_softmax over the vocabulary. Here all three come out of one evaluation that shares its
pieces (two log1p, six reciprocals, short polynomials), written as in-place operations on
buffers that are allocated once (`GammaWorkspace`): a caller working through the vocabulary a
block of rows at a time stays in cache and allocates nothing per block (a fresh tensor of a few
hundred kilobytes costs more in page faults than the arithmetic done on it).

Two regimes, split at eps = SHIFT_BELOW; both are evaluated and masked, never branched on:

- eps < SHIFT_BELOW: shift by six to y = 7 + eps, where the asymptotic (Stirling) series are
  accurate to float32, and undo the shift exactly with the six terms 1/(j + eps), j = 1..6. The
  results are written as differences from their values at eps = 0 (lgamma(1) = 0,
  digamma(1) = -gamma) in which every term is O(eps): the direct float32 form cancels O(1)
  constants and leaves an absolute error near 1e-6 on lgamma(1 + eps) ~ -0.58 eps, which is what
  every tail class of a confident student is. (torch's float32 lgamma returns 0 there: 1 + eps
  rounds to 1 for eps < 6e-8.)
- eps >= SHIFT_BELOW: the asymptotic series at x = 1 + eps >= 9 itself.

eps must be normal (>= ~1e-38; callers clamp z from below) and finite. The error against mpmath
over the whole range is tested in tests/test_dirichlet_special.py.
"""

import math

import torch

SHIFT_BELOW = 8.0
EULER_GAMMA = 0.5772156649015329
LN7 = math.log(7.0)
HALF_LN_2PI = 0.5 * math.log(2 * math.pi)
_U0 = 1.0 / 7.0
# Below this 1/y the series terms past the leading one are under float32 resolution; clamping
# keeps their powers out of the (slow) subnormal range.
_U_FLOOR = 2.0**-24

# lgamma(y) = (y - 1/2) ln y - y + ln(2 pi)/2 + s(u), u = 1/y; truncation < 1e-9 at y >= 7
_S = [0.0, 1 / 12, 0.0, -1 / 360, 0.0, 1 / 1260]
# digamma(y) = ln y - u/2 - t(u)
_T = [0.0, 0.0, 1 / 12, 0.0, -1 / 120, 0.0, 1 / 252]
# trigamma(y) = u (1 + u q(u)), q's coefficients
_Q = [1 / 2, 1 / 6, 0.0, -1 / 30, 0.0, 1 / 42]


def _divided_difference(coeffs, u0):
    """Coefficients of g(u) = (p(u) - p(u0)) / (u - u0) for p(u) = sum_k coeffs[k] u^k."""
    n = len(coeffs)
    return [sum(coeffs[k] * u0 ** (k - 1 - i) for k in range(i + 1, n)) for i in range(n - 1)]


def _shift_product(n):
    """Coefficients of prod_{j=1..n} (1 + e/j) - 1, of e^0..e^n (the first is 0)."""
    poly = [1.0]
    for j in range(1, n + 1):
        poly = [a + (poly[i - 1] / j if i else 0.0) for i, a in enumerate(poly + [0.0])]
    poly[0] = 0.0
    return poly


_S_DIFF = _divided_difference(_S, _U0)
_T_DIFF = _divided_difference(_T, _U0)
_SHIFT = _shift_product(6)


def _horner(out, x, coeffs):
    """out = sum_k coeffs[k] x^k, in place."""
    out.fill_(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out.mul_(x)
        if c:
            out.add_(c)
    return out


class GammaWorkspace:
    """Buffers for `compute` on float32 blocks of one shape; reuse it across blocks."""

    def __init__(self, shape, device=None):
        def buf():
            return torch.empty(shape, dtype=torch.float32, device=device)

        self.shape = tuple(shape)
        self.lgamma, self.digamma, self.trigamma = buf(), buf(), buf()
        self._small, self._big, self._es, self._u, self._w = buf(), buf(), buf(), buf(), buf()
        self._log_y, self._d, self._p, self._r = buf(), buf(), buf(), buf()

    def compute(self, eps):
        """(lgamma, digamma, trigamma) of 1 + eps into this workspace's buffers (overwritten by
        the next call). eps: float32 of the workspace's shape (a block may be shorter in dim 0)."""
        n = eps.size(0)
        lg, dg, tg = self.lgamma[:n], self.digamma[:n], self.trigamma[:n]
        small, big, es, u, w = (
            self._small[:n],
            self._big[:n],
            self._es[:n],
            self._u[:n],
            self._w[:n],
        )
        log_y, d, p, r = self._log_y[:n], self._d[:n], self._p[:n], self._r[:n]

        torch.lt(eps, SHIFT_BELOW, out=small)
        torch.sub(1.0, small, out=big)
        torch.mul(eps, small, out=es)
        # y = 1 + eps (+ 6 when shifted), kept in lg until lgamma's first term is formed
        torch.add(eps, small, alpha=6.0, out=lg).add_(1.0)
        # trigamma's leading factor 1/y exactly; the series below take u clamped
        torch.reciprocal(lg, out=tg)
        torch.clamp(tg, min=_U_FLOOR, out=u)
        # ln(y / 7) when shifted, ln(1 + eps) otherwise
        torch.mul(small, -6.0 / 7.0, out=log_y).add_(1.0).mul_(eps).log1p_()
        # u - 1/7 = -eps u / 7 when shifted (0 otherwise), free of cancellation
        torch.mul(es, u, out=d).mul_(-_U0)
        torch.mul(u, u, out=w)

        # lgamma: (y - 1/2) ln y, then the shifted regime's O(eps) terms (all 0 when not shifted)
        lg.sub_(0.5).mul_(log_y)
        lg.add_(es, alpha=LN7 - 1.0)
        lg.addcmul_(d, _horner(p, u, _S_DIFF))
        lg.sub_(_horner(p, es, _SHIFT).log1p_())
        # ... and the unshifted regime's: - x + ln(2 pi)/2 + s(u)
        _horner(p, w, _S[1::2]).mul_(u).add_(HALF_LN_2PI - 1.0).sub_(eps)
        lg.addcmul_(big, p)

        # digamma
        torch.sub(log_y, small, alpha=EULER_GAMMA, out=dg)
        _horner(p, u, _T_DIFF).add_(0.5)
        dg.addcmul_(d, p, value=-1.0)
        _horner(p, w, _T[0::2]).addcmul_(u, big, value=0.5)
        dg.addcmul_(big, p, value=-1.0)

        # trigamma = tri(u) + sum_j 1/(j + eps)^2 when shifted; digamma's undo sum alongside
        tg.mul_(_horner(p, u, _Q).mul_(u).add_(1.0))
        p.zero_()
        for j in range(1, 7):
            torch.add(es, float(j), out=r).reciprocal_()
            p.add_(r, alpha=1.0 / j)
            r.mul_(small)
            tg.addcmul_(r, r)
        # digamma(1 + eps) - digamma(7 + eps) + (digamma(7) - digamma(1)) = eps sum_j 1/(j(j + eps))
        dg.addcmul_(es, p)
        return lg, dg, tg


def gamma_functions_1p(eps):
    """(lgamma, digamma, trigamma) of 1 + eps for a float32 tensor eps >= 0 (new tensors)."""
    eps = eps.contiguous()
    flat = eps.reshape(-1, eps.size(-1)) if eps.dim() else eps.reshape(1, 1)
    work = GammaWorkspace(flat.shape, flat.device)
    return tuple(t.reshape(eps.shape) for t in work.compute(flat))


# The tail classes' series. For eps below SERIES_BELOW the Taylor series at eps = 0 (radius 1,
# coefficients zeta(k) ~ 1) truncated after eps^SERIES_TERMS terms are below float32 resolution
# relative to their leading term. With A(eps) = -lgamma(1 + eps) + eps psi(1 + eps) and
# P(eps) = psi(1 + eps) + gamma (both 0 at eps = 0):
#   A = sum_k (-1)^k zeta(k) (k - 1)/k eps^k,  P = sum_k (-1)^k zeta(k) eps^(k-1),
#   psi'(1 + eps) = sum_k (-1)^k (k - 1) zeta(k) eps^(k-2),  k = 2..SERIES_TERMS.
# A and P enter a loss only through row sums, so they are combined from the power sums
# sum_v eps_v^j: one multiply and one reduction per power, shared between the two.
SERIES_BELOW = 2.0**-5
SERIES_TERMS = 7
_ZETA = {
    2: math.pi**2 / 6,
    3: 1.2020569031595942,
    4: math.pi**4 / 90,
    5: 1.0369277551433699,
    6: math.pi**6 / 945,
    7: 1.0083492773819228,
}
_KS = range(2, SERIES_TERMS + 1)
A_COEFFS = {k: (-1) ** k * _ZETA[k] * (k - 1) / k for k in _KS}  # of eps^k
P_COEFFS = {k - 1: (-1) ** k * _ZETA[k] for k in _KS}  # of eps^(k-1)
TRIGAMMA_COEFFS = [(-1) ** k * (k - 1) * _ZETA[k] for k in _KS]  # of eps^(k-2)


def series_sums(eps, power, trigamma):
    """For float32 eps (rows, V) with every entry <= SERIES_BELOW: the row sums of A(eps) and
    P(eps) in float64, and psi'(1 + eps) written into `trigamma`. `power` is a scratch buffer of
    eps's shape; both are overwritten."""
    # float32 reductions (pairwise, of positive terms) are accurate to a few ulps
    sums = [None, eps.sum(-1).double()]
    torch.mul(eps, eps, out=power)
    sums.append(power.sum(-1).double())
    for _ in range(3, SERIES_TERMS + 1):
        power.mul_(eps)
        sums.append(power.sum(-1).double())
    sum_a = sum(c * sums[j] for j, c in A_COEFFS.items())
    sum_p = sum(c * sums[j] for j, c in P_COEFFS.items())
    _horner(trigamma, eps, TRIGAMMA_COEFFS)
    return sum_a, sum_p


def series_terms(eps):
    """A(eps), P(eps) elementwise in float64 for eps <= SERIES_BELOW (what series_sums sums)."""
    eps = eps.double()
    a = sum(c * eps**j for j, c in A_COEFFS.items())
    p = sum(c * eps**j for j, c in P_COEFFS.items())
    return a, p
