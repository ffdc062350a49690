"""Huffman coding with a table fixed in advance, decoded by zlib (pure numpy + zlib).

A deflate block (RFC 1951) of type 2 starts with its Huffman table; zlib can only choose that
table itself, from the data it is given. Here the table is chosen once (from the symbol counts of
many sentences), its block header is written once, and each sentence stores only its coded
symbols: the reader puts the header in front and lets zlib's inflate (C) decode them. The
symbols are bytes (0..255) plus the end-of-block symbol 256; no LZ77 matches are ever coded.

Bit order (RFC 1951, 3.1.1): fields are packed starting from the least significant bit of each
byte; a Huffman code is packed starting from its most significant bit, so codes are stored
bit-reversed and packed like plain fields.
"""

import heapq
import zlib

import numpy as np

EOB = 256
SYMBOLS = 257  # literals 0..255 and the end of block
MAX_BITS = 15  # deflate's longest code
# The code-length alphabet's lengths are sent in this order (RFC 1951, 3.2.7).
CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (uint8, SYMBOLS) for symbol counts, at most MAX_BITS, for a complete
    code (zlib refuses incomplete ones): symbols of count 0 get no code; at least two symbols
    get one (a code needs two leaves)."""
    counts = np.asarray(counts, dtype=np.int64).copy()
    for s in (EOB, 0):
        if np.count_nonzero(counts) < 2 and counts[s] == 0:
            counts[s] = 1
    while True:
        lengths = _huffman(counts)
        if lengths.max() <= MAX_BITS:
            return lengths
        counts = np.where(counts > 0, np.maximum(counts >> 1, 1), 0)  # flatter: shorter codes


def _huffman(counts: np.ndarray) -> np.ndarray:
    heap = [(int(c), int(s), (int(s),)) for s, c in enumerate(counts) if c > 0]
    heapq.heapify(heap)
    depth = np.zeros(len(counts), dtype=np.int64)
    while len(heap) > 1:
        c1, t1, a = heapq.heappop(heap)
        c2, t2, b = heapq.heappop(heap)
        depth[list(a + b)] += 1
        heapq.heappush(heap, (c1 + c2, min(t1, t2), a + b))
    return depth.astype(np.uint8)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical codes of RFC 1951, 3.2.2, bit-reversed for LSB-first packing (uint32)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    bl_count = np.bincount(lengths, minlength=MAX_BITS + 1)
    bl_count[0] = 0
    next_code, code = np.zeros(MAX_BITS + 2, dtype=np.int64), 0
    for bits in range(1, MAX_BITS + 1):
        code = (code + bl_count[bits - 1]) << 1
        next_code[bits] = code
    codes = np.zeros(len(lengths), dtype=np.uint32)
    for s, n in enumerate(lengths):
        if n:
            c = int(next_code[n])
            next_code[n] += 1
            codes[s] = int(f"{c:0{n}b}"[::-1], 2)
    return codes


def pack(values: np.ndarray, nbits: np.ndarray, start=None, nbytes=None) -> bytes:
    """Fields (value, width in bits <= 57) packed LSB first into bytes: one after the other, or
    each at its bit position `start` (fields must not overlap); unused bits are 0."""
    nbits = np.asarray(nbits, dtype=np.int64)
    if start is None:
        start = np.cumsum(nbits) - nbits
    if nbytes is None:
        nbytes = (int(nbits.sum()) + 7) // 8
    if len(nbits) == 0 or nbytes == 0:
        return bytes(nbytes)
    byte, shift = start >> 3, (start & 7).astype(np.uint64)
    word = (np.asarray(values, dtype=np.uint64) & _MASKS[nbits]) << shift
    out = np.zeros(nbytes + 8, dtype=np.int64)
    # disjoint fields: adding their bytes is OR-ing them (bincount adds, and is fast)
    for b in range((int(nbits.max()) + 14) // 8):
        part = ((word >> np.uint64(8 * b)) & np.uint64(255)).astype(np.float64)
        out += np.bincount(byte + b, weights=part, minlength=nbytes + 8).astype(np.int64)
    return out[:nbytes].astype(np.uint8).tobytes()


_MASKS = (np.uint64(1) << np.arange(64, dtype=np.uint64)) - np.uint64(1)


def unpack(data, nbits: np.ndarray) -> np.ndarray:
    """The fields (uint64) of `pack`; `data` must hold exactly their bytes (ValueError if not)."""
    nbits = np.asarray(nbits, dtype=np.int64)
    total = int(nbits.sum())
    if len(data) != (total + 7) // 8:
        raise ValueError("undecodable rows (sizes do not add up)")
    if total == 0:
        return np.zeros(len(nbits), dtype=np.uint64)
    if total % 8 and data[-1] >> (total % 8):
        raise ValueError("undecodable rows (padding bits are not 0)")
    words = np.frombuffer(bytes(data) + bytes(16 - len(data) % 8), dtype="<u8")
    start = np.cumsum(nbits) - nbits
    word, offset = start >> 6, (start & 63).astype(np.uint64)
    low = words[word] >> offset
    high = (words[word + 1] << np.uint64(1)) << (np.uint64(63) - offset)  # no shift by 64
    return (low | high) & _MASKS[nbits]


class Table:
    """One Huffman table: its block header (written once) and its codes."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = np.asarray(lengths, dtype=np.uint8)
        if self.lengths.shape != (SYMBOLS,) or self.lengths.max() > MAX_BITS:
            raise ValueError("undecodable rows (a code table is damaged)")
        self.codes = canonical_codes(self.lengths)
        header = _block_header(self.lengths)
        self.prefix = header[0][: header[1] // 8]  # whole bytes of the header
        self.tail = (int(header[0][-1]) if header[1] % 8 else 0, header[1] % 8)

    def encode(self, symbols: np.ndarray) -> bytes:
        """The part of a one-block raw deflate stream after `prefix`: the header's last bits,
        the symbols' codes and the end of block. Every symbol must have a code."""
        symbols = np.append(np.asarray(symbols, dtype=np.int64), EOB)
        nbits = self.lengths[symbols].astype(np.int64)
        if not nbits.all():
            raise ValueError("a symbol without a code in this table")
        return pack(
            np.concatenate([[self.tail[0]], self.codes[symbols]]),
            np.concatenate([[self.tail[1]], nbits]),
        )

    def decode(self, data: memoryview):
        """(symbols uint8, bytes used) of the part at the start of `data`; ValueError when it is
        not one (a code no table has, or data ending before the end of block)."""
        out, used = self.decode_bytes(data)
        return np.frombuffer(out, dtype=np.uint8), used

    def decode_bytes(self, data: memoryview):
        """`decode`, the symbols as bytes."""
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(self.prefix + data)
        except zlib.error as e:
            raise ValueError(f"undecodable rows ({e})") from None
        if not d.eof:
            raise ValueError("undecodable rows (a stream is cut short)")
        return out, len(data) - len(d.unused_data)


def _block_header(lengths: np.ndarray):
    """(bytes, bits) of a final dynamic block's header (BFINAL 1, BTYPE 2) for these lit/len
    code lengths, one distance code of length 1 (never used) and every code length sent with a
    4-bit code (symbols 0..15 of the code-length alphabet)."""
    cl_lengths = np.zeros(19, dtype=np.int64)
    cl_lengths[:16] = 4
    cl_codes = canonical_codes(cl_lengths)
    fields = [(1, 1), (2, 2), (SYMBOLS - 257, 5), (0, 5), (19 - 4, 4)]
    fields += [(int(cl_lengths[s]), 3) for s in CL_ORDER]
    fields += [(int(cl_codes[n]), 4) for n in list(lengths) + [1]]
    values, nbits = zip(*fields)
    return pack(np.array(values), np.array(nbits)), int(sum(nbits))
