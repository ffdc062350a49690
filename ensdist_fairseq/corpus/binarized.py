"""Checks of fairseq-preprocess output read before any model is loaded (numpy only).

fairseq reads a dictionary line without its count, a truncated ``.idx`` or ``.bin``, or a split
whose two sides differ in length with a traceback that names no file, or not at all (a short
``.bin`` is memory-mapped and read past its end as garbage). Each check here names the file,
and the line where there is one.

The ``.idx`` layout is fairseq 0.12's MMapIndexedDataset: a 9-byte magic, <Q version, <B dtype
code, <Q sentence count, then int32 sizes and int64 byte offsets; the ``.bin`` holds the tokens
back to back.
"""

import glob
import os
import struct
from typing import Dict, Tuple

import numpy as np

from ensdist_fairseq.corpus.text_lines import read_lines
from ensdist_fairseq.errors import EnsdistError

MAGIC = b"MMIDIDX\x00\x00"
HEADER = struct.Struct("<9sQBQ")
ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 8, 8: 2, 9: 4, 10: 8}  # fairseq's dtype codes
OVERWRITE = "#fairseq:overwrite"


def check_dictionary(path: str) -> int:
    """A fairseq dictionary: every line `<token> <count> [#fairseq:overwrite]`, no token twice
    (fairseq refuses that too, without the file); the number of entries."""
    if not os.path.isfile(path):
        raise EnsdistError(f"{path}: dictionary not found")
    seen = {}
    for number, line in enumerate(read_lines(path), 1):
        fields = line.rstrip().rsplit(" ", 2 if line.rstrip().endswith(OVERWRITE) else 1)
        overwrite = len(fields) == 3 and fields[2] == OVERWRITE
        if len(fields) < 2 or not fields[0] or not fields[1].lstrip("-").isdigit():
            raise EnsdistError(f"{path}: line {number}: expected '<token> <count>', got {line!r}")
        if fields[0] in seen and not overwrite:
            raise EnsdistError(
                f"{path}: line {number}: token {fields[0]!r} already on line {seen[fields[0]]}"
            )
        seen[fields[0]] = number
    return len(seen)


def read_index(idx_path: str) -> Tuple[int, np.ndarray]:
    """(item size in bytes, sentence sizes) of a complete .idx; EnsdistError naming it."""
    with open(idx_path, "rb") as f:
        data = f.read()
    if len(data) < HEADER.size or data[:9] != MAGIC:
        raise EnsdistError(f"{idx_path}: not a fairseq mmap index (too short or no header)")
    _magic, version, code, count = HEADER.unpack_from(data)
    if version != 1 or code not in ITEMSIZE:
        raise EnsdistError(f"{idx_path}: unknown index version {version} or dtype code {code}")
    expected = HEADER.size + count * (4 + 8)
    if len(data) != expected:
        raise EnsdistError(
            f"{idx_path}: {len(data)} bytes, its header ({count} sentences) needs {expected}"
            " (truncated?)"
        )
    sizes = np.frombuffer(data, dtype=np.int32, count=count, offset=HEADER.size)
    return ITEMSIZE[code], sizes


def check_binarized(prefix: str) -> int:
    """PREFIX.idx and PREFIX.bin belong together; the number of sentences."""
    for ext in (".idx", ".bin"):
        if not os.path.isfile(prefix + ext):
            raise EnsdistError(f"{prefix}{ext}: not found")
    itemsize, sizes = read_index(prefix + ".idx")
    if (sizes < 0).any():
        raise EnsdistError(f"{prefix}.idx: a negative sentence size")
    expected = int(sizes.astype(np.int64).sum()) * itemsize
    actual = os.path.getsize(prefix + ".bin")
    if actual != expected:
        raise EnsdistError(
            f"{prefix}.bin: {actual} bytes, {prefix}.idx says {expected} (truncated, or of "
            "another binarization)"
        )
    return len(sizes)


def check_split(data_dir: str, split: str) -> Dict[str, int]:
    """Every side of `split` in a fairseq-preprocess directory, and both sides of each pair of
    one length; {prefix: sentences}. Nothing to check (no such files) is left to the loader,
    which says the split does not exist."""
    counts = {}
    pattern = os.path.join(glob.escape(data_dir), f"{glob.escape(split)}.*-*.*.idx")
    for idx in sorted(glob.glob(pattern)):
        prefix = idx[: -len(".idx")]
        counts[prefix] = check_binarized(prefix)
    by_pair: Dict[str, list] = {}
    for prefix, n in counts.items():
        pair = os.path.basename(prefix)[len(split) + 1 :].rsplit(".", 1)[0]
        by_pair.setdefault(pair, []).append((prefix, n))
    for sides in by_pair.values():
        (first, n), *others = sides
        for other, m in others:
            if m != n:
                raise EnsdistError(f"{other}.idx: {m} sentences, but {first}.idx has {n}")
    return counts


def check_data(data_dir: str, split: str) -> None:
    """The dictionaries and the split of a binarized data directory, before fairseq reads them."""
    for path in sorted(glob.glob(os.path.join(glob.escape(data_dir), "dict.*.txt"))):
        check_dictionary(path)
    check_split(data_dir, split)
