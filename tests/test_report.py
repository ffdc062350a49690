"""The report refuses what it cannot compare or place (report.check_result, check_comparable),
through the functions and through `ensdist-report`; the paper-pattern checks need strict wins."""

import json

import pytest

from ensdist_fairseq.cli import report as report_cli
from ensdist_fairseq.report import table2 as report
from ensdist_fairseq.report.paper_pattern import pattern_checks


def full_result(
    name, method="CE+SWA", kind="individual", n=1, bleu=20.0, ece1=3.0, split="test", num_bins=10
):
    bins = {"confidence": [0.2, 0.8], "accuracy": [0.25, 0.7], "count": [5, 5]}
    return {
        "schema_version": 1,
        "name": name,
        "method": method,
        "kind": kind,
        "num_models": n,
        "split": split,
        "num_bins": num_bins,
        "bleu": bleu,
        "bleu_signature": "nrefs:1",
        "ece1": {"unweighted": ece1 / 100, "weighted": ece1 / 100},
        "ece5": {"unweighted": 0.01, "weighted": 0.01},
        "brier": 0.5,
        "nll": 2.0,
        "accuracy": 0.5,
        "num_tokens": 10,
        "reliability": {"top1": bins, "top5": bins},
    }


def write_results(directory, results):
    for r in results:
        (directory / f"{r['name']}.json").write_text(json.dumps(r))


def run_report(tmp_path, results, capsys):
    res = tmp_path / "results"
    res.mkdir()
    write_results(res, results)
    rc = report_cli.main([str(res), "--out", str(tmp_path / "out")])
    return rc, capsys.readouterr().err


def test_a_comparable_run_reports(tmp_path, capsys):
    rc, err = run_report(tmp_path, [full_result("a"), full_result("b", bleu=21.0)], capsys)
    assert rc == 0, err
    assert "| CE+SWA | Individual | Avg (n=2) |" in (tmp_path / "out" / "report.md").read_text()


def test_the_report_names_where_its_numbers_were_measured(tmp_path, capsys):
    here = {"cpu": "Some CPU", "cpu_count": 2, "accelerator": None, "torch": "2.0+cpu"}
    here.update(numpy="2.0", python="3.11.1", date="2026-12-01")
    gpu = dict(here, accelerator="NVIDIA H200", date="2026-12-03")
    one = [dict(full_result("a"), environment=here), dict(full_result("b"), environment=here)]
    rc, err = run_report(tmp_path, one, capsys)
    text = (tmp_path / "out" / "report.md").read_text()
    assert rc == 0, err
    assert text.startswith(
        "Measured on: Some CPU (2 cores), torch 2.0+cpu, numpy 2.0, Python 3.11.1 (2026-12-01)."
    )
    mixed = [dict(full_result("a"), environment=here), dict(full_result("b"), environment=gpu)]
    mixed.append(full_result("c"))  # written before results recorded it
    (tmp_path / "m").mkdir()
    rc, err = run_report(tmp_path / "m", mixed, capsys)
    text = (tmp_path / "m" / "out" / "report.md").read_text()
    assert rc == 0, err
    assert text.startswith("Measured on 3 environments (2026-12-01 to 2026-12-03)")
    assert "- NVIDIA H200, torch 2.0+cpu, numpy 2.0, Python 3.11.1: b" in text
    assert "- not recorded: c" in text


def test_unknown_kind_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"x\.json: kind 'teacher' is not one of"):
        report.check_result(full_result("t", kind="teacher"), "x.json")
    report.check_result(full_result("ok"), "ok.json")  # a good one passes
    rc, err = run_report(tmp_path, [full_result("a"), full_result("t", kind="teacher")], capsys)
    assert (
        rc == 1
        and "t.json: kind 'teacher'" in err
        and not (tmp_path / "out" / "report.md").exists()
    )


@pytest.mark.parametrize("key,value", [("split", "valid"), ("num_bins", 15)])
def test_results_of_another_split_or_binning_are_refused(tmp_path, capsys, key, value):
    results = [full_result("a"), full_result("b", **{key: value})]
    with pytest.raises(ValueError, match=f"b.json: {key} .* differs from a.json"):
        report.check_comparable(results, ["a.json", "b.json"])
    report.check_comparable(results[:1] * 2, ["a.json", "a2.json"])
    rc, err = run_report(tmp_path, results, capsys)
    assert rc == 1 and f"b.json: {key}" in err and not (tmp_path / "out" / "report.md").exists()


def test_ties_are_not_wins():
    """A value on the edge of the members' interval is inside it: inconclusive, never a win."""
    members = [full_result("m1", bleu=20.0, ece1=4.0), full_result("m2", bleu=22.0, ece1=2.0)]
    # two members: mean 21, sd sqrt(2), t(0.975, 1) = 12.706: interval 21 ± 12.706
    hi = 21.0 + 12.7062047362
    edge = [*members, full_result("e", kind="ensemble", n=2, bleu=hi - 1e-6, ece1=-10.0)]
    assert pattern_checks(edge)[0][1] == "inconclusive"
    past = [*members, full_result("e", kind="ensemble", n=2, bleu=hi + 0.01, ece1=-10.0)]
    assert pattern_checks(past)[0][1] == "holds"


def test_dirichlet_students_are_labelled_by_the_predictive_their_result_records():
    soft = dict(full_result("pd", kind="student"), dirichlet_predictive="softmax")
    mean = dict(full_result("pd-2", kind="student"), dirichlet_predictive="mean")
    other = dict(full_result("kd", kind="student"), dirichlet_predictive=None)
    text = report.table2_markdown([soft, mean, other])
    assert "Distilled (pd, read as softmax(z))" in text
    assert "Distilled (pd-2, read as α/α₀)" in text and "Distilled (kd) |" in text


def test_members_row_shows_the_t_interval_and_missing_bleu_is_a_dash(tmp_path, capsys):
    from scipy import stats

    rc, err = run_report(
        tmp_path,
        [
            full_result("a", bleu=20.0),
            full_result("b", bleu=22.0),
            full_result("e", kind="ensemble", n=2, bleu=None),
        ],
        capsys,
    )
    assert rc == 0, err
    text = (tmp_path / "out" / "report.md").read_text()
    half = stats.t.ppf(0.975, 1) * 1.0  # sd sqrt(2) / sqrt(2)
    assert f"| 21.00 [{21 - half:.2f}, {21 + half:.2f}] |" in text
    assert "| Ensemble | 2 | – |" in text and "nan" not in text.lower()


def test_table_helper_refuses_a_malformed_row():
    from ensdist_fairseq.report.markdown import number, table

    assert table(["a", "b"], [[1, "x|y"]], "lr") == "| a | b |\n|---|---:|\n| 1 | x\\|y |\n"
    with pytest.raises(ValueError, match="a row of 1 cells in a table of 2 columns"):
        table(["a", "b"], [[1]])
    assert number(float("nan")) == "–" and number(None, missing="not measured") == "not measured"


def test_temperature_scaled_rows_are_labelled_and_left_out_of_the_claims(tmp_path, capsys):
    scaled = full_result("e-ts", kind="ensemble", n=2, bleu=21.0, ece1=0.1)
    scaled["temperature"] = 1.234
    members = [full_result("a", bleu=20.0, ece1=3.0), full_result("b", bleu=20.5, ece1=3.5)]
    rc, err = run_report(tmp_path, [*members, scaled], capsys)
    assert rc == 0, err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| Ensemble | 2 (T=1.23) |" in text and "| e-ts (T=1.23) |" in text
    assert pattern_checks([*members, scaled])[0][1] == "not measured"  # no unscaled ensemble


def test_a_temperature_scaled_member_is_not_averaged_with_the_members(tmp_path, capsys):
    members = [full_result("a", bleu=20.0, ece1=3.0), full_result("b", bleu=22.0, ece1=5.0)]
    scaled = dict(full_result("a-ts", bleu=20.0, ece1=0.5), temperature=1.5)
    rc, err = run_report(tmp_path, [*members, scaled], capsys)
    assert rc == 0, err
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| CE+SWA | Individual | Avg (n=2) | 21.00 " in text  # the mean of a and b only
    assert "|  |  | 1 (T=1.50) | 20.00 | 0.500 |" in text
