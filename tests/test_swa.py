"""SWA: the averaged model is the mean of the averaged snapshots, and fairseq can use it."""
import os
import subprocess
import sys

import pytest
import torch

from ensdist_fairseq.safe_loading import load_checkpoint
from ensdist_fairseq.swa import average_state_dicts, epoch_snapshots, write_swa_checkpoint


def test_average_matches_independent_mean():
    g = torch.Generator().manual_seed(0)
    snaps = [{"w": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).half(),
              "steps": torch.tensor([i])} for i in range(4)]
    avg = average_state_dicts(snaps)
    expected_w = sum(s["w"].double() for s in snaps) / 4
    assert torch.allclose(avg["w"].double(), expected_w, atol=1e-6)
    assert avg["h"].dtype == torch.float16
    assert torch.allclose(avg["h"].float(), torch.stack([s["h"].float() for s in snaps]).mean(0), atol=1e-3)
    assert avg["steps"].item() == 3  # integer buffers come from the last snapshot


def test_mismatched_snapshots_are_refused():
    with pytest.raises(ValueError, match="different parameters"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def test_swa_checkpoint_of_real_run(tiny_data, tmp_path):
    import tiny_fairseq

    save = tmp_path / "run"
    tiny_fairseq.train_tiny(tiny_data, str(save), seed=3, max_update=10**6,
                            extra=["--max-epoch", "4", "--keep-last-epochs", "3"], epoch_checkpoints=True)
    snaps = epoch_snapshots(str(save), last_epoch=4, num_epochs=3)
    assert [os.path.basename(p) for p in snaps] == ["checkpoint2.pt", "checkpoint3.pt", "checkpoint4.pt"]
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
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fairseq-validate"), tiny_data,
                        "--path", out, "--user-dir", os.path.dirname(os.path.dirname(__file__)) + "/ensdist_fairseq",
                        "--task", "translation", "--cpu", "--max-tokens", "2000"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]


def test_swa_cli_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "ensdist_fairseq.cli.swa", *args],
                              capture_output=True, text=True)

    r = run("--save-dir", str(tmp_path / "nope"), "--last-epoch", "5", "--epochs", "2")
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = run("--save-dir", str(tmp_path), "--last-epoch", "5", "--epochs", "9")
    assert r.returncode == 2 and "--epochs" in r.stderr
    r = run("--save-dir", str(tmp_path), "--last-epoch", "5", "--epochs", "2")
    assert r.returncode == 1 and "checkpoint4.pt" in r.stderr
