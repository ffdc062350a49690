"""The teacher store file: layout, writing and reading (pure h5py/numpy; docs/store-format.md).

One HDF5 file per store (and per chunk while memoizing). Row data live in CONTIGUOUS datasets,
allocated when the file is created. That is what makes the store fast and small in memory:
readers look the byte offsets up once through h5py and then os.pread exactly the bytes of a
sentence: no HDF5 chunk cache, no mmap (mapped pages would count in the trainer's RSS).
Format 4 (written now) codes each sentence's rows losslessly with code tables fitted per chunk
(store/coded.py, store/table_codec.py); format 3 (zlib per sentence, store/codec.py) and formats
1 and 2 (raw rows, written in place with os.pwrite) are still read, and written for tests.
Each sentence carries a CRC-32 of its rows (format 3: and of its index in the split), checked on
every read, so corruption is detected when the data is used.
"""

import logging
import os
import zlib
from typing import NamedTuple, Optional

# Importing fairseq can leave the root logger at DEBUG, and h5py then logs every type conversion
# (also while it is imported).
logging.getLogger("h5py").setLevel(logging.WARNING)
import h5py  # noqa: E402
import numpy as np  # noqa: E402

from ensdist_fairseq.store import codec, coded, table_codec  # noqa: E402
from ensdist_fairseq.store.provenance import Provenance, StoreError  # noqa: E402
from ensdist_fairseq.store.validate import PRECISION_MAX, first_problem  # noqa: E402

OFFSETS, INDICES, PROBS, PRECISION, CRC32 = "offsets", "indices", "probs", "precision", "crc32"
ROW_DATASETS = (INDICES, PROBS, PRECISION, CRC32)
FIRST_SENTENCE = "first_sentence"  # attribute: index in the split of this file's sentence 0
PROB_DTYPE = np.dtype("<f2")
PRECISION_DTYPE = np.dtype("<f4")
CRC_DTYPE = np.dtype("<u4")


def index_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every token id fits (ids < 65536), else int32."""
    return np.dtype("<u2") if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype("<i4")


def store_nbytes(num_sentences: int, num_rows: int, topk: int, vocab_size: int) -> int:
    """Bytes of the datasets of a store (HDF5 metadata adds a few KB)."""
    per_row = (
        topk * (index_dtype(vocab_size).itemsize + PROB_DTYPE.itemsize) + PRECISION_DTYPE.itemsize
    )
    return num_rows * per_row + num_sentences * (8 + CRC_DTYPE.itemsize) + 8


def _dtypes(vocab_size: int):
    return {
        INDICES: index_dtype(vocab_size),
        PROBS: PROB_DTYPE,
        PRECISION: PRECISION_DTYPE,
        CRC32: CRC_DTYPE,
    }


def _shapes(num_sentences: int, num_rows: int, topk: int):
    return {
        INDICES: (num_rows, topk),
        PROBS: (num_rows, topk),
        PRECISION: (num_rows,),
        CRC32: (num_sentences,),
    }


class Layout(NamedTuple):
    """Where each row dataset's bytes are in the file."""

    byte_offset: dict
    nbytes: dict
    dtype: dict
    topk: int
    provenance: Optional[Provenance] = None  # format 3: a file is written whole, from these
    first_sentence: int = 0

    def row_nbytes(self, name: str) -> int:
        """Bytes of one row of `name` (one sentence for crc32)."""
        return self.dtype[name].itemsize * (self.topk if name in (INDICES, PROBS) else 1)


def create(
    path: str, offsets: np.ndarray, provenance: Provenance, first_sentence: int = 0
) -> Layout:
    """Create a store file with its offsets, attributes and (unwritten) row datasets; format 3
    (coded rows) creates an empty file and RowWriter.close writes it."""
    offsets = np.asarray(offsets, dtype="<i8")
    if provenance.format_version >= 3:
        open(path, "wb").close()  # the name is taken now; the contents come with close()
        return Layout({}, {}, {}, provenance.topk, provenance, first_sentence)
    num_sentences, num_rows = len(offsets) - 1, int(offsets[-1])
    dtypes = _dtypes(provenance.vocab_size)
    shapes = _shapes(num_sentences, num_rows, provenance.topk)
    # libver="latest": metadata blocks carry checksums, so a damaged header is an error, not garbage.
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset(OFFSETS, data=offsets, track_times=False)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # space exists now: byte offsets are final
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # every byte is written by us; skip zero-fill
        for name in ROW_DATASETS:
            f.create_dataset(
                name, shape=shapes[name], dtype=dtypes[name], dcpl=dcpl, track_times=False
            )
        for key, value in provenance.to_attrs().items():
            f.attrs[key] = value
        f.attrs[FIRST_SENTENCE] = first_sentence
        layout = _layout(f, path, provenance.topk)
    return layout


def _layout(f: h5py.File, path: str, topk: int, names=ROW_DATASETS, **kw) -> Layout:
    byte_offset, nbytes, dtype = {}, {}, {}
    for name in names:
        if name not in f:
            raise StoreError(f"{path}: not a teacher store (dataset '{name}' missing)")
        ds = f[name]
        off = ds.id.get_offset()
        if off is None or ds.chunks is not None:
            raise StoreError(
                f"{path}: dataset '{name}' is not stored contiguously (not written by ensdist-memoize)"
            )
        byte_offset[name], nbytes[name], dtype[name] = off, ds.id.get_storage_size(), ds.dtype
    return Layout(byte_offset, nbytes, dtype, topk, **kw)


def sentence_crc(indices: np.ndarray, probs: np.ndarray, precision: np.ndarray) -> int:
    """Formats 1 and 2: the rows only (format 3 adds the sentence's index: coded.sentence_crc)."""
    crc = zlib.crc32(memoryview(np.ascontiguousarray(indices)).cast("B"))
    crc = zlib.crc32(memoryview(np.ascontiguousarray(probs)).cast("B"), crc)
    return zlib.crc32(memoryview(np.ascontiguousarray(precision)).cast("B"), crc)


class RowWriter:
    """Writes sentences' rows into a file made by `create`; `close` flushes them to disk."""

    def __init__(self, path: str, layout: Layout, offsets: np.ndarray):
        self.path, self.layout, self.offsets = path, layout, np.asarray(offsets, dtype=np.int64)
        self._fd, self._coded = None, None
        p = layout.provenance
        if p is not None and p.format_version >= 3:
            self._coded = coded.CodedWriter(
                path,
                offsets,
                p.to_attrs(),
                layout.first_sentence,
                index_dtype(p.vocab_size),
                p.topk,
                p.format_version,
            )
        else:
            self._fd = os.open(path, os.O_RDWR)

    def _pwrite(self, name: str, array: np.ndarray, first: int):
        data = memoryview(np.ascontiguousarray(array, dtype=self.layout.dtype[name])).cast("B")
        os.pwrite(
            self._fd, data, self.layout.byte_offset[name] + first * self.layout.row_nbytes(name)
        )

    def write_sentence(self, i: int, indices: np.ndarray, probs: np.ndarray, precision: np.ndarray):
        """Sentence `i` (of this file) gets rows offsets[i]:offsets[i+1]."""
        first, n = int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i])
        if (
            indices.shape != (n, self.layout.topk)
            or probs.shape != indices.shape
            or precision.shape != (n,)
        ):
            raise ValueError(
                f"{self.path}: sentence {i} has {n} rows, got entries of shape {indices.shape}"
            )
        dtypes = _dtypes(self.layout.provenance.vocab_size) if self._coded else self.layout.dtype
        indices = np.ascontiguousarray(indices, dtype=dtypes[INDICES])
        probs = np.ascontiguousarray(probs, dtype=dtypes[PROBS])
        precision = np.ascontiguousarray(precision, dtype=dtypes[PRECISION])
        if self._coded is not None:
            self._coded.write_sentence(i, indices, probs, precision)
            return
        self._pwrite(INDICES, indices, first)
        self._pwrite(PROBS, probs, first)
        self._pwrite(PRECISION, precision, first)
        self._pwrite(CRC32, np.array([sentence_crc(indices, probs, precision)]), i)

    def abandon(self):
        """Stop without writing what is pending (the caller removes the file)."""
        if self._coded is not None:
            self._coded.abandon()
        self._coded = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self):
        if self._coded is not None:
            self._coded.close()
            self._coded = None
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


class StoreReader:
    """Reads a store's sentences by index; opens its file descriptor lazily in each process.

    Construction validates the structure (so a truncated or foreign file fails at once with
    one line) and keeps only the offsets in memory. Reads use os.pread, so a reader made before
    fork (DataLoader workers) or pickled (spawn) works: the descriptor is per pid."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise StoreError(f"{path}: teacher store not found")
        try:
            with h5py.File(path, "r") as f:
                self.provenance = Provenance.from_attrs(f.attrs, path)
                self.first_sentence = int(f.attrs.get(FIRST_SENTENCE, -1))
                if OFFSETS not in f:
                    raise StoreError(f"{path}: not a teacher store (dataset '{OFFSETS}' missing)")
                self.offsets = f[OFFSETS][()].astype(np.int64)
                self.coded = self.provenance.format_version >= 3
                if self.coded:
                    if coded.CODE_OFFSETS not in f:
                        raise StoreError(
                            f"{path}: not a teacher store (dataset '{coded.CODE_OFFSETS}' missing)"
                        )
                    self.code_offsets = f[coded.CODE_OFFSETS][()].astype(np.int64)
                self._tables, self._table_sets = None, {}
                if self.provenance.format_version >= 4:
                    for name in coded.TABLE_DATASETS:
                        if name not in f:
                            raise StoreError(
                                f"{path}: not a teacher store (dataset '{name}' missing)"
                            )
                    try:
                        self._tables = coded.read_tables(f, self.provenance.topk)
                    except ValueError as e:
                        raise StoreError(f"{path}: corrupt {e}") from None
                    self._table_first = np.array([t[0] for t in self._tables], dtype=np.int64)
                names = coded.RAW_DATASETS if self.coded else ROW_DATASETS
                self.layout = _layout(
                    f,
                    path,
                    self.provenance.topk,
                    names,
                    provenance=self.provenance,
                    first_sentence=self.first_sentence,
                )
                shapes = {name: f[name].shape for name in names}
        except StoreError:
            raise
        except Exception as e:  # h5py raises OSError/KeyError/... for damaged files
            raise StoreError(f"{path}: not a readable teacher store ({_first_line(e)})") from None
        self._check_structure(shapes)
        self._fd, self._pid = None, None

    def _check_structure(self, shapes):
        p, offs = self.provenance, self.offsets
        n = len(offs) - 1
        if n < 1 or offs[0] != 0 or np.any(np.diff(offs) < 1):
            raise StoreError(f"{self.path}: corrupt offsets (every sentence must own >= 1 row)")
        expected = _shapes(n, int(offs[-1]), p.topk)
        dtypes = _dtypes(p.vocab_size)
        if self.coded:
            co = self.code_offsets
            if len(co) != n + 1 or co[0] != 0 or np.any(np.diff(co) < 1):
                raise StoreError(
                    f"{self.path}: corrupt code_offsets (one per sentence, increasing)"
                )
            expected = {coded.CODED: (int(co[-1]),), PRECISION: expected[PRECISION]}
            expected[CRC32] = (n,)
            dtypes = {name: coded.DTYPES[name] for name in coded.RAW_DATASETS}
        for name, dt in dtypes.items():
            if shapes[name] != expected[name] or self.layout.dtype[name] != dt:
                raise StoreError(
                    f"{self.path}: dataset '{name}' has shape {shapes[name]} "
                    f"{self.layout.dtype[name]}, expected {expected[name]} {dt}"
                )
        size = os.path.getsize(self.path)
        for name in self.layout.byte_offset:
            end = self.layout.byte_offset[name] + self.layout.nbytes[name]
            if end > size:
                raise StoreError(
                    f"{self.path}: truncated ({size} bytes, dataset '{name}' ends at {end})"
                )

    @property
    def num_sentences(self) -> int:
        return len(self.offsets) - 1

    def num_rows(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def _descriptor(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _pread(self, name: str, first: int, count: int) -> np.ndarray:
        row_nbytes = self.layout.row_nbytes(name)
        nbytes = count * row_nbytes
        buf = bytearray(nbytes)  # writable: consumers may torch.from_numpy the rows
        if (
            os.preadv(self._descriptor(), [buf], self.layout.byte_offset[name] + first * row_nbytes)
            != nbytes
        ):
            raise StoreError(f"{self.path}: truncated while reading '{name}'")
        return np.frombuffer(buf, dtype=self.layout.dtype[name])

    def read(self, i: int, topk: Optional[int] = None):
        """(indices (n, topk) int64, probs (n, topk) float16, precision (n,) float32) of sentence i,
        in the stored dtypes (float16 probabilities are exact; consumers convert).

        Every read checks the CRC-32 and that the rows are a distribution (store/validate.py):
        a bad sentence raises StoreError naming the file, the sentence and the row."""
        if not 0 <= i < self.num_sentences:
            raise IndexError(f"{self.path}: sentence {i} out of range 0..{self.num_sentences - 1}")
        first, n, k = int(self.offsets[i]), self.num_rows(i), self.layout.topk
        s = self.first_sentence + i  # messages name the sentence of the split (chunks too)
        if self.coded:
            a, b = int(self.code_offsets[i]), int(self.code_offsets[i + 1])
            dtype = index_dtype(self.provenance.vocab_size)
            try:
                blob = self._pread(coded.CODED, a, b - a)
                if self._tables is None:
                    indices, probs = codec.decode(blob, n, k, dtype)
                else:
                    indices, probs = table_codec.decode(blob, n, k, dtype, self._table_set(i))
            except ValueError as e:
                raise StoreError(f"{self.path}: corrupt data for sentence {s} ({e})") from None
        else:
            indices = self._pread(INDICES, first, n).reshape(n, k)
            probs = self._pread(PROBS, first, n).reshape(n, k)
        precision = self._pread(PRECISION, first, n)
        crc = int(self._pread(CRC32, i, 1)[0])
        if self.coded:
            expected = coded.sentence_crc(s, indices, probs, precision)
        else:
            expected = sentence_crc(indices, probs, precision)
        if expected != crc:
            raise StoreError(f"{self.path}: corrupt data for sentence {s} (CRC-32 mismatch)")
        if self.provenance.format_version == 1:  # version 1 stored +inf where members agree
            precision = np.minimum(precision, np.float32(PRECISION_MAX))
        problem = first_problem(indices, probs, precision, self.provenance.vocab_size)
        if problem is not None:
            raise StoreError(f"{self.path}: sentence {s} {problem}")
        topk = k if topk is None else topk
        return indices[:, :topk].astype(np.int64), probs[:, :topk], precision

    def _table_set(self, i: int) -> "table_codec.TableSet":
        """Format 4: the code tables of sentence i (built once per table set, when first used)."""
        t = int(np.searchsorted(self._table_first, i, side="right")) - 1
        if t not in self._table_sets:
            _, lengths, index_map, groups = self._tables[t]
            self._table_sets[t] = table_codec.TableSet(lengths, index_map, groups)
        return self._table_sets[t]

    def table_sets(self):
        """Format 4: [(first sentence, TableSet)] of this file, e.g. to stitch it."""
        return [(first, self._table_set(first)) for first, *_ in self._tables]

    def check_data(self, expected: dict, target_lengths: np.ndarray, context: str) -> None:
        """StoreError unless this is a whole store (not a chunk) whose provenance agrees with
        `expected` (Provenance.first_difference) and whose sentence i owns target_lengths[i] rows.
        """
        if self.first_sentence != 0 or self.provenance.num_sentences != self.num_sentences:
            raise StoreError(
                f"{self.path}: holds sentences {self.first_sentence}.."
                f"{self.first_sentence + self.num_sentences - 1} of a split: a chunk, not a whole store"
            )
        self.provenance.check_against(self.path, expected, context)
        self.check_lengths(target_lengths)

    def check_lengths(self, target_lengths: np.ndarray, first: int = 0) -> None:
        """StoreError naming the first sentence whose row count differs from its target's length."""
        lengths = np.asarray(target_lengths, dtype=np.int64)
        if len(lengths) != self.num_sentences:
            raise StoreError(
                f"{self.path}: {self.num_sentences} sentences, the data has {len(lengths)}"
            )
        bad = np.flatnonzero(np.diff(self.offsets) != lengths)
        if len(bad):
            b = int(bad[0])
            raise StoreError(
                f"{self.path}: sentence {first + b} has {self.num_rows(b)} rows, "
                f"its target has {lengths[b]} tokens"
            )

    def raw_rows(self, name: str, first: int, count: int) -> bytes:
        """Raw bytes of `count` rows (or CRCs) of a dataset, for stitching chunk files."""
        return self._pread(name, first, count).tobytes()

    def verify(self):
        """Read every sentence once (checks every CRC); raises StoreError on the first bad one."""
        for i in range(self.num_sentences):
            self.read(i)

    def close(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, None  # descriptors do not cross processes
        return state


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
