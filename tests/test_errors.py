"""errors.py: the one error type, its one line from a DataLoader worker, and the excepthook."""

import subprocess
import sys

import pytest
from torch._utils import ExceptionWrapper

from ensdist_fairseq.errors import EnsdistError, one_line
from ensdist_fairseq.store.provenance import StoreError


def test_worker_reraise_keeps_the_one_line():
    """torch re-creates a worker's exception as type(e)('Caught ... Original Traceback ...')."""
    try:
        raise StoreError("teacher.h5: corrupt data for sentence 7 (CRC-32 mismatch)")
    except StoreError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(StoreError) as e:
        wrapper.reraise()
    assert "\n" in str(e.value)
    assert one_line(e.value) == "teacher.h5: corrupt data for sentence 7 (CRC-32 mismatch)"


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_excepthook_formats_only_ensdist_errors():
    p = _run(
        "from ensdist_fairseq import errors\nerrors.install_excepthook()\nerrors.install_excepthook()\n"
        "raise errors.EnsdistError('x.h5: bad')"
    )
    assert p.returncode == 1 and p.stderr == "error: x.h5: bad\n"
    p = _run(
        "from ensdist_fairseq import errors\nerrors.install_excepthook()\nraise KeyError('bug')"
    )
    assert p.returncode == 1 and "Traceback" in p.stderr and "KeyError: 'bug'" in p.stderr


@pytest.mark.slow
def test_checkpoint_fairseq_cannot_unpickle_is_one_line(tmp_path):
    bad = tmp_path / "checkpoint_last.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    p = _run(
        "import fairseq.checkpoint_utils as c, ensdist_fairseq\nensdist_fairseq.register_with_fairseq()\n"
        f"c.load_checkpoint_to_cpu({str(bad)!r})"
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {bad}: not a loadable fairseq checkpoint ("
    )


def test_store_error_is_an_ensdist_error_and_a_value_error():
    assert issubclass(StoreError, EnsdistError) and issubclass(EnsdistError, ValueError)


def _raise_in_child(i):
    raise StoreError("teacher.h5: sentence 3 row 0: precision nan is not finite and > 0")


@pytest.mark.slow
def test_error_of_a_spawned_process_is_one_line():
    """fairseq-train on several GPUs runs main() in torch.multiprocessing.spawn'ed processes."""
    import torch.multiprocessing as mp

    from ensdist_fairseq.errors import _from_spawned_process

    with pytest.raises(mp.ProcessRaisedException) as e:
        mp.spawn(_raise_in_child, nprocs=1, join=True)
    assert (
        _from_spawned_process(e.value)
        == "teacher.h5: sentence 3 row 0: precision nan is not finite and > 0"
    )
    assert _from_spawned_process(KeyError("x")) is None
