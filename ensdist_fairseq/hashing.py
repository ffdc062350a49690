"""Content hashes shared by every layer (pure numpy): a file's bytes, a split's token ids.

A dictionary, a checkpoint or a split is identified by what it holds, never by its path.
"""

import hashlib
from typing import Iterable

import numpy as np


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (checkpoints, dictionaries)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def token_checksum(sentences: Iterable[np.ndarray]) -> str:
    """sha256 over the token ids of all sentences, in order, each id as little-endian int32.

    Sentence boundaries are not hashed: per-sentence lengths are checked separately (offsets)."""
    h = hashlib.sha256()
    for tokens in sentences:
        h.update(np.ascontiguousarray(tokens, dtype="<i4").tobytes())
    return h.hexdigest()
