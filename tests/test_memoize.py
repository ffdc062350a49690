"""`ensdist-memoize` on the tiny corpus, checked against an ensemble the test computes itself."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

import ensdist_fairseq
from ensdist_fairseq.cli.memoize import main
from ensdist_fairseq.store import format as store_format

pytestmark = pytest.mark.slow  # trains tiny models or runs fairseq commands

BIN = os.path.dirname(sys.executable)
TOPK = 8


def memoize_args(tiny_data, tiny_checkpoints, output, *extra):
    return [
        tiny_data,
        "--path",
        ":".join(tiny_checkpoints),
        "--output",
        output,
        "--topk",
        str(TOPK),
        "--cpu",
        "--max-tokens",
        "200",
        "--chunk-sentences",
        "64",
        *extra,
    ]


def run_cli(args, env_extra=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(args, capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def store(tiny_data, tiny_checkpoints, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("memoize") / "teacher.h5")
    main(memoize_args(tiny_data, tiny_checkpoints, path))
    return path


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_entries_equal_an_independent_ensemble(store, tiny_data, tiny_checkpoints):
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        tiny_checkpoints, arg_overrides={"data": tiny_data}
    )
    task.load_dataset("train")
    dataset = task.dataset("train")
    reader = store_format.StoreReader(store)
    assert reader.num_sentences == len(dataset) == 300
    with torch.no_grad():
        for i in range(len(dataset)):  # one sentence at a time: no padding, no batching
            sample = dataset.collater([dataset[i]])
            probs = [
                torch.softmax(m.eval()(**sample["net_input"])[0][0].double(), -1) for m in models
            ]
            mean = torch.stack(probs).mean(0)
            kl = torch.stack([(mean * (mean.log() - p.log())).sum(-1) for p in probs]).mean(0)
            beta0 = (mean.shape[-1] - 1) / (2 * kl)
            indices, stored_probs, precision = reader.read(i)
            assert len(indices) == len(dataset.tgt[i])  # EOS included
            ref_sorted = mean.sort(-1, descending=True).values[:, :TOPK].numpy()
            np.testing.assert_allclose(stored_probs, ref_sorted, rtol=2e-3, atol=1e-6)  # float16
            np.testing.assert_allclose(
                np.take_along_axis(mean.numpy(), indices, 1), stored_probs, rtol=2e-3, atol=1e-6
            )
            np.testing.assert_allclose(precision, beta0.numpy(), rtol=1e-3)


def test_store_format_3_holds_the_same_rows(store, tiny_data, tiny_checkpoints, tmp_path):
    """--store-format 3 (cheaper reads, larger file) decodes to the default store's rows."""
    path = str(tmp_path / "v3.h5")
    main(memoize_args(tiny_data, tiny_checkpoints, path, "--store-format", "3"))
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 3
    a, b = store_format.StoreReader(store), store_format.StoreReader(path)
    for i in range(a.num_sentences):
        for x, y in zip(a.read(i), b.read(i)):
            assert x.dtype == y.dtype and np.array_equal(x, y)
    assert os.path.getsize(path) > os.path.getsize(store)


def test_provenance(store, tiny_data, tiny_checkpoints):
    with h5py.File(store, "r") as f:
        a = dict(f.attrs)
        assert f["coded"].dtype == np.uint8 and a["format_version"] == 4
        entries = int(f["offsets"][-1]) * TOPK
    assert [s.decode() for s in a["teacher_sha256"]] == [sha256(p) for p in tiny_checkpoints]
    assert a["dictionary_sha256"] == sha256(os.path.join(tiny_data, "dict.de.txt"))
    assert (a["split"], a["num_teachers"], a["topk"], a["num_sentences"]) == ("train", 2, TOPK, 300)
    assert a["vocab_size"] == 4 + sum(1 for _ in open(os.path.join(tiny_data, "dict.de.txt")))
    assert a["package_version"] == ensdist_fairseq.__version__
    assert not os.path.exists(store + ".shards")
    # coded rows take less than format 2's 4 bytes per stored entry (+ 4 per token, 20 per sentence)
    assert os.path.getsize(store) < entries * 4 + (entries // TOPK) * 4 + 300 * 20 + 16384


def test_two_processes_write_the_same_store(store, tiny_data, tiny_checkpoints, tmp_path):
    out = str(tmp_path / "two.h5")
    p = run_cli(
        [
            os.path.join(BIN, "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            os.path.join(BIN, "ensdist-memoize"),
            *memoize_args(tiny_data, tiny_checkpoints, out),
        ],
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[rank 1/2]" in p.stderr
    assert_same_store(store, out)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_store(a, b):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert set(fa) == set(fb)
        for name in fa:
            np.testing.assert_array_equal(fa[name][()], fb[name][()])
        assert set(fa.attrs) == set(fb.attrs)
        for k in fa.attrs:
            np.testing.assert_array_equal(fa.attrs[k], fb.attrs[k])


@pytest.mark.parametrize("kill_at", ["chunk-started:3", "stitch-started"])
def test_killed_run_resumes_to_the_same_store(
    kill_at, store, tiny_data, tiny_checkpoints, tmp_path
):
    """SIGKILL at a fixed point (a test hook in memoize.py, no timing race): after 3 chunks are
    committed and the 4th has its temporary file, or once the stitched temporary store exists."""
    out = str(tmp_path / "resumed.h5")
    args = [os.path.join(BIN, "ensdist-memoize"), *memoize_args(tiny_data, tiny_checkpoints, out)]
    args[args.index("--chunk-sentences") + 1] = "20"  # 15 chunks
    killed = run_cli(args, timeout=300, env_extra={"ENSDIST_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL and not os.path.exists(out)
    shard_dir = out + ".shards"
    done = sorted(n for n in os.listdir(shard_dir) if n.endswith(".h5"))
    left = [n for n in os.listdir(shard_dir) if ".tmp-" in n] + [
        n for n in os.listdir(tmp_path) if n.startswith("resumed.h5.tmp-")
    ]
    assert len(done) == (3 if kill_at.startswith("chunk") else 15) and len(left) == 1
    p = run_cli(args, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{len(done)} of this rank's 15 chunks are already complete" in p.stderr
    assert sorted(os.listdir(tmp_path)) == ["resumed.h5"]  # stale temporaries and the lock are gone
    assert_same_store(store_with_chunks_of_20(tmp_path, tiny_data, tiny_checkpoints, args), out)


def store_with_chunks_of_20(tmp_path, tiny_data, tiny_checkpoints, args):
    reference = str(tmp_path.parent / (tmp_path.name + "-reference.h5"))
    main([reference if a.endswith("resumed.h5") else a for a in args[1:]])  # never interrupted
    return reference


def assert_refused(args, capsys, pattern):
    """main() exits 1 with one ``error:`` line on stderr matching `pattern` (re.search)."""
    capsys.readouterr()
    assert main(args) == 1
    lines = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.strip() and not line.startswith("ensdist-memoize: ")
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_second_writer_is_refused_at_once(tiny_data, tiny_checkpoints, tmp_path, capsys):
    from ensdist_fairseq.store import shards

    out = str(tmp_path / "locked.h5")
    lock = shards.OutputLock(out)  # as a live memoize holds it
    try:
        assert_refused(
            memoize_args(tiny_data, tiny_checkpoints, out),
            capsys,
            r"^error: --output .*locked.h5: another ensdist-memoize is writing",
        )
    finally:
        lock.release(remove=True)


@pytest.mark.parametrize(
    "change, message",
    [
        (("--split", "nosuch"), "--split nosuch: no such split"),
        (("--topk", "100000"), "--topk 100000"),
        (("--path", "/nonexistent.pt"), "/nonexistent.pt: checkpoint not found"),
    ],
)
def test_bad_input_is_one_line(change, message, tiny_data, tiny_checkpoints, tmp_path, capsys):
    args = memoize_args(tiny_data, tiny_checkpoints, str(tmp_path / "x.h5")) + list(change)
    assert_refused(args, capsys, re.escape(message))
    assert not os.path.exists(tmp_path / "x.h5")
    assert os.listdir(tmp_path) == []  # refused inputs leave nothing, not even x.h5.lock


def test_empty_split_is_refused(tiny_data, tiny_checkpoints, tmp_path, capsys):
    from fairseq.data import indexed_dataset

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for lang in ("en", "de"):
        prefix = str(data / f"empty.en-de.{lang}")
        builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=100)
        builder.finalize(prefix + ".idx")
    args = memoize_args(str(data), tiny_checkpoints, str(tmp_path / "x.h5"), "--split", "empty")
    assert_refused(args, capsys, "error: --split empty: .* has no sentences")


def test_existing_output_is_not_overwritten(store, tiny_data, tiny_checkpoints, capsys):
    before = sha256(store)
    assert_refused(memoize_args(tiny_data, tiny_checkpoints, store), capsys, "already exists")
    assert sha256(store) == before


def test_failed_chunk_write_keeps_complete_chunks_and_says_where(
    tiny_data, tiny_checkpoints, tmp_path, monkeypatch, capsys
):
    from ensdist_fairseq.store import format as fmt

    out = str(tmp_path / "full.h5")
    args = memoize_args(tiny_data, tiny_checkpoints, out)
    args[args.index("--chunk-sentences") + 1] = "100"  # 3 chunks
    calls = {"n": 0}
    real = fmt.RowWriter.write_sentence

    def disk_full_in_second_chunk(self, i, *a):
        calls["n"] += 1
        if calls["n"] > 150:
            raise OSError(28, "No space left on device")
        return real(self, i, *a)

    monkeypatch.setattr(fmt.RowWriter, "write_sentence", disk_full_in_second_chunk)
    assert_refused(
        args,
        capsys,
        r"^error: --output .*full.h5: writing failed \(No space left on device\); "
        r"complete chunks are kept in .*full.h5.shards: rerun the same command to resume$",
    )
    assert os.listdir(out + ".shards") == [
        "chunk-000000000000-000000000100.h5"
    ]  # no temporary left
    monkeypatch.undo()
    main(args)  # the rerun resumes and finishes
    store_format.StoreReader(out).verify()


def test_a_file_in_the_way_of_the_chunk_directory_is_named_before_any_work(tmp_path, capsys):
    """Rerunning cannot help there: the message says what to do instead (no models loaded)."""
    out = str(tmp_path / "t.h5")
    open(out + ".shards", "w").close()
    line = assert_refused(
        [str(tmp_path), "--path", str(tmp_path / "none.pt"), "--output", out],
        capsys,
        r"^error: --output .*t.h5: .*t.h5.shards exists and is not a directory .*: move it away",
    )
    assert "rerun" not in line and os.listdir(tmp_path) == ["t.h5.shards"]


def test_a_chunk_of_other_teachers_is_refused_on_resume(
    store, tiny_data, tiny_checkpoints, tmp_path, capsys
):
    """Same data, same K, same V': only the teachers differ (one member repeated)."""
    out = str(tmp_path / "mixed.h5")
    args = memoize_args(tiny_data, tiny_checkpoints, out)
    args[args.index("--chunk-sentences") + 1] = "100"
    calls = {"n": 0}
    from ensdist_fairseq.store import format as fmt

    real = fmt.RowWriter.write_sentence

    def fail_in_second_chunk(self, i, *a):
        calls["n"] += 1
        if calls["n"] > 150:
            raise OSError(28, "No space left on device")
        return real(self, i, *a)

    fmt.RowWriter.write_sentence = fail_in_second_chunk
    try:
        assert main(args) == 1  # chunk 0 complete, from the ensemble (a, b)
    finally:
        fmt.RowWriter.write_sentence = real
    other = list(args)
    other[other.index("--path") + 1] = ":".join([tiny_checkpoints[0]] * 2)  # (a, a)
    assert_refused(
        other,
        capsys,
        r"chunk-000000000000-000000000100.h5: teacher checkpoints' sha256 differs: .*other inputs",
    )
    assert not os.path.exists(out)


def test_nucleus_rows_are_prefixes_of_the_full_rows(store, tiny_data, tiny_checkpoints, tmp_path):
    out = str(tmp_path / "nucleus.h5")
    full = store_format.StoreReader(store)
    # P = the median mass of the top 4 (tiny teachers are flat): rows keep 2..8 entries
    top4 = np.concatenate([full.read(i)[1][:, :4].astype(np.float64) for i in range(300)])
    top_p = round(float(np.median(top4.sum(1))), 3)
    main(memoize_args(tiny_data, tiny_checkpoints, out, "--top-p", str(top_p), "--min-k", "2"))
    nucleus = store_format.StoreReader(out)
    assert (nucleus.provenance.top_p, nucleus.provenance.min_k) == (top_p, 2)
    assert (full.provenance.top_p, full.provenance.min_k) == (1.0, 1)
    kept, sizes = 0, set()
    for i in range(full.num_sentences):
        f_idx, f_probs, f_prec = full.read(i)
        n_idx, n_probs, n_prec = nucleus.read(i)
        np.testing.assert_array_equal(n_prec, f_prec)
        mass = np.cumsum(f_probs.astype(np.float64), axis=1)
        for r in range(len(f_idx)):  # the stored (float16) mass is within rounding of float32's
            n = int(np.count_nonzero(n_probs[r]))
            assert n >= 2 and (n == 2 or mass[r, n - 2] < top_p + 2e-3)
            assert n == TOPK or mass[r, n - 1] >= top_p - 2e-3
            np.testing.assert_array_equal(n_idx[r, :n], f_idx[r, :n])
            np.testing.assert_array_equal(n_probs[r, :n], f_probs[r, :n])
            assert not n_idx[r, n:].any() and not n_probs[r, n:].any()
            kept, sizes = kept + n, sizes | {n}
    assert kept < 0.9 * full.offsets[-1] * TOPK and len(sizes) > 2
    assert os.path.getsize(out) < os.path.getsize(store)


def test_min_k_above_topk_is_refused(tiny_data, tiny_checkpoints, tmp_path, capsys):
    args = memoize_args(tiny_data, tiny_checkpoints, str(tmp_path / "x.h5"), "--min-k", "9")
    assert_refused(args, capsys, r"^error: --min-k 9: must be in 1..8 \(at most --topk\)$")
