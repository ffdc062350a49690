"""`ensdist-evaluate` end to end on the tiny checkpoints, ensemble scoring, bad inputs, report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch

from ensdist_fairseq.cli import evaluate
from ensdist_fairseq.cli import report as report_cli
from ensdist_fairseq.metrics.calibration import expected_calibration_error
from ensdist_fairseq.teachers.teacher_forcing import ensemble_log_probs

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands


class FixedLogits(torch.nn.Module):
    """A stand-in model whose output logits are fixed; normalizes like a fairseq decoder."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, **net_input):
        return (self.logits, {})

    def get_normalized_probs(self, net_output, log_probs):
        f = torch.log_softmax if log_probs else torch.softmax
        return f(net_output[0], dim=-1)


def test_ensemble_averages_probabilities_not_logits():
    a = torch.tensor([[[4.0, 0.0, -2.0]]])
    b = torch.tensor([[[-1.0, 3.0, 0.0]]])
    got = ensemble_log_probs([FixedLogits(a), FixedLogits(b)], {}).exp()
    mean_probs = (torch.softmax(a, -1) + torch.softmax(b, -1)) / 2
    torch.testing.assert_close(got, mean_probs)
    assert not torch.allclose(got, torch.softmax((a + b) / 2, -1), atol=1e-3)
    torch.testing.assert_close(ensemble_log_probs([FixedLogits(a)], {}), torch.log_softmax(a, -1))


def independent_ensemble_metrics(data_dir, paths):
    """Sentence by sentence, softmax of each member's logits, probabilities averaged."""
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        paths, arg_overrides={"data": data_dir}
    )
    task.load_dataset("test")
    ds = task.dataset("test")
    pad = task.target_dictionary.pad()
    probs, targets = [], []
    with torch.no_grad():
        for m in models:
            m.eval()
        for i in range(len(ds)):
            sample = ds.collater([ds[i]])
            p = sum(torch.softmax(m(**sample["net_input"])[0].double(), -1) for m in models)
            keep = sample["target"][0].ne(pad)
            probs.append((p[0] / len(models))[keep].numpy())
            targets.append(sample["target"][0][keep].numpy())
    p, y = np.concatenate(probs), np.concatenate(targets)
    top5 = np.argsort(-p, 1, kind="stable")[:, :5]
    c5, k5 = np.take_along_axis(p, top5, 1), top5 == y[:, None]
    onehot = np.eye(p.shape[1])[y]
    return {
        "num_sentences": len(ds),
        "num_tokens": len(y),
        "ece1": {
            w: expected_calibration_error(c5[:, 0], k5[:, 0], 10, w == "weighted")
            for w in ("weighted", "unweighted")
        },
        "ece5": {
            w: expected_calibration_error(c5, k5, 10, w == "weighted")
            for w in ("weighted", "unweighted")
        },
        "nll": float(-np.mean(np.log(p[np.arange(len(y)), y]))),
        "brier": float(np.mean(((p - onehot) ** 2).sum(1))),
        "accuracy": float(np.mean(p.argmax(1) == y)),
    }


def run_cli(args, capsys):
    rc = evaluate.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_ensemble_of_two_matches_independent_computation(
    tiny_data, tiny_checkpoints, tmp_path, capsys
):
    out_json = tmp_path / "ens2.json"
    rc, out, _err = run_cli(
        [
            tiny_data,
            "--path",
            ":".join(tiny_checkpoints),
            "--name",
            "ens2",
            "--method",
            "CE",
            "--output-json",
            out_json,
            "--cpu",
            "--max-tokens",
            100,
        ],
        capsys,
    )  # several batches
    assert rc == 0 and "ens2" in out and "ECE-1" in out
    r = json.loads(out_json.read_text())
    assert not list(tmp_path.glob("*.tmp*"))
    assert r["environment"]["torch"] == torch.__version__ and r["environment"]["cpu"]
    for key in (
        "name",
        "paths",
        "num_models",
        "split",
        "bleu",
        "bleu_signature",
        "ece1",
        "ece5",
        "brier",
        "brier_plus",
        "nll",
        "accuracy",
        "num_tokens",
        "reliability",
        "kind",
        "method",
    ):
        assert key in r
    assert r["kind"] == "ensemble" and r["num_models"] == 2 and r["split"] == "test"
    ref = independent_ensemble_metrics(tiny_data, tiny_checkpoints)
    assert r["num_sentences"] == ref["num_sentences"] and r["num_tokens"] == ref["num_tokens"]
    for key in ("ece1", "ece5"):
        for form in ("weighted", "unweighted"):
            assert r[key][form] == pytest.approx(ref[key][form], abs=1e-4)
    for key in ("nll", "brier", "accuracy"):
        assert r[key] == pytest.approx(ref[key], abs=1e-4)
    assert sum(r["reliability"]["top5"]["count"]) == 5 * r["num_tokens"]


def test_single_model_with_bleu_and_report(tiny_data, tiny_checkpoints, tmp_path, capsys):
    runs = [
        ("m1", [tiny_checkpoints[0]], ["--bleu"]),
        ("m2", [tiny_checkpoints[1]], ["--no-bleu"]),
        ("ens", tiny_checkpoints, ["--no-bleu"]),
    ]
    for name, paths, extra in runs:
        rc, _out, err = run_cli(
            [
                tiny_data,
                "--path",
                ":".join(paths),
                "--name",
                name,
                "--method",
                "CE+SWA",
                "--output-json",
                tmp_path / f"{name}.json",
                "--cpu",
                *extra,
            ],
            capsys,
        )
        assert rc == 0, err
    m1 = json.loads((tmp_path / "m1.json").read_text())
    assert m1["kind"] == "individual" and isinstance(m1["bleu"], float)
    assert m1["bleu_signature"].startswith("nrefs:1")
    (tmp_path / "unrelated.json").write_text('{"other": 1}')  # skipped: no schema_version
    assert report_cli.main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "report.md").read_text()
    e1 = [
        100 * json.loads((tmp_path / f"m{i}.json").read_text())["ece1"]["unweighted"]
        for i in (1, 2)
    ]
    mean, se = np.mean(e1), np.std(e1, ddof=1) / np.sqrt(2)
    half = scipy.stats.t.ppf(0.975, 1) * se  # the members' 95 % t interval over seeds
    assert "| CE+SWA | Individual | Avg (n=2) |" in table
    assert f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]" in table
    assert len(m1["bleu_sentence_stats"]) == m1["num_sentences"]  # the report's bootstrap
    assert all(len(row) == 10 for row in m1["bleu_sentence_stats"])
    assert "| Ensemble | 2 |" in table
    png = tmp_path / "rep" / "reliability_CE_SWA.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _single_error_line(err):
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("error: ")
    return lines[-1]


def test_bad_inputs_give_one_line_errors(tiny_data, tiny_checkpoints, tmp_path, capsys):
    good = tiny_checkpoints[0]
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("hello")
    other_dict = tmp_path / "other_dict.pt"  # a member trained with another (smaller) dictionary
    state = torch.load(good, weights_only=True)
    for k in [
        k for k in state["model"] if k.endswith(("embed_tokens.weight", "output_projection.weight"))
    ]:
        state["model"][k] = state["model"][k][:-3]
    torch.save(state, other_dict)
    nan_model = tmp_path / "nan_model.pt"  # outputs NaN at every position
    state = torch.load(good, weights_only=True)
    state["model"]["decoder.layers.0.final_layer_norm.bias"][0] = float("nan")
    torch.save(state, nan_model)
    out = tmp_path / "r.json"
    cases = [
        ([tmp_path / "nope", "--path", good], "nope"),
        ([tiny_data, "--path", tmp_path / "missing.pt"], "missing.pt"),
        ([tiny_data, "--path", not_ckpt], "notes.pt"),
        ([tiny_data, "--path", f"{good}:{other_dict}"], "other_dict.pt"),
        ([tiny_data, "--path", good, "--num-bins", 0], "--num-bins"),
        ([tiny_data, "--path", good, "--split", "nosuchsplit"], "nosuchsplit"),
        ([tiny_data, "--path", good, "--output", tmp_path / "no" / "dir.json"], "--output"),
        # checked before any work (the missing data directory is not reached)
        ([tmp_path / "nodata", "--path", good, "--output", "/sys/r.json"], "--output /sys"),
        ([tiny_data, "--path", f"{good}:{nan_model}"], "nan_model.pt: non-finite probabilities"),
        ([tiny_data, "--path", good, "--max-tokens", 3], "--max-tokens 3"),
        ([tiny_data, "--path", good, "--num-bins", 100000], "--num-bins 100000: more bins than"),
        ([tiny_data, "--path", good, "--beam", 0], "--beam"),
        ([tiny_data, "--path", good, "--nbest", 2], "unrecognized arguments: --nbest 2"),
    ]
    for args, named in cases:
        if "--output" not in args:
            args = [*args, "--output", out]
        rc, _o, err = run_cli([*args, "--name", "x", "--no-bleu", "--cpu"], capsys)
        assert rc != 0
        assert named in _single_error_line(err)
        assert not out.exists()


def test_bad_flag_from_the_command_line_exits_without_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "ensdist-evaluate")
    p = subprocess.run(
        [
            exe,
            str(tmp_path),
            "--path",
            "a.pt",
            "--name",
            "x",
            "--num-bins",
            "0",
            "--output-json",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 2  # a wrong command line (cli/options.py)
    assert _single_error_line(p.stderr) == (
        "error: argument --num-bins: must be in 1..2147483647, "
        "got 0 (see ensdist-evaluate --help)"
    )


def test_failed_final_write_keeps_the_result(
    tiny_data, tiny_checkpoints, tmp_path, capsys, monkeypatch
):
    from ensdist_fairseq import atomic_files

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_files, "write_text_atomically", disk_full)
    rc, _out, err = run_cli(
        [
            tiny_data,
            "--path",
            tiny_checkpoints[0],
            "--name",
            "kept",
            "--no-bleu",
            "--cpu",
            "--output-json",
            tmp_path / "r.json",
        ],
        capsys,
    )
    line = _single_error_line(err)
    assert rc == 1 and "--output" in line and "No space left on device" in line
    kept = line.rsplit("saved to ", 1)[1]
    try:
        assert json.loads(open(kept).read())["name"] == "kept"
    finally:
        os.remove(kept)


def test_bleu_table_decodes_in_process_like_evaluate(tiny_data, tiny_checkpoints, tmp_path, capsys):
    from ensdist_fairseq.cli import bleu_table

    gen = ["--beam", "3", "--max-len-a", "1.5", "--max-len-b", "10", "--post-process", "none"]
    assert (
        bleu_table.main(
            [
                tiny_data,
                "--path",
                ":".join(tiny_checkpoints),
                *gen,
                "--output-json",
                str(tmp_path / "t.json"),
                "--output-md",
                str(tmp_path / "t.md"),
            ]
        )
        == 0
    )
    table = json.loads((tmp_path / "t.json").read_text())
    assert [e["size"] for e in table["ensembles"]] == [1, 2]
    assert all(m["num_sentences"] == 40 for m in table["members"])
    for name, paths, bleu in (
        ("m2", tiny_checkpoints[1:], table["members"][1]["bleu"]),
        ("e2", tiny_checkpoints, table["ensembles"][1]["bleu"]),
    ):
        rc, _o, err = run_cli(
            [
                tiny_data,
                "--path",
                ":".join(paths),
                "--name",
                name,
                "--cpu",
                *gen,
                "--output-json",
                tmp_path / f"{name}.json",
            ],
            capsys,
        )
        assert rc == 0, err
        assert json.loads((tmp_path / f"{name}.json").read_text())["bleu"] == bleu
    capsys.readouterr()
    assert (
        bleu_table.main(
            [
                tiny_data,
                "--path",
                tiny_checkpoints[0],
                "--nbest",
                "2",
                "--output-json",
                str(tmp_path / "u.json"),
                "--output-md",
                str(tmp_path / "u.md"),
            ]
        )
        == 2
    )
    assert "unrecognized arguments: --nbest 2" in _single_error_line(capsys.readouterr().err)
