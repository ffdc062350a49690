"""teacher_distribution against a float64 computation written out here from the papers' definitions."""

import math

import numpy as np
import pytest
import torch

from ensdist_fairseq.store.teacher_distribution import (
    LOG_PROB_FLOOR,
    EnsembleMean,
    NonFiniteMemberOutput,
)
from ensdist_fairseq.store.validate import PRECISION_MAX


def teacher_entries(members, topk):
    mean = EnsembleMean()
    for lp in members:
        mean.add(lp)
    indices, probs = mean.top_k(topk)
    return indices, probs, mean.precision()


def reference(member_logits: np.ndarray):
    """float64: mean of softmaxes, and beta0 = (V-1) / (2 mean_m KL(mean || member_m))."""
    x = member_logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    mean = p.mean(0)
    kl = (mean[None] * (np.log(mean)[None] - np.log(p))).sum(-1)  # (K, N)
    return mean, (x.shape[-1] - 1) / (2 * kl.mean(0))


@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: members put ~1e-100 on many events
def test_matches_reference(scale):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 50)) * scale
    mean, beta0 = reference(logits)
    members = [torch.log_softmax(torch.tensor(x, dtype=torch.float32), -1) for x in logits]
    got = teacher_entries(members, topk=10)
    order = np.argsort(-mean, axis=1, kind="stable")[:, :10]
    indices, probs, precision = got
    np.testing.assert_array_equal(indices.numpy(), order)
    np.testing.assert_allclose(
        probs.numpy(), np.take_along_axis(mean, order, 1), rtol=1e-5, atol=1e-30
    )
    np.testing.assert_allclose(precision.numpy(), beta0, rtol=1e-4)
    assert probs.dtype == torch.float32 and torch.all(probs[:, :-1] >= probs[:, 1:])


def test_probs_are_not_renormalized():
    members = [torch.log_softmax(torch.randn(4, 30), -1) for _ in range(2)]
    got = teacher_entries(members, topk=5)
    assert torch.all(got[1].sum(-1) < 1 - 1e-3)


def test_single_member_and_identical_members_give_the_capped_precision():
    lp = torch.log_softmax(torch.randn(3, 20), -1)
    assert torch.all(teacher_entries([lp], topk=4)[2] == PRECISION_MAX)
    assert torch.all(teacher_entries([lp, lp.clone()], topk=4)[2] == PRECISION_MAX)


def test_zero_probabilities_give_a_finite_positive_precision():
    """A member ruling an event out (ln p = -inf) counts as the smallest normal float32 there;
    an event every member rules out contributes nothing (no NaN)."""
    a = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 0.5]]), -1)
    b = a.clone()
    b[0, 0] = -math.inf  # b rules event 0 out, a allows it
    b[0, 3] = -math.inf
    a[0, 3] = -math.inf  # both rule event 3 out
    precision = teacher_entries([a, b], topk=2)[2]
    qa, qb = a.exp().double(), b.exp().double()
    q = (qa + qb) / 2
    la, lb = a.double().clamp(min=LOG_PROB_FLOOR), b.double().clamp(min=LOG_PROB_FLOOR)
    terms = torch.where(q > 0, q * (q.log() - (la + lb) / 2), torch.zeros_like(q))
    expected = 3 / (2 * terms.sum(-1))
    assert torch.isfinite(precision).all() and (precision > 0).all()
    torch.testing.assert_close(precision.double(), expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_member_output_is_refused_with_its_position(bad):
    lp = torch.log_softmax(torch.randn(4, 10), -1)
    lp[2, 7] = bad
    mean = EnsembleMean()
    with pytest.raises(NonFiniteMemberOutput, match=f"position 2: log-probability {bad}") as e:
        mean.add(lp)
    assert e.value.row == 2


def test_members_one_at_a_time_equal_a_stacked_logsumexp():
    members = [torch.log_softmax(torch.randn(5, 40), -1) for _ in range(4)]
    mean = EnsembleMean()
    for m in members:
        mean.add(m)
    expected = torch.logsumexp(torch.stack(members).double(), 0) - math.log(4)
    torch.testing.assert_close(mean.log_probs().double(), expected, rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    mean = EnsembleMean()
    with pytest.raises(ValueError, match="no ensemble members"):
        mean.log_probs()
    mean.add(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="do not match"):
        mean.add(torch.zeros(2, 6))
    with pytest.raises(RuntimeError):  # V' itself is checked by store.provenance.check_topk
        mean.top_k(6)


def test_nucleus_lengths_against_a_brute_force_prefix_search():
    from ensdist_fairseq.store.teacher_distribution import nucleus_lengths, truncate_to_nucleus

    rng = np.random.default_rng(0)
    probs = np.sort(rng.dirichlet(np.full(50, 0.3), size=200)[:, :16], axis=1)[:, ::-1].copy()
    probs[0] = [0.5, 0.25] + [0.25 / 14] * 14  # exactly reaching p = 0.75 after 2 entries
    for top_p, min_k in [(0.75, 1), (0.5, 3), (0.9, 1), (0.99, 16), (1.0, 1)]:
        got = nucleus_lengths(torch.from_numpy(probs), top_p, min_k).numpy()
        for row, n in zip(probs, got):
            total = [sum(row[:j].tolist()) for j in range(1, 17)]  # mass of each prefix length
            reaching = [j + 1 for j, m in enumerate(total) if m >= top_p]
            assert n == max(min_k, reaching[0] if reaching else 16), (top_p, min_k, row)
        assert top_p != 0.75 or got[0] == 2
    idx = torch.arange(1, 17).repeat(200, 1)
    lengths = nucleus_lengths(torch.from_numpy(probs), 0.5, 3)
    t_idx, t_probs = truncate_to_nucleus(idx, torch.from_numpy(probs), lengths)
    for r, n in enumerate(lengths.tolist()):
        assert t_idx[r, :n].tolist() == list(range(1, n + 1)) and not t_idx[r, n:].any()
        assert t_probs[r, :n].tolist() == probs[r, :n].tolist() and not t_probs[r, n:].any()


@pytest.mark.parametrize(
    "truncation, temperature", [("tail", 1.0), ("tail", 2.0), ("renormalize", 1.5)]
)
def test_nucleus_padding_is_read_as_nothing_stored_by_the_kd_loss(truncation, temperature):
    """A nucleus row (entries past its length are index 0, probability 0) gives the loss of the
    shorter row alone: the padding adds nothing, whatever index 0's student probability."""
    from ensdist_fairseq.losses.ensemble_mean_kd import ensemble_mean_kd

    rng = np.random.default_rng(1)
    student = torch.log_softmax(torch.from_numpy(rng.normal(size=(5, 30))), -1)
    probs = np.sort(rng.dirichlet(np.ones(30), size=5), axis=1)[:, ::-1][:, :8].copy()
    indices = np.stack([rng.permutation(np.arange(1, 30))[:8] for _ in range(5)])
    for r, n in enumerate([1, 3, 8, 5, 2]):
        padded_i, padded_p = indices[r].copy(), probs[r].copy()
        padded_i[n:], padded_p[n:] = 0, 0.0
        got = ensemble_mean_kd(
            student[r : r + 1],
            torch.from_numpy(padded_i)[None],
            torch.from_numpy(padded_p)[None],
            temperature,
            truncation,
        )
        want = ensemble_mean_kd(
            student[r : r + 1],
            torch.from_numpy(indices[r, :n])[None],
            torch.from_numpy(probs[r, :n])[None],
            temperature,
            truncation,
        )
        torch.testing.assert_close(got, want)
