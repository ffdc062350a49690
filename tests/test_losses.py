"""The loss math against independent computations (torch.distributions, explicit formulas, brute force)."""

import math

import pytest
import torch
from torch.distributions import Categorical, Dirichlet, kl_divergence

from ensdist_fairseq.losses import (
    adaptive_alpha,
    dirichlet_log_predictive,
    ensemble_mean_kd,
    proxy_dirichlet_rkl,
    teacher_distribution,
    x_divergence,
)

torch.manual_seed(0)


def _teacher(rows, vocab, stored, sharpness=2.0, dtype=torch.float64):
    full = torch.softmax(torch.randn(rows, vocab, dtype=dtype) * sharpness, -1)
    probs, indices = full.topk(stored, dim=-1)
    return full, indices, probs


# --- ensemble-mean KD -------------------------------------------------------------------------


def test_mean_kd_with_full_vocabulary_is_the_categorical_kl():
    full, indices, probs = _teacher(5, 30, 30)
    lprobs = torch.log_softmax(torch.randn(5, 30, dtype=torch.float64), -1)
    expected = kl_divergence(Categorical(probs=full), Categorical(logits=lprobs))
    got = ensemble_mean_kd(lprobs, indices, probs, truncation="none")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_mean_kd_tail_policy_at_temperature_matches_brute_force():
    vocab, stored, temp = 20, 6, 2.0
    full, indices, probs = _teacher(4, vocab, stored)
    logits = torch.randn(4, vocab, dtype=torch.float64)
    # Brute force, one row at a time: events = stored + one tail event, tempered, tail dropped.
    for r in range(4):
        events = torch.cat([probs[r], (1 - probs[r].sum()).reshape(1)])
        tempered = events ** (1 / temp) / (events ** (1 / temp)).sum()
        q = tempered[:stored]
        student = torch.softmax(logits[r] / temp, -1)[indices[r]]
        expected = temp**2 * sum(q[i] * math.log(q[i] / student[i]) for i in range(stored))
        got = ensemble_mean_kd(
            torch.log_softmax(logits[r : r + 1], -1),
            indices[r : r + 1],
            probs[r : r + 1],
            temp,
            "tail",
        )
        assert got.item() == pytest.approx(float(expected), rel=1e-5)


def test_mean_kd_renormalize_policy_is_kl_to_renormalized_top_events():
    vocab, stored = 25, 5
    full, indices, probs = _teacher(3, vocab, stored)
    lprobs = torch.log_softmax(torch.randn(3, vocab, dtype=torch.float64), -1)
    q = probs / probs.sum(-1, keepdim=True)
    expected = (q * (q.log() - lprobs.gather(-1, indices))).sum(-1)
    got = ensemble_mean_kd(lprobs, indices, probs, truncation="renormalize")
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(
        teacher_distribution(probs, 1.0, "renormalize")[0].sum(-1),
        torch.ones(3, dtype=torch.float32),
    )


def test_mean_kd_pad_rows_and_peaked_inputs_stay_finite():
    vocab = 12
    indices = torch.zeros(3, 4, dtype=torch.long)
    probs = torch.zeros(3, 4)
    probs[1, 0] = 1.0  # one-hot teacher
    lprobs = torch.log_softmax(
        torch.tensor([[1e4] + [-1e4] * (vocab - 1)] * 3), -1
    ).requires_grad_()
    for policy in ("none", "renormalize", "tail"):
        loss = ensemble_mean_kd(lprobs, indices, probs, truncation=policy)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(lprobs.grad).all()
        assert loss[0] == 0 and loss[2] == 0  # pad rows (no stored mass) contribute nothing
        lprobs.grad = None


def test_mean_kd_rejects_impossible_settings():
    _, indices, probs = _teacher(2, 10, 3)
    lprobs = torch.log_softmax(torch.randn(2, 10), -1)
    with pytest.raises(ValueError, match="temperature"):
        ensemble_mean_kd(lprobs, indices, probs, temperature=0.0)
    with pytest.raises(ValueError, match="'none'"):
        ensemble_mean_kd(lprobs, indices, probs, temperature=2.0, truncation="none")


# --- Proxy-Dirichlet reverse KL ----------------------------------------------------------------


def _reference_rkl(logits, target_probs, precision):
    alpha = logits.exp() + 1
    beta = target_probs * precision.unsqueeze(-1) + 1
    return kl_divergence(Dirichlet(alpha), Dirichlet(beta)) / precision


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_rkl_value_and_gradient_match_torch_distributions(dtype, tol):
    full, indices, probs = _teacher(6, 40, 40)
    precision = torch.tensor([2.0, 30.0, 1e3, 1e4, 1e5, 1e6], dtype=torch.float64)
    logits = (torch.randn(6, 40, dtype=torch.float64) * 3).requires_grad_()
    expected = _reference_rkl(logits, full, precision)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)

    ours = logits.detach().to(dtype).requires_grad_()
    got = proxy_dirichlet_rkl(ours, indices, probs.to(dtype), precision.to(dtype))
    got.sum().backward()
    torch.testing.assert_close(got.double(), expected.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(ours.grad.double(), expected_grad, rtol=tol, atol=tol)


def test_rkl_tail_mass_is_spread_uniformly_over_unstored_classes():
    vocab, stored = 30, 7
    full, indices, probs = _teacher(4, vocab, stored)
    precision = torch.tensor([5.0, 50.0, 500.0, 5000.0], dtype=torch.float64)
    tail = (1 - probs.sum(-1, keepdim=True)) / (vocab - stored)
    target = tail.expand(4, vocab).clone().scatter(-1, indices, probs)
    logits = torch.randn(4, vocab, dtype=torch.float64, requires_grad=True)
    expected = _reference_rkl(logits, target, precision)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    ours = logits.detach().requires_grad_()
    got = proxy_dirichlet_rkl(ours, indices, probs, precision)
    got.sum().backward()
    torch.testing.assert_close(got, expected.detach())
    torch.testing.assert_close(ours.grad, expected_grad)


def test_rkl_precision_limit_caps_the_target():
    full, indices, probs = _teacher(2, 10, 10)
    logits = torch.randn(2, 10, dtype=torch.float64)
    capped = proxy_dirichlet_rkl(
        logits, indices, probs, torch.tensor([float("inf"), 1e9], dtype=torch.float64), 100.0
    )
    expected = _reference_rkl(logits, full, torch.tensor([100.0, 100.0], dtype=torch.float64))
    torch.testing.assert_close(capped, expected)
    with pytest.raises(ValueError, match="precision limit"):
        proxy_dirichlet_rkl(logits, indices, probs, torch.ones(2, dtype=torch.float64), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rkl_extremely_peaked_student_and_teacher_stay_finite(dtype):
    vocab = 32000
    logits = torch.full((3, vocab), -1e4)
    logits[0, 0] = 1e4  # saturated student
    logits[1, 5] = 60.0  # overflows exp in float32 without the clamp
    logits = logits.to(dtype).requires_grad_()
    probs = torch.zeros(3, 4)
    probs[:, 0] = 1.0  # one-hot teacher
    indices = torch.arange(4).expand(3, 4)
    precision = torch.tensor([float("inf"), 1e30, 1.0])
    loss = proxy_dirichlet_rkl(logits, indices, probs, precision, precision_limit=1e6)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad.float()).all()


def _gradient_ratio(grad):
    """rho of Ryabinin et al. 2021, eq. 15: class 1 against the mean absolute tail gradient."""
    k = grad.numel()
    return (k - 1) / k * grad[0].abs() / grad[1:].abs().sum()


def test_gradient_ratio_grows_and_stabilises_for_rkl_and_falls_for_forward_kl_and_nll():
    """Figure 1 of Ryabinin et al. 2021 at initialization (uniform student, z = 0 so alpha = 2).

    Target pi = [1 - eps, eps/(K-1), ...], beta0 = 1e5 (the paper's values). The forward KL and the
    Dirichlet NLL are computed with torch.distributions in the same parametrization.
    """
    eps, precision = 1e-4, torch.tensor(1e5, dtype=torch.float64)
    rkl, fkl, nll = [], [], []
    for k in [10, 100, 1000, 10000]:
        target = torch.tensor([1 - eps] + [eps / (k - 1)] * (k - 1), dtype=torch.float64)
        probs, indices = target.sort(descending=True)
        z = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        proxy_dirichlet_rkl(z[None], indices[None], probs[None], precision[None]).sum().backward()
        rkl.append(_gradient_ratio(z.grad).item())
        for ratios, loss_of in (
            (fkl, lambda a: kl_divergence(Dirichlet(target * precision + 1), Dirichlet(a))),
            (nll, lambda a: -Dirichlet(a).log_prob(target)),
        ):
            z = torch.zeros(k, dtype=torch.float64, requires_grad=True)
            loss_of(z.exp() + 1).backward()
            ratios.append(_gradient_ratio(z.grad).item())
    assert rkl[1] > rkl[0] and all(
        abs(r / rkl[1] - 1) < 0.1 for r in rkl[1:]
    ), rkl  # grows, then flat
    assert min(rkl) > 1, rkl  # the high-probability class dominates the tail
    for ratios in (fkl, nll):
        assert all(b < a / 3 for a, b in zip(ratios, ratios[1:])), ratios  # keeps falling


def test_dirichlet_predictive_is_alpha_over_alpha0():
    logits = torch.randn(3, 17, dtype=torch.float64) * 5
    alpha = logits.exp() + 1
    torch.testing.assert_close(
        dirichlet_log_predictive(logits).double(),
        (alpha / alpha.sum(-1, keepdim=True)).log(),
        rtol=1e-5,
        atol=1e-6,
    )
    assert torch.isfinite(dirichlet_log_predictive(torch.tensor([[1e4, -1e4, 0.0]]))).all()


# --- intra-distillation -------------------------------------------------------------------------


def test_x_divergence_is_mean_symmetric_kl_to_the_pass_average():
    passes = torch.log_softmax(torch.randn(3, 4, 11, dtype=torch.float64), -1)
    probs = passes.exp()
    mean = probs.mean(0)
    expected = (
        sum(
            kl_divergence(Categorical(probs=p), Categorical(probs=mean))
            + kl_divergence(Categorical(probs=mean), Categorical(probs=p))
            for p in probs
        )
        / 3
    )
    torch.testing.assert_close(x_divergence(passes).double(), expected, rtol=1e-5, atol=1e-6)


def test_x_divergence_is_finite_when_probabilities_underflow():
    lprobs = torch.log_softmax(
        torch.tensor([[[200.0, -200.0, 0.0]], [[-200.0, 200.0, 0.0]]]), -1
    ).requires_grad_()
    x = x_divergence(lprobs)
    x.sum().backward()
    assert torch.isfinite(x).all() and torch.isfinite(lprobs.grad).all() and x.item() > 100


def test_adaptive_alpha_hits_one_at_n_over_q_and_alpha_at_n_over_p():
    n, p, q, alpha = 50000, 5.0, 10.0, 5.0
    assert adaptive_alpha(alpha, n / q, n, p, q) == pytest.approx(1.0)
    assert adaptive_alpha(alpha, n / p, n, p, q) == pytest.approx(alpha)
    assert adaptive_alpha(alpha, n, n, p, q) == alpha
    assert adaptive_alpha(alpha, 0, n, p, q) == 0.0
    assert adaptive_alpha(0.5, 10, n, p, q) == 0.5  # alpha <= 1: constant
    values = [adaptive_alpha(alpha, t, n, p, q) for t in range(0, 12000, 1000)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="p < q"):
        adaptive_alpha(alpha, 10, n, 10.0, 5.0)
    with pytest.raises(ValueError, match="max_update"):
        adaptive_alpha(alpha, 10, 0, p, q)


# --- numerical edges against float64 / high-precision references -----------------------------------


def _mp_rkl_gradient(z, indices, probs, precision, classes):
    """dKL/dz_v / beta0_hat at 40 digits (mpmath), from the closed form
    (alpha_v - 1)[(alpha_v - beta_v) psi'(alpha_v) - (alpha_0 - beta_0) psi'(alpha_0)] / beta0_hat.
    """
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
    mp.dps = 40
    vocab, stored = z.numel(), indices.numel()
    alpha = [mp.e ** mp.mpf(float(v)) + 1 for v in z]
    tail = (1 - mp.fsum(mp.mpf(float(p)) for p in probs)) / (vocab - stored)
    beta = [tail * precision + 1] * vocab
    for i, p in zip(indices.tolist(), probs.tolist()):
        beta[i] = mp.mpf(p) * precision + 1
    a0, b0 = mp.fsum(alpha), mp.fsum(beta)
    last = (a0 - b0) * mp.psi(1, a0)
    return [
        float((alpha[v] - 1) * ((alpha[v] - beta[v]) * mp.psi(1, alpha[v]) - last) / precision)
        for v in classes
    ]


@pytest.mark.parametrize("top_logit", [10.0, 25.0, 30.0, 50.0, 70.0])
def test_rkl_float32_gradient_of_an_overconfident_student_matches_high_precision(top_logit):
    """V = 8000, beta0_hat = 1e3: the top-class gradient was exactly 0 at z = 30 (8.58 at z = 25)
    instead of ~9, the bracket of the closed form cancelling in float32."""
    g = torch.Generator().manual_seed(0)
    vocab, stored, precision = 8000, 64, 1e3
    z = torch.randn(1, vocab, generator=g)
    z[0, 0] = top_logit
    probs, indices = torch.softmax(
        torch.randn(1, vocab, generator=g, dtype=torch.float64) * 3, -1
    ).topk(stored)
    probs = probs.float()
    logits = z.clone().requires_grad_()
    proxy_dirichlet_rkl(logits, indices, probs, torch.tensor([precision])).sum().backward()
    classes = [0, int(indices[0, 0]), int(indices[0, 5]), 1, 2, 3]
    expected = _mp_rkl_gradient(z[0].double(), indices[0], probs[0].double(), precision, classes)
    got = logits.grad[0, classes].double()
    torch.testing.assert_close(
        got, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-7
    )
    assert top_logit < 25 or got[0] > 8.9  # the pull back towards the target survives


def test_rkl_float32_gradient_over_the_whole_vocabulary_matches_float64():
    """Rows from calibrated to overconfident, beta0_hat from 1 to 1e6: float32 against float64."""
    g = torch.Generator().manual_seed(1)
    vocab, stored = 2000, 32
    z = torch.randn(6, vocab, generator=g, dtype=torch.float64) * 2
    z[:, 0] = torch.tensor([0.0, 5.0, 10.0, 15.0, 20.0, 24.0], dtype=torch.float64)
    probs, indices = torch.softmax(
        torch.randn(6, vocab, generator=g, dtype=torch.float64) * 3, -1
    ).topk(stored)
    probs = probs.float().double()  # what float32 sees
    precision = torch.tensor([1.0, 30.0, 1e3, 1e4, 1e5, 1e6], dtype=torch.float64)
    ref = z.clone().requires_grad_()
    proxy_dirichlet_rkl(ref, indices, probs, precision).sum().backward()
    ours = z.float().requires_grad_()
    proxy_dirichlet_rkl(ours, indices, probs.float(), precision.float()).sum().backward()
    scale = ref.grad.abs().amax(-1, keepdim=True)
    assert ((ours.grad.double() - ref.grad).abs() / scale).max() < 1e-4


def test_rkl_precision_floor_keeps_a_zero_precision_finite():
    """beta0_hat = 0 (a member gave log-prob -inf where the mean has mass): raised to the floor."""
    full, indices, probs = _teacher(3, 12, 12)
    logits = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    loss = proxy_dirichlet_rkl(
        logits,
        indices,
        probs,
        torch.tensor([0.0, 0.5, 40.0], dtype=torch.float64),
        precision_limit=1e6,
        precision_floor=2.0,
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    expected = _reference_rkl(
        logits.detach(), full, torch.tensor([2.0, 2.0, 40.0], dtype=torch.float64)
    )
    torch.testing.assert_close(loss.detach(), expected)
    for floor, limit in ((0.0, 1e6), (2e6, 1e6), (1.0, 1e31)):
        with pytest.raises(ValueError, match="precision"):
            proxy_dirichlet_rkl(
                logits, indices, probs, torch.ones(3, dtype=torch.float64), limit, floor
            )


def test_rkl_takes_float16_probabilities_and_float64_precisions_beyond_half_range():
    """The collated teacher (float16 probs, float64 beta0_hat) with half logits: the float32 result."""
    full, indices, probs = _teacher(4, 50, 8)
    precision = torch.tensor([1e5, 7e5, 1e6, float("inf")], dtype=torch.float64)
    z = (torch.randn(4, 50) * 3).half()
    got = proxy_dirichlet_rkl(z, indices, probs.half(), precision)
    expected = proxy_dirichlet_rkl(z.float(), indices, probs.half().float(), precision.float())
    assert got.dtype == torch.float32 and torch.equal(got, expected) and torch.isfinite(got).all()


def _textbook_x(lprobs):
    """1/K sum_i [KL(p_i || p_bar) + KL(p_bar || p_i)], p_bar not detached, float64."""
    p = lprobs.exp()
    p_bar = p.mean(0)
    return sum(((pi - p_bar) * (lp - p_bar.log())).sum(-1) for pi, lp in zip(p, lprobs)) / len(p)


@pytest.mark.parametrize("spread", [1e-1, 1e-3, 1e-4])
def test_x_divergence_is_accurate_and_non_negative_when_passes_nearly_agree(spread):
    """X ~ 6e-7 per token at spread 1e-3 (V = 8000): the textbook float32 difference was 8 % off
    and could be negative; float32 inputs against float64 arithmetic on the same inputs."""
    g = torch.Generator().manual_seed(2)
    base = torch.randn(6, 8000, generator=g) * 3
    lprobs = torch.log_softmax(base + spread * torch.randn(3, 6, 8000, generator=g), -1)
    got = x_divergence(lprobs)
    expected = _textbook_x(lprobs.double())
    assert got.dtype == torch.float32 and (got >= 0).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


def test_x_divergence_gradient_matches_float64_autograd_through_p_bar():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 50, generator=g, dtype=torch.float64) * 2
    ref_logits = logits.clone().requires_grad_()
    _textbook_x(torch.log_softmax(ref_logits, -1)).sum().backward()
    ours = logits.float().requires_grad_()
    x_divergence(torch.log_softmax(ours, -1)).sum().backward()
    torch.testing.assert_close(ours.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-6)
    # the test tells a detached p_bar apart (that would be R-Drop-like, not the X-divergence)
    detached = logits.clone().requires_grad_()
    lp = torch.log_softmax(detached, -1)
    p_bar = lp.exp().mean(0).detach()
    (
        sum(((pi - p_bar) * (lpi - p_bar.log())).sum(-1) for pi, lpi in zip(lp.exp(), lp)) / 3
    ).sum().backward()
    assert not torch.allclose(detached.grad, ref_logits.grad, rtol=1e-2, atol=1e-4)


def test_x_divergence_and_dirichlet_predictive_keep_float64():
    lprobs = torch.log_softmax(torch.randn(2, 3, 7, dtype=torch.float64), -1)
    assert x_divergence(lprobs).dtype == torch.float64
    assert x_divergence(lprobs.float()).dtype == torch.float32
    assert dirichlet_log_predictive(torch.randn(2, 7, dtype=torch.float64)).dtype == torch.float64
    assert dirichlet_log_predictive(torch.randn(2, 7).half()).dtype == torch.float32
