"""Temperature scaling: the fitted T against an independent brute-force search (torch.distributions
log-likelihoods on a fine grid) and against the temperature the data were drawn with."""

import json

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


def _mean_probs(data_dir, paths, split):
    """Sentence by sentence, the members' softmax averaged (float64), and the targets."""
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        paths, arg_overrides={"data": data_dir}
    )
    task.load_dataset(split)
    ds, pad = task.dataset(split), task.target_dictionary.pad()
    probs, targets = [], []
    with torch.no_grad():
        for m in models:
            m.eval()
        for i in range(len(ds)):
            sample = ds.collater([ds[i]])
            p = sum(torch.softmax(m(**sample["net_input"])[0].double(), -1) for m in models)
            keep = sample["target"][0].ne(pad)
            probs.append((p[0] / len(models))[keep])
            targets.append(sample["target"][0][keep])
    return torch.cat(probs), torch.cat(targets)


@pytest.mark.slow
def test_evaluate_fits_on_valid_and_scores_test_tempered(tiny_data, tiny_checkpoints, tmp_path):
    from ensdist_fairseq.cli import evaluate

    out = tmp_path / "ts.json"
    args = [tiny_data, "--path", ":".join(tiny_checkpoints), "--name", "ts", "--no-bleu", "--cpu"]
    assert evaluate.main([*args, "--output", str(out), "--fit-temperature-on", "valid"]) == 0
    r = json.loads(out.read_text())
    assert r["temperature_split"] == "valid" and r["temperature_tokens"] > 0
    p, y = _mean_probs(tiny_data, tiny_checkpoints, "valid")
    grid = np.arange(0.3, 4.0, 0.01)
    nlls = [-torch.distributions.Categorical(logits=p.log() / t).log_prob(y).mean() for t in grid]
    assert r["temperature"] == pytest.approx(grid[int(np.argmin(nlls))], abs=0.006)
    p, y = _mean_probs(tiny_data, tiny_checkpoints, "test")
    expected = -torch.distributions.Categorical(logits=p.log() / r["temperature"]).log_prob(y)
    assert r["nll"] == pytest.approx(float(expected.mean()), abs=1e-4)
    # fitted on the split it evaluates: a wrong command line
    assert evaluate.main([*args, "--output", str(out), "--fit-temperature-on", "test"]) == 2
