"""The teacher recipe end to end on a tiny slice, and its bad-input behaviour."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tiny_fairseq

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def sh(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", *args], capture_output=True, text=True, env=env, cwd=ROOT, **kw)


def tiny_config(tmp_path):
    cfg = tmp_path / "tiny.sh"
    cfg.write_text(
        f"source {ROOT}/configs/builtin_cpu.sh\n"
        "ARCH_ARGS=(" + " ".join(tiny_fairseq.TINY_ARCH_ARGS) + ")\n"
        "MAX_EPOCH=6\nPATIENCE=2\nSWA_EPOCHS=3\nGEN_ARGS=(--beam 2 --max-tokens 4000)\n"
    )
    return str(cfg)


def bleu_table(data, paths, out, *extra):
    return subprocess.run(
        [
            os.path.join(BIN, "ensdist-bleu-table"),
            data,
            "--path",
            ":".join(paths),
            "--beam",
            "2",
            "--output-json",
            str(out / "r.json"),
            "--output-md",
            str(out / "r.md"),
            *extra,
        ],
        capture_output=True,
        text=True,
    )


def test_two_member_ensemble_with_swa_and_bleu_table(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "teachers"
    r = sh(
        "scripts/train_ensemble.sh",
        "--config",
        cfg,
        "--data",
        tiny_data,
        "--out",
        str(out),
        "--mode",
        "ce",
        "--members",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert "ce member 2/2" in r.stdout
    members = [str(out / "ce" / f"seed{k}" / "checkpoint_swa.pt") for k in (1, 2)]
    assert all(os.path.isfile(p) for p in members)
    # seeds differ, so the members differ
    import torch

    from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint

    w = [load_checkpoint(p)["model"]["decoder.output_projection.weight"] for p in members]
    assert not torch.equal(w[0], w[1])
    # the stopping rule reached fairseq, and SWA averaged the window ending at the best epoch
    from ensdist_fairseq.checkpoints.swa import swa_window
    from ensdist_fairseq.report.train_logs import read_train_log

    for k in (1, 2):
        d = out / "ce" / f"seed{k}"
        cfg_ck = load_checkpoint(str(d / "checkpoint_best.pt"))["cfg"]["checkpoint"]
        assert cfg_ck["patience"] == 2 and cfg_ck["keep_last_epochs"] == 3 + 2
        assert cfg_ck["best_checkpoint_metric"] == "nll_loss"
        run = read_train_log(str(d / "train.log"))
        assert (
            "ece1" in run.valid[run.best_epoch]
        )  # validation calibration is on (--eval-calibration)
        assert run.stopped_early or run.last_epoch == 6
        snaps = load_checkpoint(str(d / "checkpoint_swa.pt"))["extra_state"]["swa"]["snapshots"]
        assert snaps == [f"checkpoint{e}.pt" for e in swa_window(run.best_epoch, 3)]
        assert not list(d.glob("checkpoint[0-9]*.pt"))
    # a second run skips finished members
    r2 = sh(
        "scripts/train_ensemble.sh",
        "--config",
        cfg,
        "--data",
        tiny_data,
        "--out",
        str(out),
        "--mode",
        "ce",
        "--members",
        "2",
    )
    assert r2.returncode == 0 and r2.stdout.count("skipping") == 2

    t = bleu_table(tiny_data, members, tmp_path)
    assert t.returncode == 0, t.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert [e["size"] for e in res["ensembles"]] == [1, 2]
    assert res["ensembles"][0]["bleu"] == res["members"][0]["bleu"]
    bleus = [m["bleu"] for m in res["members"]]
    assert res["individual"]["mean"] == pytest.approx(sum(bleus) / 2)
    assert res["individual"]["stderr"] == pytest.approx(abs(bleus[0] - bleus[1]) / 2)
    assert res["members"][0]["num_sentences"] == 40  # every test sentence decoded
    md = (tmp_path / "r.md").read_text()
    assert "individual (mean ± s.e., n=2)" in md and "| ensemble | 2 |" in md


def test_interrupted_member_resumes_from_last_checkpoint(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "teachers"
    # A member stopped after 3 epochs: the recipe must continue it, not restart it.
    tiny_fairseq.train_tiny(
        tiny_data,
        str(out / "ls" / "seed1"),
        seed=1,
        max_update=10**6,
        extra=[
            "--max-epoch",
            "3",
            "--label-smoothing",
            "0.1",
            "--criterion",
            "label_smoothed_cross_entropy",
        ],
        epoch_checkpoints=True,
    )
    r = sh(
        "scripts/train_ensemble.sh",
        "--config",
        cfg,
        "--data",
        tiny_data,
        "--out",
        str(out),
        "--mode",
        "ls",
        "--members",
        "1",
    )
    assert r.returncode == 0, r.stderr
    log = (out / "ls" / "seed1" / "train.log").read_text()
    assert "Loaded checkpoint" in log
    assert (
        "| train | epoch 001" not in log and "| train | epoch 004" in log
    )  # continued, not restarted
    assert (out / "ls" / "seed1" / "checkpoint_swa.pt").is_file()


def test_bad_inputs_give_one_clear_line(tiny_data, tiny_checkpoints, tmp_path):
    cfg = tiny_config(tmp_path)
    r = sh(
        "scripts/train_ensemble.sh",
        "--config",
        cfg,
        "--data",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path),
    )
    assert r.returncode != 0 and "missing" in r.stderr.strip().splitlines()[-1]
    r = sh(
        "scripts/train_ensemble.sh",
        "--config",
        str(tmp_path / "nope.sh"),
        "--data",
        tiny_data,
        "--out",
        str(tmp_path),
    )
    assert r.returncode != 0 and "nope.sh" in r.stderr
    r = sh(
        "scripts/train_ensemble.sh",
        "--config",
        cfg,
        "--data",
        tiny_data,
        "--out",
        str(tmp_path),
        "--mode",
        "xx",
    )
    assert r.returncode != 0 and "--mode" in r.stderr

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    t = bleu_table(tiny_data, [tiny_checkpoints[0], str(junk)], tmp_path)
    assert t.returncode == 1 and "junk.pt" in t.stderr and "Traceback" not in t.stderr
    assert not (tmp_path / "r.json").exists()

    # a member trained on data with another dictionary
    other = tmp_path / "other"
    tiny_fairseq.write_synthetic_raw(str(other / "raw"), vocab=25, seed=5)
    tiny_fairseq.binarize(str(other / "raw"), str(other / "bin"))
    foreign = tiny_fairseq.train_tiny(str(other / "bin"), str(other / "ck"), seed=1, max_update=2)
    t = bleu_table(tiny_data, [tiny_checkpoints[0], foreign], tmp_path)
    assert t.returncode == 1 and foreign in t.stderr and "dictionary" in t.stderr
    assert not (tmp_path / "r.json").exists()

    # same size, different content: caught by the dictionary checksum
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_data, swapped)
    lines = (swapped / "dict.de.txt").read_text().splitlines()
    (swapped / "dict.de.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    t = bleu_table(str(swapped), tiny_checkpoints[:1], tmp_path)
    assert t.returncode == 1 and "differs" in t.stderr
