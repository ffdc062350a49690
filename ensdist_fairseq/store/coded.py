"""Store format 3: each sentence's rows coded (store/codec.py) into one byte dataset.

A file holds `offsets` (rows per sentence), `code_offsets` (bytes per sentence in `coded`) and
the CONTIGUOUS datasets `coded` (uint8), `precision` (float32 per row) and `crc32` (per
sentence), allocated when the file is created; readers pread a sentence's bytes as in format 2.
A coded sentence's size is known only once its rows exist, so a file is written whole: the chunk
writer keeps its chunk's (compressed) sentences in memory and writes the file when closed, and
stitching sizes the store from its chunks' `code_offsets` before copying their bytes.
"""

import concurrent.futures
import os
import zlib
from typing import Dict, Optional

import h5py
import numpy as np

from ensdist_fairseq.store import codec

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
    path: str, offsets: np.ndarray, code_offsets: np.ndarray, attrs: dict, first_sentence: int
) -> Dict[str, int]:
    """Create a format-3 file with its offsets and attributes and its raw datasets allocated
    (unwritten); returns each raw dataset's byte offset in the file."""
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

    Coding runs on one worker thread (zlib releases the GIL), so memoize's next batch of teacher
    forward passes overlaps it; the result does not depend on it (each sentence is coded alone).
    """

    def __init__(self, path, offsets, attrs, first_sentence, index_dtype, topk):
        self.path, self.attrs, self.first_sentence = path, attrs, first_sentence
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.index_dtype, self.topk = np.dtype(index_dtype), topk
        self._blobs, self._precision, self._crc = {}, {}, {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1)

    def write_sentence(self, i: int, indices: np.ndarray, probs: np.ndarray, precision):
        self._blobs[i] = self._pool.submit(codec.encode, indices.copy(), probs.copy())
        self._precision[i] = precision
        self._crc[i] = sentence_crc(self.first_sentence + i, indices, probs, precision)

    def close(self, fsync: bool = True) -> Optional[int]:
        n = len(self.offsets) - 1
        if len(self._blobs) != n:
            missing = sorted(set(range(n)) - set(self._blobs))
            raise ValueError(f"{self.path}: {len(missing)} sentences not written ({missing[:5]})")
        blobs = [self._blobs[i].result() for i in range(n)]
        self.abandon()
        sizes = np.array([len(b) for b in blobs], dtype=np.int64)
        code_offsets = np.concatenate([[0], np.cumsum(sizes)])
        where = create(self.path, self.offsets, code_offsets, self.attrs, self.first_sentence)
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
