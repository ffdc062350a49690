"""Side-by-side ratios for the teacher store, printed as markdown table rows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_store.py --workdir /tmp/bench_store \
        [--sentences 2000] [--dim 256] [--store-gb 2.0]

1. memoize throughput / raw teacher-forced ensemble forward (same models, same batches);
2. training step time with teacher entries / plain translation (same model, batches, seed);
3. peak RSS streaming a synthetic store of --store-gb GB through TeacherStoreDataset, minus the
   same stream without the store (each in a fresh process).
"""

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# --clock cpu: process CPU time (all threads) instead of wall time, for a loaded machine where
# the scheduler, not the code, sets the wall time of a niced process
CLOCK = [time.perf_counter]
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def prepare(workdir, sentences, dim, vocab):
    import tiny_fairseq

    data = os.path.join(workdir, "bin")
    if not os.path.isdir(data):
        tiny_fairseq.write_synthetic_raw(
            os.path.join(workdir, "raw"), n_train=sentences, vocab=vocab
        )
        tiny_fairseq.binarize(os.path.join(workdir, "raw"), data)
    size = [
        "--encoder-embed-dim",
        str(dim),
        "--decoder-embed-dim",
        str(dim),
        "--encoder-ffn-embed-dim",
        str(4 * dim),
        "--decoder-ffn-embed-dim",
        str(4 * dim),
        "--encoder-layers",
        "2",
        "--decoder-layers",
        "2",
    ]
    ckpts = []
    for seed in (1, 2, 3):
        path = os.path.join(workdir, f"seed{seed}", "checkpoint_last.pt")
        if not os.path.exists(path):
            tiny_fairseq.train_tiny(
                data, os.path.dirname(path), seed=seed, max_update=2, extra=size
            )
        ckpts.append(path)
    return data, ckpts, size


def bench_memoize(data, ckpts, workdir, topk, max_tokens):
    from ensdist_fairseq.store import shards
    from ensdist_fairseq.teachers.memoize import (
        STITCH_BLOCK_ROWS,
        MemoizeConfig,
        Run,
        _memoize_share,
    )

    out = os.path.join(workdir, "teacher.h5")
    if os.path.exists(out):
        os.remove(out)
    cfg = MemoizeConfig(
        data=data,
        paths=ckpts,
        output=out,
        split="train",
        topk=topk,
        max_tokens=max_tokens,
        batch_size=None,
        chunk_sentences=1000,
        cpu=True,
        log_interval=1e9,
        allow_low_accuracy=True,  # teachers of 2 updates: their accuracy is not the point here
    )
    run = Run(cfg, 0, 1)
    from ensdist_fairseq.teachers import teacher_forcing

    batches = [
        b
        for c in run.chunks
        for b in teacher_forcing.plan_batches(run.dataset, np.arange(*c), max_tokens, None)
    ]

    @torch.inference_mode()
    def raw():  # what fairseq's EnsembleModel does: members' log-softmax, averaged in log space
        for b in batches:
            s = run.dataset.collater([run.dataset[int(i)] for i in b])
            lps = [m.get_normalized_probs(m(**s["net_input"]), log_probs=True) for m in run.models]
            torch.logsumexp(torch.stack(lps), 0)

    def memo():
        os.makedirs(shards.shard_dir(out), exist_ok=True)
        _memoize_share(run)
        shards.stitch(out, run.chunks, run.provenance, run.offsets, STITCH_BLOCK_ROWS)

    raw()  # warm-up
    t0 = CLOCK[0]()
    raw()
    t_raw = CLOCK[0]() - t0
    t0 = CLOCK[0]()
    memo()
    t_memo = CLOCK[0]() - t0
    return out, t_raw, t_memo, int(run.offsets[-1])


def bench_train_step(data, size, store, steps):
    import tiny_fairseq
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import ensdist_fairseq.tasks.translation_distill  # noqa: F401

    def timed(extra):
        args = options.parse_args_and_arch(
            options.get_training_parser(),
            [
                data,
                "--task",
                "translation_distill",
                *tiny_fairseq.TINY_ARCH_ARGS,
                *size,
                "--criterion",
                "cross_entropy",
                "--max-tokens",
                "1024",
                "--seed",
                "1",
                *extra,
            ],
        )
        cfg = convert_namespace_to_omegaconf(args)
        task = tasks.setup_task(cfg.task)
        task.load_dataset("train")
        torch.manual_seed(1)
        model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        itr = task.get_batch_iterator(
            task.dataset("train"), max_tokens=1024, seed=1
        ).next_epoch_itr(shuffle=True)
        times = []
        for _, batch in zip(range(steps + 2), _timed_iter(itr, times)):
            model.train()
            loss, _, _ = criterion(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(CLOCK[0]())
        return _step_times(times)

    plain = timed([])
    teacher = timed(["--teacher-store", store])
    return plain, teacher


def _timed_iter(itr, times):
    for batch in itr:
        times.append(CLOCK[0]())  # step starts before loading the batch
        yield batch


def _step_times(stamps):
    # stamps alternate (batch requested, step done); a step = done - previous done
    done = stamps[1::2]
    return np.diff(done[1:])  # drop the warm-up step


def synthetic_rows(rows, vocab=4000, topk=64, seed=0, alpha=1.0, relevant=60, lift=7.0, sigma=1.5):
    """Teacher rows with the demo store's statistics where they are known (V = 4,000, V' = 64,
    top-64 mass about 0.8, byte-shuffle + zlib of the whole store 1.25 B/entry for the
    probabilities and 1.37 for the indices; the demo's: 0.81, 1.23, 1.35). Per row: a Zipf prior
    over the ids (fairseq dictionaries are sorted by frequency), `relevant` tokens drawn from a
    flattened prior and lifted by up to `lift` (the context), and Gaussian noise; the top-V' of
    the softmax, sorted descending, float16 and uint16 as memoize stores them."""
    rng = np.random.default_rng(seed)
    prior = -alpha * np.log(np.arange(vocab) + 10.0)
    draw = np.exp(0.3 * prior)
    draw /= draw.sum()
    out_i, out_p = [], []
    for start in range(0, rows, 1000):
        m = min(1000, rows - start)
        logits = prior + sigma * rng.standard_normal((m, vocab))
        rel = rng.choice(vocab, size=(m, relevant), p=draw)
        logits[np.arange(m)[:, None], rel] += lift * rng.uniform(0, 1, size=(m, relevant))
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        idx = np.argsort(-p, axis=1)[:, :topk]
        out_i.append(idx.astype("<u2"))
        out_p.append(np.take_along_axis(p, idx, 1).astype("<f2"))
    return np.concatenate(out_i), np.concatenate(out_p)


def write_synthetic_store(path, gigabytes, topk=64, vocab=4000, sentence_tokens=30):
    """A format-3 store whose rows would take `gigabytes` in format 2, written as memoize does
    (chunk files, stitched); its sentences cycle through 500 sentences of synthetic_rows."""
    from ensdist_fairseq.store import format as store_format
    from ensdist_fairseq.store import shards
    from ensdist_fairseq.store.provenance import Provenance

    per_sentence = sentence_tokens * (topk * 4 + 4)
    n = int(gigabytes * 2**30 / per_sentence)
    offsets = np.arange(n + 1, dtype=np.int64) * sentence_tokens
    prov = Provenance(
        vocab_size=vocab,
        topk=topk,
        num_teachers=3,
        teacher_sha256=("0" * 64,) * 3,
        dictionary_sha256="0" * 64,
        split="train",
        num_sentences=n,
        target_checksum="0" * 64,
        source_checksum="0" * 64,
        package_version="bench",
    )
    pool = 500
    idx, probs = synthetic_rows(pool * sentence_tokens, vocab, topk)
    chunks = shards.plan_chunks(n, 20000)
    os.makedirs(shards.shard_dir(path), exist_ok=True)
    for chunk in chunks:
        local = offsets[chunk[0] : chunk[1] + 1] - offsets[chunk[0]]
        cpath = shards.chunk_path(path, chunk)
        layout = store_format.create(cpath, local, prov, first_sentence=chunk[0])
        writer = store_format.RowWriter(cpath, layout, local)
        for i in range(*chunk):
            rows = slice((i % pool) * sentence_tokens, (i % pool + 1) * sentence_tokens)
            writer.write_sentence(
                i - chunk[0],
                idx[rows],
                probs[rows],
                np.full(sentence_tokens, float(i + 1), dtype=np.float32),
            )
        writer.close()
    shards.stitch(path, chunks, prov, offsets, 1 << 20)
    return n, sentence_tokens


def bench_size(rows, topk=64):
    """Bytes per stored entry of each step of format 3's row coding on synthetic_rows, sentences
    of 8..44 tokens: what each part buys. Every variant codes each sentence alone (random
    access), except the last line's reference (the whole store as one stream)."""
    import zlib

    from ensdist_fairseq.store import codec
    from ensdist_fairseq.store.teacher_distribution import nucleus_lengths

    idx, probs = synthetic_rows(rows, topk=topk)
    lengths = np.random.default_rng(1).integers(8, 45, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    offsets = offsets[offsets <= rows]
    spans = list(zip(offsets[:-1], offsets[1:]))
    entries = int(offsets[-1]) * topk

    def planes(a):
        return np.ascontiguousarray(a.reshape(-1).view(np.uint8).reshape(-1, a.itemsize).T)

    def deltas(p):
        bits = p.view("<u2").copy()
        bits[:, 1:] = p.view("<u2")[:, :-1] - p.view("<u2")[:, 1:]
        return bits

    def z(*parts):
        return len(zlib.compress(b"".join(np.ascontiguousarray(x).tobytes() for x in parts), 6))

    variants = {
        "zlib of the raw bytes (probabilities, then indices)": lambda i, p: z(p, i),
        "+ byte planes": lambda i, p: z(planes(p), planes(i)),
        "+ probabilities as deltas of their bit patterns": lambda i, p: z(
            planes(deltas(p)), planes(i)
        ),
        "+ column by column (entry j of every row together)": lambda i, p: z(
            planes(deltas(p).T.copy()), planes(i.T.copy())
        ),
        "+ one zlib stream per byte plane = format 3": lambda i, p: len(codec.encode(i, p)),
    }
    mass = float(probs[: offsets[-1]].astype(np.float32).sum(1).mean())
    print(
        f"| row coding, synthetic rows (V=4000, V'={topk}, top-{topk} mass {mass:.2f}) | B/entry |"
    )
    print("|---|---|")
    print("| format 2 (uint16 + float16) | 4.000 |")
    for name, f in variants.items():
        total = sum(f(idx[a:b], probs[a:b]) for a, b in spans)
        print(f"| {name} | {total / entries:.3f} |")
    whole = z(planes(probs[: offsets[-1]])) + z(planes(idx[: offsets[-1]]))
    print(
        f"| reference: the whole store as one byte-shuffle + zlib stream | {whole / entries:.3f} |"
    )
    print(f"| (+ beta0, float32 per token, in every format) | {4 / topk:.3f} |")
    for top_p, min_k in [(0.95, 1), (0.9, 1), (0.8, 1), (0.5, 4)]:  # nucleus rows (format 3)
        p32 = torch.from_numpy(probs.astype(np.float32))
        lengths = nucleus_lengths(p32, top_p, min_k).numpy()
        past = np.arange(topk)[None, :] >= lengths[:, None]
        i_n, p_n = np.where(past, 0, idx).astype("<u2"), np.where(past, 0, probs).astype("<f2")
        total = sum(len(codec.encode(i_n[a:b], p_n[a:b])) for a, b in spans)
        kept = float(lengths[: offsets[-1]].mean())
        print(
            f"| nucleus rows --top-p {top_p} --min-k {min_k} ({kept:.1f} of {topk} entries kept "
            f"on average) | {total / entries:.3f} |"
        )


def bench_real(path, workdir, top_p=0.9, min_k=8):
    """On a real store (any format): bytes per entry of its own coding (format 3: split into
    probabilities, indices and the rest), of each step of format 4's coding, of a format-4 copy
    written by RowWriter (checked bit for bit against the original) and of nucleus rows cut
    from its rows; then the CPU time of StoreReader.read for both files."""
    import dataclasses
    import zlib

    from ensdist_fairseq.store import codec, coded, table_codec
    from ensdist_fairseq.store import format as store_format
    from ensdist_fairseq.store.teacher_distribution import nucleus_lengths

    src = store_format.StoreReader(path)
    k, n = src.provenance.topk, src.num_sentences
    entries = int(src.offsets[-1]) * k
    rows = [src.read(i) for i in range(n)]
    dtype = store_format.index_dtype(src.provenance.vocab_size)
    rows = [(i.astype(dtype), p, b) for i, p, b in rows]
    print(
        f"{path}: format {src.provenance.format_version}, {n} sentences, "
        f"{int(src.offsets[-1])} rows, V'={k}, V={src.provenance.vocab_size}, "
        f"{entries} entries, file {os.path.getsize(path)} bytes"
    )
    print()
    print("| coding of the rows | probabilities | indices | rest | B/entry |")
    print("|---|---|---|---|---|")
    print("| format 2 (raw) | 2.000 | 2.000 | 0 | 4.000 |")
    if src.provenance.format_version == 3:
        sizes = np.zeros(4)
        for i in range(n):
            a, b = int(src.code_offsets[i]), int(src.code_offsets[i + 1])
            blob = src.raw_rows(coded.CODED, a, b - a)
            for j in range(4):
                d = zlib.decompressobj()
                d.decompress(blob)
                sizes[j] += len(blob) - len(d.unused_data)
                blob = d.unused_data
        print(
            f"| format 3 as stored (zlib per sentence) | {(sizes[0] + sizes[1]) / entries:.3f} | "
            f"{(sizes[2] + sizes[3]) / entries:.3f} | (in probabilities: the row lengths) | "
            f"{sizes.sum() / entries:.3f} |"
        )
    else:
        total = sum(len(codec.encode(i, p)) for i, p, _ in rows)
        print(f"| format 3 (zlib per sentence) | | | | {total / entries:.3f} |")
    one = np.zeros(k, dtype=np.int64)
    steps = [
        ("format 4 coding, one context, ids in dictionary order", one, False),
        ("+ ids ranked by their frequency in the file", one, True),
        (
            "+ a context per column group (0, 1, 2-3, 4-15, 16-) = **format 4**",
            table_codec.column_groups(k),
            True,
        ),
    ]
    for name, groups, rank in steps:
        values = [table_codec.sentence_values(i, p, groups) for i, p, _ in rows]
        tables = table_codec.fit(values, groups, rank_ids=rank)
        split, total = np.zeros(2), 0  # codes + extra bits of the probabilities, the indices
        for v in values:
            total += len(table_codec.encode(v, tables))
            first, streams = tables.streams(v)
            for s, x in zip(range(first, len(tables.tables)), streams):
                token, _, width = table_codec.tokens_of(x)
                bits = tables.code_lengths[s, token].astype(np.int64).sum() + width.sum()
                if s > 0:  # stream 0, the row lengths, counts as the rest
                    split[0 if s <= tables.num_groups else 1] += bits / 8
        rest = total - split.sum()  # flag byte, row lengths, ends of blocks, padding
        print(
            f"| {name} | {split[0] / entries:.3f} | {split[1] / entries:.3f} | "
            f"{rest / entries:.3f} | {total / entries:.3f} |"
        )
    prov = dataclasses.replace(src.provenance, format_version=4)
    out = os.path.join(workdir, "real_v4.h5")
    if os.path.exists(out):
        os.remove(out)
    writer = store_format.RowWriter(out, store_format.create(out, src.offsets, prov), src.offsets)
    for i, (idx, p, b) in enumerate(rows):
        writer.write_sentence(i, idx, p, b)
    writer.close()
    v4 = store_format.StoreReader(out)
    for i, row in enumerate(rows):
        got = v4.read(i)
        assert all(x.tobytes() == y.tobytes() for x, y in zip(got, src.read(i))), i
    with h5py_file(out) as f:
        table_bytes = sum(f[name].id.get_storage_size() for name in coded.TABLE_DATASETS)
    coded_bytes = int(v4.code_offsets[-1])
    print(
        f"| format 4 file written by RowWriter (rows identical to the original, bit for bit): "
        f"coded rows + code tables ({table_bytes} bytes) | | | | "
        f"{(coded_bytes + table_bytes) / entries:.3f} |"
    )
    print(
        f"| whole file, beta0 and offsets included: {os.path.getsize(out)} bytes "
        f"(original {os.path.getsize(path)}) | | | | {os.path.getsize(out) / entries:.3f} |"
    )
    lengths = [
        nucleus_lengths(torch.from_numpy(p.astype(np.float32)), top_p, min_k).numpy()
        for _, p, _ in rows
    ]
    cut = []
    for (idx, p, _), n_keep in zip(rows, lengths):
        past = np.arange(k)[None, :] >= n_keep[:, None]
        cut.append((np.where(past, 0, idx).astype(dtype), np.where(past, 0, p).astype("<f2")))
    kept = np.concatenate(lengths).mean()
    groups = table_codec.column_groups(k)
    values = [table_codec.sentence_values(i, p, groups) for i, p in cut]
    tables = table_codec.fit(values, groups)
    t4 = sum(len(table_codec.encode(v, tables)) for v in values)
    t3 = sum(len(codec.encode(i, p)) for i, p in cut)
    print(
        f"| nucleus rows --top-p {top_p} --min-k {min_k} cut from these rows "
        f"({kept:.1f} of {k} entries kept): format 3 {t3 / entries:.3f}, format 4 | | | | "
        f"{t4 / entries:.3f} |"
    )
    print()
    cpu = {}
    for name, reader in (("original", src), ("format 4", v4)):
        best = []
        for _ in range(3):
            t0 = time.process_time()
            for i in range(n):
                reader.read(i)
            best.append((time.process_time() - t0) / n)
        cpu[name] = min(best)
    print(
        f"StoreReader.read CPU time per sentence ({int(src.offsets[-1]) / n:.1f} rows), "
        f"min of 3 passes: original (format {src.provenance.format_version}) "
        f"{1e6 * cpu['original']:.0f} us, format 4 {1e6 * cpu['format 4']:.0f} us"
    )


def h5py_file(path):
    import h5py

    return h5py.File(path, "r")


def bench_read_write(workdir, n=1000, tokens=30, topk=64, passes=5):
    """Per sentence: RowWriter.write_sentence + close and StoreReader.read (CRC, decoding,
    validation), format 2 vs format 3, on the same synthetic_rows, formats interleaved."""
    from ensdist_fairseq.store import format as store_format
    from ensdist_fairseq.store.provenance import Provenance

    idx, probs = synthetic_rows(n * tokens, topk=topk)
    offsets = np.arange(n + 1) * tokens
    precision = np.full(tokens, 5.0, dtype=np.float32)
    readers, write = {}, {}
    for version in (2, 3):
        prov = Provenance(
            4000,
            topk,
            3,
            ("0" * 64,) * 3,
            "0" * 64,
            "train",
            n,
            "0" * 64,
            "0" * 64,
            "bench",
            format_version=version,
        )
        path = os.path.join(workdir, f"read_v{version}.h5")
        start = time.perf_counter()
        w = store_format.RowWriter(path, store_format.create(path, offsets, prov), offsets)
        for i in range(n):
            rows = slice(i * tokens, (i + 1) * tokens)
            w.write_sentence(i, idx[rows], probs[rows], precision)
        w.close()
        write[version] = (time.perf_counter() - start) / n
        readers[version] = store_format.StoreReader(path)
    read = {2: [], 3: []}
    for _ in range(passes):
        for version, reader in readers.items():
            start = time.perf_counter()
            for i in range(n):
                reader.read(i)
            read[version].append((time.perf_counter() - start) / n)
    print(f"| per {tokens}-token sentence, V'={topk} | format 2 | format 3 | ratio |")
    print("|---|---|---|---|")
    print(
        f"| write (code + CRC + file) | {1e6 * write[2]:.0f} us | {1e6 * write[3]:.0f} us | "
        f"{write[3] / write[2]:.1f}x |"
    )
    r2, r3 = min(read[2]), min(read[3])
    print(
        f"| StoreReader.read, min of {passes} passes | {1e6 * r2:.0f} us | {1e6 * r3:.0f} us | "
        f"{r3 / r2:.1f}x |"
    )


def stream_child(mode, store, n, sentence_tokens):
    """Iterate every sentence through a LanguagePairDataset (optionally wrapped), batch by batch."""
    from fairseq.data import Dictionary, LanguagePairDataset

    from ensdist_fairseq.data.teacher_dataset import TeacherStoreDataset
    from ensdist_fairseq.store.format import StoreReader

    class Tokens(torch.utils.data.Dataset):  # tokens made on the fly: the same cost in both modes
        sizes = np.full(n, sentence_tokens, dtype=np.int64)

        def __len__(self):
            return n

        def __getitem__(self, i):
            return torch.full((sentence_tokens,), 5 + i % 100, dtype=torch.long)

    d = Dictionary()
    ds = LanguagePairDataset(Tokens(), Tokens.sizes, d, Tokens(), Tokens.sizes, d, shuffle=True)
    if mode == "store":
        ds = TeacherStoreDataset(ds, StoreReader(store), topk=64, pad_idx=d.pad())
    order = ds.ordered_indices()
    for first in range(0, n, 128):
        ds.collater([ds[int(i)] for i in order[first : first + 128]])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MB


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument(
        "--sentences", type=int, default=2000, help="training sentences of the synthetic corpus"
    )
    p.add_argument("--vocab", type=int, default=2000, help="source words of the synthetic corpus")
    p.add_argument("--dim", type=int, default=256, help="teachers' embedding size (2+2 layers)")
    p.add_argument("--topk", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20, help="training steps timed per task")
    p.add_argument(
        "--store-gb", type=float, default=2.0, help="size of the synthetic store streamed for RSS"
    )
    p.add_argument(
        "--stream-child", nargs=4, metavar=("MODE", "STORE", "N", "TOKENS"), help=argparse.SUPPRESS
    )
    p.add_argument("--size-rows", type=int, default=20000, help="rows of the coding table")
    p.add_argument(
        "--size-only", action="store_true", help="only the coding tables (size, read, write)"
    )
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="time the ratios by (cpu: loaded)"
    )
    p.add_argument("--real-store", help="only the coding measured on this store (bench_real)")
    a = p.parse_args()
    if a.clock == "cpu":
        CLOCK[0] = time.process_time
    if a.stream_child:
        return stream_child(
            a.stream_child[0], a.stream_child[1], int(a.stream_child[2]), int(a.stream_child[3])
        )
    if a.real_store:
        os.makedirs(a.workdir, exist_ok=True)
        return bench_real(a.real_store, a.workdir)
    if a.size_only:
        os.makedirs(a.workdir, exist_ok=True)
        bench_size(a.size_rows, a.topk)
        print()
        return bench_read_write(a.workdir, topk=a.topk)
    os.makedirs(a.workdir, exist_ok=True)
    data, ckpts, size = prepare(a.workdir, a.sentences, a.dim, a.vocab)
    store, t_raw, t_memo, tokens = bench_memoize(data, ckpts, a.workdir, a.topk, a.max_tokens)
    steps_plain, steps_teacher = bench_train_step(data, size, store, a.steps)
    big = os.path.join(a.workdir, "synthetic.h5")
    n, tok = write_synthetic_store(big, a.store_gb, topk=a.topk)
    rss = {
        mode: float(
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--workdir",
                    a.workdir,
                    "--stream-child",
                    mode,
                    big,
                    str(n),
                    str(tok),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
        )
        for mode in ("plain", "store")
    }
    gb = n * tok * (a.topk * 4 + 4) / 2**30
    coded_gb = os.path.getsize(big) / 2**30
    os.remove(big)
    print("| measure | plain | with store | ratio / difference | target |")
    print("|---|---|---|---|---|")
    print(
        f"| memoize vs raw ensemble forward (K=3, {tokens} tokens, V'={a.topk}, dim {a.dim}) | "
        f"{tokens / t_raw:.0f} tok/s | {tokens / t_memo:.0f} tok/s | {t_raw / t_memo:.3f}x throughput | >= 0.9x |"
    )
    mp, mt = float(np.median(steps_plain)), float(np.median(steps_teacher))
    print(
        f"| training step, median of {len(steps_plain)} (translation vs translation_distill) | "
        f"{1000 * mp:.1f} ms | {1000 * mt:.1f} ms | {mt / mp:.3f}x | <= 1.05x |"
    )
    print(
        f"| peak RSS streaming a store of {gb:.2f} GB of rows ({coded_gb:.2f} GB coded, "
        f"{n} sentences) | {rss['plain']:.0f} MB | "
        f"{rss['store']:.0f} MB | +{rss['store'] - rss['plain']:.0f} MB | <= +500 MB |"
    )
    print()
    bench_size(a.size_rows, a.topk)
    print()
    bench_read_write(a.workdir, topk=a.topk)


if __name__ == "__main__":
    main()
