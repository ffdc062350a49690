"""Store formats 3 and 4: each sentence's rows coded into one byte dataset (format 3:
store/codec.py, zlib per sentence; format 4: store/table_codec.py, code tables per file).

A file holds `offsets` (rows per sentence), `code_offsets` (bytes per sentence in `coded`) and
the CONTIGUOUS datasets `coded` (uint8), `precision` (float32 per row) and `crc32` (per
sentence), allocated when the file is created; readers pread a sentence's bytes as in format 2.
A coded sentence's size is known only once its rows exist, so a file is written whole: the chunk
writer keeps its chunk's (compressed) sentences in memory and writes the file when closed, and
stitching sizes the store from its chunks' `code_offsets` before copying their bytes.
Format 4 adds the code tables (small datasets, read whole by readers): one table set per chunk
the file was stitched from, each used by the sentences from its `table_first_sentence` on.
"""

import concurrent.futures
import os
import zlib
from typing import Dict, Optional

import h5py
import numpy as np

from ensdist_fairseq.store import codec, table_codec

OFFSETS, CODE_OFFSETS, CODED, PRECISION, CRC32 = (
    "offsets",
    "code_offsets",
    "coded",
    "precision",
    "crc32",
)
RAW_DATASETS = (CODED, PRECISION, CRC32)
FIRST_SENTENCE = "first_sentence"
DTYPES = {CODED: np.dtype("u1"), PRECISION: np.dtype("<f4"), CRC32: np.dtype("<u4")}
# format 4's code tables
CODE_TABLES, INDEX_MAP, INDEX_MAP_OFFSETS, TABLE_FIRST_SENTENCE, COLUMN_GROUP = (
    "code_tables",
    "index_map",
    "index_map_offsets",
    "table_first_sentence",
    "column_group",
)
TABLE_DATASETS = (CODE_TABLES, INDEX_MAP, INDEX_MAP_OFFSETS, TABLE_FIRST_SENTENCE, COLUMN_GROUP)


def table_arrays(table_sets, groups) -> dict:
    """The datasets of format 4's code tables: `table_sets` is [(first sentence, TableSet)]."""
    maps = [t.index_map for _, t in table_sets]
    return {
        CODE_TABLES: np.stack([t.code_lengths for _, t in table_sets]).astype("u1"),
        INDEX_MAP: np.concatenate(maps).astype("<u4"),
        INDEX_MAP_OFFSETS: np.concatenate([[0], np.cumsum([len(m) for m in maps])]).astype("<i8"),
        TABLE_FIRST_SENTENCE: np.array([s for s, _ in table_sets], dtype="<i8"),
        COLUMN_GROUP: np.asarray(groups).astype("u1"),
    }


def read_tables(f, topk: int):
    """[(first sentence, TableSet)] of a format-4 file (open h5py.File); ValueError when the
    tables are damaged or do not fit together."""
    a = {name: f[name][()] for name in TABLE_DATASETS}
    groups = a[COLUMN_GROUP].astype(np.int64)
    first, mo = a[TABLE_FIRST_SENTENCE].astype(np.int64), a[INDEX_MAP_OFFSETS].astype(np.int64)
    if (
        groups.shape != (topk,)
        or groups[0] != 0
        or np.any(~np.isin(np.diff(groups), (0, 1)))
        or len(first) < 1
        or first[0] != 0
        or np.any(np.diff(first) < 1)
        or mo.shape != (len(first) + 1,)
        or mo[0] != 0
        or mo[-1] != len(a[INDEX_MAP])
        or np.any(np.diff(mo) < 0)
        or a[CODE_TABLES].shape[0] != len(first)
    ):
        raise ValueError("code tables that do not fit together")
    return [
        (int(first[t]), a[CODE_TABLES][t], a[INDEX_MAP][mo[t] : mo[t + 1]], groups)
        for t in range(len(first))
    ]


def sentence_crc(
    sentence: int, indices: np.ndarray, probs: np.ndarray, precision: np.ndarray
) -> int:
    """CRC-32 of the sentence's index in the split (int64) and its decoded rows: rows moved to
    another sentence fail it, even with their CRC moved along."""
    crc = zlib.crc32(np.array([sentence], dtype="<i8").tobytes())
    for a in (indices, probs, precision):
        crc = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"), crc)
    return crc


def create(
    path: str,
    offsets: np.ndarray,
    code_offsets: np.ndarray,
    attrs: dict,
    first_sentence: int,
    tables: Optional[dict] = None,
) -> Dict[str, int]:
    """Create a format-3 file (format 4: with `tables`, table_arrays' datasets) with its offsets
    and attributes and its raw datasets allocated (unwritten); returns each raw dataset's byte
    offset in the file."""
    offsets = np.asarray(offsets, dtype="<i8")
    code_offsets = np.asarray(code_offsets, dtype="<i8")
    shapes = {
        CODED: (int(code_offsets[-1]),),
        PRECISION: (int(offsets[-1]),),
        CRC32: (len(offsets) - 1,),
    }
    # libver="latest": metadata blocks carry checksums, so a damaged header is an error, not garbage.
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(OFFSETS, data=offsets, track_times=False)
        f.create_dataset(CODE_OFFSETS, data=code_offsets, track_times=False)
        for name, data in (tables or {}).items():
            f.create_dataset(name, data=data, track_times=False)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # space exists now: byte offsets are final
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # every byte is written by us; skip zero-fill
        for name in RAW_DATASETS:
            f.create_dataset(
                name, shape=shapes[name], dtype=DTYPES[name], dcpl=dcpl, track_times=False
            )
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs[FIRST_SENTENCE] = first_sentence
        return {name: f[name].id.get_offset() for name in RAW_DATASETS}


class CodedWriter:
    """Collects a file's sentences (coded at once: memory holds compressed rows) in any order
    and writes the file when closed; every sentence must have been written by then.

    Coding runs on one worker thread (zlib and most of numpy release the GIL), so memoize's next
    batch of teacher forward passes overlaps it; the result does not depend on it. Format 3 codes
    each sentence alone there. Format 4 needs the whole file's statistics first: the thread
    splits each sentence into the values to code (as many bytes as the raw rows) and `close`
    fits the file's code tables to them and codes every sentence.
    """

    def __init__(self, path, offsets, attrs, first_sentence, index_dtype, topk, version=4):
        self.path, self.attrs, self.first_sentence = path, attrs, first_sentence
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.index_dtype, self.topk, self.version = np.dtype(index_dtype), topk, version
        self.groups = table_codec.column_groups(topk)
        self._blobs, self._precision, self._crc = {}, {}, {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1)

    def write_sentence(self, i: int, indices: np.ndarray, probs: np.ndarray, precision):
        if self.version >= 4:
            job = (table_codec.sentence_values, indices.copy(), probs.copy(), self.groups)
        else:
            job = (codec.encode, indices.copy(), probs.copy())
        self._blobs[i] = self._pool.submit(*job)
        self._precision[i] = precision
        self._crc[i] = sentence_crc(self.first_sentence + i, indices, probs, precision)

    def close(self, fsync: bool = True) -> Optional[int]:
        n = len(self.offsets) - 1
        if len(self._blobs) != n:
            missing = sorted(set(range(n)) - set(self._blobs))
            raise ValueError(f"{self.path}: {len(missing)} sentences not written ({missing[:5]})")
        blobs = [self._blobs[i].result() for i in range(n)]
        self.abandon()
        tables = None
        if self.version >= 4:
            table_set = table_codec.fit(blobs, self.groups)
            blobs = [table_codec.encode(v, table_set) for v in blobs]
            tables = table_arrays([(0, table_set)], self.groups)
        sizes = np.array([len(b) for b in blobs], dtype=np.int64)
        code_offsets = np.concatenate([[0], np.cumsum(sizes)])
        where = create(
            self.path, self.offsets, code_offsets, self.attrs, self.first_sentence, tables
        )
        fd = os.open(self.path, os.O_RDWR)
        try:
            os.pwrite(fd, b"".join(blobs), where[CODED])
            precision = np.concatenate([self._precision[i] for i in range(n)]).astype("<f4")
            os.pwrite(fd, precision.tobytes(), where[PRECISION])
            crc = np.array([self._crc[i] for i in range(n)], dtype="<u4")
            os.pwrite(fd, crc.tobytes(), where[CRC32])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._precision, self._crc = {}, {}
        return int(code_offsets[-1])

    def abandon(self):
        """Stop the coding thread and drop what is pending."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._blobs = {}
