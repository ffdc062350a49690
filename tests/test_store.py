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


def provenance(vocab_size=100, topk=4, num_sentences=6, **kw):
    fields = dict(vocab_size=vocab_size, topk=topk, num_teachers=3, teacher_sha256=("a" * 64, "b" * 64, "c" * 64),
                  dictionary_sha256="d" * 64, split="train", num_sentences=num_sentences,
                  target_checksum="e" * 64, source_checksum="f" * 64, package_version="test")
    fields.update(kw)
    return Provenance(**fields)


def random_rows(lengths, topk, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        probs = np.sort(rng.dirichlet(np.ones(vocab_size), size=n), axis=1)[:, ::-1][:, :topk]
        rows.append((rng.integers(0, vocab_size, size=(n, topk)), probs, rng.uniform(1, 1e4, size=n)))
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
        assert f["precision"].dtype == np.float32 and f["indices"].shape == (sum(lengths), prov.topk)
        assert f.attrs["topk"] == 4 and f.attrs["split"] == "train" and len(f.attrs["teacher_sha256"]) == 3
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
    assert store_format.store_nbytes(6, sum(lengths), 4, 100) - sum(lengths) * 4 - 6 * 12 - 8 == entries * 4


def test_index_dtype_widens_for_large_vocabularies():
    assert store_format.index_dtype(65536) == np.uint16
    assert store_format.index_dtype(65537) == np.int32


def test_infinite_precision_survives(tmp_path):
    prov = provenance(num_sentences=1)
    rows = random_rows([2], 4, 100)
    rows[0] = (rows[0][0], rows[0][1], np.array([np.inf, 5.0]))
    write_store(str(tmp_path / "s.h5"), [2], prov, rows)
    assert np.isinf(store_format.StoreReader(str(tmp_path / "s.h5")).read(0)[2][0])


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
        local = offsets[chunk[0]:chunk[1] + 1] - offsets[chunk[0]]
        path = shards.chunk_path(output, chunk)
        layout = store_format.create(path, local, prov, first_sentence=chunk[0])
        writer = store_format.RowWriter(path, layout, local)
        for i in range(*chunk):
            writer.write_sentence(i - chunk[0], *rows[i])
        writer.close()
        assert shards.is_complete(path, chunk, prov, offsets)
    with pytest.raises(StoreError, match="other inputs .*split"):
        shards.is_complete(shards.chunk_path(output, chunks[0]), chunks[0], provenance(split="valid"), offsets)
    shards.stitch(output, chunks, prov, offsets, block_rows=2)  # small blocks: several copies per chunk
    assert not os.path.exists(shards.shard_dir(output))
    write_store(str(tmp_path / "direct.h5"), lengths, prov, rows)
    a, b = store_format.StoreReader(output), store_format.StoreReader(str(tmp_path / "direct.h5"))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    for name in store_format.ROW_DATASETS:
        count = len(lengths) if name == "crc32" else int(offsets[-1])
        assert a.raw_rows(name, 0, count) == b.raw_rows(name, 0, count)
