"""What a teacher store was computed from, and how to tell it apart from other data (pure numpy).

The authors' code aligned stored teacher entries to batches by assumption only; a store here
carries these facts as HDF5 attributes and every consumer compares them with its own data.
"""
import dataclasses
import hashlib
from typing import Iterable, Optional, Tuple

import numpy as np

from ..errors import EnsdistError

FORMAT_VERSION = 1


class StoreError(EnsdistError):
    """A teacher store is unreadable, corrupt, or does not belong to the data it is used with.
    The message is one line and starts with the file it is about."""


def token_checksum(sentences: Iterable[np.ndarray]) -> str:
    """sha256 over the token ids of all sentences, in order, each id as little-endian int32.

    Sentence boundaries are not hashed: per-sentence lengths are checked separately (offsets)."""
    h = hashlib.sha256()
    for tokens in sentences:
        h.update(np.ascontiguousarray(tokens, dtype="<i4").tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Provenance:
    """The attributes of a store (docs/store-format.md lists them)."""

    vocab_size: int
    topk: int
    num_teachers: int
    teacher_sha256: Tuple[str, ...]
    dictionary_sha256: str
    split: str
    num_sentences: int  # of the whole split, not of one chunk
    target_checksum: str
    source_checksum: str
    package_version: str
    format_version: int = FORMAT_VERSION

    def to_attrs(self) -> dict:
        attrs = dataclasses.asdict(self)
        attrs["teacher_sha256"] = np.array(self.teacher_sha256, dtype="S64")
        return attrs

    @classmethod
    def from_attrs(cls, attrs, path: str) -> "Provenance":
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in attrs:
                raise StoreError(f"{path}: not a teacher store (attribute '{f.name}' missing)")
            v = attrs[f.name]
            if f.name == "teacher_sha256":
                v = tuple(s.decode() if isinstance(s, bytes) else str(s) for s in np.atleast_1d(v))
            elif f.type in (int, "int"):
                v = int(v)
            else:
                v = v.decode() if isinstance(v, bytes) else str(v)
            values[f.name] = v
        if values["format_version"] != FORMAT_VERSION:
            raise StoreError(f"{path}: store format version {values['format_version']}, "
                             f"this package reads version {FORMAT_VERSION}")
        return cls(**values)

    def first_difference(self, other: "Provenance", ignore=("package_version",)) -> Optional[str]:
        """'name: mine != other' for the first field that differs, or None."""
        for f in dataclasses.fields(self):
            if f.name in ignore:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                return f"{f.name}: {_short(a)} != {_short(b)}"
        return None


def _short(v) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(_short(x) for x in v) + "]"
    s = str(v)
    return s[:12] + "…" if len(s) == 64 else s  # sha256 hex digests: a prefix identifies them
