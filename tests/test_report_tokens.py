"""ECE-1 and NLL over test sentences: the per-token sidecar ensdist-evaluate writes, and the
report's resampling of it, against loops written independently."""

import json

import numpy as np
import pytest

from ensdist_fairseq.metrics.calibration import expected_calibration_error
from ensdist_fairseq.report import bootstrap as B
from ensdist_fairseq.results import read_token_file, token_file_of


def crafted(n=30, seed=0, decimals=None):
    g = np.random.default_rng(seed)
    lengths = g.integers(1, 6, size=n)
    sentence = np.repeat(np.arange(n), lengths).astype(np.int32)
    conf = g.uniform(0.05, 1.0, size=len(sentence)).astype(np.float32)
    correct = g.uniform(size=len(sentence)) < conf
    if decimals is not None:  # tied confidences: the tie order (incorrect first) matters
        conf = conf.round(decimals)
    tokens = {
        "sentence": sentence,
        "confidence": conf,
        "correct": correct,
        "log_prob": np.log(g.uniform(0.01, 1, size=len(sentence))).astype(np.float32),
    }
    return {"num_sentences": n, "num_bins": 5, "num_tokens": len(sentence), "_tokens": tokens}


@pytest.mark.parametrize("decimals", [None, 1])
def test_resampled_ece_and_nll_equal_a_loop_over_the_chosen_sentences(decimals):
    r = crafted(decimals=decimals)
    samples = B.token_samples(r)
    idx = B.sentence_indices(r["num_sentences"])
    t = r["_tokens"]
    for row in (0, 7):
        chosen = [i for s in idx[row] for i in range(len(t["sentence"])) if t["sentence"][i] == s]
        ece = 100 * expected_calibration_error(
            t["confidence"][chosen].astype(np.float64), t["correct"][chosen], 5, weighted=False
        )
        assert samples["ece1"][row] == pytest.approx(ece)
        assert samples["nll"][row] == pytest.approx(-t["log_prob"][chosen].astype(float).mean())
    same = B.token_samples(crafted(decimals=decimals))["ece1"]
    assert same == pytest.approx(samples["ece1"])  # same command, same numbers


def test_token_file_round_trip_and_mismatch(tmp_path):
    from ensdist_fairseq.errors import EnsdistError
    from ensdist_fairseq.results import write_token_file

    r = crafted()
    path = token_file_of(str(tmp_path / "a.json"))
    assert path.endswith("a.tokens.npz")
    write_token_file(path, r["_tokens"])
    result = {"token_file": "a.tokens.npz", "num_tokens": r["num_tokens"]}
    got = read_token_file(result, str(tmp_path / "a.json"))
    assert all(np.array_equal(got[k], r["_tokens"][k]) for k in got)
    with pytest.raises(EnsdistError, match="tokens, its result says"):
        read_token_file({**result, "num_tokens": 3}, str(tmp_path / "a.json"))
    assert read_token_file({"token_file": "gone.npz"}, str(tmp_path / "a.json")) is None


@pytest.mark.slow
def test_evaluate_writes_the_sidecar_and_the_report_uses_it(tiny_data, tiny_checkpoints, tmp_path):
    from ensdist_fairseq.cli import evaluate
    from ensdist_fairseq.cli import report as report_cli

    out = tmp_path / "ens.json"
    args = [tiny_data, "--path", ":".join(tiny_checkpoints), "--name", "ens", "--cpu"]
    assert evaluate.main([*args, "--no-bleu", "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    t = read_token_file(r, str(out))
    assert len(t["sentence"]) == r["num_tokens"] and set(t["sentence"]) == set(
        range(r["num_sentences"])
    )
    assert -t["log_prob"].astype(float).mean() == pytest.approx(r["nll"], abs=1e-5)
    ece = expected_calibration_error(
        t["confidence"].astype(float), t["correct"], r["num_bins"], False
    )
    assert ece == pytest.approx(r["ece1"]["unweighted"], abs=1e-6)
    assert report_cli.main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ens |"))
    assert row.count("[") == 1  # NLL with its interval (no BLEU here)
    assert "| default | Ensemble | 2 | – | " in text and "### All metrics\n\n| System" in text
