"""ensdist-export: a Dirichlet student that plain fairseq (no --user-dir) decodes identically."""

import os
import subprocess

import pytest
import tiny_fairseq
import torch

import ensdist_fairseq
from ensdist_fairseq.cli.export import main

pytestmark = pytest.mark.slow  # trains a tiny student and runs fairseq-generate

USER_DIR = os.path.dirname(ensdist_fairseq.__file__)


@pytest.fixture(scope="module")
def student(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("dirichlet")
    arch = list(tiny_fairseq.TINY_ARCH_ARGS)
    arch[arch.index("transformer")] = "dirichlet_transformer"
    cmd = [os.path.join(tiny_fairseq.BIN, "fairseq-train"), tiny_data, *arch, "--user-dir"]
    cmd += [USER_DIR, "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
    cmd += ["--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt"]
    cmd += ["--warmup-updates", "10", "--max-tokens", "600", "--max-update", "60", "--cpu"]
    cmd += ["--save-dir", str(root), "--no-epoch-checkpoints", "--seed", "1", "--eval-bleu"]
    cmd += ["--eval-bleu-detok", "space", "--eval-bleu-args", '{"beam": 1, "max_len_b": 10}']
    tiny_fairseq.run(cmd)  # --eval-bleu: numpy arrays in the metrics, which the export drops
    return str(root / "checkpoint_last.pt")


def _generate(data, path, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # plain fairseq: the plugin is not importable as a side effect
    cmd = [os.path.join(tiny_fairseq.BIN, "fairseq-generate"), data, "--path", path, "--cpu"]
    cmd += ["--beam", "3", "--gen-subset", "valid", "--max-tokens", "2000", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/")
    lines = sorted(x for x in p.stdout.splitlines() if x[:2] in ("H-", "P-"))
    return p, lines


def test_plain_fairseq_decodes_the_export_identically(student, tiny_data, tmp_path):
    out = str(tmp_path / "plain.pt")
    assert main(["--path", student, "--output", out]) == 0
    state = torch.load(out)  # torch's default loader: weights_only, no allow-list added here
    assert state["cfg"]["model"]["arch"] == "transformer"
    plain, plain_lines = _generate(tiny_data, out)
    assert plain.returncode == 0, plain.stderr[-3000:]
    ours, our_lines = _generate(tiny_data, student, "--user-dir", USER_DIR)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert len(plain_lines) == 2 * 40 and plain_lines == our_lines  # hypotheses and scores
    refused, _ = _generate(tiny_data, student)  # the student itself: plain fairseq cannot
    assert refused.returncode != 0


def test_export_refuses_what_it_cannot_keep_identical(student, tiny_checkpoints, tmp_path, capsys):
    assert main(["--path", tiny_checkpoints[0], "--output", str(tmp_path / "x.pt")]) == 1
    assert "is not a dirichlet_transformer" in capsys.readouterr().err
    mean = str(tmp_path / "mean.pt")
    state = torch.load(student, weights_only=True)
    state["cfg"]["model"].dirichlet_predictive = "mean"
    torch.save(state, mean)
    assert main(["--path", mean, "--output", str(tmp_path / "y.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decode with the Dirichlet mean (mean)" in err
    assert not os.path.exists(tmp_path / "y.pt")
    del state["cfg"]["model"].dirichlet_predictive  # saved before the option: loads as mean
    torch.save(state, mean)
    assert main(["--path", mean, "--output", str(tmp_path / "y.pt")]) == 1
    assert "records no dirichlet_predictive" in capsys.readouterr().err
    assert main(["--path", mean, "--output", str(tmp_path / "y.pt"), "--softmax-predictive"]) == 0
