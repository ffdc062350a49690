"""Lossless coding of one sentence's top-V' rows (store format 3; pure numpy + zlib).

The rows of a store are far from random bytes, and three facts make them cheap to code without
any model of the data:
  - each row's float16 probabilities are sorted descending, so the differences of their bit
    patterns (positive float16 values order like their bit patterns) are small numbers;
  - a probability's high byte (sign, exponent, top mantissa bits) and its low byte behave
    differently, as do an index's bytes (fairseq dictionaries are sorted by frequency, so the
    high byte of a frequent token's id is small): coding byte planes apart lets zlib's Huffman
    tables fit each;
  - a row of a nucleus store ends in (index 0, probability 0) padding, which is not coded at all:
    each row's length is coded instead.
Everything is modular uint16/uint32 arithmetic on bit patterns, so ANY input (unsorted rows,
NaN, negative zero) decodes to exactly the bytes that were encoded; the reader's CRC-32 and
validation then judge the content.

Blob layout (docs/store-format.md, "Row coding"): zlib streams (RFC 1950, level LEVEL) one after
the other, each a byte plane, so that each gets its own Huffman tables:
  1. the row lengths (n bytes if V' <= 255 else n little-endian uint16), then the high bytes of
     the probability deltas;  2. their low bytes;  3.. the index bytes, most significant first.
The kept entries are the first lengths[r] of each row r, taken column by column (entry 0 of
every row, then entry 1, ...: an entry's rank predicts its size); a probability's delta is the
previous entry's bit pattern minus its own (mod 2^16; entry 0: its bit pattern).
"""

import zlib

import numpy as np

LEVEL = 6  # zlib level: 9 codes <1% smaller at several times the cost, 1 codes 2% larger


def _planes(values: np.ndarray):
    """Byte planes of 1-D little-endian unsigned values, most significant first."""
    planes = values.view(np.uint8).reshape(-1, values.itemsize).T
    return [np.ascontiguousarray(planes[b]) for b in range(values.itemsize - 1, -1, -1)]


def _unplanes(planes, dtype: np.dtype) -> np.ndarray:
    stacked = np.stack([np.frombuffer(p, dtype=np.uint8) for p in planes[::-1]], axis=1)
    return np.ascontiguousarray(stacked).view(dtype).reshape(-1)


def _row_lengths(indices: np.ndarray, prob_bits: np.ndarray) -> np.ndarray:
    """Per row: V' minus the number of trailing (index 0, probability bits 0) entries."""
    k = indices.shape[1]
    nonzero = (indices != 0) | (prob_bits != 0)
    last = k - np.argmax(nonzero[:, ::-1], axis=1)  # one past the last non-padding entry
    return np.where(nonzero.any(axis=1), last, 0)


def _len_dtype(k: int) -> np.dtype:
    return np.dtype("<u1") if k <= 255 else np.dtype("<u2")


def encode(indices: np.ndarray, probs: np.ndarray) -> bytes:
    """indices (n, V') '<u2' or '<i4', probs (n, V') '<f2' -> the sentence's blob."""
    n, k = indices.shape
    bits = np.ascontiguousarray(probs, dtype="<f2").view("<u2")
    lengths = _row_lengths(indices, bits)
    keep_t = np.arange(k)[:, None] < lengths[None, :]  # (k, n): column by column
    delta = bits.copy()
    delta[:, 1:] = bits[:, :-1] - bits[:, 1:]  # uint16: wraps, so any input round-trips
    unsigned = np.dtype(f"<u{indices.dtype.itemsize}")
    hi, lo = _planes(delta.T[keep_t])
    planes = [lengths.astype(_len_dtype(k)).tobytes() + hi.tobytes(), lo]
    planes += _planes(np.ascontiguousarray(indices.T[keep_t]).view(unsigned))
    # Low bytes are close to uniform: LZ77 finds nothing there, Huffman coding alone is as small
    # and faster (the chunk writer codes while the teachers wait).
    low = {1, len(planes) - 1}
    return b"".join(
        _deflate(p, zlib.Z_HUFFMAN_ONLY if j in low else zlib.Z_DEFAULT_STRATEGY)
        for j, p in enumerate(planes)
    )


def _deflate(data, strategy) -> bytes:
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, 15, 9, strategy)
    return c.compress(data) + c.flush()


def _streams(blob: bytes, count: int):
    out = []
    for _ in range(count):
        d = zlib.decompressobj()
        out.append(d.decompress(blob))
        if not d.eof:
            raise ValueError("undecodable rows (a stream is cut short)")
        blob = d.unused_data
    if blob:
        raise ValueError("undecodable rows (bytes after the last stream)")
    return out


def decode(blob: bytes, n: int, k: int, index_dtype: np.dtype):
    """The blob of a sentence of n rows -> (indices (n, k) index_dtype, probs (n, k) '<f2').
    ValueError when the blob is not one (damaged: zlib's Adler-32, or sizes that do not add up).
    """
    index_dtype = np.dtype(index_dtype)
    try:
        first, lo, *index_planes = _streams(blob, 2 + index_dtype.itemsize)
    except zlib.error as e:
        raise ValueError(f"undecodable rows ({e})") from None
    len_dtype = _len_dtype(k)
    head = n * len_dtype.itemsize
    if len(first) < head:
        raise ValueError("undecodable rows (too short)")
    lengths = np.frombuffer(first, dtype=len_dtype, count=n).astype(np.int64)
    count = int(lengths.sum())
    sizes = [len(first) - head, len(lo)] + [len(p) for p in index_planes]
    if lengths.max(initial=0) > k or sizes != [count] * len(sizes):
        raise ValueError("undecodable rows (sizes do not add up)")
    full = count == n * k  # every row whole (no nucleus): no masks
    delta_t = _unplanes([memoryview(first)[head:], lo], np.dtype("<u2"))
    raw_t = _unplanes(index_planes, np.dtype(f"<u{index_dtype.itemsize}")).view(index_dtype)
    if full:
        delta = delta_t.reshape(k, n).T
        indices = np.ascontiguousarray(raw_t.reshape(k, n).T)
    else:
        keep_t = np.arange(k)[:, None] < lengths[None, :]
        d, i = np.zeros((k, n), dtype="<u2"), np.zeros((k, n), dtype=index_dtype)
        d[keep_t], i[keep_t] = delta_t, raw_t
        delta, indices = d.T, np.ascontiguousarray(i.T)
    # bits[j] = bits[0] - delta[1] - ... - delta[j] (mod 2^16)
    neg = np.empty((n, k), dtype="<u2")
    neg[:, 0] = delta[:, 0]
    np.subtract(np.uint16(0), delta[:, 1:], out=neg[:, 1:])
    bits = np.cumsum(neg, axis=1, dtype="<u2")
    if not full:
        bits[np.arange(k)[None, :] >= lengths[:, None]] = 0  # padding past a row's length
    return indices, bits.view("<f2")
