"""Progress lines of long commands (cli/progress.py): every --log-interval units and at the end,
with the rate and the time left, as text or JSON, or none."""

import argparse
import json
import os

import pytest

from ensdist_fairseq.cli import progress


def _args(fmt, interval):
    return argparse.Namespace(log_format=fmt, log_interval=interval)


def test_lines_every_interval_and_at_the_end(capsys):
    p = progress.Progress("evaluate", "sys", "decoding", 25, "sentences", _args("json", 10))
    for _ in range(25):
        p.update()
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert [x["done"] for x in lines] == [10, 20, 25]
    assert all(x["total"] == 25 and x["stage"] == "decoding" and x["per_second"] > 0 for x in lines)
    assert lines[-1]["seconds_left"] == 0


def test_batches_of_several_units_cross_the_interval_once(capsys):
    p = progress.Progress("evaluate", "sys", "scoring", 100, "sentences", _args("simple", 30))
    for n in (16, 16, 16, 16, 16, 20):
        p.update(n)
    lines = capsys.readouterr().err.splitlines()
    assert [x.split(" scoring ")[1].split("/")[0] for x in lines] == ["32", "64", "100"]
    assert lines[0].startswith("[evaluate] sys: scoring 32/100 sentences (32.0%), ")
    assert lines[0].endswith(" s left") and "sentences/s" in lines[0]


def test_none_prints_nothing(capsys):
    p = progress.Progress("uncertainty", "sys", "test", 5, "sentences", _args("none", 1))
    for _ in range(5):
        p.update()
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_evaluate_reports_scoring_and_decoding(tiny_data, tiny_checkpoints, tmp_path, capsys):
    from ensdist_fairseq.cli import evaluate

    out = str(tmp_path / "r.json")
    assert (
        evaluate.main(
            [
                tiny_data,
                "--path",
                tiny_checkpoints[0],
                "--name",
                "m",
                "--cpu",
                "--beam",
                "2",
                "--log-format",
                "json",
                "--log-interval",
                "15",
                "--no-progress-bar",
                "--output",
                out,
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    for stage in ("scoring", "decoding"):
        done = [x["done"] for x in lines if x["stage"] == stage]
        assert done and done[-1] == 40 and done == sorted(done), (stage, done)
    assert os.path.isfile(out)
