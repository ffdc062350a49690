"""Conventions and guard branches that hand-picked inputs alone reach: each test here fails when
its convention is turned the other way (a tie order, a mask, a bound check, a branch)."""

import numpy as np
import pytest
import torch

from ensdist_fairseq.checkpoints import swa
from ensdist_fairseq.metrics.calibration import expected_calibration_error, reliability_bins
from ensdist_fairseq.store.validate import first_problem
from ensdist_fairseq.uncertainty.measures import entropy


def _brute_force_bins(conf, corr, num_bins):
    """Equal-count bins with the documented tie order written out: by confidence, then
    incorrect before correct; bin k holds sorted positions floor(k(N-1)/B)+1 .. floor((k+1)(N-1)/B),
    bin 0 starting at 0 (the quantile bins of sklearn and the authors when nothing ties)."""
    pairs = sorted(zip(conf, corr), key=lambda cc: (cc[0], cc[1]))
    n = len(pairs)
    bins = []
    for k in range(num_bins):
        first = 0 if k == 0 else k * (n - 1) // num_bins + 1
        chunk = pairs[first : (k + 1) * (n - 1) // num_bins + 1]
        if chunk:
            bins.append(
                (np.mean([c for c, _ in chunk]), np.mean([a for _, a in chunk]), len(chunk))
            )
    return bins


def test_ties_put_incorrect_before_correct():
    conf, corr = [0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1]
    # bins {(.5,0), (.5,0)} and {(.5,1), (.9,1)}: |0 - .5| and |1 - .7| -> 0.4 (weighted, equal
    # counts); the other tie order would give bins {(.5,0), (.5,1)}, {(.5,0), (.9,1)} -> 0.1.
    assert expected_calibration_error(conf, corr, num_bins=2) == pytest.approx(0.4)
    got = reliability_bins(conf, corr, num_bins=2)
    want = _brute_force_bins(conf, corr, 2)
    assert np.allclose(got.confidence, [w[0] for w in want])
    assert np.allclose(got.accuracy, [w[1] for w in want])


def test_ties_on_random_data_match_the_brute_force_order():
    rng = np.random.default_rng(0)
    conf = rng.choice([0.1, 0.3, 0.3, 0.7, 0.9], size=101)  # many ties
    corr = rng.integers(0, 2, size=101)
    got = reliability_bins(conf, corr, num_bins=7)
    want = _brute_force_bins(conf.tolist(), corr.tolist(), 7)
    assert np.allclose(got.confidence, [w[0] for w in want])
    assert np.allclose(got.accuracy, [w[1] for w in want])
    assert got.count.tolist() == [w[2] for w in want]


def test_negative_indices_of_int32_stores_are_refused():
    """Stores of vocabularies beyond 65536 keep indices as int32, where a negative index is
    possible and must be caught (uint16 stores cannot hold one)."""
    probs = np.array([[0.5, 0.25]], dtype=np.float16)
    precision = np.array([10.0], dtype=np.float32)
    good = np.array([[70000, 3]], dtype=np.int32)
    assert first_problem(good, probs, precision, vocab_size=80000) is None
    bad = np.array([[70000, -3]], dtype=np.int32)
    problem = first_problem(bad, probs, precision, vocab_size=80000)
    assert problem is not None and "row 0" in problem


def test_entropy_of_a_distribution_with_zero_probabilities_is_finite():
    log_probs = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64))
    assert torch.isinf(log_probs).any()
    h = entropy(log_probs)
    assert torch.isfinite(h).all()
    assert h.item() == pytest.approx(np.log(2.0))


@pytest.mark.parametrize(
    "iterator, epoch",
    [
        ({"epoch": 4, "iterations_in_epoch": 0}, 3),  # saved at the end of epoch 3
        ({"epoch": 3, "iterations_in_epoch": 17}, 3),  # saved in the middle of epoch 3
    ],
)
def test_best_epoch_reads_end_of_epoch_and_mid_epoch_checkpoints(tmp_path, iterator, epoch):
    torch.save({"extra_state": {"train_iterator": iterator}}, tmp_path / "checkpoint_best.pt")
    assert swa.best_epoch(str(tmp_path)) == epoch
