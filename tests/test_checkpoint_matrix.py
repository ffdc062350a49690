"""Checkpoints written by fairseq with the options people use load through every command that
loads checkpoints (resume included); a pickle that would run code is refused everywhere, in one
line, without running."""

import argparse
import os

import checkpoint_matrix
import pytest
import torch
from test_bad_inputs import run_forked

import ensdist_fairseq
from ensdist_fairseq.checkpoints.safe_loading import allowed_names

pytestmark = pytest.mark.slow  # trains the matrix once (about 30 s of CPU)

USER_DIR = os.path.dirname(ensdist_fairseq.__file__)


@pytest.fixture(scope="module")
def matrix(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    return checkpoint_matrix.build(tiny_data, str(root))


class Payload:
    """Unpickling this runs os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def malicious(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("malicious")
    state = torch.load(tiny_checkpoints[0], weights_only=True)
    marker = str(root / "payload-ran")
    state["extra_state"]["x"] = Payload(marker)
    path = str(root / "checkpoint_last.pt")
    torch.save(state, path)
    return path, marker


def _unsafe_globals(path):
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # what the file needs without our list
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    finally:
        torch.serialization.add_safe_globals(saved)


def test_every_variant_needs_only_the_allow_list(matrix):
    for name, path in matrix.items():
        found = _unsafe_globals(path)
        assert found <= allowed_names(), (name, found - allowed_names())
    # --eval-bleu pickles the BLEU counts as numpy arrays: the reason numpy is on the list
    bleu = _unsafe_globals(matrix["eval_bleu"])
    assert {"numpy.ndarray", "numpy.dtype"} <= bleu and any("_reconstruct" in g for g in bleu)
    legacy = torch.load(matrix["legacy_args"], weights_only=True)
    assert "cfg" not in legacy and isinstance(legacy["args"], argparse.Namespace)


def _forked(entry, argv):
    code, stderr = run_forked(entry, argv)
    # a forked fairseq-train may print the traceback of multiprocessing's resource-sharer
    # thread, inherited from the test process, when it exits: not the command's
    tracebacks = stderr.count("Traceback") - stderr.count('resource_sharer.py", line 138')
    assert code == 0 and tracebacks <= 0, f"{argv}\n{stderr[-3000:]}"
    return stderr


def _fairseq(module):
    def entry():
        import importlib
        import logging

        logging.disable(logging.INFO)
        return importlib.import_module(f"fairseq_cli.{module}").cli_main()

    return entry


def _ensdist(module):
    def entry():
        import importlib

        return importlib.import_module(f"ensdist_fairseq.cli.{module}").main()

    return entry


def test_every_command_loads_every_variant(matrix, tiny_data, tmp_path):
    ensemble = ":".join(matrix.values())
    _forked(
        _fairseq("generate"),
        ["fairseq-generate", tiny_data, "--path", ensemble, "--user-dir", USER_DIR]
        + ["--cpu", "--max-tokens", "2000", "--beam", "2", "--gen-subset", "valid"],
    )
    for name, path in matrix.items():  # fairseq-validate takes one checkpoint
        _forked(
            _fairseq("validate"),
            ["fairseq-validate", tiny_data, "--path", path, "--user-dir", USER_DIR]
            + ["--task", "translation", "--cpu", "--max-tokens", "2000"],
        )
    _forked(
        _ensdist("memoize"),
        ["ensdist-memoize", tiny_data, "--path", ensemble, "--split", "valid", "--topk", "4"]
        + ["--cpu", "--output", str(tmp_path / "teacher.h5")],
    )
    assert os.path.isfile(tmp_path / "teacher.h5")
    _forked(
        _ensdist("evaluate"),
        ["ensdist-evaluate", tiny_data, "--path", ensemble, "--name", "m", "--cpu"]
        + ["--split", "valid", "--output", str(tmp_path / "eval.json")],
    )
    assert os.path.isfile(tmp_path / "eval.json")


def _resume_argv(prog, data, path, save_dir, extra=()):
    return [
        prog,
        data,
        *checkpoint_matrix.tiny_fairseq.TINY_ARCH_ARGS,
        "--user-dir",
        USER_DIR,
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
        "--cpu",
        "--no-epoch-checkpoints",
        "--restore-file",
        path,
        "--save-dir",
        save_dir,
        "--max-update",
        str(checkpoint_matrix.UPDATES + 2),
        *extra,
    ]


RESUME_EXTRA = {
    "eval_bleu": checkpoint_matrix.BLEU,
    "eval_bleu_best": checkpoint_matrix.BLEU,
    "ema": checkpoint_matrix.TRAINED["ema"],
}


def _train_entry():
    from fairseq_cli import train

    return train.cli_main()


def test_fairseq_train_resumes_every_variant(matrix, tiny_data, tmp_path):
    for name, path in matrix.items():
        save = str(tmp_path / name)
        _forked(
            _fairseq("train"),
            _resume_argv("fairseq-train", tiny_data, path, save, RESUME_EXTRA.get(name, ())),
        )
        last = torch.load(os.path.join(save, "checkpoint_last.pt"), weights_only=True)
        assert last["optimizer_history"][-1]["num_updates"] > checkpoint_matrix.UPDATES, name


def test_ensdist_train_resumes_an_eval_bleu_checkpoint(matrix, tiny_data, tmp_path):
    save = str(tmp_path / "resumed")
    argv = _resume_argv(
        "ensdist-train", tiny_data, matrix["eval_bleu"], save, checkpoint_matrix.BLEU
    )
    _forked(_ensdist("train"), argv)
    last = torch.load(os.path.join(save, "checkpoint_last.pt"), weights_only=True)
    assert last["optimizer_history"][-1]["num_updates"] > checkpoint_matrix.UPDATES


def _malicious_commands(data, path, tmp_path):
    save = str(tmp_path / "resume")
    return {
        "fairseq-train": (_fairseq("train"), _resume_argv("fairseq-train", data, path, save)),
        "ensdist-train": (_ensdist("train"), _resume_argv("ensdist-train", data, path, save)),
        "fairseq-generate": (
            _fairseq("generate"),
            ["fairseq-generate", data, "--path", path, "--user-dir", USER_DIR, "--cpu"],
        ),
        "fairseq-validate": (
            _fairseq("validate"),
            ["fairseq-validate", data, "--path", path, "--user-dir", USER_DIR, "--cpu"]
            + ["--task", "translation", "--max-tokens", "2000"],
        ),
        "ensdist-memoize": (
            _ensdist("memoize"),
            ["ensdist-memoize", data, "--path", path, "--cpu", "--output", f"{tmp_path}/t.h5"],
        ),
        "ensdist-evaluate": (
            _ensdist("evaluate"),
            ["ensdist-evaluate", data, "--path", path, "--name", "x", "--cpu"]
            + ["--output", f"{tmp_path}/e.json"],
        ),
    }


def test_a_malicious_pickle_is_refused_everywhere_in_one_line(malicious, tiny_data, tmp_path):
    path, marker = malicious
    for prog, (entry, argv) in _malicious_commands(tiny_data, path, tmp_path).items():
        code, stderr = run_forked(entry, argv)
        lines = [x for x in stderr.splitlines() if x.startswith("error:")]
        assert code == 1 and "Traceback" not in stderr, f"{prog}:\n{stderr[-3000:]}"
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), (prog, lines)
        assert "posix.system" in lines[0] or "os.system" in lines[0], lines[0]
        assert not os.path.exists(marker), prog  # never ran
