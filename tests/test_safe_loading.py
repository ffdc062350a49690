"""fairseq checkpoints load through torch's weights_only loader; anything else pickled is refused."""

import argparse
import fractions
import os
import subprocess
import sys

import pytest
import torch

import ensdist_fairseq  # noqa: F401  (installs the allow-list)
from ensdist_fairseq.checkpoints.safe_loading import FAIRSEQ_CHECKPOINT_GLOBALS, load_checkpoint

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands


def test_fairseq_checkpoint_needs_exactly_the_allow_list(tiny_checkpoints):
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # see what the checkpoint needs without our list
    try:
        found = set(torch.serialization.get_unsafe_globals_in_checkpoint(tiny_checkpoints[0]))
    finally:
        torch.serialization.add_safe_globals(saved)
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in FAIRSEQ_CHECKPOINT_GLOBALS}
    assert found and found <= allowed
    state = load_checkpoint(tiny_checkpoints[0])
    assert isinstance(state["cfg"]["model"], argparse.Namespace)


class NotAllowed:  # a global no fairseq checkpoint contains
    pass


def test_other_globals_are_still_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "cfg": {"model": argparse.Namespace(a=1)}, "x": NotAllowed()}, bad)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(str(bad))
    with pytest.raises(Exception, match="NotAllowed"):
        torch.load(bad)  # torch's own default (weights_only=True) refuses it too
    od = tmp_path / "fraction.pt"
    torch.save({"model": {}, "w": fractions.Fraction(1, 3)}, od)  # a stdlib global outside the list
    with pytest.raises(ValueError):
        load_checkpoint(str(od))


def test_not_a_checkpoint_gets_one_clear_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a zip or pickle")
    with pytest.raises(ValueError, match="junk.pt: not a loadable fairseq checkpoint"):
        load_checkpoint(str(junk))


def _fairseq_cli(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def test_fairseq_validate_and_restore_load_with_user_dir(tiny_data, tiny_checkpoints, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    user_dir = os.path.dirname(ensdist_fairseq.__file__)
    ok = subprocess.run(
        [
            _fairseq_cli("fairseq-validate"),
            tiny_data,
            "--path",
            tiny_checkpoints[0],
            "--user-dir",
            user_dir,
            "--task",
            "translation",
            "--cpu",
            "--max-tokens",
            "2000",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "valid on 'valid' subset" in ok.stdout + ok.stderr
    # Without the plugin torch refuses the same checkpoint: the allow-list is what makes it work.
    refused = subprocess.run(
        [
            _fairseq_cli("fairseq-validate"),
            tiny_data,
            "--path",
            tiny_checkpoints[0],
            "--task",
            "translation",
            "--cpu",
            "--max-tokens",
            "2000",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert refused.returncode != 0 and "argparse.Namespace" in refused.stderr
