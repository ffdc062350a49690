"""Temperature scaling: the fitted T against an independent brute-force search (torch.distributions
log-likelihoods on a fine grid) and against the temperature the data were drawn with."""

import numpy as np
import pytest
import torch

from ensdist_fairseq.metrics.temperature import fit_temperature, tempered


def draw(true_temperature, n=8000, vocab=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, vocab, generator=g)
    model_lp = torch.log_softmax(logits, -1)  # the "model": overconfident by true_temperature
    labels = torch.distributions.Categorical(logits=logits / true_temperature).sample()
    return model_lp, labels


@pytest.mark.parametrize("true_t", [0.7, 1.0, 1.8])
def test_fit_recovers_the_temperature_and_matches_brute_force(true_t):
    torch.manual_seed(1)
    lp, y = draw(true_t)
    fitted = fit_temperature([lp[:3000], lp[3000:]], [y[:3000], y[3000:]])
    grid = np.arange(0.4, 3.0, 0.01)
    nlls = [-torch.distributions.Categorical(logits=lp / t).log_prob(y).mean().item() for t in grid]
    assert fitted == pytest.approx(grid[int(np.argmin(nlls))], abs=0.006)
    assert fitted == pytest.approx(true_t, rel=0.08)


def test_tempered_is_a_distribution_and_t1_is_identity():
    lp = torch.log_softmax(torch.randn(4, 7), -1)
    assert torch.allclose(tempered(lp, 1.0), lp, atol=1e-6)
    assert torch.allclose(tempered(lp, 2.5).exp().sum(-1), torch.ones(4))
    with pytest.raises(ValueError, match="at least one token"):
        fit_temperature([lp[:0]], [torch.zeros(0, dtype=torch.long)])
