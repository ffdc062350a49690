"""The papers' claims in their own form, judged holds / fails / inconclusive / not measured
against the members' t interval over seeds, on crafted results."""

import pytest
from scipy import stats

from ensdist_fairseq.report.paper_pattern import (
    beyond,
    pattern_checks,
    pattern_markdown,
    regime_notes,
)


def result(method, kind, n, bleu, ece1, name=None, over=None):
    """over: how many of 10 top-1 bins are overconfident (confidence above accuracy)."""
    conf = [0.05 + 0.1 * i for i in range(10)]
    acc = [c - 0.02 if i < (over or 0) else c + 0.02 for i, c in enumerate(conf)]
    return {
        "name": name or f"{method}-{kind}-{n}",
        "method": method,
        "kind": kind,
        "num_models": n,
        "bleu": bleu,
        "ece1": {"unweighted": ece1 / 100, "weighted": 0},
        "reliability": {"top1": {"confidence": conf, "accuracy": acc, "count": [1] * 10}},
    }


def members(method="CE+SWA", bleus=(20.0, 21.0, 22.0), eces=(3.0, 4.0, 5.0), over=9):
    return [
        result(method, "individual", 1, b, e, f"{method}{i}", over)
        for i, (b, e) in enumerate(zip(bleus, eces))
    ]


def test_beyond_matches_the_t_interval():
    values = [20.0, 21.0, 22.0]  # mean 21, s.e. 1/sqrt(3)
    half = stats.t.ppf(0.975, 2) * 1.0 / 3**0.5
    verdict, ci = beyond(21.0 + half + 1e-6, values, higher_is_claim=True)
    assert verdict == "holds" and ci == pytest.approx((21 - half, 21 + half))
    assert beyond(21.0 + half - 1e-6, values, True)[0] == "inconclusive"
    assert beyond(21.0 - half - 1e-6, values, True)[0] == "fails"
    assert beyond(21.0 - half - 1e-6, values, False)[0] == "holds"  # lower is the claim


def test_claims_are_three_way():
    results = [
        *members(),
        result("CE+SWA", "ensemble", 2, 22.0, 4.0),
        result("CE+SWA", "ensemble", 3, 30.0, 0.5),  # the largest one is compared: holds
        result("CE+SWA", "student", 1, 21.5, 3.9, name="kd"),  # inside both intervals
        result("CE+SWA", "student", 1, 10.0, 0.5, name="rkl"),  # BLEU far below: fails
        *members("LS+SWA", eces=(3.4, 3.5, 3.6), over=1),
        result("LS+SWA", "ensemble", 3, 23.0, 6.0),  # worse than its own members, as in the paper
    ]
    checks = pattern_checks(results)
    assert [c[1] for c in checks] == ["holds", "inconclusive", "fails", "holds"]
    assert "ensemble of 3" in checks[0][2] and "own members" in checks[3][0]
    md = pattern_markdown(checks)
    assert md.count("**fails**") == 1 and "inconclusive" in md


def test_ls_claim_is_against_its_own_members_not_the_ce_ensemble():
    """The demo's case: LS ensemble better calibrated than its members (4.18 → 1.09) but worse
    than the CE ensemble: the paper's claim fails, whatever the CE ensemble did."""
    results = [
        *members(eces=(4.0, 4.5, 5.0)),
        result("CE+SWA", "ensemble", 3, 25.0, 0.9),
        *members("LS+SWA", eces=(4.1, 4.2, 4.25), over=9),
        result("LS+SWA", "ensemble", 3, 25.0, 1.089),
    ]
    assert pattern_checks(results)[-1][1] == "fails"
    notes = regime_notes(results)
    assert "LS+SWA members: overconfident in 9.0 of 10" in notes[1]
    assert "the paper's are underconfident" in notes[1] and "as in the paper" in notes[0]
    assert "BLEU here ranges 20.00–25.00" in notes[2]


def test_missing_systems_are_not_measured():
    checks = pattern_checks([result("CE+SWA", "individual", 1, 20.0, 4.0)])
    assert [c[1] for c in checks] == ["not measured", "not measured"]
    one_member = [
        result("CE+SWA", "individual", 1, 20.0, 4.0),
        result("CE+SWA", "ensemble", 2, 25.0, 1.0),
    ]
    assert pattern_checks(one_member)[0][1] == "not measured"  # no spread from one seed
    assert "nan" not in pattern_markdown(pattern_checks(one_member)).lower()


def test_bleu_must_also_hold_over_sentences():
    """Seeds alone say the ensemble wins; its outputs are the members' own, so over the same
    resampled sentences the difference is nil: inconclusive, not holds."""
    import sacrebleu

    hyps, refs = ["a b c d", "e f g", "h i j k l"] * 5, ["a b c x", "e f y", "h i j k z"] * 5
    st = sacrebleu.metrics.BLEU()._extract_corpus_statistics(hyps, [refs])
    ms = members(bleus=(20.0, 20.1, 20.2))
    ens = result("CE+SWA", "ensemble", 3, 25.0, 0.5)
    assert pattern_checks([*ms, ens])[0][1] == "holds"  # no sentence statistics: seeds only
    for r in (*ms, ens):
        r["bleu_sentence_stats"] = st
    check = pattern_checks([*ms, ens])[0]
    assert (
        check[1] == "inconclusive"
        and "difference over sentences [0.00, 0.00]: inconclusive" in check[2]
    )


def test_ece_must_also_hold_over_sentences():
    """Seeds say the LS ensemble is worse calibrated than its members; with every system's
    tokens identical, over resampled sentences the difference is nil: inconclusive."""
    from test_report_tokens import crafted

    ls = members("LS+SWA", eces=(3.4, 3.5, 3.6))
    ens = result("LS+SWA", "ensemble", 3, 23.0, 6.0)
    assert pattern_checks([*ls, ens])[-1][1] == "holds"
    for r in (*ls, ens):
        r.update({k: v for k, v in crafted().items() if k != "num_bins"}, num_bins=5)
    assert pattern_checks([*ls, ens])[-1][1] == "inconclusive"
