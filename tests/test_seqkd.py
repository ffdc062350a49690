"""ensdist-seqkd: the teachers' beam-search targets as a fairseq data directory, checked against
fairseq-generate's own output; sharded and resumed runs give the same files; a student trains."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from tiny_fairseq import TINY_ARCH_ARGS

import ensdist_fairseq
from ensdist_fairseq.cli.seqkd import main

pytestmark = pytest.mark.slow  # decodes with tiny models and runs fairseq commands

BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.dirname(os.path.abspath(ensdist_fairseq.__file__))  # safe loading's allow-list
SEARCH = ["--beam", "2", "--max-len-a", "1.5", "--max-len-b", "5"]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def seqkd(data, ckpts, out, *extra, env=None, capsys=None):
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return main(
            [
                data,
                "--path",
                ":".join(ckpts),
                "--out",
                str(out),
                "--cpu",
                "--chunk-sentences",
                "100",
                *SEARCH,
                *extra,
            ]
        )
    finally:
        os.environ.clear()
        os.environ.update(old)


@pytest.fixture(scope="module")
def distilled(tiny_data, tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("seqkd") / "distilled"
    assert seqkd(tiny_data, tiny_checkpoints, out) == 0
    return str(out)


def _generate_train(data, ckpts):
    """fairseq-generate's best hypothesis (as pieces) of every train sentence, by id."""
    p = subprocess.run(
        [
            os.path.join(BIN, "fairseq-generate"),
            data,
            "--path",
            ":".join(ckpts),
            "--gen-subset",
            "train",
            "--nbest",
            "1",
            "--user-dir",
            USER_DIR,
            "--batch-size",
            "64",
            "--required-batch-size-multiple",
            "1",
            "--cpu",
            *SEARCH,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    hyps = {}
    for line in p.stdout.splitlines():
        if line.startswith("H-"):
            head, _score, text = line.split("\t")
            hyps[int(head[2:])] = text
    return hyps


def _strings(directory, split, lang):
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(directory, f"dict.{lang}.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(directory, f"{split}.en-de.{lang}"), d)
    return [d.string(ds[i]) for i in range(len(ds))], ds


def test_targets_are_fairseq_generates_best_hypotheses(distilled, tiny_data, tiny_checkpoints):
    got, _ = _strings(distilled, "train", "de")
    want = _generate_train(tiny_data, tiny_checkpoints)
    assert len(got) == len(want) == 300
    assert [got[i] for i in range(300)] == [want[i] for i in range(300)]
    # the sources and every other split are the data's own
    src_got, src_ds = _strings(distilled, "train", "en")
    src_want, _ = _strings(tiny_data, "train", "en")
    assert src_got == src_want
    for name in os.listdir(tiny_data):
        if not name.startswith("train."):
            assert sha(os.path.join(distilled, name)) == sha(os.path.join(tiny_data, name)), name
    assert not os.path.exists(distilled + ".shards")


def test_two_ranks_and_a_resume_give_the_same_files(
    distilled, tiny_data, tiny_checkpoints, tmp_path
):
    out = tmp_path / "sharded"
    # rank 1 of 2 first: it decodes its chunks and leaves the assembly to whoever finishes last
    assert seqkd(tiny_data, tiny_checkpoints, out, env={"RANK": "1", "WORLD_SIZE": "2"}) == 0
    assert not out.exists() and len(os.listdir(str(out) + ".shards")) == 2
    assert seqkd(tiny_data, tiny_checkpoints, out, env={"RANK": "0", "WORLD_SIZE": "2"}) == 0
    for lang in ("en", "de"):
        for ext in ("bin", "idx"):
            name = f"train.en-de.{lang}.{ext}"
            assert sha(out / name) == sha(os.path.join(distilled, name)), name


def test_chunks_of_another_run_are_refused(tiny_data, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "mixed"
    assert seqkd(tiny_data, tiny_checkpoints, out, env={"RANK": "0", "WORLD_SIZE": "3"}) == 0
    capsys.readouterr()
    assert seqkd(tiny_data, tiny_checkpoints, out, "--lenpen", "0.5") == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "made by another run (generation differ)" in err[0], err
    assert not out.exists()


def test_output_that_exists_is_refused(distilled, tiny_data, tiny_checkpoints, capsys):
    before = sha(os.path.join(distilled, "train.en-de.de.bin"))
    assert seqkd(tiny_data, tiny_checkpoints, distilled) == 1
    assert "already exists" in capsys.readouterr().err
    assert sha(os.path.join(distilled, "train.en-de.de.bin")) == before


def test_a_student_trains_on_the_distilled_data(distilled, tmp_path):
    p = subprocess.run(
        [
            os.path.join(BIN, "fairseq-train"),
            distilled,
            "--task",
            "translation",
            *TINY_ARCH_ARGS,
            "--optimizer",
            "adam",
            "--lr",
            "1e-3",
            "--max-tokens",
            "500",
            "--max-update",
            "4",
            "--criterion",
            "label_smoothed_cross_entropy",
            "--label-smoothing",
            "0.1",
            "--cpu",
            "--save-dir",
            str(tmp_path / "student"),
            "--no-save",
            "--log-format",
            "simple",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert np.isfinite(float(p.stdout.split("| loss ")[-1].split()[0]))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def distill_sh(tmp_path, data, variant, *extra, env=None):
    """scripts/distill.sh with the tiny model, 2 epochs, no SWA: (returncode, stdout, stderr)."""
    cfg = tmp_path / "tiny.sh"
    cfg.write_text(
        f"source {ROOT}/configs/builtin_cpu.sh\n"
        "ARCH_ARGS=(" + " ".join(TINY_ARCH_ARGS) + ")\n"
        "TRAIN_ARGS=(--cpu --optimizer adam --lr 3e-3 --lr-scheduler inverse_sqrt "
        "--warmup-updates 10 --max-tokens 600 --num-workers 0)\n"
        "STUDENT_MAX_EPOCH=2\nPATIENCE=0\nSTUDENT_SWA_EPOCHS=0\n"
    )
    p = subprocess.run(
        ["bash", "scripts/distill.sh", "--config", str(cfg), "--data", data]
        + ["--variant", variant, "--out", str(tmp_path / "students"), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
    )
    return p.returncode, p.stdout, p.stderr


def test_distill_sh_trains_the_seqkd_student_on_the_distilled_targets(distilled, tmp_path):
    rc, out, err = distill_sh(tmp_path, distilled, "seqkd")
    assert rc == 0, out[-2000:] + err[-2000:]
    d = tmp_path / "students" / "seqkd"
    assert (d / "checkpoint_best.pt").is_file() and (d / "done").is_file()
    log = (d / "train.log").read_text()
    # the training data is the distilled directory; no store, the KD term off
    assert f"'data': '{distilled}'" in log and "kd_loss='none'" in log, log[:3000]
    assert "'teacher_store': None" in log
    epochs = [x for x in log.splitlines() if "| valid on 'valid' subset" in x]
    assert len(epochs) == 2


def test_distill_sh_refuses_seqkd_students_on_the_references_or_with_a_store(
    distilled, tiny_data, tmp_path
):
    for variant in ("seqkd", "seqkd_mean_kd"):
        extra = ("--store", __file__) if variant == "seqkd_mean_kd" else ()
        rc, _, err = distill_sh(tmp_path, tiny_data, variant, *extra)
        assert rc == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
        assert "not made by ensdist-seqkd" in err, err
    for extra in (("--store", __file__), ("--topk", "8")):
        rc, _, err = distill_sh(tmp_path, distilled, "seqkd", *extra)
        assert rc == 2 and "--variant seqkd trains on the distilled targets alone" in err, err
    assert not (tmp_path / "students").exists()
