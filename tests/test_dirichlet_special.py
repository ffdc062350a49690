"""dirichlet_special and the fused float32 Proxy-Dirichlet pass against mpmath and float64."""

import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

import ensdist_fairseq.losses.proxy_dirichlet_fused as pd
from ensdist_fairseq.losses import proxy_dirichlet_rkl
from ensdist_fairseq.losses.dirichlet_special import SHIFT_BELOW, gamma_functions_1p

mpmath = pytest.importorskip("mpmath")


def _mp_reference(eps):
    mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
    mp.dps = 30
    out = []
    for e in eps.tolist():
        x = 1 + mp.mpf(e)
        out.append((mp.loggamma(x), mp.psi(0, x), mp.psi(1, x)))
    return [torch.tensor([float(r[k]) for r in out], dtype=torch.float64) for k in range(3)]


# z from a far tail class to an overconfident top class, plus both sides of the regime split
_Z = torch.cat(
    [
        torch.linspace(-60, 70, 261),
        torch.log(torch.tensor([SHIFT_BELOW]) * torch.tensor([0.9999, 1.0, 1.0001])),
    ]
)


def test_gamma_functions_match_mpmath_over_the_whole_range_of_z():
    eps = torch.exp(_Z)
    ref_lg, ref_dg, ref_tg = _mp_reference(eps.double())
    lg, dg, tg = (t.double() for t in gamma_functions_1p(eps))
    # lgamma and digamma: a few float32 ulps of max(1, |value|) (both cross 0 once)
    assert ((lg - ref_lg).abs() / ref_lg.abs().clamp(min=1)).max() < 5e-7
    assert ((dg - ref_dg).abs() / ref_dg.abs().clamp(min=1)).max() < 5e-7
    assert ((tg - ref_tg).abs() / ref_tg).max() < 1e-6


def test_lgamma_of_a_tail_class_keeps_its_relative_precision():
    """lgamma(1 + eps) ~ -0.577 eps for the tail classes: relative, not absolute, accuracy (the
    direct float32 form, and torch.lgamma(1 + eps), lose it as 1 + eps rounds towards 1)."""
    eps = torch.exp(torch.linspace(-60, -2, 59))
    ref_lg, ref_dg, _ = _mp_reference(eps.double())
    lg, dg, _ = (t.double() for t in gamma_functions_1p(eps))
    assert ((lg - ref_lg).abs() / ref_lg.abs()).max() < 1e-5
    assert ((dg - ref_dg).abs() / ref_dg.abs()).max() < 2e-7
    torch_lg = torch.lgamma(1 + eps).double()
    assert ((torch_lg - ref_lg).abs() / ref_lg.abs()).max() > 0.5  # what it replaces


def test_gamma_functions_keep_shape_and_take_zero():
    eps = torch.zeros(2, 3, 4)
    lg, dg, tg = gamma_functions_1p(eps)
    assert lg.shape == (2, 3, 4) and (lg == 0).all()
    torch.testing.assert_close(dg, torch.full_like(dg, -0.5772156649015329))
    torch.testing.assert_close(tg, torch.full_like(tg, torch.pi**2 / 6))


def _reference(logits, indices, probs, precision):
    """float64 torch.distributions on the full target (tail spread uniformly), loss and gradient."""
    vocab = logits.size(-1)
    tail = (1 - probs.sum(-1, keepdim=True)) / (vocab - indices.size(-1))
    target = tail.expand(-1, vocab).clone().scatter(-1, indices, probs)
    z = logits.detach().double().clone().requires_grad_()
    alpha, beta = z.exp() + 1, target * precision.unsqueeze(-1) + 1
    loss = kl_divergence(Dirichlet(alpha), Dirichlet(beta)) / precision
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad


def test_fused_float32_loss_and_gradient_match_float64_from_tail_to_overconfident_rows():
    """Rows of a trained-looking student (tail logits -50..-5, a few large ones) and of one at
    initialization, beta0_hat from 1 to 1e6; every class's gradient to relative precision."""
    g = torch.Generator().manual_seed(4)
    vocab, stored = 1500, 24
    z = torch.empty(6, vocab, dtype=torch.float64)
    z[:3] = -5 - 45 * torch.rand(3, vocab, generator=g, dtype=torch.float64)
    z[3:] = torch.randn(3, vocab, generator=g, dtype=torch.float64)
    z[:, :4] = torch.tensor([[3.0, 6.0, 12.0, 20.0]], dtype=torch.float64)
    z = z.float().double()  # what float32 sees
    probs, indices = torch.softmax(
        torch.randn(6, vocab, generator=g, dtype=torch.float64) * 3, -1
    ).topk(stored)
    probs = probs.float().double()
    precision = torch.tensor([1.0, 1e2, 1e6, 3.0, 1e3, 1e5], dtype=torch.float64)
    ref_loss, ref_grad = _reference(z, indices, probs, precision)
    ours = z.float().requires_grad_()
    loss = proxy_dirichlet_rkl(ours, indices, probs.float(), precision.float())
    loss.sum().backward()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-5, atol=0)
    rel = (ours.grad.double() - ref_grad).abs() / ref_grad.abs().clamp(min=1e-30)
    assert rel.max() < 1e-3, rel.max()
    scale = ref_grad.abs().amax(-1, keepdim=True)
    assert ((ours.grad.double() - ref_grad).abs() / scale).max() < 1e-5


def test_fused_result_does_not_depend_on_the_block_size(monkeypatch):
    g = torch.Generator().manual_seed(5)
    vocab = 300
    z = torch.randn(23, vocab, generator=g) * 3
    probs, indices = torch.softmax(torch.randn(23, vocab, generator=g) * 3, -1).topk(8)
    precision = torch.rand(23, generator=g) * 1e3 + 1
    results = []
    for block_elements in (1 << 18, 7 * vocab, 1):  # one block, 4 blocks (last shorter), per row
        monkeypatch.setattr(pd, "BLOCK_ELEMENTS", block_elements)
        x = z.clone().requires_grad_()
        loss = proxy_dirichlet_rkl(x, indices, probs, precision)
        loss.sum().backward()
        results.append((loss.detach(), x.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_tail_series_match_mpmath_below_their_threshold():
    """A = -lgamma(1+e) + e psi(1+e), P = psi(1+e) + gamma and psi'(1+e) from the series, to
    float32 precision relative to each value, from a far tail class up to SERIES_BELOW."""
    from ensdist_fairseq.losses.dirichlet_special import SERIES_BELOW, series_sums, series_terms

    eps = torch.cat([torch.exp(torch.linspace(-60, -4, 57)), torch.tensor([SERIES_BELOW])])
    _, _, ref_tg = _mp_reference(eps.double())
    with mpmath.workdps(80):  # A cancels to O(eps^2): keep the digits
        ea = [mpmath.mpf(e) for e in eps.double().tolist()]
        ref_a = [float(-mpmath.loggamma(1 + e) + e * mpmath.psi(0, 1 + e)) for e in ea]
        ref_p = [float(mpmath.psi(0, 1 + e) + mpmath.euler) for e in ea]
    ref_a, ref_p = (torch.tensor(r, dtype=torch.float64) for r in (ref_a, ref_p))
    a, p = series_terms(eps)
    assert ((a - ref_a).abs() / ref_a).max() < 1e-6
    assert ((p - ref_p).abs() / ref_p).max() < 1e-6
    tri = torch.empty(1, eps.numel())
    sum_a, sum_p = series_sums(eps[None], torch.empty(1, eps.numel()), tri)
    assert ((tri[0].double() - ref_tg).abs() / ref_tg).max() < 3e-7
    torch.testing.assert_close(sum_a[0], ref_a.sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(sum_p[0], ref_p.sum(), rtol=1e-6, atol=0)


def test_series_rows_do_not_depend_on_the_block_size(monkeypatch):
    """Rows of a trained-looking student (series path, heads and stored classes gathered) mixed
    with rows of one at initialization (dense path): the same bits whatever the blocks."""
    g = torch.Generator().manual_seed(6)
    vocab = 300
    z = torch.randn(23, vocab, generator=g) * 3 - 12
    z[::5] = torch.randn(5, vocab, generator=g)
    z[:, :3] = torch.tensor([2.0, 9.0, 20.0])
    probs, indices = torch.softmax(torch.randn(23, vocab, generator=g) * 3, -1).topk(8)
    precision = torch.rand(23, generator=g) * 1e3 + 1
    results = []
    for block_elements in (1 << 18, 7 * vocab, 1):
        monkeypatch.setattr(pd, "BLOCK_ELEMENTS", block_elements)
        x = z.clone().requires_grad_()
        loss = proxy_dirichlet_rkl(x, indices, probs, precision)
        loss.sum().backward()
        results.append((loss.detach(), x.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])
    ref_loss, ref_grad = _reference(z.double(), indices, probs.double(), precision.double())
    torch.testing.assert_close(results[0][0].double(), ref_loss, rtol=2e-5, atol=0)
    scale = ref_grad.abs().amax(-1, keepdim=True)
    assert ((results[0][1].double() - ref_grad).abs() / scale).max() < 1e-5
