"""Students trained by two fairseq-train processes (gloo on the CPU), with a number of batches
that does not divide between them: the rank that runs out trains fairseq's stand-in ("dummy")
batch, which may be a validation batch without teacher entries. Every variant trains and
validates through whole epochs and a resume, and the stand-in counts in no logged metric."""

import json
import os
import socket
import subprocess

import pytest
import torch
from test_distill_task import target_sentences, write_coded_store
from tiny_fairseq import BIN, TINY_ARCH_ARGS

import ensdist_fairseq

pytestmark = pytest.mark.slow  # runs fairseq-train processes

NUM_TRAIN, NUM_VALID, BATCH = 300, 40, 48  # 7 training batches for 2 ranks, 1 validation batch

VARIANTS = {
    "mean_kd": ["--kd-loss", "mean_kd"],
    "mean_kd_intra": ["--kd-loss", "mean_kd", "--intra-passes", "2", "--max-update", "100"],
    "proxy_dirichlet": ["--kd-loss", "proxy_dirichlet", "--arch", "dirichlet_transformer"],
    "proxy_dirichlet_intra": [
        "--kd-loss",
        "proxy_dirichlet",
        "--arch",
        "dirichlet_transformer",
        "--intra-passes",
        "2",
        "--no-intra-adaptive",
    ],
}


@pytest.fixture(scope="module")
def coded_store(tiny_data, tmp_path_factory):
    return write_coded_store(str(tmp_path_factory.mktemp("dist") / "coded.h5"), tiny_data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Logs(list):
    """The JSON records of a run's log, and its lines (.lines)."""


def train_two_ranks(data, store, save_dir, max_epoch, variant):
    """fairseq-train as two processes; the JSON log lines of rank 0 (every rank logs the same
    all-reduced values)."""
    port = free_port()
    argv = [
        os.path.join(BIN, "fairseq-train"),
        data,
        "--user-dir",
        os.path.dirname(ensdist_fairseq.__file__),
        "--task",
        "translation_distill",
        "--teacher-store",
        store,
        "--criterion",
        "token_kd",
        *TINY_ARCH_ARGS,  # a later --arch (the Dirichlet variants) wins
        *VARIANTS[variant],
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--cpu",
        "--batch-size",
        str(BATCH),
        "--required-batch-size-multiple",
        "1",  # fairseq rounds a short last batch down to a multiple otherwise
        "--max-epoch",
        str(max_epoch),
        "--save-dir",
        save_dir,
        "--no-epoch-checkpoints",
        "--log-format",
        "json",
        "--log-interval",
        "1",
        "--distributed-backend",
        "gloo",
        "--distributed-world-size",
        "2",
        "--distributed-init-method",
        f"tcp://127.0.0.1:{port}",
        "--distributed-no-spawn",
        "--ddp-backend",
        "legacy_ddp",
        # rank 0's broadcast of the checkpoint holds omegaconf objects, which torch's
        # weights_only loader refuses: every rank reads the file itself (docs/recipes.md)
        "--load-checkpoint-on-all-dp-ranks",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            argv + ["--distributed-rank", str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [
        f"rank {rank} failed ({p.returncode}):\n{out[-3000:]}"
        for rank, (p, out) in enumerate(zip(procs, outputs))
        if p.returncode != 0
    ]
    assert not failed, "\n".join(failed)
    logs = Logs()
    logs.lines = outputs[0].splitlines()
    for line in logs.lines:
        start = line.find("{")
        if start >= 0:
            try:
                logs.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                pass
    return logs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_two_ranks_train_validate_and_resume_with_a_remainder_batch(
    variant, coded_store, tiny_data, tmp_path
):
    targets, _, _ = target_sentences(tiny_data)
    assert len(targets) == NUM_TRAIN and -(-NUM_TRAIN // BATCH) % 2 == 1  # one rank runs short
    train_tokens = sum(len(t) for t in targets)
    updates_per_epoch = -(-(-(-NUM_TRAIN // BATCH)) // 2)  # ceil(7 / 2) = 4
    save = str(tmp_path / "ckpt")

    # epoch 1: fairseq's dry-run validation has made a validation batch the stand-in;
    # epoch 2 resumes from checkpoint_last.pt in new processes
    first = train_two_ranks(tiny_data, coded_store, save, 1, variant)
    resumed = train_two_ranks(tiny_data, coded_store, save, 2, variant)
    assert any("Loaded checkpoint" in line and "@ 4 updates" in line for line in resumed.lines)

    epochs = [log for log in first + resumed if "train_loss" in log]
    valids = [log for log in first + resumed if "valid_loss" in log]
    assert [log["epoch"] for log in epochs] == [1, 2] and [v["epoch"] for v in valids] == [1, 2]
    for log in epochs:
        # the stand-in batch counts nowhere: every sentence and token of the epoch once
        assert float(log["train_bsz"]) == pytest.approx(NUM_TRAIN / updates_per_epoch, abs=0.1)
        assert float(log["train_wpb"]) == pytest.approx(train_tokens / updates_per_epoch, abs=0.1)
        assert int(log["train_num_updates"]) == updates_per_epoch * log["epoch"]
        # the coded store's probabilities sum to 36/64 on every token
        assert float(log["train_teacher_coverage"]) == pytest.approx(36 / 64, abs=1e-4)
        for key in ("train_loss", "train_nll_loss", "train_kd_loss"):
            assert torch.isfinite(torch.tensor(float(log[key]))), (key, log)
        if "intra" in variant:
            assert "train_intra_loss" in log
    for log in valids:
        assert float(log["valid_bsz"]) == pytest.approx(NUM_VALID, abs=0.05)  # one batch
        assert torch.isfinite(torch.tensor(float(log["valid_loss"])))
