"""ECE-1 / ECE-5, Brier, NLL, accuracy: checked against hand computation, sklearn and brute force."""

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

from ensdist_fairseq.metrics.calibration import (
    CalibrationAccumulator,
    ece_from_fine_histogram,
    expected_calibration_error,
    fine_histogram,
    reliability_bins,
)


def test_hand_computed_two_bins():
    # sorted: (0.1,0) (0.4,1) (0.5,0) | (0.8,1) (0.9,1)  -- 5 pairs, 2 bins of 3 and 2
    conf = [0.9, 0.1, 0.5, 0.8, 0.4]
    correct = [1, 0, 0, 1, 1]
    # bin 0: confidence 1/3, accuracy 1/3 -> gap 0; bin 1: confidence 0.85, accuracy 1 -> 0.15
    assert expected_calibration_error(conf, correct, 2, weighted=False) == pytest.approx(0.075)
    assert expected_calibration_error(conf, correct, 2, weighted=True) == pytest.approx(
        3 / 5 * 0 + 2 / 5 * 0.15
    )
    bins = reliability_bins(conf, correct, 2)
    np.testing.assert_allclose(bins.confidence, [1 / 3, 0.85])
    np.testing.assert_allclose(bins.accuracy, [1 / 3, 1.0])
    np.testing.assert_array_equal(bins.count, [3, 2])


def test_ties_broken_deterministically_whatever_the_order():
    # four pairs with one confidence: incorrect ones go to the lower bin, so each bin's gap is 0.5
    conf = np.full(4, 0.5)
    for correct in ([1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]):
        assert expected_calibration_error(conf, correct, 2, weighted=False) == pytest.approx(0.5)


def test_fewer_pairs_than_bins_and_bad_bin_counts():
    assert expected_calibration_error([0.7], [1], 10) == pytest.approx(0.3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_bins"):
            expected_calibration_error([0.5, 0.6], [1, 0], bad)
    with pytest.raises(ValueError):
        CalibrationAccumulator(num_bins=0)


@pytest.mark.parametrize("n", [57, 1000, 1001, 2001, 4321])
def test_unweighted_equals_sklearn_quantile_calibration_curve(n):
    rng = np.random.default_rng(n)
    conf = rng.uniform(0.0, 1.0, n)  # continuous: no ties, where sklearn's bins are ours
    correct = rng.random(n) < conf**1.7
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=10, strategy="quantile")
    bins = reliability_bins(conf, correct, 10)
    np.testing.assert_allclose(bins.accuracy, prob_true, atol=1e-12)
    np.testing.assert_allclose(bins.confidence, prob_pred, atol=1e-12)
    assert expected_calibration_error(conf, correct, 10, weighted=False) == pytest.approx(
        np.mean(np.abs(prob_true - prob_pred)), abs=1e-12
    )


def _random_distributions(rng, n, vocab, scale=3.0):
    logits = rng.normal(size=(n, vocab)) * scale
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _sample_targets(rng, probs):
    return (probs.cumsum(1) > rng.random((len(probs), 1))).argmax(1)


def test_perfectly_calibrated_sampler_has_ece_near_zero_and_overconfident_does_not():
    rng = np.random.default_rng(0)
    n, vocab = 20000, 20
    probs = _random_distributions(rng, n, vocab)
    targets = _sample_targets(rng, probs)  # the reference is drawn from the prediction itself
    calibrated = CalibrationAccumulator()
    calibrated.update(torch.tensor(np.log(probs)), torch.tensor(targets))
    r = calibrated.result()
    # sampling error: per bin sd <= sqrt(0.25 / 2000) = 0.011, so E|gap| is below ~0.009
    assert r.ece1_weighted < 0.02 and r.ece1_unweighted < 0.02
    assert r.ece5_weighted < 0.01 and r.ece5_unweighted < 0.01
    sharpened = probs**2 / (probs**2).sum(1, keepdims=True)  # same targets, overconfident
    over = CalibrationAccumulator()
    over.update(torch.tensor(np.log(sharpened)), torch.tensor(targets))
    r_over = over.result()
    assert r_over.ece1_weighted > 0.08 and r_over.ece5_weighted > 0.03
    # overconfident: accuracy below confidence in the most confident bin
    assert r_over.reliability_top1.accuracy[-1] < r_over.reliability_top1.confidence[-1]


def test_top5_pooling_matches_brute_force_pairs():
    rng = np.random.default_rng(1)
    n, vocab = 3000, 12
    probs = _random_distributions(rng, n, vocab)
    targets = _sample_targets(rng, probs**0.7 / (probs**0.7).sum(1, keepdims=True))
    pairs_conf, pairs_correct = [], []
    for p, y in zip(probs, targets):  # brute force, one token at a time
        for v in sorted(range(vocab), key=lambda v: -p[v])[:5]:
            pairs_conf.append(p[v])
            pairs_correct.append(v == y)
    acc = CalibrationAccumulator(num_bins=15)
    acc.update(torch.tensor(probs), torch.tensor(targets), log_probs=False)
    r = acc.result()
    assert r.reliability_top5.count.sum() == 5 * n
    for weighted, got in ((True, r.ece5_weighted), (False, r.ece5_unweighted)):
        assert got == pytest.approx(
            expected_calibration_error(pairs_conf, pairs_correct, 15, weighted), abs=1e-6
        )
    top1 = probs.argmax(1)
    assert r.ece1_weighted == pytest.approx(
        expected_calibration_error(probs.max(1), top1 == targets, 15, True), abs=1e-6
    )


def test_brier_nll_accuracy_against_independent_formulas_and_padding():
    rng = np.random.default_rng(2)
    batch, length, vocab = 6, 9, 7
    probs = _random_distributions(rng, batch * length, vocab).reshape(batch, length, vocab)
    targets = rng.integers(0, vocab, size=(batch, length))
    pad = np.zeros((batch, length), dtype=bool)
    pad[:, 6:] = True
    targets[pad] = 1  # pad symbol: must not count
    acc = CalibrationAccumulator()
    acc.update(torch.tensor(np.log(probs)), torch.tensor(targets), torch.tensor(pad))
    r = acc.result()
    p, y = probs[~pad], targets[~pad]
    onehot = np.eye(vocab)[y]
    assert r.num_tokens == (~pad).sum()
    assert r.brier == pytest.approx(np.mean(((p - onehot) ** 2).sum(1)), rel=1e-5)
    assert r.brier_plus == pytest.approx(np.mean((1 - p[np.arange(len(y)), y]) ** 2), rel=1e-5)
    assert r.nll == pytest.approx(log_loss(y, p, labels=np.arange(vocab)), rel=1e-5)
    assert r.accuracy == pytest.approx(np.mean(p.argmax(1) == y))


def test_hand_computed_token_metrics():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])
    targets = torch.tensor([0, 1])
    acc = CalibrationAccumulator(num_bins=1)
    acc.update(probs, targets, log_probs=False)
    r = acc.result()
    # brier: (0.3² + 0.2² + 0.1²) = 0.14 and (0.5² + 0.6² + 0.1²) = 0.62 -> 0.38
    assert r.brier == pytest.approx(0.38, rel=1e-5)
    assert r.nll == pytest.approx(-(np.log(0.7) + np.log(0.4)) / 2, rel=1e-5)
    assert r.accuracy == pytest.approx(0.5)
    # one bin: confidence (0.7 + 0.5)/2 = 0.6, accuracy 0.5
    assert r.ece1_weighted == pytest.approx(0.1, rel=1e-5)


def test_streamed_equals_all_at_once():
    rng = np.random.default_rng(3)
    batch, length, vocab = 40, 11, 15
    lp = torch.log_softmax(torch.tensor(rng.normal(size=(batch, length, vocab)) * 2), -1)
    targets = torch.tensor(rng.integers(0, vocab, size=(batch, length)))
    pad = torch.tensor(rng.random((batch, length)) < 0.2)
    whole = CalibrationAccumulator(num_bins=7)
    whole.update(lp, targets, pad)
    streamed = CalibrationAccumulator(num_bins=7)
    for chunk in np.array_split(rng.permutation(batch), 6):  # other order, uneven batches
        streamed.update(lp[chunk], targets[chunk], pad[chunk])
    a, b = whole.result().to_dict(), streamed.result().to_dict()
    for key in ("ece1", "ece5", "reliability", "num_tokens", "accuracy"):
        assert a[key] == b[key]
    for key in ("brier", "brier_plus", "nll"):
        assert a[key] == pytest.approx(b[key], rel=1e-12)


def _nmt_like_pairs(rng, n, overconfidence):
    """Half the confidences within 1e-7..1e-2 of 1 (as for NMT), the rest spread."""
    conf = np.where(rng.random(n) < 0.5, 1 - 10 ** rng.uniform(-7, -2, n), rng.beta(2, 2, n))
    return conf, rng.random(n) < conf**overconfidence


@pytest.mark.parametrize("overconfidence", [1.0, 1.3, 2.0])
def test_fine_histogram_approximation_is_close_to_exact(overconfidence):
    rng = np.random.default_rng(4)
    conf, correct = _nmt_like_pairs(rng, 20000, overconfidence)
    hist = fine_histogram(torch.tensor(conf), torch.tensor(correct))
    approx = ece_from_fine_histogram(hist, 10)
    for weighted in (True, False):
        # documented bound (docs/evaluation.md): within 0.05 percentage points
        assert abs(approx - expected_calibration_error(conf, correct, 10, weighted)) < 5e-4


def test_fine_histograms_add_up_across_workers():
    rng = np.random.default_rng(5)
    conf, correct = _nmt_like_pairs(rng, 5000, 1.5)
    whole = fine_histogram(torch.tensor(conf), torch.tensor(correct))
    parts = sum(
        fine_histogram(torch.tensor(conf[s]), torch.tensor(correct[s]))
        for s in np.array_split(np.arange(5000), 3)
    )
    torch.testing.assert_close(parts, whole)
    assert whole[0].sum() == 5000 and whole[2].sum() == correct.sum()


def test_fairseq_logging_reduces_worker_outputs_to_ece_percent():
    from fairseq.logging import metrics

    from ensdist_fairseq.evaluation.calibration_logging import (
        calibration_logging_output,
        reduce_calibration_metrics,
    )

    rng = np.random.default_rng(6)
    pad_idx, batch, length, vocab = 1, 30, 8, 25
    lp = torch.log_softmax(torch.tensor(rng.normal(size=(batch, length, vocab)) * 3), -1)
    target = torch.tensor(rng.integers(2, vocab, size=(batch, length)))
    target[:, 6:] = pad_idx
    workers = [
        calibration_logging_output(lp[s], target[s], pad_idx) for s in (slice(0, 10), slice(10, 30))
    ]
    with metrics.aggregate(new_root=True) as agg:
        reduce_calibration_metrics(workers[:1])  # two validation batches, as fairseq-train
        reduce_calibration_metrics(workers[1:])  # calls reduce_metrics once per batch
        logged = agg.get_smoothed_values()
    assert not any(k.startswith("_") for k in logged)
    keep = target.ne(pad_idx)
    p = lp.exp()[keep].numpy()
    y = target[keep].numpy()
    top5 = np.argsort(-p, 1)[:, :5]
    exact1 = expected_calibration_error(p.max(1), p.argmax(1) == y, 10)
    exact5 = expected_calibration_error(np.take_along_axis(p, top5, 1), top5 == y[:, None], 10)
    # logged in percent, rounded to 3 decimals; the approximation is within the documented bound
    assert logged["ece1"] == pytest.approx(100 * exact1, abs=0.05)
    assert logged["ece5"] == pytest.approx(100 * exact5, abs=0.05)
