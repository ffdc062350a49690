"""`fairseq-generate --scoring ece` (evaluation/ece_scorer.py + the task's inference_step)
reports the numbers ensdist-evaluate reports on the same models and split."""

import json
import os
import re
import subprocess
import sys

import pytest

from ensdist_fairseq.cli import evaluate

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(evaluate.__file__)))
NUMBER = r"([0-9.]+)"
LINE = re.compile(
    rf"ECE-1 = {NUMBER} % \| ECE-5 = {NUMBER} % \(unweighted over (\d+) equal-count "
    rf"bins; weighted {NUMBER} % / {NUMBER} %\) \| NLL = {NUMBER} .* (\d+) tokens"
)


def generate(data, paths, *extra):
    p = subprocess.run(
        [
            os.path.join(BIN, "fairseq-generate"),
            data,
            "--user-dir",
            USER_DIR,
            "--path",
            ":".join(paths),
            "--cpu",
            "--beam",
            "2",
            "--max-tokens",
            "300",
            "--required-batch-size-multiple",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.mark.parametrize("members,bins", [(2, 10), (1, 7)])
def test_ece_scorer_matches_ensdist_evaluate(tiny_data, tiny_checkpoints, tmp_path, members, bins):
    paths = tiny_checkpoints[:members]
    out = generate(
        tiny_data,
        paths,
        "--task",
        "translation_distill",
        "--scoring",
        "ece",
        "--ece-num-bins",
        str(bins),
    )
    assert "H-0\t" in out  # fairseq-generate's usual output is still there
    m = LINE.search(out.splitlines()[-1])
    assert m, out.splitlines()[-1]
    ece1, ece5, nbins, ece1_w, ece5_w, nll, tokens = m.groups()
    assert (
        evaluate.main(
            [
                tiny_data,
                "--path",
                ":".join(paths),
                "--name",
                "x",
                "--cpu",
                "--no-bleu",
                "--num-bins",
                str(bins),
                "--output-json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    r = json.loads((tmp_path / "r.json").read_text())
    assert int(nbins) == r["num_bins"] == bins and int(tokens) == r["num_tokens"]
    assert float(ece1) == pytest.approx(100 * r["ece1"]["unweighted"], abs=1e-4)
    assert float(ece5) == pytest.approx(100 * r["ece5"]["unweighted"], abs=1e-4)
    assert float(ece1_w) == pytest.approx(100 * r["ece1"]["weighted"], abs=1e-4)
    assert float(ece5_w) == pytest.approx(100 * r["ece5"]["weighted"], abs=1e-4)
    assert float(nll) == pytest.approx(r["nll"], abs=1e-4)


def test_ece_scorer_says_so_without_the_distillation_task(tiny_data, tiny_checkpoints):
    out = generate(
        tiny_data, tiny_checkpoints[:1], "--task", "translation", "--scoring", "ece", "--quiet"
    )
    assert "ECE: no teacher-forced tokens were scored" in out.splitlines()[-1]
