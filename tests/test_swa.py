"""SWA: the averaged model is the mean of the averaged snapshots, and fairseq can use it."""

import os
import subprocess
import sys

import pytest
import torch

from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint
from ensdist_fairseq.checkpoints.swa import (
    average_state_dicts,
    epoch_snapshots,
    write_swa_checkpoint,
)

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands


def test_average_matches_independent_mean():
    g = torch.Generator().manual_seed(0)
    snaps = [
        {
            "w": torch.randn(3, 4, generator=g),
            "h": torch.randn(5, generator=g).half(),
            "steps": torch.tensor([i]),
        }
        for i in range(4)
    ]
    avg = average_state_dicts(snaps)
    expected_w = sum(s["w"].double() for s in snaps) / 4
    assert torch.allclose(avg["w"].double(), expected_w, atol=1e-6)
    assert avg["h"].dtype == torch.float16
    assert torch.allclose(
        avg["h"].float(), torch.stack([s["h"].float() for s in snaps]).mean(0), atol=1e-3
    )
    assert avg["steps"].item() == 3  # integer buffers come from the last snapshot


def test_mismatched_snapshots_are_refused():
    with pytest.raises(ValueError, match="different parameters"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def test_swa_checkpoint_of_real_run(tiny_data, tmp_path):
    import tiny_fairseq

    save = tmp_path / "run"
    tiny_fairseq.train_tiny(
        tiny_data,
        str(save),
        seed=3,
        max_update=10**6,
        extra=["--max-epoch", "4", "--keep-last-epochs", "3"],
        epoch_checkpoints=True,
    )
    snaps = epoch_snapshots(str(save), last_epoch=4, num_epochs=3)
    assert [os.path.basename(p) for p in snaps] == [
        "checkpoint2.pt",
        "checkpoint3.pt",
        "checkpoint4.pt",
    ]
    with pytest.raises(ValueError, match="checkpoint1.pt"):
        epoch_snapshots(str(save), last_epoch=4, num_epochs=4)  # pruned by --keep-last-epochs
    out = str(tmp_path / "swa.pt")
    write_swa_checkpoint(snaps, out)
    models = [load_checkpoint(p)["model"] for p in snaps]
    swa = load_checkpoint(out)
    for k, v in swa["model"].items():
        mean = torch.stack([m[k].double() for m in models]).mean(0)
        assert torch.allclose(v.double(), mean, atol=1e-6), k
    assert swa["last_optimizer_state"] is None
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]  # nothing half-written left
    # fairseq reads it like any checkpoint (through the plugin's safe loader).
    p = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "fairseq-validate"),
            tiny_data,
            "--path",
            out,
            "--user-dir",
            os.path.dirname(os.path.dirname(__file__)) + "/ensdist_fairseq",
            "--task",
            "translation",
            "--cpu",
            "--max-tokens",
            "2000",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]


def test_swa_window_ends_at_the_best_epoch(tiny_data, tmp_path):
    """The rule of docs/teachers.md: early stopping keeps best+patience epochs; the SWA window is
    the N epoch checkpoints ending at the best validation epoch, found from checkpoint_best.pt."""
    import tiny_fairseq

    from ensdist_fairseq.checkpoints.swa import best_epoch, swa_window
    from ensdist_fairseq.report.train_logs import read_train_log

    assert swa_window(5, 3) == [3, 4, 5] and swa_window(2, 3) == [1, 2]
    save = tmp_path / "run"
    p = tiny_fairseq.run(
        [
            os.path.join(tiny_fairseq.BIN, "fairseq-train"),
            tiny_data,
            *tiny_fairseq.TINY_ARCH_ARGS,
            "--optimizer",
            "adam",
            "--lr",
            "3e-3",
            "--lr-scheduler",
            "inverse_sqrt",
            "--warmup-updates",
            "10",
            "--max-tokens",
            "600",
            "--max-epoch",
            "6",
            "--seed",
            "3",
            "--cpu",
            "--save-dir",
            str(save),
            "--keep-last-epochs",
            "6",
            "--log-format",
            "simple",
            "--dropout",
            "0.1",
        ]
    )
    (save / "train.log").write_text(p.stdout + p.stderr)
    b = best_epoch(str(save))
    run = read_train_log(str(save / "train.log"))
    assert b == run.best_epoch  # the checkpoint and the log agree on the best epoch
    vl = {
        e: load_checkpoint(str(save / f"checkpoint{e}.pt"))["extra_state"]["val_loss"]
        for e in range(1, 7)
    }
    assert b == min(vl, key=lambda e: (vl[e], e))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensdist_fairseq.cli.swa",
            "--save-dir",
            str(save),
            "--epochs",
            "2",
            "--remove-snapshots",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert f"checkpoint{max(1, b - 1)}.pt .. checkpoint{b}.pt" in r.stdout
    swa = load_checkpoint(str(save / "checkpoint_swa.pt"))
    assert swa["extra_state"]["swa"]["snapshots"] == [f"checkpoint{e}.pt" for e in swa_window(b, 2)]
    assert not list(save.glob("checkpoint[0-9]*.pt"))  # snapshots removed, best/last kept
    assert (save / "checkpoint_best.pt").is_file()


def test_swa_cli_errors(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "ensdist_fairseq.cli.swa", *args], capture_output=True, text=True
        )

    r = run("--save-dir", str(tmp_path / "nope"), "--epochs", "2")
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = run("--save-dir", str(tmp_path), "--epochs", "0")
    assert r.returncode == 2 and "--epochs" in r.stderr
    r = run("--save-dir", str(tmp_path), "--epochs", "2")
    assert r.returncode == 1 and "checkpoint_best.pt" in r.stderr
    r = run("--save-dir", str(tmp_path), "--end-epoch", "5", "--epochs", "2")
    assert r.returncode == 1 and "checkpoint4.pt" in r.stderr and "patience" in r.stderr
