"""ROC-AUC against sklearn, rejection curves against their definitions."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from ensdist_fairseq.metrics import detection as D


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = np.round(rng.normal(0, 1, 300), 1)  # rounding makes many ties
    b = np.round(rng.normal(0.7, 1.3, 200), 1)
    ref = 100 * roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b])
    assert D.roc_auc(a, b) == pytest.approx(ref, abs=1e-9)
    fpr, tpr = D.roc_curve(a, b)
    f2, t2, _ = roc_curve(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b], drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)


def test_roc_auc_extremes():
    assert D.roc_auc([0, 1, 2], [5, 6]) == 100
    assert D.roc_auc([5, 6], [0, 1]) == 0
    assert D.roc_auc([1, 1], [1, 1, 1]) == 50


def test_rejection_oracle_random_and_prr():
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 100, 400)
    oracle = D.rejection(-q, q)  # uncertainty = error: the oracle order
    assert oracle["prr"] == pytest.approx(100)
    assert oracle["auc"] == pytest.approx(oracle["auc_oracle"])
    worst = D.rejection(q, q)  # rejects the best sentences first
    assert worst["prr"] < -90
    rand = np.mean([D.rejection(rng.permutation(400), q)["prr"] for _ in range(200)])
    assert abs(rand) < 5
    # the curve by brute force: mean error over all with the k most uncertain fixed
    u = rng.normal(size=400)
    r = D.rejection(u, q)
    order = np.argsort(-u)
    for k in (0, 1, 57, 399):
        kept = np.setdiff1d(np.arange(400), order[:k])
        assert r["kept_quality"][k] == pytest.approx(q[kept].mean())
    errs = 100 - q
    curve = [errs[np.setdiff1d(np.arange(400), order[:k])].sum() / 400 for k in range(401)]
    assert r["auc"] == pytest.approx(
        np.trapezoid(curve, dx=1 / 400) if hasattr(np, "trapezoid") else np.trapz(curve, dx=1 / 400)
    )
