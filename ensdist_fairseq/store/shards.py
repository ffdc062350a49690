"""Chunked, resumable production of one store: chunk files, commit by rename, stitching.

The split is cut into chunks of consecutive sentences whose boundaries depend only on the number
of sentences and the chunk size, never on the number of processes: a run with W processes and
a resumed run with another W produce the same chunks, hence the same store. Each chunk is
written to a temporary name and renamed when complete, so a file under a chunk's final name is
always whole; resuming skips those. Rank 0 then copies the chunks' rows into one file (written
under a temporary name, verified, renamed) and removes the chunk directory.
"""
import glob
import os
import shutil
from typing import List, Sequence, Tuple

import numpy as np

from . import format as store_format
from .provenance import Provenance, StoreError

Chunk = Tuple[int, int]  # [start, end) sentence indices of the split


def plan_chunks(num_sentences: int, chunk_sentences: int) -> List[Chunk]:
    if chunk_sentences < 1:
        raise ValueError(f"--chunk-sentences must be >= 1, got {chunk_sentences}")
    return [(s, min(s + chunk_sentences, num_sentences)) for s in range(0, num_sentences, chunk_sentences)]


def chunks_of_rank(chunks: Sequence[Chunk], rank: int, world_size: int) -> List[Chunk]:
    """A contiguous block of chunks per rank (so each rank covers contiguous sentence ranges)."""
    n = len(chunks)
    return list(chunks[rank * n // world_size:(rank + 1) * n // world_size])


def shard_dir(output: str) -> str:
    return output + ".shards"


def chunk_path(output: str, chunk: Chunk) -> str:
    return os.path.join(shard_dir(output), f"chunk-{chunk[0]:012d}-{chunk[1]:012d}.h5")


def temporary_path(final: str) -> str:
    """A name no reader looks at, unique to this process."""
    return f"{final}.tmp-{os.getpid()}"


def remove_stale_temporaries(final: str) -> None:
    """Temporary files of `final` left by an interrupted run (any pid)."""
    for p in glob.glob(glob.escape(final) + ".tmp-*"):
        os.remove(p)


def commit(tmp: str, final: str) -> None:
    """Atomically give a fully written and fsynced file its final name."""
    os.replace(tmp, final)
    dir_fd = os.open(os.path.dirname(os.path.abspath(final)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def is_complete(path: str, chunk: Chunk, provenance: Provenance, offsets: np.ndarray) -> bool:
    """True when `path` holds exactly `chunk` of this run; StoreError when it holds another run's."""
    if not os.path.exists(path):
        return False
    reader = store_format.StoreReader(path)
    diff = reader.provenance.first_difference(provenance)
    if diff is not None:
        raise StoreError(f"{path}: left by a run with other inputs ({diff}); delete {os.path.dirname(path)} to start over")
    local = offsets[chunk[0]:chunk[1] + 1] - offsets[chunk[0]]
    if reader.first_sentence != chunk[0] or not np.array_equal(reader.offsets, local):
        raise StoreError(f"{path}: does not cover sentences {chunk[0]}..{chunk[1] - 1} as expected")
    return True


def stitch(output: str, chunks: Sequence[Chunk], provenance: Provenance, offsets: np.ndarray,
           block_rows: int) -> None:
    """Copy the chunk files' rows into `output` (block by block: memory stays flat), verify it,
    rename it into place and remove the chunk directory."""
    tmp = temporary_path(output)
    layout = store_format.create(tmp, offsets, provenance)
    fd = os.open(tmp, os.O_RDWR)
    try:
        for chunk in chunks:
            reader = store_format.StoreReader(chunk_path(output, chunk))
            for name in store_format.ROW_DATASETS:
                per_sentence = name == store_format.CRC32
                first_dest = chunk[0] if per_sentence else int(offsets[chunk[0]])
                count = reader.num_sentences if per_sentence else int(reader.offsets[-1])
                for first in range(0, count, block_rows):
                    data = reader.raw_rows(name, first, min(block_rows, count - first))
                    os.pwrite(fd, data, layout.byte_offset[name] + (first_dest + first) * layout.row_nbytes(name))
            reader.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    store_format.StoreReader(tmp).verify()
    commit(tmp, output)
    shutil.rmtree(shard_dir(output))
