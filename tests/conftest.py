import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_fairseq  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A binarized synthetic en->de corpus (joined dictionary): returns the bin directory."""
    root = tmp_path_factory.mktemp("tiny_data")
    tiny_fairseq.write_synthetic_raw(str(root / "raw"))
    return tiny_fairseq.binarize(str(root / "raw"), str(root / "bin"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_data, tmp_path_factory):
    """Two tiny transformers trained on tiny_data with seeds 1 and 2: returns their paths."""
    root = tmp_path_factory.mktemp("tiny_ckpt")
    return [tiny_fairseq.train_tiny(tiny_data, str(root / f"seed{s}"), seed=s) for s in (1, 2)]
