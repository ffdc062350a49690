"""The tail-as-an-event policy (``tail_kl``) against brute force, its bounds and finite differences."""

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from ensdist_fairseq.losses import TRUNCATION_POLICIES, ensemble_mean_kd, teacher_distribution
from ensdist_fairseq.losses.ensemble_mean_kd import student_tail_log_prob


def _teacher(rows, vocab, stored, seed, sharpness=2.0):
    g = torch.Generator().manual_seed(seed)
    full = torch.softmax(torch.randn(rows, vocab, generator=g, dtype=torch.float64) * sharpness, -1)
    probs, indices = full.topk(stored, dim=-1)
    return full, indices, probs


def _brute_force(logits, indices, probs, temp):
    """One row at a time, in plain Python floats: the teacher's V'+1 events tempered, the student's
    tempered softmax summed into the stored classes and one bucket for all the others."""
    out = []
    for r in range(logits.size(0)):
        idx, q = indices[r].tolist(), probs[r].tolist()
        events = q + [1 - sum(q)]
        tempered = [e ** (1 / temp) for e in events]
        teacher = [t / sum(tempered) for t in tempered]
        z = [v / temp for v in logits[r].tolist()]
        norm = sum(math.exp(v) for v in z)
        p = [math.exp(v) / norm for v in z]
        student = [p[i] for i in idx] + [sum(p[v] for v in range(len(p)) if v not in set(idx))]
        kl = sum(t * math.log(t / s) for t, s in zip(teacher, student) if t > 0)
        out.append(temp**2 * kl)
    return torch.tensor(out, dtype=torch.float64)


def test_tail_kl_is_a_policy_the_criterion_offers():
    assert "tail_kl" in TRUNCATION_POLICIES


@pytest.mark.parametrize("temp", [1.0, 0.5, 2.0, 4.0])
def test_tail_kl_matches_brute_force(temp):
    full, indices, probs = _teacher(5, 23, 6, seed=int(10 * temp))
    logits = torch.randn(5, 23, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 3
    got = ensemble_mean_kd(torch.log_softmax(logits, -1), indices, probs, temp, "tail_kl")
    torch.testing.assert_close(got, _brute_force(logits, indices, probs, temp), rtol=1e-10, atol=0)
    # float32 student, float16 probabilities as stored: the float32 result of the same inputs
    got32 = ensemble_mean_kd(
        torch.log_softmax(logits.float(), -1), indices, probs.half(), temp, "tail_kl"
    )
    expected32 = _brute_force(logits.float().double(), indices, probs.half().double(), temp)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected32, rtol=1e-4, atol=1e-6)


def test_tail_kl_is_a_non_negative_lower_bound_of_the_full_kl_where_tail_goes_negative():
    """The student is made more confident than the teacher on the stored events: the truncated
    sum of ``tail`` then drops below 0 on many rows, the (V'+1)-category KL never does."""
    vocab, stored = 200, 8
    full, indices, probs = _teacher(400, vocab, stored, seed=1, sharpness=1.5)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(400, vocab, generator=g, dtype=torch.float64)
    boost = torch.rand(400, 1, generator=g, dtype=torch.float64) * 6
    logits = logits.scatter_add(-1, indices, boost.expand(400, stored).contiguous())
    lprobs = torch.log_softmax(logits, -1)
    full_kl = kl_divergence(Categorical(probs=full), Categorical(logits=lprobs))
    tail_kl = ensemble_mean_kd(lprobs, indices, probs, 1.0, "tail_kl")
    truncated = ensemble_mean_kd(lprobs, indices, probs, 1.0, "tail")
    assert (truncated < 0).float().mean() > 0.2  # the case the policy exists for
    assert (tail_kl >= 0).all()
    assert (tail_kl <= full_kl + 1e-12).all()
    # and it is not the full KL: the tail's inner structure is lost
    assert (full_kl - tail_kl).max() > 1e-2


def test_tail_kl_equals_the_full_kl_when_the_tail_is_one_class_or_everything_is_stored():
    vocab = 9
    full, indices, probs = _teacher(4, vocab, vocab - 1, seed=3)
    lprobs = torch.log_softmax(torch.randn(4, vocab, dtype=torch.float64), -1)
    expected = kl_divergence(Categorical(probs=full), Categorical(logits=lprobs))
    got = ensemble_mean_kd(lprobs, indices, probs, 1.0, "tail_kl")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    full, indices, probs = _teacher(4, vocab, vocab, seed=4)
    lprobs = lprobs.clone().requires_grad_()
    got = ensemble_mean_kd(lprobs, indices, probs, 1.0, "tail_kl")
    got.sum().backward()
    expected = kl_divergence(Categorical(probs=full), Categorical(logits=lprobs.detach()))
    torch.testing.assert_close(got.detach(), expected, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(lprobs.grad).all()


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_tail_kl_gradient_matches_finite_differences(temp):
    _, indices, probs = _teacher(3, 15, 4, seed=5)
    logits = (torch.randn(3, 15, dtype=torch.float64) * 2).requires_grad_()

    def loss(z):
        return ensemble_mean_kd(torch.log_softmax(z, -1), indices, probs, temp, "tail_kl")

    assert torch.autograd.gradcheck(loss, (logits,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_tail_kl_gradient_is_zero_at_the_matching_student_and_pulls_the_tail():
    """A student whose V'+1 events equal the teacher's is a minimum; one that is too confident on
    the stored events gets pushed towards its tail (``tail`` would push it further in)."""
    _, indices, probs = _teacher(1, 12, 3, seed=6)
    tail_mass = 1 - probs.sum()
    p = torch.full((1, 12), float(tail_mass) / 9, dtype=torch.float64).scatter(-1, indices, probs)
    z = p.log().requires_grad_()
    ensemble_mean_kd(torch.log_softmax(z, -1), indices, probs, 1.0, "tail_kl").sum().backward()
    assert z.grad.abs().max() < 1e-12
    confident = torch.full((1, 12), -5.0, dtype=torch.float64).scatter(-1, indices, 0.0)
    for policy, sign in (("tail_kl", -1), ("tail", 1)):
        z = confident.clone().requires_grad_()
        ensemble_mean_kd(torch.log_softmax(z, -1), indices, probs, 1.0, policy).sum().backward()
        unstored = torch.ones(12, dtype=torch.bool).scatter(0, indices[0], False)
        # gradient descent raises z where the gradient is negative
        assert (sign * z.grad[0, unstored] > 0).all(), policy


def test_tail_kl_pad_rows_one_hot_teachers_and_saturated_students_stay_finite():
    vocab = 12
    indices = torch.zeros(3, 4, dtype=torch.long)
    probs = torch.zeros(3, 4, dtype=torch.float16)
    probs[1, 0] = 1.0  # one-hot teacher: empty tail
    raw = torch.tensor([[1e4] + [-1e4] * (vocab - 1)] * 3)
    for lprobs in (torch.log_softmax(raw, -1), torch.log_softmax(-raw, -1)):
        lprobs = lprobs.requires_grad_()
        for temp in (1.0, 2.0):
            loss = ensemble_mean_kd(lprobs, indices, probs, temp, "tail_kl")
            loss.sum().backward()
            assert torch.isfinite(loss).all() and torch.isfinite(lprobs.grad).all()
            assert loss[0] == 0 and loss[2] == 0  # pads weigh nothing
            lprobs.grad = None
    weights, _ = teacher_distribution(probs, 2.0, "tail_kl")
    assert weights.shape == (3, 5) and weights[0].sum() == 0 and weights[1].sum() == 1


def test_student_tail_is_accurate_from_a_diffuse_to_an_all_but_certain_student():
    """Both ways of computing log p(tail) (1 - sum over the stored events, and the logsumexp over
    the tail for rows under EXACT_TAIL_BELOW) against float64, float32 inputs."""
    vocab, stored = 500, 10
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(7, vocab, generator=g, dtype=torch.float64)
    indices = torch.arange(stored).expand(7, stored)
    # the stored events take ever more of the mass: tail from ~98 % down to ~1e-30
    logits[:, :stored] += torch.tensor([0.0, 3.0, 6.0, 9.0, 15.0, 30.0, 80.0], dtype=torch.float64)[
        :, None
    ]
    lprobs64 = torch.log_softmax(logits, -1)
    expected = lprobs64[:, stored:].logsumexp(-1)
    z = logits.float().requires_grad_()
    got = student_tail_log_prob(torch.log_softmax(z, -1), indices).squeeze(-1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    # d log p(tail) / dz_v = p_v (1[v in tail] / p(tail) - 1): the two forms differ as functions
    # of the log-probabilities but agree on the simplex, so compare through the softmax
    p = lprobs64.exp()
    in_tail = torch.ones_like(p)
    in_tail[:, :stored] = 0
    expected_grad = p * (in_tail / expected.exp()[:, None] - 1)
    torch.testing.assert_close(z.grad.double(), expected_grad, rtol=1e-4, atol=1e-6)
