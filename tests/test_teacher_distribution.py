"""teacher_distribution against a float64 computation written out here from DESIGN.md."""
import math

import numpy as np
import pytest
import torch

from ensdist_fairseq.teacher_distribution import EnsembleMean, teacher_entries


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
    members = [torch.log_softmax(torch.tensor(l, dtype=torch.float32), -1) for l in logits]
    got = teacher_entries(members, topk=10)
    order = np.argsort(-mean, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got.indices.numpy(), order)
    np.testing.assert_allclose(got.probs.numpy(), np.take_along_axis(mean, order, 1), rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(got.precision.numpy(), beta0, rtol=1e-4)
    assert got.probs.dtype == torch.float32 and torch.all(got.probs[:, :-1] >= got.probs[:, 1:])


def test_probs_are_not_renormalized():
    members = [torch.log_softmax(torch.randn(4, 30), -1) for _ in range(2)]
    got = teacher_entries(members, topk=5)
    assert torch.all(got.probs.sum(-1) < 1 - 1e-3)


def test_single_member_and_identical_members_give_infinite_precision():
    lp = torch.log_softmax(torch.randn(3, 20), -1)
    assert torch.all(torch.isinf(teacher_entries([lp], topk=4).precision))
    assert torch.all(torch.isinf(teacher_entries([lp, lp.clone()], topk=4).precision))


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
    with pytest.raises(ValueError, match="top-k 6"):
        mean.top_k(6)
