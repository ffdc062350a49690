"""One teacher member's training is bit-reproducible on one machine: the demo's member recipe
(scripts/train_ensemble.sh, the built-in CPU config scaled down to the tiny corpus: one thread,
a few dozen updates, early stopping, SWA) run twice from scratch gives the same tensors."""

import os
import subprocess

import pytest
import tiny_fairseq
import torch

from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint
from ensdist_fairseq.report.train_logs import read_train_log

pytestmark = pytest.mark.slow  # two fairseq-train runs and their SWA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_member_config(tmp_path):
    """configs/builtin_cpu.sh with the tiny architecture, batches small enough for ~8 updates an
    epoch on the tiny corpus, and a short warm-up; its stopping rule and SWA as the demo's."""
    cfg = tmp_path / "tiny_member.sh"
    cfg.write_text(
        f"source {ROOT}/configs/builtin_cpu.sh\n"
        "ARCH_ARGS=(" + " ".join(tiny_fairseq.TINY_ARCH_ARGS) + ")\n"
        'TRAIN_ARGS=(--cpu --optimizer adam --adam-betas "(0.9,0.98)" --lr 5e-3 '
        "--lr-scheduler inverse_sqrt --warmup-updates 10 --weight-decay 0.0001 --max-tokens 256 "
        "--required-batch-size-multiple 1 --num-workers 0)\n"
        "MAX_EPOCH=5\nPATIENCE=2\nSWA_EPOCHS=2\n"
    )
    return str(cfg)


def train_member(cfg, data, out):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run(
        ["bash", "scripts/train_ensemble.sh", "--config", cfg, "--data", data, "--out", str(out)]
        + ["--mode", "ce", "--seed", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out / "ce" / "seed1"


def tensors(state, prefix=""):
    """{dotted path: tensor} of every tensor in a (nested) checkpoint state."""
    out = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(tensors(v, f"{prefix}.{i}"))
    return out


def test_a_member_trained_twice_is_bit_identical(tiny_data, tmp_path):
    cfg = tiny_member_config(tmp_path)
    runs = [train_member(cfg, tiny_data, tmp_path / name) for name in ("a", "b")]
    logs = [read_train_log(str(d / "train.log")) for d in runs]
    scores = [
        {e: {k: v[k] for k in ("loss", "nll_loss", "ece1", "ece5")} for e, v in log.valid.items()}
        for log in logs
    ]  # the validations' numbers (not their timings)
    assert logs[0].last_epoch >= 3 and scores[0] == scores[1]
    num_updates = load_checkpoint(str(runs[0] / "checkpoint_last.pt"))["optimizer_history"][-1][
        "num_updates"
    ]
    assert num_updates >= 24  # a few dozen updates, not a trivial run
    for name, parts in (
        ("checkpoint_swa.pt", ("model",)),
        ("checkpoint_last.pt", ("model", "last_optimizer_state")),
        ("checkpoint_best.pt", ("model",)),
    ):
        a, b = (load_checkpoint(str(d / name)) for d in runs)
        for part in parts:
            ta, tb = tensors(a[part]), tensors(b[part])
            assert ta and ta.keys() == tb.keys(), (name, part)
            differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
            assert (
                not differ
            ), f"{name} {part}: {len(differ)} of {len(ta)} tensors differ: {differ[:5]}"
    swa = load_checkpoint(str(runs[0] / "checkpoint_swa.pt"))["extra_state"]["swa"]["snapshots"]
    assert len(swa) == 2  # the SWA average of two epoch checkpoints is what was compared
