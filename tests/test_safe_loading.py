"""fairseq checkpoints load through torch's weights_only loader; anything else pickled is refused."""

import argparse
import fractions
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy._core.multiarray import _reconstruct

import ensdist_fairseq  # noqa: F401  (installs the allow-list)
from ensdist_fairseq.checkpoints.safe_loading import allowed_names, load_checkpoint

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands


def test_fairseq_checkpoint_needs_exactly_the_allow_list(tiny_checkpoints):
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # see what the checkpoint needs without our list
    try:
        found = set(torch.serialization.get_unsafe_globals_in_checkpoint(tiny_checkpoints[0]))
    finally:
        torch.serialization.add_safe_globals(saved)
    assert found and found <= allowed_names()
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


class _Numpy1Pickler(pickle._Pickler):
    """Writes numpy arrays as numpy 1 did (numpy.core.multiarray._reconstruct)."""

    def save_global(self, obj, name=None):
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


class _Numpy1PickleModule:
    Pickler = _Numpy1Pickler
    __name__ = "pickle"


def _pickled_globals(path):
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    finally:
        torch.serialization.add_safe_globals(saved)


@pytest.mark.parametrize("numpy1", [False, True])
def test_numpy_arrays_of_fairseq_metrics_load(tmp_path, numpy1):
    """--eval-bleu saves its n-gram counts as numpy arrays (int64 counts, float averages)."""
    arrays = {str(d): np.arange(4, dtype=d) for d in ("int64", "int32", "float64", "float32")}
    path = tmp_path / "metrics.pt"
    kw = {"pickle_module": _Numpy1PickleModule} if numpy1 else {}
    torch.save({"model": {}, "extra_state": {"metrics": arrays}}, path, **kw)
    found = _pickled_globals(path)
    assert ("numpy.core.multiarray._reconstruct" in found) == numpy1 and found <= allowed_names()
    state = load_checkpoint(str(path))
    for d, a in arrays.items():
        np.testing.assert_array_equal(state["extra_state"]["metrics"][d], a)
        assert state["extra_state"]["metrics"][d].dtype == a.dtype
    objects = tmp_path / "objects.pt"  # an object array could hold anything: refused
    torch.save({"x": np.array([fractions.Fraction(1, 3)], dtype=object)}, objects)
    with pytest.raises(ValueError, match="objects.pt: not a loadable fairseq checkpoint"):
        load_checkpoint(str(objects))


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
