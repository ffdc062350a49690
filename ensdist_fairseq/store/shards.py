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
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ensdist_fairseq.store import coded
from ensdist_fairseq.store import format as store_format
from ensdist_fairseq.store.provenance import Provenance, StoreError

Chunk = Tuple[int, int]  # [start, end) sentence indices of the split


def plan_chunks(num_sentences: int, chunk_sentences: int) -> List[Chunk]:
    if chunk_sentences < 1:
        raise ValueError(f"--chunk-sentences must be >= 1, got {chunk_sentences}")
    return [
        (s, min(s + chunk_sentences, num_sentences))
        for s in range(0, num_sentences, chunk_sentences)
    ]


def chunks_of_rank(chunks: Sequence[Chunk], rank: int, world_size: int) -> List[Chunk]:
    """A contiguous block of chunks per rank (so each rank covers contiguous sentence ranges)."""
    n = len(chunks)
    return list(chunks[rank * n // world_size : (rank + 1) * n // world_size])


def shard_dir(output: str) -> str:
    return output + ".shards"


def chunk_path(output: str, chunk: Chunk) -> str:
    return os.path.join(shard_dir(output), f"chunk-{chunk[0]:012d}-{chunk[1]:012d}.h5")


def temporary_path(final: str) -> str:
    """A name no reader looks at, unique to this process."""
    return f"{final}{TMP_MARK}{os.getpid()}"


TMP_MARK = ".tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(final: str) -> List[str]:
    """Remove the temporary files of `final` whose writer process is gone (a killed run's);
    a live process's temporary file (another rank of this run) is never touched. Returns them."""
    removed = []
    for p in glob.glob(glob.escape(final) + TMP_MARK + "*"):
        pid = p[len(final) + len(TMP_MARK) :]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        try:
            os.remove(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


class OutputLock:
    """One writer per store: an exclusive flock on `<output>.lock`, taken without waiting.

    Held by the process that stitches (rank 0) from before any work until the store is in place;
    the kernel releases it when the process dies, so a killed run never blocks its rerun."""

    def __init__(self, output: str):
        import fcntl

        self.path = output + ".lock"
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(
                f"--output {output}: cannot create {self.path} ({e.strerror}): "
                "is the directory writable?"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreError(
                f"--output {output}: another ensdist-memoize is writing this store "
                f"(it holds {self.path})"
            ) from None

    def release(self, remove: bool) -> None:
        """Unlock; `remove` deletes the lock file (only once the store exists: a later run that
        still locks the unlinked file then finds the store and stops)."""
        if self._fd is None:
            return
        if remove:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        os.close(self._fd)  # releases the flock
        self._fd = None


def commit(tmp: str, final: str) -> None:
    """Atomically give a fully written and fsynced file its final name."""
    os.replace(tmp, final)
    dir_fd = os.open(os.path.dirname(os.path.abspath(final)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def is_complete(path: str, chunk: Chunk, provenance: Provenance, offsets: np.ndarray) -> bool:
    """True when `path` holds exactly `chunk` of this run; StoreError when it holds another run's:
    EVERY provenance field but package_version must be this run's (teachers, V', data, format)."""
    if not os.path.exists(path):
        return False
    reader = store_format.StoreReader(path)
    reader.provenance.check_against(
        path,
        provenance.as_expected(),
        f"left by a run with other inputs; delete {os.path.dirname(path)} to start over",
    )
    if reader.first_sentence != chunk[0]:
        raise StoreError(f"{path}: starts at sentence {reader.first_sentence}, expected {chunk[0]}")
    reader.check_lengths(np.diff(offsets[chunk[0] : chunk[1] + 1]), first=chunk[0])
    reader.close()
    return True


def stitch(
    output: str,
    chunks: Sequence[Chunk],
    provenance: Provenance,
    offsets: np.ndarray,
    block_rows: int,
    after_create: Optional[Callable[[], None]] = None,
) -> None:
    """Copy the chunk files' rows into `output` (block by block: memory stays flat), verify it,
    rename it into place and remove the chunk directory.

    Each chunk is checked (provenance, every sentence's CRC) before it is copied: a damaged chunk
    is deleted and named, so that the rerun computes its sentences again."""
    tmp = temporary_path(output)
    try:
        _copy_rows(tmp, output, chunks, provenance, offsets, block_rows, after_create)
        try:
            store_format.StoreReader(tmp).verify()
        except StoreError as e:  # the chunks were sound: the copy is not (disk, memory)
            raise StoreError(
                f"--output {output}: the stitched store failed verification "
                f"({str(e)[len(tmp) + 2:]}); the complete chunks are kept in "
                f"{shard_dir(output)}: rerun the same command to stitch them"
            ) from None
        commit(tmp, output)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):  # disk full, permissions changed, ...: the chunks are intact
            raise StoreError(
                f"--output {output}: writing the store failed ({e.strerror or e}); the "
                f"complete chunks are kept in {shard_dir(output)}: rerun the same command "
                "to stitch them"
            ) from None
        raise
    shutil.rmtree(shard_dir(output))


def _checked_chunk(path: str, chunk: Chunk, provenance: Provenance, offsets: np.ndarray):
    """The reader of a chunk that is this run's and whose every sentence reads back; a damaged
    chunk is deleted (its rows are wrong, not merely old) and named."""
    reader = store_format.StoreReader(path)
    try:
        reader.verify()
    except StoreError as e:
        reader.close()
        os.remove(path)
        raise StoreError(
            f"{e}; deleted this chunk: rerun the same command to compute it again"
        ) from None
    return reader


def _copy_rows(tmp, output, chunks, provenance, offsets, block_rows, after_create):
    code_offsets, table_sets, groups = [np.zeros(1, dtype=np.int64)], [], None
    for chunk in chunks:  # the coded sizes, chunk by chunk: the store's size is their sum
        is_complete(chunk_path(output, chunk), chunk, provenance, offsets)  # this run's, no other
        reader = store_format.StoreReader(chunk_path(output, chunk))
        code_offsets.append(reader.code_offsets[1:] + code_offsets[-1][-1])
        if provenance.format_version >= 4:  # each chunk's code tables, from its first sentence
            table_sets += [(chunk[0] + first, t) for first, t in reader.table_sets()]
            groups = table_sets[-1][1].groups
        reader.close()
    code_offsets = np.concatenate(code_offsets)
    tables = coded.table_arrays(table_sets, groups) if table_sets else None
    where = coded.create(tmp, offsets, code_offsets, provenance.to_attrs(), 0, tables)
    if after_create is not None:
        after_create()  # tests: a kill here leaves the temporary store behind
    fd = os.open(tmp, os.O_RDWR)
    try:
        for chunk in chunks:
            reader = _checked_chunk(chunk_path(output, chunk), chunk, provenance, offsets)
            first_dest = {
                coded.CODED: int(code_offsets[chunk[0]]),
                coded.PRECISION: int(offsets[chunk[0]]),
                coded.CRC32: chunk[0],
            }
            count = {
                coded.CODED: int(reader.code_offsets[-1]),
                coded.PRECISION: int(reader.offsets[-1]),
                coded.CRC32: reader.num_sentences,
            }
            for name in coded.RAW_DATASETS:
                itemsize = coded.DTYPES[name].itemsize
                for first in range(0, count[name], block_rows):
                    data = reader.raw_rows(name, first, min(block_rows, count[name] - first))
                    os.pwrite(fd, data, where[name] + (first_dest[name] + first) * itemsize)
            reader.close()
        os.fsync(fd)
    finally:
        os.close(fd)
