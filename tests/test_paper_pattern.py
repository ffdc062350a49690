"""The paper-pattern checks answer each claim from the numbers, including 'no' and 'not measured'."""

from ensdist_fairseq.report.paper_pattern import pattern_checks, pattern_markdown


def result(method, kind, n, bleu, ece1, name=None):
    return {
        "name": name or f"{method}-{kind}-{n}",
        "method": method,
        "kind": kind,
        "num_models": n,
        "bleu": bleu,
        "ece1": {"unweighted": ece1 / 100, "weighted": 0},
    }


def test_claims_follow_the_numbers():
    results = [
        result("CE+SWA", "individual", 1, 20.0, 4.0),
        result("CE+SWA", "individual", 1, 22.0, 2.0),
        result("CE+SWA", "ensemble", 2, 22.5, 2.5),
        result("CE+SWA", "ensemble", 3, 23.0, 1.0),
        result("CE+SWA", "student", 1, 21.5, 2.9, name="kd"),  # mean is BLEU 21, ECE-1 3.0
        result("CE+SWA", "student", 1, 20.5, 1.0, name="rkl"),  # worse BLEU than the mean
        result("LS+SWA", "ensemble", 3, 23.0, 0.5),  # LS better calibrated here
    ]
    checks = pattern_checks(results)
    assert [c[1] for c in checks] == [True, True, False, False]
    assert "ensemble of 3" in checks[0][2]  # the largest ensemble is the one compared
    assert "21.00" in checks[1][2] and "3.000" in checks[1][2]
    md = pattern_markdown(checks)
    assert md.count("**no**") == 2 and md.count("| yes |") == 2


def test_missing_systems_are_not_measured():
    checks = pattern_checks([result("CE+SWA", "individual", 1, 20.0, 4.0)])
    assert [c[1] for c in checks] == [None, None]
