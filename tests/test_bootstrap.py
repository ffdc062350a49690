"""Intervals and verdicts (report/bootstrap.py, the vectorised metrics/detection forms), checked
against independent computations: normal theory, coverage on synthetic data, scipy's t
interval, sacreBLEU's own corpus score, and the one-at-a-time ROC-AUC / PRR."""

import numpy as np
import pytest
import sacrebleu
from scipy import stats

from ensdist_fairseq.metrics import detection
from ensdist_fairseq.report import bootstrap as B


def test_mean_interval_matches_normal_theory_on_large_n():
    x = np.random.default_rng(0).exponential(2.0, size=4000)  # skewed, but n is large
    low, high = B.bootstrap(lambda idx: x[idx].mean(axis=1), len(x))
    half = stats.norm.ppf(0.975) * x.std(ddof=1) / np.sqrt(len(x))
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_coverage_on_synthetic_data():
    g = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        x = g.normal(5.0, 1.0, size=80)
        low, high = B.bootstrap(lambda idx: x[idx].mean(axis=1), len(x), generator=g)
        covered += low <= 5.0 <= high
    assert 0.89 <= covered / 200 <= 0.99


def test_same_command_same_numbers():
    x = np.arange(50.0) ** 1.5
    f = lambda idx: x[idx].mean(axis=1)  # noqa: E731
    assert B.bootstrap(f, 50) == B.bootstrap(f, 50)


def test_seed_interval_is_scipys_t_interval():
    v = [20.0, 22.5, 21.0, 19.0]
    ref = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert B.seed_interval(v) == pytest.approx(ref)
    assert all(np.isnan(B.seed_interval([1.0])))


@pytest.mark.parametrize(
    "ci,margin,verdict",
    [
        ((0.1, 2), 0, "holds"),
        ((-2, -0.1), 0, "fails"),
        ((-1, 1), 0, "inconclusive"),
        ((0.1, 2), 0.5, "inconclusive"),
        ((float("nan"), 1), 0, "not measured"),
        (None, 0, "not measured"),
    ],
)
def test_verdicts(ci, margin, verdict):
    assert B.verdict(ci, margin) == verdict


def test_bleu_of_a_resample_is_sacrebleus_corpus_bleu():
    g = np.random.default_rng(2)
    words = "the a cat dog sat on mat house big small".split()
    refs = [" ".join(g.choice(words, size=g.integers(3, 12))) for _ in range(40)]
    hyps = [" ".join(g.choice(words, size=g.integers(3, 12))) for _ in range(40)]
    metric = sacrebleu.metrics.BLEU()
    st = metric._extract_corpus_statistics(hyps, [refs])
    idx = np.stack([np.arange(40), g.integers(0, 40, size=40)])
    rows = B.corpus_bleu_rows(st, idx)
    assert rows[0] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    pick = idx[1]
    expected = sacrebleu.corpus_bleu([hyps[i] for i in pick], [[refs[i] for i in pick]]).score
    assert rows[1] == pytest.approx(expected)


def test_vectorised_auc_and_prr_match_the_one_at_a_time_forms():
    g = np.random.default_rng(3)
    a, b = g.normal(size=(5, 30)).round(1), g.normal(0.5, 1, size=(5, 20)).round(1)  # ties
    rows = detection.roc_auc_rows(a, b)
    assert rows == pytest.approx([detection.roc_auc(x, y) for x, y in zip(a, b)])
    u, q = g.normal(size=(5, 25)).round(1), g.uniform(0, 100, size=(5, 25))
    prr = detection.prr_rows(u, q)
    assert prr == pytest.approx([detection.rejection(x, y)["prr"] for x, y in zip(u, q)])
    assert np.isnan(detection.prr_rows(u[:1], np.full((1, 25), 50.0))[0])  # oracle = random


def test_baselines_from_records():
    recs = [
        {"source": "a b c", "log_prob": -6.0, "length": 3},
        {"source": "a", "log_prob": -1.0, "length": 1},
    ]
    got = detection.baseline_scores(recs)
    assert list(got["source length"]) == [3, 1]
    assert list(got["-log P(y|x)"]) == [6, 1] and list(got["-log P(y|x)/|y|"]) == [2, 1]
    assert set(detection.baseline_scores([{"source": "x"}])) == {"source length"}
