"""A recipe killed after an epoch checkpoint and re-run gives the uninterrupted run's numbers, bit
for bit (the SWA model included); fairseq-train with a teacher store exits cleanly when
--max-update stops it inside an epoch."""

import os
import signal
import subprocess
import threading
import time

import pytest
import torch
from test_scripts import BIN, ROOT, distill, sh, tiny_config, tiny_store  # noqa: F401

from ensdist_fairseq.checkpoints.safe_loading import load_checkpoint


def models_equal(a, b):
    """The names of the tensors of two checkpoints' models that differ (empty: identical)."""
    ma, mb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert ma.keys() == mb.keys()
    return [k for k in ma if not torch.equal(ma[k], mb[k])]


def process_tree(pid):
    """pid and all its descendants (the trainer runs in a process group of its own)."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children = {}
    for line in ps.splitlines():
        c, parent = map(int, line.split())
        children.setdefault(parent, []).append(c)
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_after_epoch_checkpoint(args, env, save_dir, epoch):
    """Run a recipe and SIGKILL its whole process tree once checkpoint<epoch>.pt exists."""
    p = subprocess.Popen(
        ["bash", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            if (save_dir / f"checkpoint{epoch}.pt").exists():
                break
            time.sleep(0.02)
    finally:
        for pid in process_tree(p.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    assert (save_dir / f"checkpoint{epoch}.pt").exists()


@pytest.mark.slow
def test_distill_killed_after_an_epoch_checkpoint_resumes_bit_for_bit(
    tiny_data, tiny_store, tmp_path  # noqa: F811
):
    cfg = tiny_config(tmp_path)
    caps = {"STUDENT_MAX_EPOCH": "4", "STUDENT_MAX_UPDATE": "1000"}
    whole_args, _ = distill(cfg, tiny_data, tiny_store, tmp_path / "whole")
    r = sh(*whole_args, env=caps)
    assert r.returncode == 0, r.stdout + r.stderr

    args, _ = distill(cfg, tiny_data, tiny_store, tmp_path / "cut")
    d = tmp_path / "cut" / "mean_kd"
    kill_after_epoch_checkpoint(args, dict(os.environ, OMP_NUM_THREADS="1", **caps), d, epoch=2)
    assert not (d / "trained").exists()
    r = sh(*args, env=caps)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (d / "train.log").read_text()
    assert "Loaded checkpoint" in log  # it did resume, from an epoch end
    w = tmp_path / "whole" / "mean_kd"
    for name in ("checkpoint_swa.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert models_equal(str(w / name), str(d / name)) == [], name
    swa = [load_checkpoint(str(x / "checkpoint_swa.pt"))["extra_state"]["swa"] for x in (w, d)]
    assert swa[0]["snapshots"] == swa[1]["snapshots"]


def test_a_prefetching_thread_is_stopped_before_it_runs_through():
    from fairseq.data.iterators import BackgroundConsumer, BufferedIterator

    from ensdist_fairseq.data.background_loaders import stop_background_consumers

    class Slow(list):
        def __iter__(self):
            for x in list.__iter__(self):
                time.sleep(0.001)
                yield x

    it = BufferedIterator(2, Slow(range(1000)))
    assert next(it) == 0  # the thread runs ahead, then waits on its full queue
    consumer = it._consumer
    assert stop_background_consumers() >= 1
    assert not consumer.is_alive() and consumer.count < 100
    alive = [t for t in threading.enumerate() if isinstance(t, BackgroundConsumer)]
    assert not [t for t in alive if t.is_alive()]


@pytest.mark.slow
def test_max_update_inside_an_epoch_with_a_store_exits_cleanly(
    tiny_data, tiny_store, tmp_path  # noqa: F811
):
    """fairseq-train's defaults (--num-workers 1, --data-buffer-size 10) and an epoch of ~40
    batches: the prefetching thread is still loading when --max-update 15 stops training."""
    import tiny_fairseq

    for run in range(5):
        save = tmp_path / f"run{run}"
        cmd = [
            os.path.join(BIN, "fairseq-train"), tiny_data, "--user-dir", os.path.join(ROOT, "ensdist_fairseq"),
            "--task", "translation_distill", "--teacher-store", tiny_store,
            "--criterion", "token_kd", "--kd-loss", "mean_kd", *tiny_fairseq.TINY_ARCH_ARGS,
            "--optimizer", "adam", "--lr", "3e-3", "--max-tokens", "64", "--max-update", "15",
            "--cpu", "--save-dir", str(save), "--no-epoch-checkpoints", "--log-format", "simple",
        ]  # fmt: skip
        p = subprocess.run(
            cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1")
        )
        assert p.returncode == 0, (run, p.returncode, p.stderr[-2000:])
        out = p.stdout + p.stderr
        assert "done training" in out and "terminate called" not in out
        assert (
            load_checkpoint(str(save / "checkpoint_last.pt"))["extra_state"]["train_iterator"][
                "iterations_in_epoch"
            ]
            == 15
        )
