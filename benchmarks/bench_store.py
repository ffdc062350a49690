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
    t0 = time.perf_counter()
    raw()
    t_raw = time.perf_counter() - t0
    t0 = time.perf_counter()
    memo()
    t_memo = time.perf_counter() - t0
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
            times.append(time.perf_counter())
        return _step_times(times)

    plain = timed([])
    teacher = timed(["--teacher-store", store])
    return plain, teacher


def _timed_iter(itr, times):
    for batch in itr:
        times.append(time.perf_counter())  # step starts before loading the batch
        yield batch


def _step_times(stamps):
    # stamps alternate (batch requested, step done); a step = done - previous done
    done = stamps[1::2]
    return np.diff(done[1:])  # drop the warm-up step


def write_synthetic_store(path, gigabytes, topk=64, vocab=32000, sentence_tokens=30):
    from ensdist_fairseq.store import format as store_format
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
    writer = store_format.RowWriter(path, store_format.create(path, offsets, prov), offsets)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, vocab, size=(sentence_tokens, topk)).astype(np.uint16)
    # a distribution's top-V' (rows sum to < 1) and beta0 > 0: what every read validates
    raw = np.sort(rng.random((sentence_tokens, topk)), axis=1)[:, ::-1]
    probs = (raw / (1.05 * raw.sum(1, keepdims=True))).astype(np.float16)
    for i in range(n):
        writer.write_sentence(
            i, idx, probs, np.full(sentence_tokens, float(i + 1), dtype=np.float32)
        )
    writer.close()
    return n, sentence_tokens


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
    a = p.parse_args()
    if a.stream_child:
        return stream_child(
            a.stream_child[0], a.stream_child[1], int(a.stream_child[2]), int(a.stream_child[3])
        )
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
    gb = os.path.getsize(big) / 2**30
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
        f"| peak RSS streaming a {gb:.2f} GB store ({n} sentences) | {rss['plain']:.0f} MB | "
        f"{rss['store']:.0f} MB | +{rss['store'] - rss['plain']:.0f} MB | <= +500 MB |"
    )


if __name__ == "__main__":
    main()
