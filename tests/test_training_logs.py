"""Learning curves and the report's regime section, from fairseq-train logs."""

import subprocess
import sys

import pytest

from ensdist_fairseq.cli.learning_curves import main as curves_main
from ensdist_fairseq.report.regime import regime_markdown, regime_rows
from ensdist_fairseq.report.train_logs import parse_train_log

P = "2026-11-28 00:00:00 | INFO | "


def fake_log(losses, eces=None, early_stop=None, nlls=None):
    lines = [P + "fairseq_cli.train | task: TranslationDistillTask"]
    for e, loss in enumerate(losses, 1):
        ece = f" | ece1 {eces[e - 1]} | ece5 0.5" if eces else ""
        lines.append(
            P + f"valid | epoch {e:03d} | valid on 'valid' subset | loss {loss} | "
            f"nll_loss {nlls[e - 1] if nlls else loss} | ppl 9{ece} | wps 1000 | num_updates {64 * e} | best_loss {min(losses[:e])}"
        )
        lines.append(
            P + f"valid | epoch {e:03d} | valid on 'test' subset | loss 1.0 | nll_loss 1.0"
        )
        lines.append(
            P
            + f"train | epoch {e:03d} | loss 9 | nll_loss 9 | wps 6000 | train_wall {10 + e} | wall 99"
        )
    if early_stop:
        lines.append(
            P
            + f"fairseq_cli.train | early stop since valid performance hasn't improved for last {early_stop} runs"
        )
    lines.append(P + "fairseq_cli.train | done training in 99.0 seconds")
    return "\n".join(lines) + "\n"


def test_parse_best_epoch_early_stop_and_subset():
    run = parse_train_log(
        fake_log([7.0, 6.0, 5.5, 5.5, 5.6, 5.7], [2, 3, 4, 5, 6, 7], early_stop=3)
    )
    assert run.epochs == [1, 2, 3, 4, 5, 6] and run.last_epoch == 6
    assert run.best_epoch == 3  # the first of equal minima, as fairseq's strict "better"
    assert run.valid[3]["ece1"] == 4 and run.valid[2]["loss"] == 6.0  # the 'test' lines are ignored
    assert run.stopped_early and run.early_stop_patience == 3
    assert run.train[6]["train_wall"] == 16
    assert not parse_train_log(fake_log([7.0, 6.0])).stopped_early


def test_best_epoch_is_by_the_references_nll_not_the_smoothed_loss():
    # a label-smoothed member: its criterion loss and its NLL can have their minima apart;
    # early stopping (--best-checkpoint-metric nll_loss) and the logs' reading follow the NLL
    run = parse_train_log(fake_log([7.0, 6.0, 6.1, 6.2], nlls=[6.5, 5.6, 5.5, 5.7]))
    assert run.metric == "nll_loss" and run.best_epoch == 3


def test_curves_table_and_png(tmp_path):
    ce = tmp_path / "ce.log"
    ce.write_text(fake_log([7.0, 6.0, 5.0, 5.2, 5.3], [2, 3, 5, 7, 9], early_stop=2))
    ls = tmp_path / "ls.log"
    ls.write_text(fake_log([7.5, 6.5, 6.0]))  # no ECE in this one
    md_path, png = tmp_path / "c.md", tmp_path / "c.png"
    assert (
        curves_main(
            [
                "--run",
                f"CE={ce}",
                "--run",
                f"LS={ls}",
                "--output-md",
                str(md_path),
                "--output-png",
                str(png),
                "--title",
                "t",
            ]
        )
        == 0
    )
    md = md_path.read_text()
    assert "| 3 | 5.000 **(best)** | 5.00 | 6.000 **(best)** | – |" in md
    assert "| 5 | 5.300 | 9.00 |  |  |" in md
    assert "CE: best epoch 3" in md and "early stop (patience 2)" in md and "LS: best epoch 3" in md
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_curves_cli_errors(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensdist_fairseq.cli.learning_curves",
            "--run",
            f"x={tmp_path / 'nope.log'}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "nope.log" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty.log").write_text("nothing\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensdist_fairseq.cli.learning_curves",
            "--run",
            f"x={tmp_path / 'empty.log'}",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "no validation lines" in r.stderr


def test_regime_rows_from_result_paths(tmp_path):
    def result(name, kind, method, log, paths_n=1):
        d = tmp_path / name
        d.mkdir()
        if log is not None:
            (d / "train.log").write_text(log)
        paths = [str(d / "checkpoint_swa.pt")] * paths_n
        return {"name": name, "kind": kind, "method": method, "paths": paths}

    results = [
        result(
            "ce-seed1",
            "individual",
            "CE+SWA",
            fake_log([7, 6, 5, 5.1, 5.2], [1, 2, 3, 4, 5], early_stop=2),
        ),
        result("ce-seed2", "individual", "CE+SWA", fake_log([7, 6, 5.5])),  # hit the cap
        result("ce-ensemble2", "ensemble", "CE+SWA", None, paths_n=2),
        result("student-x", "student", "CE+SWA", fake_log([6, 5, 4.5, 4.6], early_stop=1)),
        result("no-log", "individual", "LS+SWA", None),
    ]
    rows = {r["name"]: r for r in regime_rows(results)}
    assert set(rows) == {"ce-seed1", "ce-seed2", "student-x"}
    assert (rows["ce-seed1"]["last_epoch"], rows["ce-seed1"]["best_epoch"]) == (5, 3)
    assert rows["ce-seed1"]["best_loss"] == 5 and rows["ce-seed1"]["best_ece1"] == 3
    assert rows["ce-seed1"]["plateau"] and not rows["ce-seed2"]["plateau"]
    assert rows["student-x"]["best_ece1"] is None
    md = regime_markdown(results)
    assert "| ce-seed1 | CE+SWA | checkpoint_swa.pt | 5 | 3 | 5.000 | 3.00 | yes |" in md
    assert (
        "| ce-seed2 | CE+SWA | checkpoint_swa.pt | 3 | 3 | 5.500 | – | **no** (epoch cap) |" in md
    )
    assert "2 of 3 models reached their plateau" in md
    assert regime_markdown(results[2:3]) == ""  # nothing to say without logs


def json_log(losses, nlls, early_stop=None):
    """What fairseq-train --log-format json writes (JsonProgressBar.print: keys prefixed)."""
    import json

    lines = [P + "fairseq_cli.train | task: TranslationDistillTask"]
    for e, (loss, nll) in enumerate(zip(losses, nlls), 1):
        inner = {"epoch": e, "update": 0.5, "loss": "9", "wps": "1"}  # train_inner: not an epoch
        lines.append(P + "train_inner | " + json.dumps(inner))
        valid = {"epoch": e, "valid_loss": str(loss), "valid_nll_loss": str(nll), "valid_ece1": "4"}
        lines.append(P + "valid | " + json.dumps({**valid, "valid_best_loss": str(min(losses))}))
        lines.append(P + "test | " + json.dumps({"epoch": e, "test_loss": "1.0"}))
        lines.append(P + "train | " + json.dumps({"epoch": e, "train_train_wall": str(10 + e)}))
    if early_stop:
        lines.append(
            P + "fairseq_cli.train | early stop since valid performance hasn't improved for "
            f"last {early_stop} runs"
        )
    return "\n".join(lines) + "\n"


def test_json_log_format_reads_like_the_simple_one():
    losses, nlls = [7.0, 6.0, 6.1, 6.2], [6.5, 5.6, 5.5, 5.7]
    run = parse_train_log(json_log(losses, nlls, early_stop=2))
    simple = parse_train_log(fake_log(losses, nlls=nlls, early_stop=2))
    assert run.epochs == simple.epochs == [1, 2, 3, 4]
    assert run.best_epoch == simple.best_epoch == 3 and run.metric == "nll_loss"
    assert run.valid[2]["loss"] == 6.0 and run.valid[2]["ece1"] == 4.0  # not the 'test' subset
    assert run.train[4]["train_wall"] == 14 and run.stopped_early
    test_run = parse_train_log(json_log(losses, nlls), subset="test")
    assert test_run.valid[1]["loss"] == 1.0
