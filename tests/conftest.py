import os
import sys

# One BLAS/OpenMP thread in the test process, set before numpy or torch is imported: the
# bad-input table forks this process to run commands, and a child forked while OpenBLAS's thread
# pool exists waits forever on that pool's lock; the subprocesses the tests start inherit it too
# (2 cores: parallel subprocesses already fill them).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402

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
