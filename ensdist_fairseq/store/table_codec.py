"""Lossless coding of one sentence's top-V' rows with code tables shared by many sentences
(store format 4; pure numpy + zlib). docs/store-format.md, "Row coding (version 4)", is the
specification.

Format 3 codes each sentence with zlib alone, so every sentence pays for its own Huffman tables
(a few hundred bytes) and codes bytes, whose low halves are near random. Here:
  - the tables are fitted once per file (a chunk of sentences) and stored once; a sentence stores
    only its codes, which zlib's inflate decodes behind the stored table's block header
    (store/deflate.py);
  - each value (a row length, a probability's bit-pattern delta, an index) becomes a symbol for
    its magnitude (exact below EXACT, else its octave and the MANTISSA bits after the leading
    one) and raw extra bits: the symbol carries nearly all of the information, the extra bits
    are near uniform, so nothing is lost by not modelling them;
  - every column group (entry 0, entry 1, entries 2-3, 4-7, ...: an entry's rank predicts its
    size) has its own tables, for the probability deltas and for the indices;
  - indices are replaced by their rank in the file's frequency-sorted list of the ids it holds,
    so that the most frequent ids of THIS data get the shortest codes.
Everything is modular arithmetic on bit patterns: any rows decode to exactly the coded bytes.
"""

from typing import List, NamedTuple, Optional, Sequence

import numpy as np

from ensdist_fairseq.store import deflate
from ensdist_fairseq.store.codec import _row_lengths  # the same row lengths as format 3

EXACT, MANTISSA = 32, 3
_LOG2_EXACT = 5
TOKENS = EXACT + (32 - _LOG2_EXACT) * (1 << MANTISSA)  # 248 symbols cover 32 bits


def _token_tables():
    t = np.arange(256)
    octave = _LOG2_EXACT + (t - EXACT) // (1 << MANTISSA)
    extra = np.where(t < EXACT, 0, octave - MANTISSA)
    base = np.where(
        t < EXACT, t, ((1 << MANTISSA) + (t - EXACT) % (1 << MANTISSA)) << np.maximum(extra, 0)
    )
    valid = t < TOKENS
    return base.astype(np.uint64) * valid, np.where(valid, extra, 0).astype(np.int64)


BASE, EXTRA = _token_tables()
_INFO = (BASE.astype(np.int64) << 6) | EXTRA  # one lookup for both while decoding


def _tokens(v: np.ndarray) -> np.ndarray:
    octave = np.frexp(np.maximum(v, 1).astype(np.float64))[1].astype(np.int64) - 1
    mant = (v >> np.maximum(octave - MANTISSA, 0)) & ((1 << MANTISSA) - 1)
    return np.where(v < EXACT, v, EXACT + (octave - _LOG2_EXACT) * (1 << MANTISSA) + mant)


_TOKENS_16 = _tokens(np.arange(1 << 16))  # most values are < 2^16: one lookup


def tokens_of(values: np.ndarray):
    """(symbol, extra bits' value uint64, extra bits' width) of unsigned values < 2^32."""
    v = np.asarray(values, dtype=np.int64)
    token = _TOKENS_16[v] if len(v) == 0 or v.max() < (1 << 16) else _tokens(v)
    return token, (v - BASE[token]).astype(np.uint64), EXTRA[token]


GROUP_STARTS = (0, 1, 2, 4, 16)  # columns 0, 1, 2-3, 4-15, 16-: finer groups buy < 0.1%


def column_groups(topk: int) -> np.ndarray:
    """Default context of each column: its group, from the ranks where groups start."""
    return np.searchsorted(np.array(GROUP_STARTS), np.arange(topk), side="right") - 1


class Values(NamedTuple):
    """A sentence's values in coding order: the row lengths (None when every row is whole: not
    coded), then each column group's probability deltas, then each group's indices (raw ids:
    the file's index map turns them into ranks when the sentence is coded)."""

    lengths: Optional[np.ndarray]
    deltas: List[np.ndarray]
    ids: List[np.ndarray]


def sentence_values(indices: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> Values:
    n, k = indices.shape
    bits = np.ascontiguousarray(probs, dtype="<f2").view("<u2")
    lengths = _row_lengths(indices, bits)
    delta = bits.copy()
    delta[:, 1:] = bits[:, :-1] - bits[:, 1:]
    if (lengths == k).all():
        d_t, i_t, per_column, lengths = delta.T.reshape(-1), indices.T.reshape(-1), [n] * k, None
    else:
        keep_t = np.arange(k)[:, None] < lengths[None, :]
        d_t, i_t, per_column = delta.T[keep_t], indices.T[keep_t], keep_t.sum(1)
    cuts = np.cumsum(np.bincount(groups, weights=per_column).astype(np.int64))[:-1]
    return Values(lengths, np.split(d_t, cuts), np.split(i_t, cuts))


class TableSet:
    """The code tables of a file (or of one of its parts): one per stream (lengths, then the
    groups' probability deltas, then the groups' indices), and the ids by rank."""

    def __init__(self, code_lengths: np.ndarray, index_map: np.ndarray, groups: np.ndarray):
        self.groups = np.asarray(groups, dtype=np.int64)
        self.num_groups = int(self.groups[-1]) + 1
        code_lengths = np.asarray(code_lengths, dtype=np.uint8)
        if code_lengths.shape != (1 + 2 * self.num_groups, deflate.SYMBOLS):
            raise ValueError("undecodable rows (the code tables have the wrong shape)")
        self.code_lengths, self.index_map = code_lengths, np.asarray(index_map, dtype=np.int64)
        self.tables = [deflate.Table(t) for t in code_lengths]
        self.codes = np.stack([t.codes for t in self.tables]).astype(np.uint64)
        self.tails = np.array([t.tail for t in self.tables], dtype=np.int64)
        # per first coded stream (1: every row whole): the streams, their headers' last bits
        # (value, width) and their end-of-block code lengths, for checking a blob's padding
        self.group_sizes = np.bincount(self.groups, minlength=self.num_groups)
        self.coded_streams = {}
        for first in (0, 1):
            sid = np.arange(first, len(self.tables))
            self.coded_streams[first] = (
                sid,
                self.tails[sid, 0].tolist(),
                self.tails[sid, 1].tolist(),
                (
                    self.code_lengths[sid, deflate.EOB].astype(np.int64) + self.tails[sid, 1]
                ).tolist(),
            )
        self._dense = None
        if len(self.index_map) and self.index_map.max() < (1 << 17):
            self._dense = np.full(int(self.index_map.max()) + 1, -1, dtype=np.int64)
            self._dense[self.index_map] = np.arange(len(self.index_map))

    def rank_of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if self._dense is not None and (len(ids) == 0 or ids.max() < len(self._dense)):
            ranks = self._dense[ids]
        else:
            order = np.argsort(self.index_map, kind="stable")
            pos = np.searchsorted(self.index_map[order], ids).clip(0, max(len(order) - 1, 0))
            ranks = np.where(self.index_map[order][pos] == ids, order[pos], -1)
        if (ranks < 0).any():
            raise ValueError("an index missing from the file's index map")
        return ranks

    def streams(self, values: Values):
        """(first stream coded, the coded streams' values: lengths?, deltas, ranks)."""
        ranks = self.rank_of(np.concatenate(values.ids)) if values.ids else []
        cuts = np.cumsum([len(i) for i in values.ids])[:-1]
        out = [] if values.lengths is None else [values.lengths]
        return int(values.lengths is None), out + list(values.deltas) + np.split(ranks, cuts)


def fit(values: Sequence[Values], groups: np.ndarray, rank_ids: bool = True) -> TableSet:
    """The table set that codes these sentences best (Huffman codes of their symbol counts);
    rank_ids=False keeps the ids in their own order (to measure what the ranking buys)."""
    ids, counts = _id_counts(values)
    index_map = ids[np.lexsort((ids, -counts))] if rank_ids else ids  # most frequent first
    num_streams = 1 + 2 * (int(groups[-1]) + 1)
    empty = np.zeros((num_streams, deflate.SYMBOLS), dtype=np.uint8)
    provisional = TableSet(empty, index_map, groups)
    symbol_counts = np.zeros(num_streams * deflate.SYMBOLS, dtype=np.int64)
    for v in values:
        first, streams = provisional.streams(v)
        sid = np.repeat(np.arange(first, num_streams), [len(s) for s in streams])
        token = tokens_of(np.concatenate(streams))[0]
        symbol_counts += np.bincount(sid * deflate.SYMBOLS + token, minlength=len(symbol_counts))
        symbol_counts[np.arange(first, num_streams) * deflate.SYMBOLS + deflate.EOB] += 1
    lengths = [deflate.code_lengths(c) for c in symbol_counts.reshape(num_streams, -1)]
    return TableSet(np.stack(lengths), index_map, groups)


def _id_counts(values: Sequence[Values]):
    all_ids = [np.concatenate(v.ids) for v in values if v.ids]
    if not all_ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ids = np.concatenate(all_ids).astype(np.int64)
    if ids.min() >= 0 and ids.max() < (1 << 17):
        counts = np.bincount(ids)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(ids, return_counts=True)


def encode(values: Values, tables: TableSet) -> bytes:
    """A sentence's values (every id in the table set's index map) -> its blob: a flag byte
    (0: every row whole), each coded stream's part (byte-aligned), then the extra bits."""
    first, streams = tables.streams(values)
    sizes = np.array([len(s) for s in streams], dtype=np.int64)
    sid = np.arange(first, len(tables.tables))
    token, extra, width = tokens_of(np.concatenate(streams))
    s_of = np.repeat(sid, sizes)
    clen = tables.code_lengths[s_of, token].astype(np.int64)
    if not clen.all():
        raise ValueError("a value without a code in this table set")
    # part q's fields: the header's last bits, its codes, the end of block
    fields = sizes + 2
    f0 = np.cumsum(fields) - fields
    f1 = f0 + fields - 1
    val, nbits = np.empty(fields.sum(), dtype=np.uint64), np.empty(fields.sum(), dtype=np.int64)
    inner = np.ones(len(val), dtype=bool)
    inner[f0], inner[f1] = False, False
    val[f0], nbits[f0] = tables.tails[sid, 0], tables.tails[sid, 1]
    val[f1], nbits[f1] = tables.codes[sid, deflate.EOB], tables.code_lengths[sid, deflate.EOB]
    val[inner], nbits[inner] = tables.codes[s_of, token], clen
    part_bytes = (np.add.reduceat(nbits, f0) + 7) // 8
    part_start = 1 + np.cumsum(part_bytes) - part_bytes  # after the flag byte
    seq = np.cumsum(nbits) - nbits
    start = seq + np.repeat(8 * part_start - seq[f0], fields)
    extra_start = 8 * (1 + part_bytes.sum()) + np.cumsum(width) - width
    nbytes = 1 + int(part_bytes.sum()) + (int(width.sum()) + 7) // 8
    blob = bytearray(
        deflate.pack(
            np.concatenate([val, extra]),
            np.concatenate([nbits, width]),
            np.concatenate([start, extra_start]),
            nbytes,
        )
    )
    blob[0] = 0 if values.lengths is None else 1
    return bytes(blob)


def decode(blob: bytes, n: int, k: int, index_dtype: np.dtype, tables: TableSet):
    """The blob of a sentence of n rows -> (indices (n, k) index_dtype, probs (n, k) '<f2');
    ValueError when it is not one."""
    data = memoryview(blob)
    if len(data) < 1 or data[0] > 1:
        raise ValueError("undecodable rows (bad first byte)")
    full, pos, tokens, starts = data[0] == 0, 1, [], []
    for table in tables.tables[int(full) :]:
        t, used = table.decode_bytes(data[pos:])
        tokens.append(t)
        starts.append(pos)
        pos += used
    sizes = np.array([len(t) for t in tokens])
    flat = np.frombuffer(b"".join(tokens), dtype=np.uint8)
    if len(flat) and flat.max() >= TOKENS:
        raise ValueError("undecodable rows (a symbol no value has)")
    _check_padding(data, tables, int(full), flat, sizes, starts + [pos])
    info = _INFO[flat.astype(np.intp)]
    values = (info >> 6).astype(np.uint64) + deflate.unpack(data[pos:], info & 63)
    if full:
        lengths, expected = None, n * tables.group_sizes
    else:
        if sizes[0] != n:
            raise ValueError("undecodable rows (sizes do not add up)")
        lengths, values, sizes = values[:n].astype(np.int64), values[n:], sizes[1:]
        if lengths.max(initial=0) > k:
            raise ValueError("undecodable rows (a row longer than V')")
        per_column = (lengths[None, :] > np.arange(k)[:, None]).sum(1)
        expected = np.bincount(tables.groups, weights=per_column, minlength=tables.num_groups)
    if sizes.tolist() != expected.astype(np.int64).tolist() * 2:
        raise ValueError("undecodable rows (sizes do not add up)")
    count = int(expected.sum())
    delta_t, ranks = values[:count], values[count:]
    if len(ranks) and (delta_t.max() >= 1 << 16 or ranks.max() >= len(tables.index_map)):
        raise ValueError("undecodable rows (a value out of range)")
    ids_t = tables.index_map[ranks.astype(np.int64)].astype(index_dtype)
    delta_t = delta_t.astype("<u2")
    if count == n * k:
        delta, indices = delta_t.reshape(k, n).T, np.ascontiguousarray(ids_t.reshape(k, n).T)
    else:
        keep_t = np.arange(k)[:, None] < lengths[None, :]
        d, i = np.zeros((k, n), dtype="<u2"), np.zeros((k, n), dtype=index_dtype)
        d[keep_t], i[keep_t] = delta_t, ids_t
        delta, indices = d.T, np.ascontiguousarray(i.T)
    neg = np.empty((n, k), dtype="<u2")  # bits[j] = bits[0] - delta[1] - ... - delta[j]
    neg[:, 0] = delta[:, 0]
    np.subtract(np.uint16(0), delta[:, 1:], out=neg[:, 1:])
    bits = np.cumsum(neg, axis=1, dtype="<u2")
    if count != n * k:
        bits[np.arange(k)[None, :] >= lengths[:, None]] = 0
    return indices, bits.view("<f2")


def _check_padding(data, tables: TableSet, first: int, flat, sizes, starts) -> None:
    """Every bit of a part is the header's, a code's or 0: the header's last bits and the padding
    after the end of block are checked, so that no flipped bit goes unnoticed."""
    sid, tail_value, tail_bits, fixed_bits = tables.coded_streams[first]
    code_bits = np.zeros(len(flat) + 1, dtype=np.int64)
    np.cumsum(tables.code_lengths[np.repeat(sid, sizes), flat], out=code_bits[1:])
    ends = code_bits[np.cumsum(sizes)].tolist()
    begin = 0
    for q, (start, stop) in enumerate(zip(starts[:-1], starts[1:])):
        bits = fixed_bits[q] + ends[q] - begin
        begin = ends[q]
        if (
            stop - start != (bits + 7) // 8
            or data[start] & ((1 << tail_bits[q]) - 1) != tail_value[q]
            or data[stop - 1] >> (8 - (-bits) % 8)
        ):
            raise ValueError("undecodable rows (bits that no code has)")
