"""The store file format and chunk stitching, with h5py/numpy only (no fairseq)."""

import multiprocessing
import os
import pickle

import h5py
import numpy as np
import pytest

from ensdist_fairseq.store import format as store_format
from ensdist_fairseq.store import shards
from ensdist_fairseq.store.provenance import Provenance, StoreError
from ensdist_fairseq.store.validate import PRECISION_MAX


def provenance(vocab_size=100, topk=4, num_sentences=6, **kw):
    fields = dict(
        vocab_size=vocab_size,
        topk=topk,
        num_teachers=3,
        teacher_sha256=("a" * 64, "b" * 64, "c" * 64),
        dictionary_sha256="d" * 64,
        split="train",
        num_sentences=num_sentences,
        target_checksum="e" * 64,
        source_checksum="f" * 64,
        package_version="test",
    )
    fields.update(kw)
    return Provenance(**fields)


def random_rows(lengths, topk, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        probs = np.sort(rng.dirichlet(np.ones(vocab_size), size=n), axis=1)[:, ::-1][:, :topk]
        rows.append(
            (rng.integers(0, vocab_size, size=(n, topk)), probs, rng.uniform(1, 1e4, size=n))
        )
    return rows


def write_store(path, lengths, prov, rows, order=None):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    layout = store_format.create(path, offsets, prov)
    writer = store_format.RowWriter(path, layout, offsets)
    for i in (order if order is not None else range(len(lengths))):
        writer.write_sentence(i, *rows[i])
    writer.close()


@pytest.fixture
def store(tmp_path):
    lengths = [3, 1, 5, 2, 4, 2]
    prov = provenance()
    rows = random_rows(lengths, prov.topk, prov.vocab_size)
    path = str(tmp_path / "s.h5")
    write_store(path, lengths, prov, rows, order=[4, 0, 5, 2, 1, 3])  # any order
    return path, lengths, prov, rows


def test_round_trip_layout_and_size(store):
    path, lengths, prov, rows = store
    with h5py.File(path, "r") as f:  # the documented layout, read with plain h5py
        np.testing.assert_array_equal(f["offsets"][()], np.concatenate([[0], np.cumsum(lengths)]))
        assert f["indices"].dtype == np.uint16 and f["probs"].dtype == np.float16
        assert f["precision"].dtype == np.float32 and f["indices"].shape == (
            sum(lengths),
            prov.topk,
        )
        assert (
            f.attrs["topk"] == 4
            and f.attrs["split"] == "train"
            and len(f.attrs["teacher_sha256"]) == 3
        )
        np.testing.assert_array_equal(f["indices"][3:4], rows[1][0])
    reader = store_format.StoreReader(path)
    assert reader.provenance == prov and reader.num_sentences == 6
    for i, (idx, probs, prec) in enumerate(rows):
        got = reader.read(i)
        np.testing.assert_array_equal(got[0], idx)
        np.testing.assert_allclose(got[1], probs, rtol=1e-3, atol=1e-7)  # float16
        np.testing.assert_allclose(got[2], prec, rtol=1e-7)
        np.testing.assert_array_equal(reader.read(i, topk=2)[0], idx[:, :2])
    entries = sum(lengths) * prov.topk
    assert (
        store_format.store_nbytes(6, sum(lengths), 4, 100) - sum(lengths) * 4 - 6 * 12 - 8
        == entries * 4
    )


def test_index_dtype_widens_for_large_vocabularies():
    assert store_format.index_dtype(65536) == np.uint16
    assert store_format.index_dtype(65537) == np.int32


def test_version_1_infinite_precision_reads_as_the_cap(tmp_path):
    """Version 1 stored beta0 = +inf where members agree; version 2 stores the float32 cap."""
    rows = random_rows([2], 4, 100)
    rows[0] = (rows[0][0], rows[0][1], np.array([np.inf, 5.0]))
    write_store(str(tmp_path / "v1.h5"), [2], provenance(num_sentences=1, format_version=1), rows)
    precision = store_format.StoreReader(str(tmp_path / "v1.h5")).read(0)[2]
    assert precision.tolist() == [PRECISION_MAX, 5.0] and precision.dtype == np.float32
    write_store(str(tmp_path / "v2.h5"), [2], provenance(num_sentences=1), rows)
    with pytest.raises(StoreError, match="v2.h5: sentence 0 row 0: precision inf"):
        store_format.StoreReader(str(tmp_path / "v2.h5")).read(0)


def _bad_rows(what):
    idx, probs, prec = random_rows([3], 4, 100)[0]
    probs, idx, prec = probs.copy(), idx.copy(), prec.copy()
    if what == "nan":
        probs[1, 2] = np.nan
    elif what == "negative":
        probs[1, 0] = -0.25
    elif what == "above one":
        probs[1, 0] = 2.0
    elif what == "sum":
        probs[1] = 0.5
    elif what == "index":
        idx[1, 3] = 100
    elif what == "zero precision":
        prec[1] = 0.0
    elif what == "nan precision":
        prec[1] = np.nan
    return idx, probs, prec


@pytest.mark.parametrize(
    "what, message",
    [
        ("nan", "probability nan is not in \\[0, 1\\]"),
        ("negative", "probability -0.25 is not in \\[0, 1\\]"),
        ("above one", "probability 2.0 is not in \\[0, 1\\]"),
        ("sum", "probabilities sum to 2 > 1"),
        ("index", "token index 100 is not in 0..99"),
        ("zero precision", "precision 0.0 is not finite and > 0"),
        ("nan precision", "precision nan is not finite and > 0"),
    ],
)
def test_rows_that_are_not_a_distribution_are_refused_on_read(tmp_path, what, message):
    path = str(tmp_path / "bad.h5")
    write_store(path, [3], provenance(num_sentences=1), [_bad_rows(what)])  # valid CRC, bad content
    with pytest.raises(StoreError, match=f"^{path}: sentence 0 row 1: {message}$"):
        store_format.StoreReader(path).read(0)


def test_reads_return_the_stored_dtypes(store):
    indices, probs, precision = store_format.StoreReader(store[0]).read(0)
    assert (indices.dtype, probs.dtype, precision.dtype) == (np.int64, np.float16, np.float32)
    assert probs.flags.writeable and precision.flags.writeable  # torch.from_numpy without a warning


def test_truncated_file_is_refused(store):
    path = store[0]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 40)
    with pytest.raises(StoreError, match="s.h5"):
        store_format.StoreReader(path)


def test_corrupt_rows_are_detected_on_read(store):
    path, lengths, _, _ = store
    reader = store_format.StoreReader(path)
    where = reader.layout.byte_offset["probs"] + 3 * reader.layout.row_nbytes("probs")  # sentence 1
    with open(path, "r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0xFF]))
    reader = store_format.StoreReader(path)
    reader.read(0)
    with pytest.raises(StoreError, match="sentence 1 .*CRC"):
        reader.read(1)
    with pytest.raises(StoreError, match="CRC"):
        reader.verify()


def test_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(StoreError, match="junk.h5: not a readable teacher store"):
        store_format.StoreReader(str(junk))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["offsets"] = np.arange(3)
    with pytest.raises(StoreError, match="attribute 'vocab_size' missing"):
        store_format.StoreReader(str(tmp_path / "other.h5"))
    with pytest.raises(StoreError, match="not found"):
        store_format.StoreReader(str(tmp_path / "missing.h5"))


def test_newer_format_version_is_refused(store):
    with h5py.File(store[0], "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(StoreError, match="format version 99"):
        store_format.StoreReader(store[0])


def _read_in_child(reader, queue):
    queue.put(reader.read(2)[0].tolist())


def test_reader_works_after_fork_and_pickle(store):
    path, _, _, rows = store
    reader = store_format.StoreReader(path)
    reader.read(0)  # opens the descriptor in the parent
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(reader, queue))
    child.start()
    assert queue.get(timeout=30) == rows[2][0].tolist()
    child.join()
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read(2)[0], rows[2][0])


def test_chunks_cover_the_split_for_any_world_size():
    chunks = shards.plan_chunks(23, 5)
    assert chunks == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    for world in (1, 2, 3, 7):
        parts = [shards.chunks_of_rank(chunks, r, world) for r in range(world)]
        assert sum(parts, []) == chunks  # contiguous blocks, in order, each chunk once


def test_stitched_chunks_equal_a_store_written_at_once(tmp_path):
    lengths = [2, 3, 1, 4, 2, 2, 5]
    prov = provenance(num_sentences=len(lengths))
    rows = random_rows(lengths, prov.topk, prov.vocab_size, seed=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    output = str(tmp_path / "out.h5")
    chunks = shards.plan_chunks(len(lengths), 3)
    os.makedirs(shards.shard_dir(output))
    for chunk in chunks:
        local = offsets[chunk[0] : chunk[1] + 1] - offsets[chunk[0]]
        path = shards.chunk_path(output, chunk)
        layout = store_format.create(path, local, prov, first_sentence=chunk[0])
        writer = store_format.RowWriter(path, layout, local)
        for i in range(*chunk):
            writer.write_sentence(i - chunk[0], *rows[i])
        writer.close()
        assert shards.is_complete(path, chunk, prov, offsets)
    with pytest.raises(
        StoreError, match="split differs: store 'train', expected 'valid' .*other inputs"
    ):
        shards.is_complete(
            shards.chunk_path(output, chunks[0]), chunks[0], provenance(split="valid"), offsets
        )
    shards.stitch(
        output, chunks, prov, offsets, block_rows=2
    )  # small blocks: several copies per chunk
    assert not os.path.exists(shards.shard_dir(output))
    write_store(str(tmp_path / "direct.h5"), lengths, prov, rows)
    a, b = store_format.StoreReader(output), store_format.StoreReader(str(tmp_path / "direct.h5"))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    for name in store_format.ROW_DATASETS:
        count = len(lengths) if name == "crc32" else int(offsets[-1])
        assert a.raw_rows(name, 0, count) == b.raw_rows(name, 0, count)


def test_one_writer_per_output_and_only_dead_writers_temporaries_are_removed(tmp_path):
    output = str(tmp_path / "out.h5")
    lock = shards.OutputLock(output)
    with pytest.raises(
        StoreError, match="^--output .*out.h5: another ensdist-memoize is writing this store"
    ):
        shards.OutputLock(output)
    lock.release(remove=True)
    shards.OutputLock(output).release(remove=False)  # free again
    child = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    child.join()  # a pid that is surely dead now
    dead, live = f"{output}.tmp-{child.pid}", f"{output}.tmp-{os.getppid()}"
    for p in (dead, live, f"{output}.tmp-{os.getpid()}"):
        open(p, "w").close()
    removed = shards.remove_stale_temporaries(output)
    assert sorted(removed) == sorted([dead, f"{output}.tmp-{os.getpid()}"]) and os.path.exists(live)


def test_failed_stitch_keeps_the_chunks_and_names_them(tmp_path, monkeypatch):
    lengths = [2, 3]
    prov = provenance(num_sentences=2)
    rows = random_rows(lengths, prov.topk, prov.vocab_size)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    output = str(tmp_path / "out.h5")
    os.makedirs(shards.shard_dir(output))
    chunk = (0, 2)
    write_store(shards.chunk_path(output, chunk), lengths, prov, rows)
    with h5py.File(shards.chunk_path(output, chunk), "r+") as f:
        f.attrs["first_sentence"] = 0

    def disk_full(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.os, "pwrite", disk_full)
    with pytest.raises(
        StoreError,
        match=r"^--output .*out.h5: writing the store failed \(No space left on device\); "
        r"the complete chunks are kept in .*out.h5.shards: rerun",
    ):
        shards.stitch(output, [chunk], prov, offsets, block_rows=2)
    assert os.listdir(tmp_path) == ["out.h5.shards"] and os.listdir(shards.shard_dir(output))
