"""The store file format and chunk stitching, with h5py/numpy only (no fairseq)."""

import dataclasses
import multiprocessing
import os
import pickle
import zlib

import h5py
import numpy as np
import pytest

from ensdist_fairseq.store import codec, coded, deflate, shards, table_codec
from ensdist_fairseq.store import format as store_format
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


def test_round_trip_layout_and_size(store, tmp_path):
    path, lengths, prov, rows = store
    with h5py.File(path, "r") as f:  # format 4: the code tables, one set for the whole file
        assert f["code_tables"].shape == (1, 1 + 2 * 3, 257) and f["column_group"][()].tolist() == [
            0,
            1,
            2,
            2,
        ]
        assert f["table_first_sentence"][()].tolist() == [0] and f["index_map_offsets"][0] == 0
        assert sorted(f["index_map"][()]) == sorted(np.unique(np.concatenate([r[0] for r in rows])))
    path = str(tmp_path / "v3.h5")
    prov = dataclasses.replace(prov, format_version=3)
    write_store(path, lengths, prov, rows)
    with h5py.File(path, "r") as f:  # the documented layout, read with plain h5py
        np.testing.assert_array_equal(f["offsets"][()], np.concatenate([[0], np.cumsum(lengths)]))
        assert f["coded"].dtype == np.uint8 and f["code_offsets"].shape == (len(lengths) + 1,)
        assert f["precision"].dtype == np.float32 and f["precision"].shape == (sum(lengths),)
        assert (
            f.attrs["topk"] == 4
            and f.attrs["split"] == "train"
            and len(f.attrs["teacher_sha256"]) == 3
            and f.attrs["format_version"] == 3
        )
        # sentence 1's rows, decoded by hand as docs/store-format.md describes them
        a, b = f["code_offsets"][1:3]
        blob, streams = f["coded"][a:b].tobytes(), []
        while blob:  # zlib streams one after the other
            d = zlib.decompressobj()
            streams.append(np.frombuffer(d.decompress(blob), dtype=np.uint8).astype(int))
            blob = d.unused_data
    lengths, prob_hi, prob_lo, index_hi, index_lo = streams[0][:1], streams[0][1:], *streams[1:]
    assert lengths.tolist() == [prov.topk] and len(streams) == 4  # one row of 4 entries
    np.testing.assert_array_equal(256 * index_hi + index_lo, rows[1][0][0])
    bits = np.cumsum(np.r_[1, -np.ones(3, int)] * (256 * prob_hi + prob_lo)) % 65536
    np.testing.assert_array_equal(
        bits.astype(np.uint16).view(np.float16), rows[1][1][0].astype(np.float16)
    )
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


def test_format_2_is_still_read(tmp_path):
    lengths = [3, 2]
    rows = random_rows(lengths, 4, 100, seed=3)
    path = str(tmp_path / "v2.h5")
    write_store(path, lengths, provenance(num_sentences=2, format_version=2), rows)
    with h5py.File(path, "r") as f:
        assert f["indices"].dtype == np.uint16 and f["probs"].dtype == np.float16
    reader = store_format.StoreReader(path)
    for i, (idx, probs, prec) in enumerate(rows):
        got = reader.read(i)
        np.testing.assert_array_equal(got[0], idx)
        np.testing.assert_array_equal(got[1], probs.astype(np.float16))


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
    where = reader.layout.byte_offset["precision"] + 3 * 4  # sentence 1
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


def flip_coded_bit(path, sentence, bit=3):
    reader = store_format.StoreReader(path)
    where = reader.layout.byte_offset["coded"] + int(reader.code_offsets[sentence]) + 2
    with open(path, "r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ (1 << bit)]))


@pytest.mark.parametrize("bit", range(8))
def test_a_flipped_bit_in_coded_rows_is_detected(store, bit):
    flip_coded_bit(store[0], 2, bit)
    reader = store_format.StoreReader(store[0])
    reader.read(1)
    with pytest.raises(StoreError, match=r"s.h5: corrupt data for sentence 2 \("):
        reader.read(2)


def test_rows_moved_to_another_sentence_fail_with_their_crc_moved_along(tmp_path):
    """Sentences 1 and 2 have the same length; their coded rows, precisions and CRCs are swapped,
    so each sentence's bytes are self-consistent: only the sentence index in the CRC tells."""
    lengths = [2, 3, 3, 1]
    prov = provenance(num_sentences=4)
    rows = random_rows(lengths, prov.topk, prov.vocab_size, seed=5)
    path = str(tmp_path / "swapped.h5")
    write_store(path, lengths, prov, rows)
    with h5py.File(path, "r") as f:
        co, blob = f["code_offsets"][()], f["coded"][()]
        prec, crc, offsets = f["precision"][()], f["crc32"][()], f["offsets"][()]
    blobs = [blob[a:b] for a, b in zip(co[:-1], co[1:])]
    precs = [prec[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    order = [0, 2, 1, 3]
    new_co = np.concatenate([[0], np.cumsum([len(blobs[i]) for i in order])])
    with h5py.File(path, "r") as f:
        tables = {name: f[name][()] for name in coded.TABLE_DATASETS}
    where = coded.create(path, offsets, new_co, prov.to_attrs(), 0, tables)
    with open(path, "r+b") as f:
        for name, data in [
            ("coded", np.concatenate([blobs[i] for i in order])),
            ("precision", np.concatenate([precs[i] for i in order])),
            ("crc32", crc[order]),
        ]:
            f.seek(where[name])
            f.write(data.tobytes())
    reader = store_format.StoreReader(path)
    reader.read(0), reader.read(3)
    for i in (1, 2):
        with pytest.raises(StoreError, match=f"sentence {i} \\(CRC-32 mismatch\\)"):
            reader.read(i)


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
    for i in range(len(lengths)):  # each chunk has its own code tables: the rows are the same
        for x, y in zip(a.read(i), b.read(i)):
            assert x.tobytes() == y.tobytes()
    assert [t[0] for t in a.table_sets()] == [c[0] for c in chunks]
    assert a.raw_rows("precision", 0, int(offsets[-1])) == b.raw_rows(
        "precision", 0, int(offsets[-1])
    )
    assert a.raw_rows("crc32", 0, len(lengths)) == b.raw_rows("crc32", 0, len(lengths))


def write_chunks(output, lengths, prov, rows, chunk_sentences, changed=None):
    """Chunk files of `output` as memoize writes them; `changed`: {chunk number: provenance}."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    chunks = shards.plan_chunks(len(lengths), chunk_sentences)
    os.makedirs(shards.shard_dir(output), exist_ok=True)
    for number, chunk in enumerate(chunks):
        local = offsets[chunk[0] : chunk[1] + 1] - offsets[chunk[0]]
        path = shards.chunk_path(output, chunk)
        p = (changed or {}).get(number, prov)
        writer = store_format.RowWriter(
            path, store_format.create(path, local, p, first_sentence=chunk[0]), local
        )
        for i in range(*chunk):
            idx, probs, prec = rows[i]
            writer.write_sentence(i - chunk[0], idx[:, : p.topk], probs[:, : p.topk], prec)
        writer.close()
    return chunks, offsets


def _other_value(field, value):
    if isinstance(value, tuple):
        return value[:-1] + ("9" * 64,)
    if isinstance(value, float):
        return value / 2
    if isinstance(value, int):
        return {"format_version": 2, "topk": value - 1}.get(field, value + 1)
    return value + "x" if field == "split" else "9" * 64


@pytest.mark.parametrize(
    "field",
    # package_version and teacher_accuracy describe the run, they do not define its output
    [
        f.name
        for f in dataclasses.fields(Provenance)
        if f.name not in Provenance.as_expected.__defaults__[0]
    ],
)
def test_resume_refuses_a_complete_chunk_of_other_inputs_for_every_provenance_field(
    tmp_path, field
):
    """Same data and V', a chunk from other teachers (or any other field): stitching it would
    give a store whose provenance names only this run's inputs."""
    lengths = [2, 3, 1, 4]
    prov = provenance(num_sentences=len(lengths))
    other = dataclasses.replace(prov, **{field: _other_value(field, getattr(prov, field))})
    assert other != prov
    rows = random_rows(lengths, prov.topk, prov.vocab_size, seed=2)
    output = str(tmp_path / "out.h5")
    chunks, offsets = write_chunks(output, lengths, prov, rows, 2, changed={1: other})
    assert shards.is_complete(shards.chunk_path(output, chunks[0]), chunks[0], prov, offsets)
    with pytest.raises(StoreError, match="differs: store .*other inputs; delete .*out.h5.shards"):
        shards.is_complete(shards.chunk_path(output, chunks[1]), chunks[1], prov, offsets)
    with pytest.raises(StoreError, match="differs"):  # and stitching checks again
        shards.stitch(output, chunks, prov, offsets, block_rows=2)
    assert not os.path.exists(output)


def test_a_damaged_chunk_is_named_deleted_and_recomputed_by_the_rerun(tmp_path):
    lengths = [2, 3, 1, 4, 2]
    prov = provenance(num_sentences=len(lengths))
    rows = random_rows(lengths, prov.topk, prov.vocab_size, seed=4)
    output = str(tmp_path / "out.h5")
    chunks, offsets = write_chunks(output, lengths, prov, rows, 2)
    damaged = shards.chunk_path(output, chunks[1])
    flip_coded_bit(damaged, 0)
    with pytest.raises(
        StoreError,
        match=f"^{damaged}: corrupt data for sentence 2 .*deleted this chunk: rerun the same",
    ):
        shards.stitch(output, chunks, prov, offsets, block_rows=2)
    assert sorted(os.listdir(shards.shard_dir(output))) == sorted(
        os.path.basename(shards.chunk_path(output, c)) for c in (chunks[0], chunks[2])
    )
    assert os.listdir(tmp_path) == ["out.h5.shards"]  # no temporary store left
    assert not shards.is_complete(damaged, chunks[1], prov, offsets)  # the rerun recomputes it
    write_chunks(output, lengths, prov, rows, 2)
    shards.stitch(output, chunks, prov, offsets, block_rows=2)
    store_format.StoreReader(output).verify()


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


@pytest.mark.parametrize(
    "vocab_size, topk, nucleus",
    [(100, 4, False), (100, 1, False), (100, 1, True), (4000, 64, True), (70000, 300, True)],
)
def test_formats_3_and_4_decode_to_exactly_the_bytes_of_format_2(
    tmp_path, vocab_size, topk, nucleus
):
    """Random stores, bit for bit: rows of any float16 bit pattern in any order (NaN, -0, inf,
    subnormals and 0 reach the CRC and validation unchanged), uint16 and int32 indices, V' = 1,
    one-token sentences, rows that end in (index 0, probability 0) padding as nucleus rows do,
    and rows that are all padding."""
    rng = np.random.default_rng(topk)
    lengths = [1, 7, 3, 12]
    n = sum(lengths)
    dtype = store_format.index_dtype(vocab_size)
    indices = rng.integers(0, vocab_size, size=(n, topk)).astype(dtype)
    bits = rng.integers(0, 1 << 16, size=(n, topk), dtype=np.uint16)
    bits[0] = np.sort(bits[0])[::-1]
    if nucleus:
        keep = np.arange(topk) < rng.integers(0, topk + 1, size=n)[:, None]
        keep[1] = False
        indices[~keep], bits[~keep] = 0, 0
        bits[2, -1], indices[3, -1] = 0, 5  # an index without mass is not padding
    bits[4, :] = np.arange(topk) % 3  # subnormals and 0
    probs = bits.view(np.float16)
    precision = rng.uniform(1, 10, size=n).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    stores = {}
    for version in (2, 3, 4):
        prov = provenance(vocab_size, topk, len(lengths), format_version=version)
        path = str(tmp_path / f"v{version}.h5")
        writer = store_format.RowWriter(path, store_format.create(path, offsets, prov), offsets)
        for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
            writer.write_sentence(i, indices[a:b], probs[a:b], precision[a:b])
        writer.close()
        stores[version] = store_format.StoreReader(path)
    for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        for version, reader in stores.items():
            first, k = int(reader.offsets[i]), topk
            if reader.coded:
                c0, c1 = (int(x) for x in reader.code_offsets[i : i + 2])
                blob = reader.raw_rows("coded", c0, c1 - c0)
                if version == 3:
                    got_i, got_p = codec.decode(blob, b - a, k, dtype)
                else:
                    got_i, got_p = table_codec.decode(blob, b - a, k, dtype, reader._table_set(i))
            else:
                got_i = np.frombuffer(reader.raw_rows("indices", first, b - a), dtype)
                got_p = np.frombuffer(reader.raw_rows("probs", first, b - a), np.float16)
            assert got_i.tobytes() == indices[a:b].tobytes(), (version, i)
            assert got_p.tobytes() == probs[a:b].tobytes(), (version, i)


def test_codec_refuses_what_it_did_not_write():
    blob = codec.encode(np.zeros((2, 4), np.uint16), np.full((2, 4), 0.25, np.float16))
    assert codec.decode(blob, 2, 4, np.uint16)[1].tolist() == [[0.25] * 4] * 2
    for bad, n in [(blob[:-1], 2), (blob, 3), (zlib.compress(b"\x05\x04"), 2)]:
        with pytest.raises(ValueError, match="undecodable rows"):
            codec.decode(bad, n, 4, np.uint16)


def test_damaged_code_tables_are_named_in_one_line(store):
    with h5py.File(store[0], "r+") as f:
        f["code_tables"][0, 1, :] = 1  # 257 codes of 1 bit: not a code
    reader = store_format.StoreReader(store[0])
    with pytest.raises(StoreError, match=r"^[^\n]*s.h5: corrupt data for sentence 0 \("):
        reader.read(0)
    with h5py.File(store[0], "r+") as f:
        f["table_first_sentence"][0] = 3
    with pytest.raises(StoreError, match=r"^[^\n]*s.h5: corrupt code tables that do not fit"):
        store_format.StoreReader(store[0])


def test_huffman_code_lengths_are_a_complete_prefix_code_near_the_entropy():
    """Kraft sum exactly 1 (zlib refuses incomplete codes), at most 15 bits, and the mean length
    within 1 bit of the entropy (Huffman's bound) unless the 15-bit limit had to flatten it."""
    rng = np.random.default_rng(0)
    for counts in [
        rng.integers(0, 1000, size=257),
        np.r_[np.ones(256, int), 10**9],  # skewed: the limit binds
        np.r_[[5], np.zeros(256, int)],  # one symbol
        np.zeros(257, int),
    ]:
        lengths = deflate.code_lengths(counts).astype(int)
        used = lengths > 0
        assert lengths.max() <= 15 and used.sum() >= 2
        assert sum(2.0 ** -lengths[used]) == 1.0
        c = counts[used] / max(counts[used].sum(), 1)
        if counts.sum() and lengths.max() < 15:
            entropy = -(c[c > 0] * np.log2(c[c > 0])).sum()
            assert (c * lengths[used]).sum() <= entropy + 1


def test_bit_packing_matches_a_bit_string():
    rng = np.random.default_rng(1)
    nbits = rng.integers(0, 29, size=500)
    values = rng.integers(0, 1 << 40, size=500) & ((1 << nbits) - 1)
    bits = "".join(format(int(v), f"0{n}b")[::-1] if n else "" for v, n in zip(values, nbits))
    bits += "0" * (-len(bits) % 8)  # LSB first, the last byte padded with 0
    expected = bytes(int(bits[i : i + 8][::-1], 2) for i in range(0, len(bits), 8))
    assert deflate.pack(values, nbits) == expected
    assert deflate.unpack(expected, nbits).tolist() == values.tolist()
    with pytest.raises(ValueError, match="undecodable"):
        deflate.unpack(expected + b"\0", nbits)


def test_a_deflate_table_decodes_with_zlib_what_it_coded():
    rng = np.random.default_rng(2)
    symbols = np.minimum(rng.geometric(0.05, size=3000), 255)
    counts = np.bincount(symbols, minlength=257)
    counts[deflate.EOB] = 1  # every part ends with one
    table = deflate.Table(deflate.code_lengths(counts))
    blob = table.encode(symbols)
    got, used = table.decode(memoryview(blob + b"next"))
    assert got.tolist() == symbols.tolist() and used == len(blob)
    raw = zlib.decompress(table.prefix + blob, -15)  # zlib alone, with the stored header
    assert raw == symbols.astype(np.uint8).tobytes()
    with pytest.raises(ValueError, match="undecodable"):
        table.decode(memoryview(blob[:-1]))
