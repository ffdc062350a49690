"""What identifies a split's sentences for a teacher store: lengths and token checksums.

The memoizer records these and the distillation task recomputes them on load; any difference
means the store's rows would be attached to the wrong tokens."""

from typing import Iterator, NamedTuple

import numpy as np
from fairseq.data import BucketPadLengthDataset, LanguagePairDataset
from fairseq.data.indexed_dataset import MMapIndexedDataset

from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.hashing import token_checksum

# Tokens hashed per step on the fast path: bounds the temporary int32 copy to 64 MB.
_BLOCK_TOKENS = 1 << 24


class SplitFingerprint(NamedTuple):
    target_lengths: np.ndarray  # (N,) int64: the rows each sentence owns in the store
    target_checksum: str
    source_checksum: str


def _unbucketed(dataset):
    # --num-batch-buckets pads sentences inside the dataset; the store holds unpadded tokens.
    return dataset.dataset if isinstance(dataset, BucketPadLengthDataset) else dataset


def _sentences(dataset) -> Iterator[np.ndarray]:
    """Every sentence's token ids in index order, without a Python call per sentence when the
    dataset is a plain binarized file whose sentences are stored back to back."""
    if isinstance(dataset, MMapIndexedDataset):
        index = dataset._index
        sizes = np.asarray(index.sizes, dtype=np.int64)
        itemsize = np.dtype(index.dtype).itemsize
        pointers = np.asarray(index._pointers, dtype=np.int64)
        if len(sizes) == 0 or np.array_equal(
            pointers[1:], pointers[0] + np.cumsum(sizes)[:-1] * itemsize
        ):
            total = int(sizes.sum())
            for first in range(0, total, _BLOCK_TOKENS):
                count = min(_BLOCK_TOKENS, total - first)
                yield np.frombuffer(
                    dataset._bin_buffer,
                    dtype=index.dtype,
                    count=count,
                    offset=int(pointers[0]) + first * itemsize if len(sizes) else 0,
                )
            return
    for i in range(len(dataset)):
        yield np.asarray(dataset[i])


def fingerprint(pair: LanguagePairDataset) -> SplitFingerprint:
    if pair.tgt is None:
        raise EnsdistError("the split has no target side: there is nothing to memoize")
    target = _unbucketed(pair.tgt)
    return SplitFingerprint(
        target_lengths=np.asarray(target.sizes, dtype=np.int64),
        target_checksum=token_checksum(_sentences(target)),
        source_checksum=token_checksum(_sentences(_unbucketed(pair.src))),
    )
