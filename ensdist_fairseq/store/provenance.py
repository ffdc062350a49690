"""What a teacher store was computed from, and how to tell it apart from other data (pure numpy).

The authors' code aligned stored teacher entries to batches by assumption only; a store here
carries these facts as HDF5 attributes and every consumer compares them with its own data.
"""

import dataclasses
from typing import Optional, Tuple

import numpy as np

from ensdist_fairseq.errors import EnsdistError

FORMAT_VERSION = 4
# Version 1 stored β̂₀ = +inf where the members agree; version 2 stores it finite (capped at the
# largest float32). Version 1 stores are still read: the reader maps +inf to that cap. Version 3
# codes the rows losslessly and puts each sentence's index in its CRC-32; version 4 codes them
# with code tables fitted to each chunk of sentences (smaller, same rows after decoding).
READABLE_VERSIONS = (1, 2, 3, 4)
WRITABLE_FORMATS = (3, 4)  # ensdist-memoize --store-format
# What a consumer can recompute from its data directory and split (the rest describes the teachers).
DATA_FIELDS = (
    "vocab_size",
    "dictionary_sha256",
    "split",
    "num_sentences",
    "target_checksum",
    "source_checksum",
)
_LABELS = {
    "vocab_size": "vocabulary size",
    "dictionary_sha256": "dictionary sha256",
    "num_sentences": "number of sentences",
    "target_checksum": "target token checksum",
    "source_checksum": "source token checksum",
    "teacher_sha256": "teacher checkpoints' sha256",
    "num_teachers": "number of teachers",
    "topk": "V'",
    "top_p": "nucleus mass (--top-p)",
    "min_k": "nucleus minimum (--min-k)",
}

# Attributes a store may lack: top_p / min_k (format 3; older stores read as whole rows) and
# teacher_accuracy (stores written before it was recorded read as None).
_OPTIONAL = ("top_p", "min_k", "teacher_accuracy")


class StoreError(EnsdistError):
    """A teacher store is unreadable, corrupt, or does not belong to the data it is used with.
    The message is one line and starts with the file it is about."""


def check_topk(requested: Optional[int], available: int, flag: str, why: str) -> int:
    """The one check of V': `requested` (None = all of `available`) must be in 1..available.
    StoreError '<flag> <requested>: must be in 1..<available> (<why>)' otherwise."""
    if requested is None:
        return available
    if not 1 <= requested <= available:
        raise StoreError(f"{flag} {requested}: must be in 1..{available} ({why})")
    return requested


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
    # Nucleus rows (format 3): each row keeps the smallest prefix of its top-V' reaching mass
    # top_p, at least min_k entries, and is padded with (index 0, probability 0). top_p = 1: whole
    # rows. Older stores lack these attributes and read as whole rows.
    top_p: float = 1.0
    min_k: int = 1
    # The ensemble's teacher-forced accuracy on the split (a measurement, not an input: never
    # compared; absent from stores written before it was recorded).
    teacher_accuracy: Optional[float] = None

    def to_attrs(self) -> dict:
        attrs = dataclasses.asdict(self)
        attrs["teacher_sha256"] = np.array(self.teacher_sha256, dtype="S64")
        return {k: v for k, v in attrs.items() if v is not None}

    @classmethod
    def from_attrs(cls, attrs, path: str) -> "Provenance":
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in attrs and f.name in _OPTIONAL:
                continue
            if f.name not in attrs:
                raise StoreError(f"{path}: not a teacher store (attribute '{f.name}' missing)")
            v = attrs[f.name]
            if f.name == "teacher_sha256":
                v = tuple(s.decode() if isinstance(s, bytes) else str(s) for s in np.atleast_1d(v))
            elif f.type in (int, "int"):
                v = int(v)
            elif f.type in (float, "float") or f.name in ("top_p", "teacher_accuracy"):
                v = float(v)
            else:
                v = v.decode() if isinstance(v, bytes) else str(v)
            values[f.name] = v
        if values["format_version"] not in READABLE_VERSIONS:
            raise StoreError(
                f"{path}: store format version {values['format_version']}, "
                f"this package reads versions {', '.join(map(str, READABLE_VERSIONS))}"
            )
        return cls(**values)

    def first_difference(self, expected: dict) -> Optional[str]:
        """'<what>: store <mine>, expected <theirs>' for the first field of `expected` (field
        name -> value) that differs from this provenance, in field order; None when all agree.

        The one comparison of a store with what it is used for: memoize's resume (every field
        but package_version) and the distillation task (DATA_FIELDS, from its own data)."""
        unknown = set(expected) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise KeyError(f"not provenance fields: {sorted(unknown)}")
        for f in dataclasses.fields(self):
            if f.name not in expected:
                continue
            a, b = getattr(self, f.name), expected[f.name]
            if isinstance(a, tuple):
                b = tuple(b)
            if a != b:
                return f"{_LABELS.get(f.name, f.name)} differs: store {_short(a)}, expected {_short(b)}"
        return None

    def check_against(self, path: str, expected: dict, context: str) -> None:
        """StoreError '<path>: <what> differs: store .., expected .. (<context>)' on the first difference."""
        diff = self.first_difference(expected)
        if diff is not None:
            raise StoreError(f"{path}: {diff} ({context})")

    def as_expected(self, ignore=("package_version", "teacher_accuracy")) -> dict:
        """Every field but `ignore`, as `first_difference` takes them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ignore}


def _short(v) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(_short(x) for x in v) + "]"
    s = repr(v) if isinstance(v, str) and len(v) != 64 else str(v)
    return s[:12] + "…" if len(s) == 64 else s  # sha256 hex digests: a prefix identifies them
